// weights.h: argument checks, run-time kernel choice and the OpenMP matrix-vector product.
#include "tqkv/weights.h"

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "core/cpu_features.h"
#include "quant/kernels.h"

namespace tqkv {

bool weight_type_supported(GgmlType t) { return quant::reference_dequantizer(t) != nullptr; }

Status check_weight_row(GgmlType t, int64_t n) {
  if (!weight_type_supported(t)) {
    return unsupported("weight type " + std::string(ggml_type_name(t)) + " (id " +
                       std::to_string(static_cast<uint32_t>(t)) + ") cannot be decoded");
  }
  const int64_t bs = ggml_type_traits(t).block_size;
  if (n <= 0 || n % bs != 0) {
    return invalid_argument("row length " + std::to_string(n) + " is not a positive multiple of the " +
                            std::string(ggml_type_name(t)) + " block size " + std::to_string(bs));
  }
  return Status::ok();
}

Result<WeightRowKernels> weight_row_kernels(GgmlType t, KernelChoice choice) {
  if (!weight_type_supported(t)) return check_weight_row(t, 0);
  const bool have_avx2 = cpu_has_avx2_fma_f16c();
  if (choice == KernelChoice::kAvx2 && !have_avx2) {
    return unsupported("AVX2 weight kernels requested but the CPU lacks AVX2/FMA/F16C (or TQKV_FORCE_SCALAR=1)");
  }
  WeightRowKernels k;
  if (choice != KernelChoice::kScalar && have_avx2) {
    k.dequantize = quant::avx2_dequantizer(t);
    k.dot = quant::avx2_dot(t);
    k.path = "avx2";
  } else {
    k.dequantize = quant::reference_dequantizer(t);
    k.dot = quant::scalar_dot(t);
    k.path = "scalar";
  }
  if (k.dequantize == nullptr || k.dot == nullptr) {
    return internal_error("no " + std::string(k.path) + " kernel for " + std::string(ggml_type_name(t)));
  }
  return k;
}

namespace {
Status check_pointers(const void* src, const void* dst) {
  if (src == nullptr || dst == nullptr) return invalid_argument("null row or output pointer");
  if (reinterpret_cast<uintptr_t>(src) % 2 != 0) return invalid_argument("weight row is not 2-byte aligned");
  return Status::ok();
}
}  // namespace

Status dequantize_row(GgmlType t, const void* src, float* dst, int64_t n) {
  TQKV_RETURN_IF_ERROR(check_weight_row(t, n));
  TQKV_RETURN_IF_ERROR(check_pointers(src, dst));
  TQKV_ASSIGN_OR_RETURN(WeightRowKernels k, weight_row_kernels(t));
  k.dequantize(src, dst, n);
  return Status::ok();
}

Status dequantize_row_reference(GgmlType t, const void* src, float* dst, int64_t n) {
  TQKV_RETURN_IF_ERROR(check_weight_row(t, n));
  TQKV_RETURN_IF_ERROR(check_pointers(src, dst));
  quant::reference_dequantizer(t)(src, dst, n);
  return Status::ok();
}

float dot_row(GgmlType t, const void* row, const float* x, int64_t n) {
  if (!check_weight_row(t, n).is_ok() || !check_pointers(row, x).is_ok()) {
    return std::numeric_limits<float>::quiet_NaN();
  }
  Result<WeightRowKernels> k = weight_row_kernels(t);
  if (!k.is_ok()) return std::numeric_limits<float>::quiet_NaN();
  return k->dot(row, x, n);
}

Status matvec(GgmlType t, const void* w, int64_t rows, int64_t cols, const float* x, float* y) {
  TQKV_RETURN_IF_ERROR(check_weight_row(t, cols));
  TQKV_RETURN_IF_ERROR(check_pointers(w, x));
  if (y == nullptr) return invalid_argument("matvec: null output");
  if (rows < 0) return invalid_argument("matvec: negative row count");
  const int64_t row_bytes = ggml_row_bytes(t, cols);
  if (row_bytes % 2 != 0) return invalid_argument("matvec: rows would not stay 2-byte aligned");
  TQKV_ASSIGN_OR_RETURN(WeightRowKernels k, weight_row_kernels(t));
  const auto* base = static_cast<const uint8_t*>(w);
  const DotRowFn dot = k.dot;
  // Threads pay off once the matrix is bigger than a few L1s; tiny ones run on the caller.
  // Dynamic chunks of 16 rows: a thread that loses its core (shared machines) holds up little.
  const bool parallel = rows * row_bytes >= (int64_t{1} << 16) && rows > 1;
#pragma omp parallel for schedule(dynamic, 16) if (parallel)
  for (int64_t r = 0; r < rows; ++r) y[r] = dot(base + r * row_bytes, x, cols);
  return Status::ok();
}

Status matmul(GgmlType t, const void* w, int64_t rows, int64_t cols, const float* x, int64_t n_vec, float* y) {
  TQKV_RETURN_IF_ERROR(check_weight_row(t, cols));
  TQKV_RETURN_IF_ERROR(check_pointers(w, x));
  if (y == nullptr) return invalid_argument("matmul: null output");
  if (rows < 0 || n_vec < 0) return invalid_argument("matmul: negative row or vector count");
  const int64_t row_bytes = ggml_row_bytes(t, cols);
  if (row_bytes % 2 != 0) return invalid_argument("matmul: rows would not stay 2-byte aligned");
  TQKV_ASSIGN_OR_RETURN(WeightRowKernels k, weight_row_kernels(t));
  TQKV_ASSIGN_OR_RETURN(WeightRowKernels f32, weight_row_kernels(GgmlType::kF32));
  const auto* base = static_cast<const uint8_t*>(w);
  // Tiles of 8 rows: 8 * cols floats (64 KiB at cols 2048) stay in L2 while every vector passes.
  constexpr int64_t kTile = 8;
  const int64_t tiles = (rows + kTile - 1) / kTile;
  const bool parallel = tiles > 1 && rows * cols * n_vec >= (int64_t{1} << 16);
#pragma omp parallel if (parallel)
  {
    std::vector<float> buf(static_cast<size_t>(kTile * cols));
#pragma omp for schedule(dynamic, 1)
    for (int64_t tile = 0; tile < tiles; ++tile) {
      const int64_t r0 = tile * kTile;
      const int64_t nr = rows - r0 < kTile ? rows - r0 : kTile;
      for (int64_t i = 0; i < nr; ++i) k.dequantize(base + (r0 + i) * row_bytes, buf.data() + i * cols, cols);
      for (int64_t v = 0; v < n_vec; ++v) {
        const float* xv = x + v * cols;
        for (int64_t i = 0; i < nr; ++i) y[v * rows + r0 + i] = f32.dot(buf.data() + i * cols, xv, cols);
      }
    }
  }
  return Status::ok();
}

}  // namespace tqkv
