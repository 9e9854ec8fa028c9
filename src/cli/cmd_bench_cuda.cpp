// `tqkv bench-cuda`: the CUDA kernel benchmark (src/cuda/bench_attention.h) from the main
// program: decode attention per KV format against our fp16 kernel and the copy bandwidth of the
// same run, plus quantize-on-write. Registered only when the CUDA backend is compiled in; the
// standalone `tqkv_cuda_bench` (bench/cuda) runs the same code without the engine's libraries.
#ifdef TQKV_HAVE_CUDA
#include <algorithm>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "cli/command_registry.h"
#include "cuda/bench_attention.h"
#include "attention/bench_cpu.h"
#include "tqkv/kv_cache.h"

namespace {

struct Options {
  tqkv::cuda::CudaBenchConfig cfg;
  std::string heads = "32:8";
  bool as_json = false;
  bool no_quantize = false;
  bool no_prefill = false;
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
  sub.add_flag("--no-prefill", opt->no_prefill, "skip the prefill rows");
  sub.add_flag("--json", opt->as_json, "print the rows as JSON instead of a table");
  return [opt] {
    if (std::sscanf(opt->heads.c_str(), "%d:%d", &opt->cfg.num_q_heads, &opt->cfg.num_kv_heads) != 2) {
      std::fprintf(stderr, "error: --heads must look like 32:8\n");
      return 2;
    }
    opt->cfg.quantize = !opt->no_quantize;
    opt->cfg.prefill = !opt->no_prefill;
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

}  // namespace

namespace tqkv::cli {

// `tqkv bench attention --backend cuda ...`: the CPU bench's flags on the CUDA kernels. Times the
// requested format and the fp16 kernel in the same run (one CUDA graph of 20 calls per
// repetition, `--iters` repetitions, median), next to the copy bandwidth of the same run.
int run_bench_attention_cuda(const CpuAttentionBenchConfig& c, bool json) {
  int32_t kb = 0, vb = 0;
  const Status fmt = parse_kv_format(c.kv, &kb, &vb);
  if (!fmt.is_ok()) {
    std::fprintf(stderr, "error: %s\n", fmt.to_string().c_str());
    return 2;
  }
  if (c.context > (1 << 30)) {
    std::fprintf(stderr, "error: --context too large\n");
    return 2;
  }
  tqkv::cuda::CudaBenchConfig cfg;
  const std::string name = kv_format_name(kb, vb);
  cfg.formats = {"f16"};
  if (name != "f16") cfg.formats.push_back(name);
  cfg.batches = {c.batch};
  cfg.contexts = {static_cast<int>(c.context)};
  cfg.head_dims = {c.head_dim};
  cfg.num_q_heads = c.num_q_heads;
  cfg.num_kv_heads = c.num_kv_heads;
  cfg.window = c.window;
  cfg.reps = std::max(3, c.iters);
  cfg.quantize = false;
  cfg.prefill = false;
  auto rows = tqkv::cuda::run_cuda_attention_bench(cfg, [](const std::string& s) { std::fprintf(stderr, "%s\n", s.c_str()); });
  if (!rows.is_ok()) {
    std::fprintf(stderr, "error: %s\n", rows.status().to_string().c_str());
    return 1;
  }
  const tqkv::cuda::CudaBenchRow* f16 = nullptr;
  const tqkv::cuda::CudaBenchRow* kv = nullptr;
  for (const auto& r : *rows) {
    if (r.op != "decode") continue;
    if (r.kv == "f16") f16 = &r;
    if (r.kv == name) kv = &r;
  }
  if (!f16 || !kv) {
    std::fprintf(stderr, "error: the CUDA bench returned no decode rows\n");
    return 1;
  }
  const CapacityReport cap_kv = capacity_for(int64_t{1} << 33, 1, c.num_kv_heads, c.head_dim, 16, kb, vb);
  const CapacityReport cap_f16 = capacity_for(int64_t{1} << 33, 1, c.num_kv_heads, c.head_dim, 16, 16, 16);
  const double cap_ratio = cap_f16.tokens > 0 ? static_cast<double>(cap_kv.tokens) / cap_f16.tokens : 0;
  if (json) {
    // Same keys as the CPU bench where they mean the same thing (bytes include queries and
    // outputs here), plus the copy ceiling of this run and the fractions of it. The error keys of
    // the CPU bench are not measured here: test_cuda checks the kernels against the CPU reference.
    std::printf(
        "{\n  \"backend\": \"cuda\",\n  \"kv\": \"%s\",\n  \"context\": %lld,\n  \"batch\": %d,\n"
        "  \"num_q_heads\": %d,\n  \"num_kv_heads\": %d,\n  \"head_dim\": %d,\n  \"window\": %d,\n"
        "  \"iters\": %d,\n  \"calls_per_iter\": %d,\n  \"splits\": %d,\n  \"time_ms\": %.6f,\n"
        "  \"baseline_f16_time_ms\": %.6f,\n  \"speedup_vs_f16\": %.4f,\n  \"bytes_read\": %.0f,\n"
        "  \"f16_bytes_read\": %.0f,\n  \"gbps\": %.1f,\n  \"f16_gbps\": %.1f,\n  \"copy_gbps\": %.1f,\n"
        "  \"frac_copy\": %.4f,\n  \"f16_frac_copy\": %.4f,\n  \"capacity_ratio_vs_f16\": %.4f\n}\n",
        name.c_str(), static_cast<long long>(c.context), c.batch, c.num_q_heads, c.num_kv_heads, c.head_dim,
        c.window, cfg.reps, cfg.iters, kv->splits, kv->time_us / 1e3, f16->time_us / 1e3, kv->speedup_vs_f16,
        kv->bytes, f16->bytes, kv->gbps, f16->gbps, kv->copy_gbps, kv->frac_copy, f16->frac_copy, cap_ratio);
    return 0;
  }
  std::printf("decode attention, cuda: context %lld, batch %d, heads %d:%d, head_dim %d%s\n",
              static_cast<long long>(c.context), c.batch, c.num_q_heads, c.num_kv_heads, c.head_dim,
              c.window ? (", window " + std::to_string(c.window)).c_str() : "");
  std::printf("%-6s %10s %12s %8s %10s %7s\n", "kv", "time_ms", "bytes_read", "GB/s", "frac_copy", "splits");
  for (const auto* r : {kv, f16}) {
    if (r == f16 && kv == f16) break;
    std::printf("%-6s %10.4f %12.0f %8.0f %10.3f %7d\n", r->kv.c_str(), r->time_us / 1e3, r->bytes, r->gbps,
                r->frac_copy, r->splits);
  }
  std::printf("copy bandwidth (same run): %.0f GB/s   speedup vs f16: %.2fx   capacity vs f16: %.2fx\n",
              kv->copy_gbps, kv->speedup_vs_f16, cap_ratio);
  return 0;
}

}  // namespace tqkv::cli

namespace {

tqkv::cli::CommandRegistrar reg("bench-cuda",
                                "Benchmark the CUDA attention kernels against fp16 and the copy bandwidth",
                                &setup);

}  // namespace
#endif  // TQKV_HAVE_CUDA
