// AVX2 kernels of the codec (compiled with -mavx2 -mfma -mf16c; called only after
// cpu_has_avx2_fma_f16c()). Every function performs the same float operations in the same order as
// its scalar twin in codec.cpp / rotation.cpp, so results are bit-identical (no FMA on purpose).
// This file is built with -mfma and GNU C++ contracts a*b+c into FMA by default: forbid it here, or
// the results would stop matching the scalar path bit for bit.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif
#include <immintrin.h>

#include <cmath>
#include <cstring>

#include "codec/codec_internal.h"
#include "tqkv/fp16.h"

namespace tqkv::codec_detail {
namespace {

// ((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7)), matching sumsq_lanes_scalar.
inline float reduce_lanes(__m256 v) {
  const __m128 a = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));  // a0..a3
  const __m128 b = _mm_add_ps(a, _mm_movehl_ps(a, a));                                     // a0+a2, a1+a3
  return _mm_cvtss_f32(_mm_add_ss(b, _mm_shuffle_ps(b, b, 1)));
}

}  // namespace

float sumsq_lanes_avx2(const float* x, int d) {
  __m256 acc = _mm256_setzero_ps();
  for (int j = 0; j < d; j += 8) {
    const __m256 v = _mm256_loadu_ps(x + j);
    acc = _mm256_add_ps(acc, _mm256_mul_ps(v, v));
  }
  return reduce_lanes(acc);
}

void fwht_avx2(float* v, int n) {
  // Stages h = 1, 2, 4 inside each 8-float block: out = (lane has partner above) ? a + b : b - a,
  // where b is the partner; the same a+b / a-b of the scalar butterfly.
  for (int i = 0; i < n; i += 8) {
    __m256 a = _mm256_loadu_ps(v + i);
    __m256 b = _mm256_permute_ps(a, 0xB1);  // swap neighbours
    a = _mm256_blend_ps(_mm256_add_ps(a, b), _mm256_sub_ps(b, a), 0xAA);
    b = _mm256_permute_ps(a, 0x4E);  // swap pairs
    a = _mm256_blend_ps(_mm256_add_ps(a, b), _mm256_sub_ps(b, a), 0xCC);
    b = _mm256_permute2f128_ps(a, a, 1);  // swap halves
    a = _mm256_blend_ps(_mm256_add_ps(a, b), _mm256_sub_ps(b, a), 0xF0);
    _mm256_storeu_ps(v + i, a);
  }
  for (int h = 8; h < n; h *= 2)
    for (int i = 0; i < n; i += 2 * h)
      for (int j = i; j < i + h; j += 8) {
        const __m256 a = _mm256_loadu_ps(v + j), b = _mm256_loadu_ps(v + j + h);
        _mm256_storeu_ps(v + j, _mm256_add_ps(a, b));
        _mm256_storeu_ps(v + j + h, _mm256_sub_ps(a, b));
      }
}

void axpy_rows_avx2(const float* rows, const float* x, float* y, int d) {
  // Blocks of 32 outputs kept in registers while streaming over the rows.
  int i0 = 0;
  for (; i0 + 32 <= d; i0 += 32) {
    __m256 y0 = _mm256_setzero_ps(), y1 = y0, y2 = y0, y3 = y0;
    for (int j = 0; j < d; ++j) {
      const __m256 xj = _mm256_set1_ps(x[j]);
      const float* r = rows + static_cast<size_t>(j) * d + i0;
      y0 = _mm256_add_ps(y0, _mm256_mul_ps(xj, _mm256_loadu_ps(r)));
      y1 = _mm256_add_ps(y1, _mm256_mul_ps(xj, _mm256_loadu_ps(r + 8)));
      y2 = _mm256_add_ps(y2, _mm256_mul_ps(xj, _mm256_loadu_ps(r + 16)));
      y3 = _mm256_add_ps(y3, _mm256_mul_ps(xj, _mm256_loadu_ps(r + 24)));
    }
    _mm256_storeu_ps(y + i0, y0);
    _mm256_storeu_ps(y + i0 + 8, y1);
    _mm256_storeu_ps(y + i0 + 16, y2);
    _mm256_storeu_ps(y + i0 + 24, y3);
  }
  for (; i0 < d; i0 += 8) {
    __m256 y0 = _mm256_setzero_ps();
    for (int j = 0; j < d; ++j)
      y0 = _mm256_add_ps(y0, _mm256_mul_ps(_mm256_set1_ps(x[j]), _mm256_loadu_ps(rows + static_cast<size_t>(j) * d + i0)));
    _mm256_storeu_ps(y + i0, y0);
  }
}

