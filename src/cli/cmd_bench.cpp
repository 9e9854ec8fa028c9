// `tqkv bench attention`: fused decode attention over a compressed cache against the f16 path in
// the same run (time, bytes read, GB/s, speed ratio, error against the reference).
// `tqkv bench capacity`: tokens that fit in a byte budget, per KV format.
//
// The measuring code lives in src/attention/bench_cpu.{h,cpp}; `--backend cuda` hands the same
// flags to the CUDA kernel bench (src/cuda/bench_attention.*, via cmd_bench_cuda.cpp).
#include <nlohmann/json.hpp>

#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "attention/bench_cpu.h"
#include "cli/command_registry.h"
#include "tqkv/kv_cache.h"

#ifdef TQKV_HAVE_CUDA
namespace tqkv::cli {
// `bench attention --backend cuda` (cmd_bench_cuda.cpp): the same flags, timed by the CUDA bench.
int run_bench_attention_cuda(const CpuAttentionBenchConfig& cfg, bool json);
}  // namespace tqkv::cli
#endif

namespace tqkv::cli {
RunFn setup_bench_decode(CLI::App& sub);  // src/cli/cmd_bench_decode.cpp
RunFn setup_bench_serve(CLI::App& sub);   // src/cli/cmd_bench_serve.cpp
}  // namespace tqkv::cli

