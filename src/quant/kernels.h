// Private to tqkv_quant: the per-type row kernels behind weights.h. Each takes n elements
// (a whole number of blocks, checked by the caller) and a 2-byte aligned row.
#pragma once

#include <cstdint>

#include "tqkv/weights.h"

namespace tqkv::quant {

// Plain reference dequantizers (dequant_reference.cpp) and the scalar dot that uses them
// (dot_scalar.cpp). nullptr for unsupported types.
DequantizeRowFn reference_dequantizer(GgmlType t);
DotRowFn scalar_dot(GgmlType t);

// AVX2/FMA/F16C kernels (*_avx2.cpp); only call after cpu_has_avx2_fma_f16c().
DequantizeRowFn avx2_dequantizer(GgmlType t);
DotRowFn avx2_dot(GgmlType t);

}  // namespace tqkv::quant