void encode_one_avx2(const CodecKernelArgs& a, const float* x, uint8_t* idx_out, uint16_t* scale_out,
                     float* scratch) {
  const int d = a.d, bits = a.bits, L = 1 << bits;
  const float n2 = sumsq_lanes_avx2(x, d);
  if (n2 == 0.0f) {
    std::memset(idx_out, 0, static_cast<size_t>(index_bytes(d, bits)));
    *scale_out = 0;
    return;
  }
  const float n = std::sqrt(n2);
  float* y = scratch;
  a.rotation->forward_with(x, y, true);
  float inv_s = 1.0f / n;
  if (a.scale_search) {  // bits 2-4: the counting search; the scalar path's candidates and order
    float best = -1.0f, best_m = inv_s;
    for (int i = 0; i < kScaleSearchSteps; ++i) {
      const float m = inv_s * scale_search_alpha(i);
      const __m256 mv = _mm256_set1_ps(m);
      __m256 yc = _mm256_setzero_ps(), cc = _mm256_setzero_ps();
      for (int j = 0; j < d; j += 8) {
        const __m256 yv = _mm256_loadu_ps(y + j);
        const __m256 t = _mm256_mul_ps(yv, mv);
        __m256i idx = _mm256_setzero_si256();
        for (int k = 0; k < L - 1; ++k)
          idx = _mm256_sub_epi32(idx, _mm256_castps_si256(_mm256_cmp_ps(t, _mm256_set1_ps(a.boundaries[k]), _CMP_GT_OQ)));
        const __m256 c = _mm256_i32gather_ps(a.centroids, idx, 4);
        yc = _mm256_add_ps(yc, _mm256_mul_ps(yv, c));
        cc = _mm256_add_ps(cc, _mm256_mul_ps(c, c));
      }
      const float ycs = reduce_lanes(yc), ccs = reduce_lanes(cc);
      const float jv = ccs > 0.0f ? ycs * ycs / ccs : 0.0f;
      if (jv > best) best = jv, best_m = m;
    }
    inv_s = best_m;
  }
  const __m256 inv = _mm256_set1_ps(inv_s);
  const __m256i shifts = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(bits));
  __m256 cacc = _mm256_setzero_ps();
  for (int j = 0; j < d; j += 8) {
    const __m256 t = _mm256_mul_ps(_mm256_loadu_ps(y + j), inv);
    __m256i idx = _mm256_setzero_si256();
    if (bits <= 4) {
      // Count the boundaries strictly below t: each true compare is -1 in the lane.
      for (int k = 0; k < L - 1; ++k)
        idx = _mm256_sub_epi32(idx, _mm256_castps_si256(_mm256_cmp_ps(t, _mm256_set1_ps(a.boundaries[k]), _CMP_GT_OQ)));
    } else {
      // Branchless binary search with gathers (same result as counting: the boundaries are sorted).
      for (int step = L / 2; step >= 1; step /= 2) {
        const __m256 b = _mm256_i32gather_ps(a.boundaries, _mm256_add_epi32(idx, _mm256_set1_epi32(step - 1)), 4);
        idx = _mm256_add_epi32(idx, _mm256_and_si256(_mm256_castps_si256(_mm256_cmp_ps(t, b, _CMP_GT_OQ)),
                                                     _mm256_set1_epi32(step)));
      }
    }
    const __m256 c = _mm256_i32gather_ps(a.centroids, idx, 4);
    cacc = _mm256_add_ps(cacc, _mm256_mul_ps(c, c));
    // Pack 8 indices into `bits` bytes: shift each into place and OR the lanes (bits are disjoint).
    if (bits == 8) {
      const __m128i lo = _mm256_castsi256_si128(idx), hi = _mm256_extracti128_si256(idx, 1);
      const __m128i w16 = _mm_packus_epi32(lo, hi);
      const __m128i w8 = _mm_packus_epi16(w16, w16);
      _mm_storel_epi64(reinterpret_cast<__m128i*>(idx_out + j), w8);
    } else {
      const __m256i sh = _mm256_sllv_epi32(idx, shifts);  // 8 * bits <= 32 bits in total
      __m128i o = _mm_or_si128(_mm256_castsi256_si128(sh), _mm256_extracti128_si256(sh, 1));
      o = _mm_or_si128(o, _mm_unpackhi_epi64(o, o));
      o = _mm_or_si128(o, _mm_srli_epi64(o, 32));
      const uint32_t w = static_cast<uint32_t>(_mm_cvtsi128_si32(o));
      std::memcpy(idx_out + j / 8 * bits, &w, static_cast<size_t>(bits));
    }
  }
  const float cn = a.norm_correction ? std::sqrt(reduce_lanes(cacc)) : 1.0f;
  *scale_out = float_to_fp16(n / cn);
}

void decode_one_avx2(const CodecKernelArgs& a, const uint8_t* in, uint16_t scale, float* out, float* scratch) {
  const int d = a.d, bits = a.bits;
  const __m256 s = _mm256_set1_ps(fp16_to_float(scale));
  const __m256i shifts = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(bits));
  const __m256i mask = _mm256_set1_epi32((1 << bits) - 1);
  // Centroid tables in registers for <= 4 bits (lookup by permute; 4 bits uses two tables + blend).
  __m256 t0 = _mm256_setzero_ps(), t1 = t0;
  if (bits <= 3) {
    float tab[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int k = 0; k < (1 << bits); ++k) tab[k] = a.centroids[k];
    t0 = _mm256_loadu_ps(tab);
  } else if (bits == 4) {
    t0 = _mm256_loadu_ps(a.centroids);
    t1 = _mm256_loadu_ps(a.centroids + 8);
  }
  for (int j = 0; j < d; j += 8) {
    __m256 c;
    if (bits == 8) {
      const __m256i idx = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(in + j)));
      c = _mm256_i32gather_ps(a.centroids, idx, 4);
    } else {
      uint32_t w = 0;
      std::memcpy(&w, in + j / 8 * bits, static_cast<size_t>(bits));
      const __m256i idx = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>(w)), shifts), mask);
      if (bits <= 3) {
        c = _mm256_permutevar8x32_ps(t0, idx);
      } else {
        const __m256 lo = _mm256_permutevar8x32_ps(t0, idx), hi = _mm256_permutevar8x32_ps(t1, idx);
        c = _mm256_blendv_ps(lo, hi, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));  // bit 3 -> sign
      }
    }
    _mm256_storeu_ps(scratch + j, _mm256_mul_ps(c, s));
  }
  a.rotation->inverse_with(scratch, out, true);
}

}  // namespace tqkv::codec_detail
