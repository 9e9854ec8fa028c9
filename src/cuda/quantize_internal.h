// Internals shared by the quantize-on-write and page dequantization files (not a public header):
//   quantize.cu       the public entry points: argument checks and the choice of kernel
//   quantize_tc*.cu*  tensor-core quantize-on-write (head size 128 Hadamard, 96 dense)
//   quantize_old.cu   the earlier quantize-on-write kernels (every other shape; TQKV_CUDA_QUANT=old):
//                     the generic one-warp-per-vector kernel and the launcher
//   quantize_hadamard.cu  their Hadamard fast path (half a warp per side)
//   dequantize.cu     page dequantization (tests and debugging)
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "tqkv/cuda_attention.h"

namespace tqkv::cuda {

// n / d for 0 <= n < 2^31 without a division (Granlund-Montgomery): q = (umulhi(n, m) + n) >> s
// with s = ceil(log2 d), m = floor(2^32 (2^s - d) / d) + 1 (< 2^32; t + n cannot overflow for
// n < 2^31). Built on the host (make_fast_div), applied in the kernels.
struct FastDiv {
  uint32_t m = 1, s = 0;  // d = 1
};
inline FastDiv make_fast_div(uint32_t d) {
  uint32_t s = 0;
  while ((uint64_t{1} << s) < d) ++s;
  return {static_cast<uint32_t>(((uint64_t{1} << 32) * ((uint64_t{1} << s) - d)) / d + 1), s};
}

// One quantize_and_store call, checked (quantize.cu) and passed by value to the kernels.
struct QuantArgs {
  PagedKVView view;
  const float* bnd[2];  // boundaries per side (null for fp16)
  const void* src[2];   // k_new, v_new
  DType in_type;
  const int64_t* slots;
  int32_t num_tokens;
  FastDiv div_heads, div_page;  // by num_kv_heads and page_size (set by the tensor-core launcher)
};

// The view checks shared by quantize_and_store and dequantize_pages (quantize.cu).
Status check_quant_view(const PagedKVView& view);

// The pre-tensor-core quantize-on-write kernels, any supported shape (quantize_old.cu): the
// Hadamard fast path when it applies, else the generic kernel.
Status launch_quantize_old(const QuantArgs& a, cudaStream_t stream);
// The Hadamard fast path alone (quantize_hadamard.cu): power-of-two head sizes with the Hadamard
// rotation, aligned inputs, no scale search, the decode format pairs; *launched = false (and
// nothing runs) for any other call. sms: the device's multiprocessor count.
Status launch_quantize_hadamard(const QuantArgs& a, int sms, cudaStream_t stream, bool* launched);

}  // namespace tqkv::cuda