namespace {

struct Options {
  tqkv::CpuAttentionBenchConfig cfg;
  std::string backend = "cpu";
  std::string heads = "32:8";
  bool json = false;
  // capacity
  double budget_gib = 8.0;
  int32_t layers = 32, cap_kv_heads = 8, cap_head_dim = 128, page_size = 16;
  std::vector<std::string> formats = {"f16", "k8v8", "k8v4", "k4v4", "k4v3", "k3v3", "k2v2"};
};

int run_attention(const Options& o) {
  tqkv::CpuAttentionBenchConfig cfg = o.cfg;
  char tail = 0;
  if (std::sscanf(o.heads.c_str(), "%d:%d%c", &cfg.num_q_heads, &cfg.num_kv_heads, &tail) != 2) {
    std::fprintf(stderr, "error: --heads must look like 32:8 (got '%s')\n", o.heads.c_str());
    return 2;
  }
  if (o.backend == "cuda") {
#ifdef TQKV_HAVE_CUDA
    return tqkv::cli::run_bench_attention_cuda(cfg, o.json);  // cmd_bench_cuda.cpp
#else
    std::fprintf(stderr,
                 "error: --backend cuda: this tqkv was built without the CUDA backend (no nvcc when it was "
                 "configured; configure with -DTQKV_CUDA=ON on a machine with the CUDA toolkit)\n");
    return 2;
#endif
  }
  if (o.backend != "cpu") {
    std::fprintf(stderr, "error: --backend must be cpu or cuda (got '%s')\n", o.backend.c_str());
    return 2;
  }
  auto r = tqkv::run_cpu_attention_bench(cfg, [](const std::string& s) { std::fprintf(stderr, "%s\n", s.c_str()); });
  if (!r.is_ok()) {
    std::fprintf(stderr, "error: %s\n", r.status().to_string().c_str());
    return 1;
  }
  const tqkv::CpuAttentionBenchResult& x = *r;
  if (o.json) {
    nlohmann::json j = {{"backend", "cpu"},
                        {"kv", cfg.kv},
                        {"context", cfg.context},
                        {"batch", cfg.batch},
                        {"num_q_heads", cfg.num_q_heads},
                        {"num_kv_heads", cfg.num_kv_heads},
                        {"head_dim", cfg.head_dim},
                        {"window", cfg.window},
                        {"threads", x.threads},
                        {"avx2", x.avx2},
                        {"avx512", x.avx512},
                        {"iters", cfg.iters},
                        {"time_ms", x.time_ms},
                        {"baseline_f16_time_ms", x.baseline_f16_time_ms},
                        {"speedup_vs_f16", x.speedup_vs_f16},
                        {"time_min_ms", x.time_min_ms},
                        {"baseline_f16_time_min_ms", x.baseline_f16_time_min_ms},
                        {"speedup_vs_f16_min", x.speedup_vs_f16_min},
                        {"bytes_read", x.bytes_read},
                        {"f16_bytes_read", x.f16_bytes_read},
                        {"gbps", x.gbps},
                        {"f16_gbps", x.f16_gbps},
                        {"rel_error", x.rel_error},
                        {"f16_rel_error", x.f16_rel_error},
                        {"ref_tokens", x.ref_tokens},
                        {"rel_error_vs_f16", x.rel_error_vs_f16},
                        {"capacity_ratio_vs_f16", x.capacity_ratio_vs_f16}};
    std::printf("%s\n", j.dump(2).c_str());
    return 0;
  }
  std::printf("decode attention, cpu (%d threads, %s): context %lld, batch %d, heads %d:%d, head_dim %d%s\n",
              x.threads, x.avx512 ? "avx512" : x.avx2 ? "avx2" : "scalar", static_cast<long long>(cfg.context), cfg.batch, cfg.num_q_heads,
              cfg.num_kv_heads, cfg.head_dim, cfg.window ? (", window " + std::to_string(cfg.window)).c_str() : "");
  std::printf("%-6s %10s %12s %8s %16s\n", "kv", "time_ms", "bytes_read", "GB/s", "rel_err_vs_ref");
  std::printf("%-6s %10.3f %12lld %8.2f %16.2e\n", cfg.kv.c_str(), x.time_ms, static_cast<long long>(x.bytes_read),
              x.gbps, x.rel_error);
  std::printf("%-6s %10.3f %12lld %8.2f %16.2e\n", "f16", x.baseline_f16_time_ms,
              static_cast<long long>(x.f16_bytes_read), x.f16_gbps, x.f16_rel_error);
  std::printf("fastest call: %s %.3f ms, f16 %.3f ms, speedup %.2fx\n", cfg.kv.c_str(), x.time_min_ms,
              x.baseline_f16_time_min_ms, x.speedup_vs_f16_min);
  std::printf("speedup vs f16 (medians): %.2fx   capacity vs f16: %.2fx   output rel error vs f16: %.3e\n",
              x.speedup_vs_f16, x.capacity_ratio_vs_f16, x.rel_error_vs_f16);
  std::printf("(reference check on the first sequence truncated to %lld tokens)\n",
              static_cast<long long>(x.ref_tokens));
  return 0;
}

int run_capacity(const Options& o) {
  const int64_t budget = static_cast<int64_t>(o.budget_gib * (1ll << 30));
  if (budget <= 0 || o.layers <= 0 || o.cap_kv_heads <= 0 || !tqkv::is_valid_head_dim(o.cap_head_dim) ||
      o.page_size <= 0) {
    std::fprintf(stderr, "error: budget, layers, heads must be positive; head_dim a multiple of 8 in [64, 256]\n");
    return 2;
  }
  const tqkv::CapacityReport f16 =
      tqkv::capacity_for(budget, o.layers, o.cap_kv_heads, o.cap_head_dim, o.page_size, 16, 16);
  nlohmann::json rows = nlohmann::json::array();
  if (!o.json)
    std::printf("capacity of %.2f GiB, %d layers x %d KV heads, head_dim %d, page %d tokens\n%-6s %14s %12s %10s\n",
                o.budget_gib, o.layers, o.cap_kv_heads, o.cap_head_dim, o.page_size, "kv", "bytes/token", "tokens",
                "vs f16");
  for (const std::string& f : o.formats) {
    int32_t kb = 0, vb = 0;
    const tqkv::Status st = tqkv::parse_kv_format(f, &kb, &vb);
    if (!st.is_ok()) {
      std::fprintf(stderr, "error: %s\n", st.to_string().c_str());
      return 2;
    }
    const tqkv::CapacityReport c = tqkv::capacity_for(budget, o.layers, o.cap_kv_heads, o.cap_head_dim, o.page_size, kb, vb);
    const double ratio = static_cast<double>(c.tokens) / f16.tokens;
    if (o.json)
      rows.push_back({{"kv", f}, {"bytes_per_token", c.bytes_per_token}, {"tokens", c.tokens}, {"ratio_vs_f16", ratio}});
    else
      std::printf("%-6s %14.1f %12lld %9.2fx\n", f.c_str(), c.bytes_per_token, static_cast<long long>(c.tokens), ratio);
  }
  if (o.json) std::printf("%s\n", nlohmann::json{{"budget_bytes", budget}, {"rows", rows}}.dump(2).c_str());
  return 0;
}

tqkv::cli::RunFn setup(CLI::App& sub) {
  auto o = std::make_shared<Options>();
  sub.require_subcommand(1);
  // `bench decode` (GPU runtime, end to end): src/cli/cmd_bench_decode.cpp.
  CLI::App* dec = sub.add_subcommand("decode", "End-to-end decode on the GPU runtime: f16 vs a compressed KV cache");
  tqkv::cli::RunFn dec_run = tqkv::cli::setup_bench_decode(*dec);
  // `bench serve` (the serving engine's throughput from one KV budget): src/cli/cmd_bench_serve.cpp.
  CLI::App* srv = sub.add_subcommand("serve", "Continuous-batching throughput from one KV budget: f16 vs a compressed KV cache");
  tqkv::cli::RunFn srv_run = tqkv::cli::setup_bench_serve(*srv);
  CLI::App* att = sub.add_subcommand("attention", "Decode attention over a compressed cache vs the f16 path");
  att->add_option("--backend", o->backend, "cpu or cuda (cuda: needs a build with the CUDA backend)")
      ->check(CLI::IsMember({"cpu", "cuda"}));
  att->add_option("--kv", o->cfg.kv, "KV format: f16, k8v8, k8v4, k4v4, k4v3, k3v3, k2v2 (any kXvY)");
  att->add_option("--context", o->cfg.context, "tokens per sequence")->check(CLI::PositiveNumber);
  att->add_option("--batch", o->cfg.batch, "sequences")->check(CLI::PositiveNumber);
  att->add_option("--heads", o->heads, "query and KV heads, HQ:HKV");
  att->add_option("--head-dim", o->cfg.head_dim, "head size (64..256, multiple of 8)");
  att->add_option("--window", o->cfg.window, "sliding window (0 = full attention)")->check(CLI::NonNegativeNumber);
  att->add_option("--threads", o->cfg.threads, "OpenMP threads (0 = default)")->check(CLI::NonNegativeNumber);
  att->add_option("--iters", o->cfg.iters, "timed calls per path (median)")->check(CLI::PositiveNumber);
  att->add_option("--ref-tokens", o->cfg.ref_tokens, "tokens of the reference check")->check(CLI::PositiveNumber);
  att->add_option("--seed", o->cfg.seed, "random seed");
  att->add_flag("--json", o->json, "print one JSON object");
  CLI::App* cap = sub.add_subcommand("capacity", "Tokens that fit in a byte budget, per KV format");
  cap->add_option("--budget-gib", o->budget_gib, "budget in GiB")->check(CLI::PositiveNumber);
  cap->add_option("--layers", o->layers, "layers");
  cap->add_option("--kv-heads", o->cap_kv_heads, "KV heads per layer");
  cap->add_option("--head-dim", o->cap_head_dim, "head size");
  cap->add_option("--page-size", o->page_size, "tokens per page");
  cap->add_option("--formats", o->formats, "formats, comma-separated")->delimiter(',');
  cap->add_flag("--json", o->json, "print JSON");
  return [o, att, cap, dec, dec_run, srv, srv_run] {
    if (dec->parsed()) return dec_run();
    if (srv->parsed()) return srv_run();
    if (att->parsed()) return run_attention(*o);
    if (cap->parsed()) return run_capacity(*o);
    return 2;
  };
}

tqkv::cli::CommandRegistrar reg("bench", "Benchmarks: `bench attention`, `bench decode`, `bench serve`, `bench capacity` (each beside f16)",
                                &setup);

}  // namespace
