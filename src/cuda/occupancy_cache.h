// CTAs per SM of a kernel, asked of the CUDA runtime once and then remembered.
//
// The quantize-on-write launchers size their grids by it on every call, i.e. once per layer per
// decode step when the step is not a replayed CUDA graph, and the runtime's occupancy query costs
// microseconds of host time. The answer depends only on the device, the kernel, the block size and
// the dynamic shared memory, which together are the key.
#pragma once

#include <cuda_runtime.h>

#include <map>
#include <mutex>
#include <tuple>

namespace tqkv::cuda::detail {

inline cudaError_t cached_blocks_per_sm(const void* kernel, int threads, size_t smem, int* per_sm) {
  int dev = 0;
  if (const cudaError_t e = cudaGetDevice(&dev); e != cudaSuccess) return e;
  using Key = std::tuple<int, const void*, int, size_t>;
  static std::mutex mu;
  static std::map<Key, int> known;
  const Key key{dev, kernel, threads, smem};
  {
    const std::lock_guard<std::mutex> lock(mu);
    if (const auto it = known.find(key); it != known.end()) {
      *per_sm = it->second;
      return cudaSuccess;
    }
  }
  int n = 0;
  if (const cudaError_t e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, threads, smem); e != cudaSuccess)
    return e;
  const std::lock_guard<std::mutex> lock(mu);
  known[key] = n;
  *per_sm = n;
  return cudaSuccess;
}

}  // namespace tqkv::cuda::detail
