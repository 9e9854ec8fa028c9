// Weight formats for the model runtime: row dequantization, dot products of a quantized row with
// an fp32 vector (GEMV at decode) and a multithreaded matrix-vector product.
//
// Supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K (weight_blocks.h).
// Two implementations of each: a plain reference (bit-exact with ggml and gguf-py), and AVX2/FMA/
// F16C kernels chosen at run time (cpu_has_avx2_fma_f16c(); TQKV_FORCE_SCALAR=1 turns them off).
// AVX2 dequantization is bit-identical to the reference; AVX2 dot products differ from the exact
// sum only by float rounding (they use FMA and a different summation order).
//
// A "row" is n consecutive elements, n a multiple of the type's block size, stored as
// n / block_size blocks (ggml_row_bytes(type, n) bytes), 2-byte aligned.
// Threads: all functions are stateless and safe to call concurrently.
#pragma once

#include <cstdint>

#include "tqkv/ggml_types.h"
#include "tqkv/status.h"

namespace tqkv {

bool weight_type_supported(GgmlType t);
// OK when t is supported and n > 0 is a whole number of blocks; the error says which is wrong.
Status check_weight_row(GgmlType t, int64_t n);

// Kernels for one type, resolved once (e.g. per tensor at model load) and then called in the hot
// loop without further checks. Preconditions of the calls: as check_weight_row, and x / dst hold
// n floats.
using DequantizeRowFn = void (*)(const void* src, float* dst, int64_t n);
using DotRowFn = float (*)(const void* row, const float* x, int64_t n);
struct WeightRowKernels {
  DequantizeRowFn dequantize = nullptr;
  DotRowFn dot = nullptr;
  const char* path = "";  // "avx2" or "scalar"
};
enum class KernelChoice {
  kBest,    // AVX2 when the CPU has it (and TQKV_FORCE_SCALAR is not set), else scalar
  kScalar,  // the reference dequantization and a plain-loop dot product
  kAvx2,    // fails with kUnsupported when the CPU lacks AVX2/FMA/F16C
};
Result<WeightRowKernels> weight_row_kernels(GgmlType t, KernelChoice choice = KernelChoice::kBest);

// Convenience forms that check their arguments on every call.
Status dequantize_row(GgmlType t, const void* src, float* dst, int64_t n);
Status dequantize_row_reference(GgmlType t, const void* src, float* dst, int64_t n);
// Returns NaN when check_weight_row(t, n) fails (loud, never a plausible value).
float dot_row(GgmlType t, const void* row, const float* x, int64_t n);

// y[r] = sum_c W[r][c] * x[c] for r < rows. W is `rows` rows of `cols` elements of type t, each
// row ggml_row_bytes(t, cols) bytes after the previous one (a GGUF 2-D tensor with dims
// {cols, rows}). Parallel over rows with OpenMP. x: [cols], y: [rows].
Status matvec(GgmlType t, const void* w, int64_t rows, int64_t cols, const float* x, float* y);

// Y[v][r] = sum_c W[r][c] * X[v][c] for n_vec vectors at once (prefill). W as in matvec;
// X: [n_vec][cols], Y: [n_vec][rows], both row-major. Each tile of rows is dequantized once into a
// per-thread fp32 buffer (tile * cols floats) and reused for every vector, so the decode cost is
// paid once per weight instead of once per token. Results equal those of an fp32 dot over the
// dequantized row (not bit-identical to matvec, which sums in a different order).
Status matmul(GgmlType t, const void* w, int64_t rows, int64_t cols, const float* x, int64_t n_vec, float* y);

// Reference quantizers (ggml's quantize_row_*_ref; bit-identical to gguf-py's quantize) for the
// simple formats F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1: for building test weights, e.g.
// tiny models written with src/gguf/gguf_writer.h. x: [n] finite floats; dst: ggml_row_bytes(t, n)
// bytes, any alignment. The K-quants have no quantizer here (ggml's searches are not needed).
bool quantize_supported(GgmlType t);
Status quantize_row_reference(GgmlType t, const float* x, void* dst, int64_t n);

}  // namespace tqkv
