// `tqkv bench-cuda`: the CUDA kernel benchmark (src/cuda/bench_attention.h) from the main
// program: decode attention per KV format against our fp16 kernel and the copy bandwidth of the
// same run, plus quantize-on-write. Registered only when the CUDA backend is compiled in; the
// standalone `tqkv_cuda_bench` (bench/cuda) runs the same code without the engine's libraries.
#ifdef TQKV_HAVE_CUDA
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "cli/command_registry.h"
#include "cuda/bench_attention.h"

namespace {

struct Options {
  tqkv::cuda::CudaBenchConfig cfg;
  std::string heads = "32:8";
  bool as_json = false;
  bool no_quantize = false;
};

tqkv::cli::RunFn setup(CLI::App& sub) {
  auto opt = std::make_shared<Options>();
  sub.add_option("--formats", opt->cfg.formats, "KV formats, comma-separated (f16 first gives speed-ups)")
      ->delimiter(',');
  sub.add_option("--batch", opt->cfg.batches, "batch sizes")->delimiter(',')->check(CLI::PositiveNumber);
  sub.add_option("--context", opt->cfg.contexts, "context lengths")->delimiter(',')->check(CLI::PositiveNumber);
  sub.add_option("--head-dim", opt->cfg.head_dims, "head sizes (64, 80, 96, 128, 256)")->delimiter(',');
  sub.add_option("--heads", opt->heads, "query and KV heads, HQ:HKV");
  sub.add_option("--reps", opt->cfg.reps, "timed repetitions (median reported)")->check(CLI::PositiveNumber);
  sub.add_option("--iters", opt->cfg.iters, "calls per repetition (one CUDA graph)")->check(CLI::PositiveNumber);
  sub.add_flag("--no-quantize", opt->no_quantize, "skip the quantize-on-write rows");
  sub.add_flag("--json", opt->as_json, "print the rows as JSON instead of a table");
  return [opt] {
    if (std::sscanf(opt->heads.c_str(), "%d:%d", &opt->cfg.num_q_heads, &opt->cfg.num_kv_heads) != 2) {
      std::fprintf(stderr, "error: --heads must look like 32:8\n");
      return 2;
    }
    opt->cfg.quantize = !opt->no_quantize;
    auto rows = tqkv::cuda::run_cuda_attention_bench(
        opt->cfg, [](const std::string& line) { std::fprintf(stderr, "%s\n", line.c_str()); });
    if (!rows.is_ok()) {
      std::fprintf(stderr, "error: %s\n", rows.status().to_string().c_str());
      return 1;
    }
    const std::string text = opt->as_json ? tqkv::cuda::format_bench_json(*rows)
                                          : tqkv::cuda::format_bench_table(*rows);
    std::fputs(text.c_str(), stdout);
    return 0;
  };
}

tqkv::cli::CommandRegistrar reg("bench-cuda",
                                "Benchmark the CUDA attention kernels against fp16 and the copy bandwidth",
                                &setup);

}  // namespace
#endif  // TQKV_HAVE_CUDA
