// GPU runtime: device checks and the copy-bandwidth ceiling (include/tqkv/gpu_model.h).
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <numeric>
#include <random>
#include <vector>

#include "cuda/cuda_check.h"
#include "gpu/gpu_kernels.h"
#include "tqkv/codec.h"
#include "tqkv/cuda_attention.h"
#include "tqkv/fp16.h"
#include "tqkv/gpu_model.h"
#include "tqkv/kv_layout.h"
#include "tqkv/weights.h"
#include "gpu/gpu_internal.h"

namespace tqkv {

using namespace gpu_detail;

Status gpu_available() {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    cudaGetLastError();
    return unsupported(std::string("no usable CUDA device: ") + cudaGetErrorString(e));
  }
  if (n < 1) return unsupported("no CUDA device found");
  return Status::ok();
}

Result<GpuDeviceInfo> gpu_device_info() {
  TQKV_RETURN_IF_ERROR(gpu_available());
  GpuDeviceInfo info;
  cudaDeviceProp prop{};
  CK(cudaGetDeviceProperties(&prop, 0));
  info.name = prop.name;
  info.sm_count = prop.multiProcessorCount;
  size_t fr = 0, tot = 0;
  CK(cudaMemGetInfo(&fr, &tot));
  info.free_bytes = static_cast<int64_t>(fr);
  info.total_bytes = static_cast<int64_t>(tot);
  return info;
}

Result<double> gpu_copy_bandwidth(int64_t bytes, int reps) {
  TQKV_RETURN_IF_ERROR(gpu_available());
  bytes = bytes / 16 * 16;
  DeviceArena a;
  TQKV_ASSIGN_OR_RETURN(uint8_t* src, a.alloc<uint8_t>(bytes));
  TQKV_ASSIGN_OR_RETURN(uint8_t* dst, a.alloc<uint8_t>(bytes));
  CK(cudaMemset(src, 0x3c, bytes));
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  std::vector<float> ms;
  for (int r = 0; r < reps + 2; ++r) {
    CK(cudaEventRecord(e0, nullptr));
    TQKV_RETURN_IF_ERROR(gpu::copy_kernel(src, dst, bytes, nullptr));
    CK(cudaEventRecord(e1, nullptr));
    CK(cudaEventSynchronize(e1));
    float t = 0;
    CK(cudaEventElapsedTime(&t, e0, e1));
    if (r >= 2) ms.push_back(t);
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  std::sort(ms.begin(), ms.end());
  return 2.0 * static_cast<double>(bytes) / (ms[ms.size() / 2] * 1e-3);
}

}  // namespace tqkv
