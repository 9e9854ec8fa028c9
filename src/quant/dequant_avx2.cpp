// AVX2 row dequantization. Bit-identical to dequant_reference.cpp: the same float operations in
// the same order (scale products rounded to float first, then multiply, then add/subtract; no
// FMA), only eight lanes at a time. Only called after cpu_has_avx2_fma_f16c().
#include <cstring>

#include "quant/kernels.h"
#include "quant/simd_avx2.h"
#include "tqkv/weight_blocks.h"

// Bit-exactness with ggml/gguf-py needs every product rounded before the add: no FMA contraction
// (GCC contracts by default in GNU mode, clang within expressions).
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

namespace tqkv::quant {
namespace {

void store4(float* y, const __m256 v[4]) {
  for (int c = 0; c < 4; ++c) _mm256_storeu_ps(y + 8 * c, v[c]);
}

void deq_f32(const void* src, float* y, int64_t n) { std::memcpy(y, src, static_cast<size_t>(n) * 4); }

void deq_f16(const void* src, float* y, int64_t n) {
  const auto* h = static_cast<const uint16_t*>(src);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(y + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(h + i))));
  }
  for (; i < n; ++i) y[i] = f16_scalar(h[i]);
}

void deq_bf16(const void* src, float* y, int64_t n) {
  const auto* h = static_cast<const uint16_t*>(src);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(h + i)));
    _mm256_storeu_ps(y + i, _mm256_castsi256_ps(_mm256_slli_epi32(w, 16)));
  }
  for (; i < n; ++i) {
    const uint32_t bits = static_cast<uint32_t>(h[i]) << 16;
    std::memcpy(&y[i], &bits, 4);
  }
}

// y = d * q (one rounding), for the symmetric 32-element formats.
void scale_store(float* y, __m256i q_signed, float d) {
  __m256 f[4];
  i8x32_to_f32(q_signed, f);
  const __m256 dv = _mm256_set1_ps(d);
  for (int c = 0; c < 4; ++c) f[c] = _mm256_mul_ps(dv, f[c]);
  store4(y, f);
}
// y = d * q + m (two roundings, like the reference), for the 32-element formats with a min.
void scale_min_store(float* y, __m256i q_unsigned, float d, float m) {
  __m256 f[4];
  u8x32_to_f32(q_unsigned, f);
  const __m256 dv = _mm256_set1_ps(d), mv = _mm256_set1_ps(m);
  for (int c = 0; c < 4; ++c) f[c] = _mm256_add_ps(_mm256_mul_ps(dv, f[c]), mv);
  store4(y, f);
}
// y = d * q - m for one 32-value K-quant sub-block.
void kquant_store(float* y, __m256i q_unsigned, float d, float m) {
  __m256 f[4];
  u8x32_to_f32(q_unsigned, f);
  const __m256 dv = _mm256_set1_ps(d), mv = _mm256_set1_ps(m);
  for (int c = 0; c < 4; ++c) f[c] = _mm256_sub_ps(_mm256_mul_ps(dv, f[c]), mv);
  store4(y, f);
}

void deq_q8_0(const void* src, float* y, int64_t n) {
  const auto* b = static_cast<const BlockQ8_0*>(src);
  for (int64_t i = 0; i < n / kQK8_0; ++i, y += 32) {
    scale_store(y, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b[i].qs)), f16_scalar(b[i].d));
  }
}

void deq_q4_0(const void* src, float* y, int64_t n) {
  const auto* b = static_cast<const BlockQ4_0*>(src);
  for (int64_t i = 0; i < n / kQK4_0; ++i, y += 32) scale_store(y, q4_0_values(b[i].qs), f16_scalar(b[i].d));
}

void deq_q4_1(const void* src, float* y, int64_t n) {
  const auto* b = static_cast<const BlockQ4_1*>(src);
  for (int64_t i = 0; i < n / kQK4_1; ++i, y += 32) {
    scale_min_store(y, unpack_nibbles_16(b[i].qs), f16_scalar(b[i].d), f16_scalar(b[i].m));
  }
}

void deq_q5_0(const void* src, float* y, int64_t n) {
  const auto* b = static_cast<const BlockQ5_0*>(src);
  for (int64_t i = 0; i < n / kQK5_0; ++i, y += 32) {
    scale_store(y, _mm256_sub_epi8(q5_values(b[i].qh, b[i].qs), _mm256_set1_epi8(16)), f16_scalar(b[i].d));
  }
}

