// The one CUDA error check: turns a cudaError_t into a tqkv::Status (errors are values).
//   TQKV_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(p, 0, n, stream));
//   TQKV_CUDA_RETURN_IF_ERROR(cudaGetLastError());   // after every kernel launch
#pragma once

#include <cuda_runtime.h>

#include <string>

#include "tqkv/status.h"

namespace tqkv::cuda {

inline Status cuda_status(cudaError_t err, const char* what, const char* file, int line) {
  if (err == cudaSuccess) return Status::ok();
  return internal_error(std::string("CUDA error ") + cudaGetErrorName(err) + " (" +
                        cudaGetErrorString(err) + ") in " + what + " at " + file + ":" +
                        std::to_string(line));
}

}  // namespace tqkv::cuda

#define TQKV_CUDA_RETURN_IF_ERROR(expr) \
  TQKV_RETURN_IF_ERROR(::tqkv::cuda::cuda_status((expr), #expr, __FILE__, __LINE__))
