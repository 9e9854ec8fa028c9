// AVX2 dot products of one quantized row with an fp32 vector (the decode-time GEMV inner loop).
// Per block: t = sum_j q_j * x_j in eight lanes (FMA), then acc += d * t (and acc -= m * sum x for
// formats with a min). Differs from the exact sum only by float rounding; the tests bound it
// against a double-precision reference. Only called after cpu_has_avx2_fma_f16c().
#include "quant/kernels.h"
#include "quant/simd_avx2.h"
#include "tqkv/weight_blocks.h"

namespace tqkv::quant {
namespace {

// sum over 32 elements of q_j * x_j, eight lanes; q already widened to floats.
inline __m256 dot32(const __m256 q[4], const float* x) {
  __m256 t = _mm256_mul_ps(q[0], _mm256_loadu_ps(x));
  t = _mm256_fmadd_ps(q[1], _mm256_loadu_ps(x + 8), t);
  t = _mm256_fmadd_ps(q[2], _mm256_loadu_ps(x + 16), t);
  return _mm256_fmadd_ps(q[3], _mm256_loadu_ps(x + 24), t);
}
inline __m256 sum32(const float* x) {
  return _mm256_add_ps(_mm256_add_ps(_mm256_loadu_ps(x), _mm256_loadu_ps(x + 8)),
                       _mm256_add_ps(_mm256_loadu_ps(x + 16), _mm256_loadu_ps(x + 24)));
}

float dot_f32(const void* row, const float* x, int64_t n) {
  const auto* w = static_cast<const float*>(row);
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i), _mm256_loadu_ps(x + i), a0);
    a1 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 8), _mm256_loadu_ps(x + i + 8), a1);
  }
  float s = hsum(_mm256_add_ps(a0, a1));
  for (; i < n; ++i) s += w[i] * x[i];
  return s;
}

float dot_f16(const void* row, const float* x, int64_t n) {
  const auto* h = static_cast<const uint16_t*>(row);
  __m256 a = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 w = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(h + i)));
    a = _mm256_fmadd_ps(w, _mm256_loadu_ps(x + i), a);
  }
  float s = hsum(a);
  for (; i < n; ++i) s += f16_scalar(h[i]) * x[i];
  return s;
}

float dot_bf16(const void* row, const float* x, int64_t n) {
  const auto* h = static_cast<const uint16_t*>(row);
  __m256 a = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256i w32 = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(h + i)));
    a = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_slli_epi32(w32, 16)), _mm256_loadu_ps(x + i), a);
  }
  float s = hsum(a);
  for (; i < n; ++i) {
    const uint32_t bits = static_cast<uint32_t>(h[i]) << 16;
    float w;
    std::memcpy(&w, &bits, 4);
    s += w * x[i];
  }
  return s;
}

// The symmetric 32-element formats: acc += d * sum q x.
template <typename Block, __m256i (*Values)(const Block&)>
float dot_sym32(const void* row, const float* x, int64_t n) {
  const auto* b = static_cast<const Block*>(row);
  __m256 acc = _mm256_setzero_ps();
  for (int64_t i = 0; i < n / 32; ++i, x += 32) {
    __m256 q[4];
    i8x32_to_f32(Values(b[i]), q);
    acc = _mm256_fmadd_ps(_mm256_set1_ps(f16_scalar(b[i].d)), dot32(q, x), acc);
  }
  return hsum(acc);
}
// The 32-element formats with a min: acc += d * sum q x + m * sum x.
template <typename Block, __m256i (*Values)(const Block&)>
float dot_min32(const void* row, const float* x, int64_t n) {
  const auto* b = static_cast<const Block*>(row);
  __m256 acc = _mm256_setzero_ps();
  for (int64_t i = 0; i < n / 32; ++i, x += 32) {
    __m256 q[4];
    u8x32_to_f32(Values(b[i]), q);
    acc = _mm256_fmadd_ps(_mm256_set1_ps(f16_scalar(b[i].d)), dot32(q, x), acc);
    acc = _mm256_fmadd_ps(_mm256_set1_ps(f16_scalar(b[i].m)), sum32(x), acc);
  }
  return hsum(acc);
}

__m256i values_q8_0(const BlockQ8_0& b) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b.qs)); }
__m256i values_q4_0(const BlockQ4_0& b) { return q4_0_values(b.qs); }
__m256i values_q5_0(const BlockQ5_0& b) { return _mm256_sub_epi8(q5_values(b.qh, b.qs), _mm256_set1_epi8(16)); }
__m256i values_q4_1(const BlockQ4_1& b) { return unpack_nibbles_16(b.qs); }
__m256i values_q5_1(const BlockQ5_1& b) { return q5_values(b.qh, b.qs); }

