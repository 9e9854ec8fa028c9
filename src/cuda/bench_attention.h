// Kernel benchmark for the CUDA backend: decode attention per KV format against our fp16 kernel
// and the device-to-device copy bandwidth measured in the same run, plus quantize-on-write and
// prefill attention.
// Used by the standalone `tqkv_cuda_bench` program (bench/cuda) and callable from the CLI.
#pragma once

#include <string>
#include <vector>

#include "tqkv/status.h"

namespace tqkv::cuda {

struct CudaBenchConfig {
  std::vector<std::string> formats = {"f16", "k8v4", "k4v4", "k4v3", "k3v3", "k2v2"};
  std::vector<int> batches = {8, 32};
  std::vector<int> contexts = {8192, 16384, 32768};
  std::vector<int> head_dims = {128};  // 96 too for the per-byte comparison
  int num_q_heads = 32;
  int num_kv_heads = 8;
  int window = 0;      // sliding window of the decode query (0 = full); bytes count visible pages only
  int num_splits = 0;  // decode split count (0 = plan_decode's choice)
  int reps = 7;        // timed repetitions (median reported)
  int iters = 20;      // decode calls per repetition, replayed from one CUDA graph
  bool quantize = true;
  int quantize_tokens = 32768;
  // Prefill rows: one sequence of prefill_context tokens whose last prefill_chunk are the new
  // queries (causal among themselves), head size 128, formats f16, k4v4, k3v3.
  bool prefill = true;
  int prefill_context = 8192;
  int prefill_chunk = 2048;
};

struct CudaBenchRow {
  std::string op;       // "copy", "launch" (an empty kernel: the floor per call), "decode", "quantize", "prefill"
  std::string kv;       // format name ("f16", "k4v4", ...)
  int batch = 0, context = 0, head_dim = 0, splits = 0;
  double time_us = 0;   // median per call
  double bytes = 0;     // bytes the call must move (KV tiles read + q/out; or copy read+write)
  double gbps = 0;      // bytes / time
  double frac_copy = 0; // gbps / copy bandwidth of this run
  double speedup_vs_f16 = 0;  // f16 time / this time (decode rows)
  double copy_gbps = 0;       // the copy ceiling of this run that frac_copy refers to
  double tflops = 0;          // prefill rows: 4 * heads * head_dim * (visible keys summed over queries) / time
};

// Runs every configured case on the current device. `progress` (may be null) gets one line per case.
Result<std::vector<CudaBenchRow>> run_cuda_attention_bench(const CudaBenchConfig& cfg,
                                                           void (*progress)(const std::string&));

// Human-readable table and JSON (array of objects with the row fields) of the rows.
std::string format_bench_table(const std::vector<CudaBenchRow>& rows);
std::string format_bench_json(const std::vector<CudaBenchRow>& rows);

}  // namespace tqkv::cuda
