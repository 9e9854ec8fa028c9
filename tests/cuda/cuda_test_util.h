// Helpers for the CUDA tests: GPU detection (tests skip cleanly without one), RAII device
// buffers, poisoning, and the tolerance check every test uses.
#pragma once

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace tqkv::cuda::testing {

inline bool gpu_available() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

#define TQKV_REQUIRE_GPU()                                                           \
  do {                                                                               \
    if (!::tqkv::cuda::testing::gpu_available()) {                                   \
      GTEST_SKIP() << "no CUDA device (cudaGetDeviceCount failed or returned 0)";    \
    }                                                                                \
  } while (0)

#define TQKV_CUDA_ASSERT(expr)                                                        \
  do {                                                                               \
    const cudaError_t _e = (expr);                                                   \
    ASSERT_EQ(_e, cudaSuccess) << #expr << ": " << cudaGetErrorString(_e);           \
  } while (0)

// Owns one device allocation.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t bytes) : bytes_(bytes) {
    if (bytes && cudaMalloc(&ptr_, bytes) != cudaSuccess) ptr_ = nullptr;
  }
  ~DeviceBuffer() { if (ptr_) cudaFree(ptr_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(o.ptr_), bytes_(o.bytes_) { o.ptr_ = nullptr; o.bytes_ = 0; }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) { if (ptr_) cudaFree(ptr_); ptr_ = o.ptr_; bytes_ = o.bytes_; o.ptr_ = nullptr; o.bytes_ = 0; }
    return *this;
  }
  template <typename T = void>
  T* get() const { return static_cast<T*>(ptr_); }
  size_t bytes() const { return bytes_; }
  bool ok() const { return ptr_ != nullptr || bytes_ == 0; }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

template <typename T>
DeviceBuffer to_device(const std::vector<T>& v) {
  DeviceBuffer b(v.size() * sizeof(T));
  if (b.ok() && !v.empty()) cudaMemcpy(b.get(), v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice);
  return b;
}
template <typename T>
std::vector<T> to_host(const DeviceBuffer& b, size_t n) {
  std::vector<T> v(n);
  if (n) cudaMemcpy(v.data(), b.get(), n * sizeof(T), cudaMemcpyDeviceToHost);
  return v;
}

// Fills with 0xFF bytes: NaN as fp32 and as fp16, so an unwritten output can never pass.
inline cudaError_t poison(const DeviceBuffer& b) { return cudaMemset(b.get(), 0xff, b.bytes()); }

// Element-wise |got - ref| <= atol + rtol * |ref|, zero violations allowed, NaN/Inf never pass.
// Returns a description of the worst violation (empty when all pass).
inline std::string compare(const float* got, const double* ref, size_t n, double atol, double rtol) {
  size_t bad = 0, worst_i = 0;
  double worst = 0;
  for (size_t i = 0; i < n; ++i) {
    const double g = got[i];
    const double err = std::fabs(g - ref[i]);
    const double lim = atol + rtol * std::fabs(ref[i]);
    if (!std::isfinite(g) || !(err <= lim)) {
      const double excess = std::isfinite(g) ? err / lim : INFINITY;
      if (bad == 0 || excess > worst) { worst = excess; worst_i = i; }
      ++bad;
    }
  }
  if (!bad) return {};
  return std::to_string(bad) + " of " + std::to_string(n) + " elements out of tolerance; worst at " +
         std::to_string(worst_i) + ": got " + std::to_string(got[worst_i]) + ", ref " +
         std::to_string(ref[worst_i]) + " (atol " + std::to_string(atol) + ", rtol " + std::to_string(rtol) + ")";
}

}  // namespace tqkv::cuda::testing
