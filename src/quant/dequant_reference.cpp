// Reference dequantization: one plain loop per format, written from the formulas in
// tqkv/weight_blocks.h. Operation order matches ggml and gguf-py exactly (d * sc is rounded to
// float first, then multiplied by q, then the rounded dmin * mn is subtracted), so results are
// bit-identical to theirs; the tests check that against gguf-py fixtures.
#include <cstring>

#include "quant/kernels.h"
#include "tqkv/fp16.h"
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

void deq_f32(const void* src, float* y, int64_t n) { std::memcpy(y, src, static_cast<size_t>(n) * 4); }

void deq_f16(const void* src, float* y, int64_t n) {
  const auto* h = static_cast<const uint16_t*>(src);
  for (int64_t i = 0; i < n; ++i) y[i] = fp16_to_float(h[i]);
}

void deq_bf16(const void* src, float* y, int64_t n) {
  const auto* h = static_cast<const uint16_t*>(src);
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t bits = static_cast<uint32_t>(h[i]) << 16;
    std::memcpy(&y[i], &bits, 4);
  }
}

void deq_q8_0(const void* src, float* y, int64_t n) {
  const auto* b = static_cast<const BlockQ8_0*>(src);
  for (int64_t i = 0; i < n / kQK8_0; ++i, y += kQK8_0) {
    const float d = fp16_to_float(b[i].d);
    for (int j = 0; j < kQK8_0; ++j) y[j] = d * static_cast<float>(b[i].qs[j]);
  }
}

void deq_q4_0(const void* src, float* y, int64_t n) {
  const auto* b = static_cast<const BlockQ4_0*>(src);
  for (int64_t i = 0; i < n / kQK4_0; ++i, y += kQK4_0) {
    const float d = fp16_to_float(b[i].d);
    for (int j = 0; j < kQK4_0 / 2; ++j) {
      y[j] = d * static_cast<float>((b[i].qs[j] & 0x0F) - 8);
      y[j + kQK4_0 / 2] = d * static_cast<float>((b[i].qs[j] >> 4) - 8);
    }
  }
}

void deq_q4_1(const void* src, float* y, int64_t n) {
  const auto* b = static_cast<const BlockQ4_1*>(src);
  for (int64_t i = 0; i < n / kQK4_1; ++i, y += kQK4_1) {
    const float d = fp16_to_float(b[i].d);
    const float m = fp16_to_float(b[i].m);
    for (int j = 0; j < kQK4_1 / 2; ++j) {
      y[j] = d * static_cast<float>(b[i].qs[j] & 0x0F) + m;
      y[j + kQK4_1 / 2] = d * static_cast<float>(b[i].qs[j] >> 4) + m;
    }
  }
}

uint32_t load_u32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

void deq_q5_0(const void* src, float* y, int64_t n) {
  const auto* b = static_cast<const BlockQ5_0*>(src);
  for (int64_t i = 0; i < n / kQK5_0; ++i, y += kQK5_0) {
    const float d = fp16_to_float(b[i].d);
    const uint32_t qh = load_u32(b[i].qh);
    for (int j = 0; j < kQK5_0 / 2; ++j) {
      const int lo = (b[i].qs[j] & 0x0F) | static_cast<int>(((qh >> j) & 1u) << 4);
      const int hi = (b[i].qs[j] >> 4) | static_cast<int>(((qh >> (j + 16)) & 1u) << 4);
      y[j] = d * static_cast<float>(lo - 16);
      y[j + kQK5_0 / 2] = d * static_cast<float>(hi - 16);
    }
  }
}

void deq_q5_1(const void* src, float* y, int64_t n) {
  const auto* b = static_cast<const BlockQ5_1*>(src);
  for (int64_t i = 0; i < n / kQK5_1; ++i, y += kQK5_1) {
    const float d = fp16_to_float(b[i].d);
    const float m = fp16_to_float(b[i].m);
    const uint32_t qh = load_u32(b[i].qh);
    for (int j = 0; j < kQK5_1 / 2; ++j) {
      const int lo = (b[i].qs[j] & 0x0F) | static_cast<int>(((qh >> j) & 1u) << 4);
      const int hi = (b[i].qs[j] >> 4) | static_cast<int>(((qh >> (j + 16)) & 1u) << 4);
      y[j] = d * static_cast<float>(lo) + m;
      y[j + kQK5_1 / 2] = d * static_cast<float>(hi) + m;
    }
  }
}