void deq_q5_1(const void* src, float* y, int64_t n) {
  const auto* b = static_cast<const BlockQ5_1*>(src);
  for (int64_t i = 0; i < n / kQK5_1; ++i, y += 32) {
    scale_min_store(y, q5_values(b[i].qh, b[i].qs), f16_scalar(b[i].d), f16_scalar(b[i].m));
  }
}

void deq_q4_k(const void* src, float* y, int64_t n) {
  const auto* b = static_cast<const BlockQ4_K*>(src);
  for (int64_t i = 0; i < n / kQK_Kint; ++i) {
    const float d = f16_scalar(b[i].d), dmin = f16_scalar(b[i].dmin);
    for (int s = 0; s < 8; s += 2, y += 64) {
      uint8_t sc0, mn0, sc1, mn1;
      unpack_k_scale_min(s, b[i].scales, &sc0, &mn0);
      unpack_k_scale_min(s + 1, b[i].scales, &sc1, &mn1);
      const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b[i].qs + 16 * s));
      kquant_store(y, low_nibbles_32(q), d * sc0, dmin * mn0);
      kquant_store(y + 32, high_nibbles_32(q), d * sc1, dmin * mn1);
    }
  }
}

void deq_q5_k(const void* src, float* y, int64_t n) {
  const auto* b = static_cast<const BlockQ5_K*>(src);
  for (int64_t i = 0; i < n / kQK_Kint; ++i) {
    const float d = f16_scalar(b[i].d), dmin = f16_scalar(b[i].dmin);
    const __m256i qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b[i].qh));
    for (int s = 0; s < 8; s += 2, y += 64) {
      uint8_t sc0, mn0, sc1, mn1;
      unpack_k_scale_min(s, b[i].scales, &sc0, &mn0);
      unpack_k_scale_min(s + 1, b[i].scales, &sc1, &mn1);
      const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b[i].qs + 16 * s));
      kquant_store(y, _mm256_or_si256(low_nibbles_32(q), q5k_high_bit(qh, s)), d * sc0, dmin * mn0);
      kquant_store(y + 32, _mm256_or_si256(high_nibbles_32(q), q5k_high_bit(qh, s + 1)), d * sc1, dmin * mn1);
    }
  }
}

void deq_q6_k(const void* src, float* y, int64_t n) {
  const auto* b = static_cast<const BlockQ6_K*>(src);
  for (int64_t i = 0; i < n / kQK_Kint; ++i) {
    const float d = f16_scalar(b[i].d);
    for (int half = 0; half < 2; ++half, y += 128) {
      const int8_t* sc = b[i].scales + 8 * half;
      __m256i q[4];
      q6k_values(b[i].ql + 64 * half, b[i].qh + 32 * half, q);
      for (int g = 0; g < 4; ++g) {  // group g of 32 values: sub-blocks 2g and 2g+1 of the half
        __m256 f[4];
        i8x32_to_f32(q[g], f);
        const __m256 d0 = _mm256_set1_ps(d * sc[2 * g]), d1 = _mm256_set1_ps(d * sc[2 * g + 1]);
        _mm256_storeu_ps(y + 32 * g, _mm256_mul_ps(d0, f[0]));
        _mm256_storeu_ps(y + 32 * g + 8, _mm256_mul_ps(d0, f[1]));
        _mm256_storeu_ps(y + 32 * g + 16, _mm256_mul_ps(d1, f[2]));
        _mm256_storeu_ps(y + 32 * g + 24, _mm256_mul_ps(d1, f[3]));
      }
    }
  }
}

}  // namespace

DequantizeRowFn avx2_dequantizer(GgmlType t) {
  switch (t) {
    case GgmlType::kF32: return deq_f32;
    case GgmlType::kF16: return deq_f16;
    case GgmlType::kBF16: return deq_bf16;
    case GgmlType::kQ8_0: return deq_q8_0;
    case GgmlType::kQ4_0: return deq_q4_0;
    case GgmlType::kQ4_1: return deq_q4_1;
    case GgmlType::kQ5_0: return deq_q5_0;
    case GgmlType::kQ5_1: return deq_q5_1;
    case GgmlType::kQ4_K: return deq_q4_k;
    case GgmlType::kQ5_K: return deq_q5_k;
    case GgmlType::kQ6_K: return deq_q6_k;
    default: return nullptr;
  }
}

}  // namespace tqkv::quant
