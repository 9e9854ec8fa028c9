// The GGML weight block formats we decode, one fixed-size struct each, defined once for CPU and
// CUDA code. Layouts and value formulas follow ggml (ggml-common.h / ggml-quants.c); gguf-py's
// numpy dequantizers compute the same thing and are what our tests compare against.
// docs/formats.md ("GGUF subset we read") restates each formula.
//
// All scales are IEEE fp16 stored as uint16_t (tqkv/fp16.h). Blocks are 2-byte aligned
// structs; every block size is even and GGUF tensors start on an aligned offset, so rows in a
// mapped file are suitably aligned.
#pragma once

#include <cstdint>

#include "tqkv/ggml_types.h"

namespace tqkv {

inline constexpr int kQK4_0 = 32, kQK4_1 = 32, kQK5_0 = 32, kQK5_1 = 32, kQK8_0 = 32;
inline constexpr int kQK_Kint = 256;   // K-quant super-block
inline constexpr int kKScaleBytes = 12;  // packed 6-bit scales + mins of Q4_K / Q5_K

// Q4_0: x[j] = d * (q[j] - 8); q[j] = low nibble of qs[j] (j < 16), high nibble of qs[j-16].
struct BlockQ4_0 {
  uint16_t d;
  uint8_t qs[kQK4_0 / 2];
};
static_assert(sizeof(BlockQ4_0) == 18);

// Q4_1: x[j] = d * q[j] + m; nibbles as Q4_0.
struct BlockQ4_1 {
  uint16_t d;
  uint16_t m;
  uint8_t qs[kQK4_1 / 2];
};
static_assert(sizeof(BlockQ4_1) == 20);

// Q5_0: x[j] = d * (q[j] - 16); q[j] = nibble as Q4_0 | (bit j of little-endian u32 qh) << 4.
struct BlockQ5_0 {
  uint16_t d;
  uint8_t qh[4];
  uint8_t qs[kQK5_0 / 2];
};
static_assert(sizeof(BlockQ5_0) == 22);

// Q5_1: x[j] = d * q[j] + m; q[j] as Q5_0.
struct BlockQ5_1 {
  uint16_t d;
  uint16_t m;
  uint8_t qh[4];
  uint8_t qs[kQK5_1 / 2];
};
static_assert(sizeof(BlockQ5_1) == 24);

// Q8_0: x[j] = d * qs[j].
struct BlockQ8_0 {
  uint16_t d;
  int8_t qs[kQK8_0];
};
static_assert(sizeof(BlockQ8_0) == 34);

// Q4_K: 8 sub-blocks of 32. Sub-block s has 6-bit scale sc[s] and min mn[s] (unpacked from
// `scales`, see unpack_k_scale_min) and x = (d * sc) * q - (dmin * mn). The 4-bit q of the 64
// values of sub-blocks 2i and 2i+1 are the low / high nibbles of qs[32 i .. 32 i + 31].
struct BlockQ4_K {
  uint16_t d;
  uint16_t dmin;
  uint8_t scales[kKScaleBytes];
  uint8_t qs[kQK_Kint / 2];
};
static_assert(sizeof(BlockQ4_K) == 144);

// Q5_K: Q4_K plus a fifth bit: value l of sub-block s has bit s of qh[l] as bit 4 of q.
struct BlockQ5_K {
  uint16_t d;
  uint16_t dmin;
  uint8_t scales[kKScaleBytes];
  uint8_t qh[kQK_Kint / 8];
  uint8_t qs[kQK_Kint / 2];
};
static_assert(sizeof(BlockQ5_K) == 176);

// Q6_K: 16 sub-blocks of 16 with int8 scales; x = (d * scales[s]) * (q - 32), q 6 bits. For each
// half h (128 values; ql += 64 h, qh += 32 h) and l < 32:
//   q[l]      = (ql[l]      & 15) | ((qh[l] >> 0) & 3) << 4
//   q[l + 32] = (ql[l + 32] & 15) | ((qh[l] >> 2) & 3) << 4
//   q[l + 64] = (ql[l]      >> 4) | ((qh[l] >> 4) & 3) << 4
//   q[l + 96] = (ql[l + 32] >> 4) | ((qh[l] >> 6) & 3) << 4
struct BlockQ6_K {
  uint8_t ql[kQK_Kint / 2];
  uint8_t qh[kQK_Kint / 4];
  int8_t scales[kQK_Kint / 16];
  uint16_t d;
};
static_assert(sizeof(BlockQ6_K) == 210);

static_assert(sizeof(BlockQ4_K) == ggml_type_traits(GgmlType::kQ4_K).block_bytes);
static_assert(sizeof(BlockQ5_K) == ggml_type_traits(GgmlType::kQ5_K).block_bytes);
static_assert(sizeof(BlockQ6_K) == ggml_type_traits(GgmlType::kQ6_K).block_bytes);
static_assert(sizeof(BlockQ8_0) == ggml_type_traits(GgmlType::kQ8_0).block_bytes);
static_assert(sizeof(BlockQ5_1) == ggml_type_traits(GgmlType::kQ5_1).block_bytes);
static_assert(sizeof(BlockQ5_0) == ggml_type_traits(GgmlType::kQ5_0).block_bytes);
static_assert(sizeof(BlockQ4_1) == ggml_type_traits(GgmlType::kQ4_1).block_bytes);
static_assert(sizeof(BlockQ4_0) == ggml_type_traits(GgmlType::kQ4_0).block_bytes);

// 6-bit scale and min of sub-block s (0..7) of a Q4_K / Q5_K block. Bytes 0-3 hold the low 6 bits
// of scales 0-3, bytes 4-7 those of mins 0-3; scales/mins 4-7 keep their low 4 bits in the nibbles
// of bytes 8-11 and their top 2 bits in the top bits of bytes 0-3 / 4-7.
inline void unpack_k_scale_min(int s, const uint8_t* q, uint8_t* sc, uint8_t* mn) {
  if (s < 4) {
    *sc = q[s] & 63;
    *mn = q[s + 4] & 63;
  } else {
    *sc = static_cast<uint8_t>((q[s + 4] & 0x0F) | ((q[s - 4] >> 6) << 4));
    *mn = static_cast<uint8_t>((q[s + 4] >> 4) | ((q[s] >> 6) << 4));
  }
}

}  // namespace tqkv
