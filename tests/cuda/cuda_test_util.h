// Helpers for the CUDA tests: GPU detection (tests skip cleanly without one), RAII device
// buffers, poisoning, the tolerance check every test uses, and the pieces the decode and
// prefill kernel tests share (format cases, random queries, query upload / output download).
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
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

inline int sm_count() {
  int dev = 0, n = 0;
  cudaGetDevice(&dev);
  cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev);
  return n;
}

// Every format pair and head size the kernels are built for.
struct Fmt {
  int kb, vb;
};
inline constexpr Fmt kFormats[] = {{16, 16}, {8, 8}, {4, 4}, {3, 3}, {2, 2}, {8, 4}, {4, 3}};
inline constexpr int kHeadDims[] = {64, 80, 96, 128, 256};
inline std::string fmt_name(int d, Fmt f) {
  auto b = [](int x) { return x == 16 ? std::string("f16") : std::to_string(x); };
  return "d" + std::to_string(d) + " k" + b(f.kb) + "v" + b(f.vb);
}

// The parameter of the per-format kernel test suites (one test per head size and format pair).
struct FormatCase {
  int d, kb, vb;
};
inline std::string case_name(const ::testing::TestParamInfo<FormatCase>& info) {
  auto b = [](int x) { return x == 16 ? std::string("f16") : std::to_string(x); };
  return "d" + std::to_string(info.param.d) + "_k" + b(info.param.kb) + "_v" + b(info.param.vb);
}
inline std::vector<FormatCase> all_format_cases() {
  std::vector<FormatCase> v;
  for (int d : kHeadDims)
    for (Fmt f : kFormats) v.push_back({d, f.kb, f.vb});
  return v;
}

// Queries [rows][hq][d], N(0, sigma^2).
inline std::vector<float> random_q(size_t rows, int hq, int d, uint64_t seed, float sigma) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.f, sigma);
  std::vector<float> q(rows * hq * d);
  for (auto& x : q) x = nd(rng);
  return q;
}

// Kernel output against an fp64 reference, row by row (rows of d), with the row-relative
// tolerance |got - ref| <= 4e-3 * max|ref row| + 1e-2 * |ref|. `want_nonzero`: every reference
// row must be nonzero (else the comparison would prove little).
inline std::string check_rows(const std::vector<float>& got, const std::vector<double>& ref, int d,
                              bool want_nonzero = false) {
  constexpr double kRtol = 1e-2, kAtolFrac = 4e-3;
  if (got.size() != ref.size()) return "size mismatch";
  for (size_t r = 0; r * d < ref.size(); ++r) {
    double mx = 0;
    for (int j = 0; j < d; ++j) mx = std::max(mx, std::fabs(ref[r * d + j]));
    if (want_nonzero && mx < 1e-6) return "reference row " + std::to_string(r) + " is zero";
    const std::string e = compare(&got[r * d], &ref[r * d], d, kAtolFrac * mx + 1e-30, kRtol);
    if (!e.empty()) return "row " + std::to_string(r) + ": " + e;
  }
  return {};
}

// fp32 values on the device as fp32 or (half) fp16, and back.
inline DeviceBuffer upload_as(const std::vector<float>& x, bool half) {
  if (!half) return to_device(x);
  std::vector<__half> h(x.size());
  for (size_t i = 0; i < x.size(); ++i) h[i] = __float2half_rn(x[i]);
  return to_device(h);
}
inline std::vector<float> download_as(const DeviceBuffer& b, size_t n, bool half) {
  if (!half) return to_host<float>(b, n);
  const auto h = to_host<__half>(b, n);
  std::vector<float> out(n);
  for (size_t i = 0; i < n; ++i) out[i] = __half2float(h[i]);
  return out;
}

}  // namespace tqkv::cuda::testing