// One 32-value K-quant sub-block: acc += (d*sc) * sum q x - (dmin*mn) * sum x.
inline __m256 kquant_sub(__m256 acc, __m256i q_unsigned, const float* x, float d, float m) {
  __m256 q[4];
  u8x32_to_f32(q_unsigned, q);
  acc = _mm256_fmadd_ps(_mm256_set1_ps(d), dot32(q, x), acc);
  return _mm256_fnmadd_ps(_mm256_set1_ps(m), sum32(x), acc);
}

float dot_q4_k(const void* row, const float* x, int64_t n) {
  const auto* b = static_cast<const BlockQ4_K*>(row);
  __m256 acc = _mm256_setzero_ps();
  for (int64_t i = 0; i < n / kQK_Kint; ++i) {
    const float d = f16_scalar(b[i].d), dmin = f16_scalar(b[i].dmin);
    for (int s = 0; s < 8; s += 2, x += 64) {
      uint8_t sc0, mn0, sc1, mn1;
      unpack_k_scale_min(s, b[i].scales, &sc0, &mn0);
      unpack_k_scale_min(s + 1, b[i].scales, &sc1, &mn1);
      const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b[i].qs + 16 * s));
      acc = kquant_sub(acc, low_nibbles_32(q), x, d * sc0, dmin * mn0);
      acc = kquant_sub(acc, high_nibbles_32(q), x + 32, d * sc1, dmin * mn1);
    }
  }
  return hsum(acc);
}

float dot_q5_k(const void* row, const float* x, int64_t n) {
  const auto* b = static_cast<const BlockQ5_K*>(row);
  __m256 acc = _mm256_setzero_ps();
  for (int64_t i = 0; i < n / kQK_Kint; ++i) {
    const float d = f16_scalar(b[i].d), dmin = f16_scalar(b[i].dmin);
    const __m256i qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b[i].qh));
    for (int s = 0; s < 8; s += 2, x += 64) {
      uint8_t sc0, mn0, sc1, mn1;
      unpack_k_scale_min(s, b[i].scales, &sc0, &mn0);
      unpack_k_scale_min(s + 1, b[i].scales, &sc1, &mn1);
      const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b[i].qs + 16 * s));
      acc = kquant_sub(acc, _mm256_or_si256(low_nibbles_32(q), q5k_high_bit(qh, s)), x, d * sc0, dmin * mn0);
      acc = kquant_sub(acc, _mm256_or_si256(high_nibbles_32(q), q5k_high_bit(qh, s + 1)), x + 32, d * sc1,
                       dmin * mn1);
    }
  }
  return hsum(acc);
}

float dot_q6_k(const void* row, const float* x, int64_t n) {
  const auto* b = static_cast<const BlockQ6_K*>(row);
  __m256 acc = _mm256_setzero_ps();
  for (int64_t i = 0; i < n / kQK_Kint; ++i) {
    const float d = f16_scalar(b[i].d);
    for (int half = 0; half < 2; ++half) {
      const int8_t* sc = b[i].scales + 8 * half;
      __m256i q[4];
      q6k_values(b[i].ql + 64 * half, b[i].qh + 32 * half, q);
      for (int g = 0; g < 4; ++g, x += 32) {  // 16 values per scale
        __m256 f[4];
        i8x32_to_f32(q[g], f);
        const __m256 t0 = _mm256_fmadd_ps(f[1], _mm256_loadu_ps(x + 8), _mm256_mul_ps(f[0], _mm256_loadu_ps(x)));
        const __m256 t1 = _mm256_fmadd_ps(f[3], _mm256_loadu_ps(x + 24), _mm256_mul_ps(f[2], _mm256_loadu_ps(x + 16)));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d * sc[2 * g]), t0, acc);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d * sc[2 * g + 1]), t1, acc);
      }
    }
  }
  return hsum(acc);
}

}  // namespace

DotRowFn avx2_dot(GgmlType t) {
  switch (t) {
    case GgmlType::kF32: return dot_f32;
    case GgmlType::kF16: return dot_f16;
    case GgmlType::kBF16: return dot_bf16;
    case GgmlType::kQ8_0: return dot_sym32<BlockQ8_0, values_q8_0>;
    case GgmlType::kQ4_0: return dot_sym32<BlockQ4_0, values_q4_0>;
    case GgmlType::kQ5_0: return dot_sym32<BlockQ5_0, values_q5_0>;
    case GgmlType::kQ4_1: return dot_min32<BlockQ4_1, values_q4_1>;
    case GgmlType::kQ5_1: return dot_min32<BlockQ5_1, values_q5_1>;
    case GgmlType::kQ4_K: return dot_q4_k;
    case GgmlType::kQ5_K: return dot_q5_k;
    case GgmlType::kQ6_K: return dot_q6_k;
    default: return nullptr;
  }
}

}  // namespace tqkv::quant
