// Timing of GPU work the way every benchmark here measures it: `iters` calls captured into one CUDA
// graph, two warm-up replays, then the median over `reps` timed replays (events around each
// replay), divided by iters. Used by `tqkv bench attention --backend cuda` (bench_attention.cu) and
// the standalone benchmarks of bench/cuda (bench_common.cuh).
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <vector>

#include "cuda/cuda_check.h"
#include "tqkv/status.h"

namespace tqkv::cuda {

// enqueue_call(i) enqueues call i on `stream` and returns its Status; microseconds per call.
template <typename F>
Result<double> time_graph(F&& enqueue_call, int iters, int reps, cudaStream_t stream) {
  cudaGraph_t graph;
  TQKV_CUDA_RETURN_IF_ERROR(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  auto enqueue_all = [&]() -> Status {
    for (int i = 0; i < iters; ++i) TQKV_RETURN_IF_ERROR(enqueue_call(i));
    return Status::ok();
  };
  const Status st = enqueue_all();
  TQKV_CUDA_RETURN_IF_ERROR(cudaStreamEndCapture(stream, &graph));
  TQKV_RETURN_IF_ERROR(st);
  cudaGraphExec_t exec;
  TQKV_CUDA_RETURN_IF_ERROR(cudaGraphInstantiate(&exec, graph, 0));
  cudaEvent_t a, b;
  TQKV_CUDA_RETURN_IF_ERROR(cudaEventCreate(&a));
  TQKV_CUDA_RETURN_IF_ERROR(cudaEventCreate(&b));
  std::vector<double> t;
  TQKV_CUDA_RETURN_IF_ERROR(cudaGraphLaunch(exec, stream));  // warm-up
  TQKV_CUDA_RETURN_IF_ERROR(cudaGraphLaunch(exec, stream));
  for (int r = 0; r < reps; ++r) {
    TQKV_CUDA_RETURN_IF_ERROR(cudaEventRecord(a, stream));
    TQKV_CUDA_RETURN_IF_ERROR(cudaGraphLaunch(exec, stream));
    TQKV_CUDA_RETURN_IF_ERROR(cudaEventRecord(b, stream));
    TQKV_CUDA_RETURN_IF_ERROR(cudaEventSynchronize(b));
    float ms = 0;
    TQKV_CUDA_RETURN_IF_ERROR(cudaEventElapsedTime(&ms, a, b));
    t.push_back(ms * 1000.0 / iters);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

}  // namespace tqkv::cuda
