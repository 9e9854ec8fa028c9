// Internals shared by the GPU runtime's files (src/gpu): error macros, the device arena, and the
// weights of a GpuModel. Not a public header.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "cuda/cuda_check.h"
#include "tqkv/gpu_model.h"
#include "tqkv/status.h"

#define CK(expr) TQKV_CUDA_RETURN_IF_ERROR(expr)

namespace tqkv {
namespace gpu_detail {

inline Status blas_status(cublasStatus_t st, const char* what) {
  if (st == CUBLAS_STATUS_SUCCESS) return Status::ok();
  return internal_error(std::string("cuBLAS error ") + std::to_string(static_cast<int>(st)) + " in " + what);
}
#define BK(expr) TQKV_RETURN_IF_ERROR(blas_status((expr), #expr))

// Device allocations owned by an object, freed together.
struct DeviceArena {
  std::vector<void*> ptrs;
  ~DeviceArena() {
    for (void* p : ptrs) cudaFree(p);
  }
  template <typename T>
  Result<T*> alloc(size_t count) {
    void* p = nullptr;
    const size_t bytes = std::max<size_t>(count * sizeof(T), 256);
    const cudaError_t e = cudaMalloc(&p, bytes);
    if (e != cudaSuccess) {
      cudaGetLastError();
      return resource_exhausted("cudaMalloc of " + std::to_string(bytes) + " bytes failed: " + cudaGetErrorString(e));
    }
    ptrs.push_back(p);
    return static_cast<T*>(p);
  }
};

inline std::vector<float> inv_freq_of(int n_rot, float base, const std::vector<float>& factors) {
  std::vector<float> inv(static_cast<size_t>(std::max(1, n_rot / 2)), 0.f);
  for (int i = 0; i < n_rot / 2; ++i) {
    double f = std::pow(static_cast<double>(base), -2.0 * i / n_rot);
    if (!factors.empty()) f /= factors[i];
    inv[i] = static_cast<float>(f);
  }
  return inv;
}

// Copies a host vector into a new allocation of the arena.
inline Result<float*> upload_f32(DeviceArena& a, const std::vector<float>& v) {
  TQKV_ASSIGN_OR_RETURN(float* p, a.alloc<float>(v.size()));
  CK(cudaMemcpy(p, v.data(), v.size() * sizeof(float), cudaMemcpyHostToDevice));
  return p;
}

}  // namespace gpu_detail

struct DevMat {
  uint16_t* w = nullptr;  // fp16 [rows][cols]
  int64_t rows = 0, cols = 0;
};

struct GpuModel::Impl {
  gpu_detail::DeviceArena arena;
  uint16_t* tok_embd = nullptr;  // [vocab][E]
  DevMat output;
  float* output_norm = nullptr;
  struct Layer {
    float *attn_norm = nullptr, *ffn_norm = nullptr, *post_attn_norm = nullptr, *post_ffn_norm = nullptr;
    float *q_norm = nullptr, *k_norm = nullptr, *bq = nullptr, *bk = nullptr, *bv = nullptr;
    DevMat wqkv, wo, wgu, down;
  };
  std::vector<Layer> layers;
  float* inv_freq_global = nullptr;
  float* inv_freq_local = nullptr;
};


}  // namespace tqkv
