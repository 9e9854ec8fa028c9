// Scalar dot products (the fallback without AVX2): dequantize one block at a time into a small
// stack buffer with the reference dequantizer, then accumulate in float. Simple rather than fast:
// machines without AVX2 are rare and this path exists to be obviously right.
#include "quant/kernels.h"

namespace tqkv::quant {
namespace {

template <GgmlType T>
float dot_blocks(const void* row, const float* x, int64_t n) {
  constexpr GgmlTypeTraits tr = ggml_type_traits(T);
  // Float types have block size 1; take 64 at a time to keep calls cheap.
  constexpr int64_t chunk = tr.block_size == 1 ? 64 : tr.block_size;
  const DequantizeRowFn deq = reference_dequantizer(T);
  const auto* p = static_cast<const uint8_t*>(row);
  float buf[chunk > 256 ? chunk : 256];
  float sum = 0.0f;
  for (int64_t i = 0; i < n; i += chunk) {
    const int64_t m = n - i < chunk ? n - i : chunk;
    deq(p + i / tr.block_size * tr.block_bytes, buf, m);
    for (int64_t j = 0; j < m; ++j) sum += buf[j] * x[i + j];
  }
  return sum;
}

}  // namespace

DotRowFn scalar_dot(GgmlType t) {
  switch (t) {
    case GgmlType::kF32: return dot_blocks<GgmlType::kF32>;
    case GgmlType::kF16: return dot_blocks<GgmlType::kF16>;
    case GgmlType::kBF16: return dot_blocks<GgmlType::kBF16>;
    case GgmlType::kQ8_0: return dot_blocks<GgmlType::kQ8_0>;
    case GgmlType::kQ4_0: return dot_blocks<GgmlType::kQ4_0>;
    case GgmlType::kQ4_1: return dot_blocks<GgmlType::kQ4_1>;
    case GgmlType::kQ5_0: return dot_blocks<GgmlType::kQ5_0>;
    case GgmlType::kQ5_1: return dot_blocks<GgmlType::kQ5_1>;
    case GgmlType::kQ4_K: return dot_blocks<GgmlType::kQ4_K>;
    case GgmlType::kQ5_K: return dot_blocks<GgmlType::kQ5_K>;
    case GgmlType::kQ6_K: return dot_blocks<GgmlType::kQ6_K>;
    default: return nullptr;
  }
}

}  // namespace tqkv::quant
