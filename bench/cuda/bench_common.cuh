// Pieces the standalone CUDA benchmarks share (tqkv_prefill_bench, tqkv_sink_bench,
// tqkv_quant_bench): an abort-on-error CUDA check (a benchmark has nothing to recover), random but
// valid KV tiles, a device buffer, comma-separated options, and an aborting front of the library's
// graph timer.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

#include "cuda/graph_timer.cuh"
#include "tqkv/kv_layout.h"

#define TQKV_BENCH_CHECK(x)                                                                    \
  do {                                                                                         \
    const cudaError_t e_ = (x);                                                                \
    if (e_ != cudaSuccess) {                                                                   \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
      std::exit(2);                                                                            \
    }                                                                                          \
  } while (0)

namespace tqkv::bench {

// -h / --help anywhere on the command line: prints `usage` to stdout and returns true (the
// caller exits 0).
inline bool wants_help(int argc, char** argv, const char* usage) {
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "-h" || a == "--help") {
      std::fputs(usage, stdout);
      return true;
    }
  }
  return false;
}

// Exits with a one-line reason when this machine has no usable CUDA device (instead of the first
// CUDA call's error deep inside the benchmark).
inline void require_device(const char* prog) {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess || n == 0) {
    std::fprintf(stderr, "%s: no usable CUDA device (%s)\n", prog,
                 e != cudaSuccess ? cudaGetErrorString(e) : "none found");
    std::exit(2);
  }
}

__device__ inline uint32_t hash32(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ULL;
  x ^= x >> 33;
  return static_cast<uint32_t>(x);
}

// Random valid tiles of `rows` tokens: TurboQuant tiles get uniform index bytes and fp16 scales in
// [0.5, 2) * sqrt(d); fp16 tiles (bits 16) values in [-2, 2). Never zeros (see METHOD.md).
__global__ inline void fill_tiles(uint8_t* p, int64_t n_tiles, int64_t tile_bytes, int bits, int rows, int d,
                                  uint64_t seed) {
  const int64_t n = n_tiles * tile_bytes;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += gridDim.x * static_cast<int64_t>(blockDim.x)) {
    const int64_t t = i / tile_bytes, o = i % tile_bytes;
    const uint32_t h = hash32(seed * 0x9e3779b97f4a7c15ull + i);
    if (bits == 16) {
      if (o % 2 == 0 && o / 2 < static_cast<int64_t>(rows) * d)
        reinterpret_cast<__half*>(p + t * tile_bytes)[o / 2] = __float2half_rn((h % 4096) / 1024.f - 2.f);
      continue;
    }
    const int64_t sc = tile_scales_offset(rows, d, bits);
    if (o < sc) {
      p[i] = static_cast<uint8_t>(h);
    } else if (o < sc + 2 * rows && (o - sc) % 2 == 0) {
      reinterpret_cast<__half*>(p + t * tile_bytes + sc)[(o - sc) / 2] =
          __float2half_rn((0.5f + 1.5f * (h % 1000) / 1000.f) * sqrtf(static_cast<float>(d)));
    }
  }
}

// Owns one cudaMalloc'd block (at least 256 bytes, so empty buffers still have an address).
struct DeviceBuffer {
  void* p = nullptr;
  explicit DeviceBuffer(size_t n) { TQKV_BENCH_CHECK(cudaMalloc(&p, std::max<size_t>(n, 256))); }
  ~DeviceBuffer() { cudaFree(p); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  template <typename T>
  T* get() const { return static_cast<T*>(p); }
};

inline std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string x;
  while (std::getline(ss, x, ','))
    if (!x.empty()) out.push_back(x);
  return out;
}
inline std::vector<int> parse_ints(const std::string& s) {
  std::vector<int> out;
  for (const std::string& x : split_list(s)) out.push_back(std::atoi(x.c_str()));
  return out;
}

// Microseconds per call of `call` (which enqueues on stream s): the library's graph timer
// (src/cuda/graph_timer.cuh: `iters` calls in one graph, two warm-up replays, median of `reps`),
// aborting on a CUDA error.
template <typename F>
double time_graph(F&& call, int iters, int reps, cudaStream_t s) {
  const auto us = tqkv::cuda::time_graph([&](int) -> Status {
    call();
    return Status::ok();
  }, iters, reps, s);
  if (!us.is_ok()) {
    std::fprintf(stderr, "time_graph: %s\n", us.status().to_string().c_str());
    std::exit(2);
  }
  return *us;
}

}  // namespace tqkv::bench