void deq_q4_k(const void* src, float* y, int64_t n) {
  const auto* b = static_cast<const BlockQ4_K*>(src);
  for (int64_t i = 0; i < n / kQK_Kint; ++i) {
    const float d = fp16_to_float(b[i].d);
    const float dmin = fp16_to_float(b[i].dmin);
    const uint8_t* q = b[i].qs;
    for (int s = 0; s < 8; s += 2, q += 32) {  // sub-blocks s and s+1 share 32 bytes of nibbles
      uint8_t sc0, mn0, sc1, mn1;
      unpack_k_scale_min(s, b[i].scales, &sc0, &mn0);
      unpack_k_scale_min(s + 1, b[i].scales, &sc1, &mn1);
      const float d0 = d * sc0, m0 = dmin * mn0, d1 = d * sc1, m1 = dmin * mn1;
      for (int l = 0; l < 32; ++l) *y++ = d0 * static_cast<float>(q[l] & 0x0F) - m0;
      for (int l = 0; l < 32; ++l) *y++ = d1 * static_cast<float>(q[l] >> 4) - m1;
    }
  }
}

void deq_q5_k(const void* src, float* y, int64_t n) {
  const auto* b = static_cast<const BlockQ5_K*>(src);
  for (int64_t i = 0; i < n / kQK_Kint; ++i) {
    const float d = fp16_to_float(b[i].d);
    const float dmin = fp16_to_float(b[i].dmin);
    const uint8_t* q = b[i].qs;
    for (int s = 0; s < 8; s += 2, q += 32) {
      uint8_t sc0, mn0, sc1, mn1;
      unpack_k_scale_min(s, b[i].scales, &sc0, &mn0);
      unpack_k_scale_min(s + 1, b[i].scales, &sc1, &mn1);
      const float d0 = d * sc0, m0 = dmin * mn0, d1 = d * sc1, m1 = dmin * mn1;
      for (int l = 0; l < 32; ++l) {
        const int v = (q[l] & 0x0F) | (((b[i].qh[l] >> s) & 1) << 4);
        *y++ = d0 * static_cast<float>(v) - m0;
      }
      for (int l = 0; l < 32; ++l) {
        const int v = (q[l] >> 4) | (((b[i].qh[l] >> (s + 1)) & 1) << 4);
        *y++ = d1 * static_cast<float>(v) - m1;
      }
    }
  }
}

void deq_q6_k(const void* src, float* y, int64_t n) {
  const auto* b = static_cast<const BlockQ6_K*>(src);
  for (int64_t i = 0; i < n / kQK_Kint; ++i) {
    const float d = fp16_to_float(b[i].d);
    const uint8_t* ql = b[i].ql;
    const uint8_t* qh = b[i].qh;
    const int8_t* sc = b[i].scales;
    for (int half = 0; half < 2; ++half, ql += 64, qh += 32, sc += 8, y += 128) {
      for (int l = 0; l < 32; ++l) {
        const int is = l / 16;
        const int q1 = ((ql[l] & 0x0F) | (((qh[l] >> 0) & 3) << 4)) - 32;
        const int q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) - 32;
        const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
        const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
        y[l] = (d * sc[is + 0]) * static_cast<float>(q1);
        y[l + 32] = (d * sc[is + 2]) * static_cast<float>(q2);
        y[l + 64] = (d * sc[is + 4]) * static_cast<float>(q3);
        y[l + 96] = (d * sc[is + 6]) * static_cast<float>(q4);
      }
    }
  }
}

}  // namespace

DequantizeRowFn reference_dequantizer(GgmlType t) {
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
