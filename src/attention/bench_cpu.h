// The CPU side of `tqkv bench attention` (src/cli/cmd_bench.cpp): builds a compressed cache and an
// f16 cache with the same random tokens (pages placed at random in the pool), times fused decode
// over both, and checks the fused output against the reference on a subset. Kept out of the CLI
// so a CUDA backend or a `bench decode` can reuse the setup and report the same fields.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "tqkv/status.h"

namespace tqkv {

struct CpuAttentionBenchConfig {
  std::string kv = "k4v4";     // f16, k8v8, k8v4, k4v4, k4v3, k3v3, k2v2, any kXvY
  int64_t context = 4096;      // tokens per sequence (the decode query is the last one)
  int32_t batch = 4;
  int32_t num_q_heads = 32, num_kv_heads = 8;
  int32_t head_dim = 128;
  int32_t window = 0;          // sliding window of the attention (0 = full)
  int32_t iters = 5;           // timed calls per path (median reported), after one warm-up
  int32_t threads = 0;         // OpenMP threads, 0 = default
  int64_t ref_tokens = 2048;   // reference check on the first sequence truncated to this many tokens
  uint64_t seed = 1;
};

struct CpuAttentionBenchResult {
  CpuAttentionBenchConfig cfg;
  int32_t threads = 0;
  bool avx2 = false;
  bool avx512 = false;  // the AVX-512 BW build of the chunk loop ran (8-bit sides by word permutes)
  double time_ms = 0, baseline_f16_time_ms = 0, speedup_vs_f16 = 0;  // medians
  // Fastest call of each path: on a shared machine the median picks up scheduler stalls.
  double time_min_ms = 0, baseline_f16_time_min_ms = 0, speedup_vs_f16_min = 0;
  int64_t bytes_read = 0, f16_bytes_read = 0;
  double gbps = 0, f16_gbps = 0;
  double rel_error = 0;          // fused vs reference, compressed format (subset), ||d|| / ||ref||
  double f16_rel_error = 0;      // same for the f16 path
  int64_t ref_tokens = 0;        // tokens the reference check covered
  double rel_error_vs_f16 = 0;   // compressed output vs f16 output, full shape (quantization error)
  double capacity_ratio_vs_f16 = 0;  // tokens per byte budget, this format over f16
};

using BenchProgress = std::function<void(const std::string&)>;
Result<CpuAttentionBenchResult> run_cpu_attention_bench(const CpuAttentionBenchConfig& cfg,
                                                        const BenchProgress& progress);

}  // namespace tqkv
