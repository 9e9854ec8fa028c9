// Private AVX2 helpers for the *_avx2.cpp files of tqkv_quant: unpacking quantized blocks into
// 32 bytes of values in element order, and widening them to floats. Include ONLY from files built
// with -mavx2 -mfma -mf16c (names ending _avx2.cpp); everything is internal to each file.
#pragma once

#include <immintrin.h>

#include <cstdint>
#include <cstring>

namespace tqkv::quant {
namespace {

inline float f16_scalar(uint16_t h) { return _cvtsh_ss(h); }

// 16 bytes of packed nibbles -> 32 bytes: low nibbles (elements 0..15) in the low lane, high
// nibbles (elements 16..31) in the high lane.
inline __m256i unpack_nibbles_16(const uint8_t* qs) {
  const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
  const __m128i m = _mm_set1_epi8(0x0F);
  return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(v, 4), m), _mm_and_si128(v, m));
}
// 32 bytes -> 32 bytes of low nibbles, and of high nibbles.
inline __m256i low_nibbles_32(__m256i v) { return _mm256_and_si256(v, _mm256_set1_epi8(0x0F)); }
inline __m256i high_nibbles_32(__m256i v) {
  return _mm256_and_si256(_mm256_srli_epi16(v, 4), _mm256_set1_epi8(0x0F));
}

// Little-endian 32-bit mask -> 32 bytes, byte j = 0xFF when bit j is set. Byte j of the result
// first receives byte j/8 of the mask (shuffle), then is tested against bit j%8.
inline __m256i bits_to_bytes_32(uint32_t bits) {
  const __m256i which_byte = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                                              2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
  const __m256i rep = _mm256_shuffle_epi8(_mm256_set1_epi32(static_cast<int>(bits)), which_byte);
  const __m256i bit = _mm256_set1_epi64x(static_cast<long long>(0x8040201008040201ull));
  return _mm256_cmpeq_epi8(_mm256_and_si256(rep, bit), bit);
}

// 32 signed / unsigned bytes -> four vectors of 8 floats (elements 0-7, 8-15, 16-23, 24-31).
inline void i8x32_to_f32(__m256i q, __m256 out[4]) {
  const __m128i lo = _mm256_castsi256_si128(q), hi = _mm256_extracti128_si256(q, 1);
  out[0] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo));
  out[1] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8)));
  out[2] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi));
  out[3] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8)));
}
inline void u8x32_to_f32(__m256i q, __m256 out[4]) {
  const __m128i lo = _mm256_castsi256_si128(q), hi = _mm256_extracti128_si256(q, 1);
  out[0] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo));
  out[1] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8)));
  out[2] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi));
  out[3] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8)));
}

inline uint32_t load_u32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Values of the 32-element formats as 32 bytes in element order (signed where the format has an
// offset, so that the float conversion gives the final integer).
inline __m256i q4_0_values(const uint8_t* qs) {
  return _mm256_sub_epi8(unpack_nibbles_16(qs), _mm256_set1_epi8(8));
}
inline __m256i q5_values(const uint8_t* qh, const uint8_t* qs) {  // 0..31, before any offset
  const __m256i high = _mm256_and_si256(bits_to_bytes_32(load_u32(qh)), _mm256_set1_epi8(0x10));
  return _mm256_or_si256(unpack_nibbles_16(qs), high);
}
// Fifth bit of Q5_K sub-block s: bit s of each qh byte, moved to 0x10.
inline __m256i q5k_high_bit(__m256i qh, int s) {
  const __m256i m = _mm256_set1_epi8(static_cast<char>(1 << s));
  return _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(qh, m), m), _mm256_set1_epi8(0x10));
}
// Q6_K: the 4 groups of 32 values of one 128-value half, already minus 32 (signed).
inline void q6k_values(const uint8_t* ql, const uint8_t* qh, __m256i q[4]) {
  const __m256i l0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ql));
  const __m256i l1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ql + 32));
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qh));
  const __m256i three = _mm256_set1_epi8(3);
  const __m256i off = _mm256_set1_epi8(32);
  auto hbits = [&](int shift) {  // ((qh >> shift) & 3) << 4, per byte
    return _mm256_slli_epi16(_mm256_and_si256(_mm256_srl_epi16(h, _mm_cvtsi32_si128(shift)), three), 4);
  };
  q[0] = _mm256_sub_epi8(_mm256_or_si256(low_nibbles_32(l0), hbits(0)), off);
  q[1] = _mm256_sub_epi8(_mm256_or_si256(low_nibbles_32(l1), hbits(2)), off);
  q[2] = _mm256_sub_epi8(_mm256_or_si256(high_nibbles_32(l0), hbits(4)), off);
  q[3] = _mm256_sub_epi8(_mm256_or_si256(high_nibbles_32(l1), hbits(6)), off);
}

}  // namespace
}  // namespace tqkv::quant
