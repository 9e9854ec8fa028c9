// Reference quantizers for the simple formats, written from ggml's quantize_row_*_ref (which
// gguf-py's numpy quantizers reproduce bit for bit): one amax or min/max search per 32-value block,
// the fp16 scale rounded from the float scale, values truncated after adding 8.5 / 16.5 / 0.5.
// For making test weights (tiny models, round trips), not for speed.
#include <cmath>
#include <cstring>
#include <string>

#include "tqkv/fp16.h"
#include "tqkv/weight_blocks.h"
#include "tqkv/weights.h"

// Bit-exactness with ggml/gguf-py needs every product rounded before the add: no FMA contraction
// (GCC contracts by default in GNU mode, clang within expressions).
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

namespace tqkv {
namespace {

int trunc_clamp(float v, int hi) {  // (int8_t)v, then MIN(hi, .), as the reference does
  const int q = static_cast<int>(v);
  return q > hi ? hi : (q < 0 ? 0 : q);
}

// Signed max: the value of largest magnitude (first one on ties), as ggml picks it.
float signed_absmax(const float* x, int n) {
  float amax = 0.0f, max = 0.0f;
  for (int j = 0; j < n; ++j) {
    if (amax < std::fabs(x[j])) {
      amax = std::fabs(x[j]);
      max = x[j];
    }
  }
  return max;
}

void min_max(const float* x, int n, float* mn, float* mx) {
  *mn = x[0];
  *mx = x[0];
  for (int j = 1; j < n; ++j) {
    if (x[j] < *mn) *mn = x[j];
    if (x[j] > *mx) *mx = x[j];
  }
}

void q8_0(const float* x, BlockQ8_0* y) {
  float amax = 0.0f;
  for (int j = 0; j < 32; ++j) amax = std::fmax(amax, std::fabs(x[j]));
  const float d = amax / 127.0f;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  y->d = float_to_fp16(d);
  for (int j = 0; j < 32; ++j) y->qs[j] = static_cast<int8_t>(std::round(x[j] * id));
}

void q4_0(const float* x, BlockQ4_0* y) {
  const float d = signed_absmax(x, 32) / -8.0f;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  y->d = float_to_fp16(d);
  for (int j = 0; j < 16; ++j) {
    const int a = trunc_clamp(x[j] * id + 8.5f, 15), b = trunc_clamp(x[j + 16] * id + 8.5f, 15);
    y->qs[j] = static_cast<uint8_t>(a | (b << 4));
  }
}

void q4_1(const float* x, BlockQ4_1* y) {
  float mn, mx;
  min_max(x, 32, &mn, &mx);
  const float d = (mx - mn) / 15.0f;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  y->d = float_to_fp16(d);
  y->m = float_to_fp16(mn);
  for (int j = 0; j < 16; ++j) {
    const int a = trunc_clamp((x[j] - mn) * id + 0.5f, 15), b = trunc_clamp((x[j + 16] - mn) * id + 0.5f, 15);
    y->qs[j] = static_cast<uint8_t>(a | (b << 4));
  }
}

void q5_0(const float* x, BlockQ5_0* y) {
  const float d = signed_absmax(x, 32) / -16.0f;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  y->d = float_to_fp16(d);
  uint32_t qh = 0;
  for (int j = 0; j < 16; ++j) {
    const int a = trunc_clamp(x[j] * id + 16.5f, 31), b = trunc_clamp(x[j + 16] * id + 16.5f, 31);
    y->qs[j] = static_cast<uint8_t>((a & 0x0F) | ((b & 0x0F) << 4));
    qh |= static_cast<uint32_t>((a >> 4) & 1) << j;
    qh |= static_cast<uint32_t>((b >> 4) & 1) << (j + 16);
  }
  std::memcpy(y->qh, &qh, 4);
}

void q5_1(const float* x, BlockQ5_1* y) {
  float mn, mx;
  min_max(x, 32, &mn, &mx);
  const float d = (mx - mn) / 31.0f;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  y->d = float_to_fp16(d);
  y->m = float_to_fp16(mn);
  uint32_t qh = 0;
  for (int j = 0; j < 16; ++j) {
    const int a = trunc_clamp((x[j] - mn) * id + 0.5f, 31), b = trunc_clamp((x[j + 16] - mn) * id + 0.5f, 31);
    y->qs[j] = static_cast<uint8_t>((a & 0x0F) | ((b & 0x0F) << 4));
    qh |= static_cast<uint32_t>((a >> 4) & 1) << j;
    qh |= static_cast<uint32_t>((b >> 4) & 1) << (j + 16);
  }
  std::memcpy(y->qh, &qh, 4);
}

uint16_t bf16_round(float f) {  // round to nearest even (inputs are finite)
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

}  // namespace

bool quantize_supported(GgmlType t) {
  switch (t) {
    case GgmlType::kF32: case GgmlType::kF16: case GgmlType::kBF16: case GgmlType::kQ8_0:
    case GgmlType::kQ4_0: case GgmlType::kQ4_1: case GgmlType::kQ5_0: case GgmlType::kQ5_1:
      return true;
    default:
      return false;
  }
}

Status quantize_row_reference(GgmlType t, const float* x, void* dst, int64_t n) {
  if (!quantize_supported(t)) {
    return unsupported("no reference quantizer for " + std::string(ggml_type_name(t)));
  }
  TQKV_RETURN_IF_ERROR(check_weight_row(t, n));
  if (x == nullptr || dst == nullptr) return invalid_argument("null input or output");
  for (int64_t i = 0; i < n; ++i) {
    if (!std::isfinite(x[i])) return invalid_argument("quantize: value " + std::to_string(i) + " is not finite");
  }
  auto* out = static_cast<uint8_t*>(dst);
  const int64_t bytes = ggml_type_traits(t).block_bytes;
  for (int64_t b = 0; b < n / ggml_type_traits(t).block_size; ++b) {
    uint8_t* p = out + b * bytes;
    const float* xb = x + b * ggml_type_traits(t).block_size;
    // Blocks are built in an aligned local and copied out, so dst needs no alignment.
    switch (t) {
      case GgmlType::kF32: std::memcpy(p, xb, 4); break;
      case GgmlType::kF16: { const uint16_t h = float_to_fp16(*xb); std::memcpy(p, &h, 2); break; }
      case GgmlType::kBF16: { const uint16_t h = bf16_round(*xb); std::memcpy(p, &h, 2); break; }
      case GgmlType::kQ8_0: { BlockQ8_0 blk; q8_0(xb, &blk); std::memcpy(p, &blk, sizeof blk); break; }
      case GgmlType::kQ4_0: { BlockQ4_0 blk; q4_0(xb, &blk); std::memcpy(p, &blk, sizeof blk); break; }
      case GgmlType::kQ4_1: { BlockQ4_1 blk; q4_1(xb, &blk); std::memcpy(p, &blk, sizeof blk); break; }
      case GgmlType::kQ5_0: { BlockQ5_0 blk; q5_0(xb, &blk); std::memcpy(p, &blk, sizeof blk); break; }
      case GgmlType::kQ5_1: { BlockQ5_1 blk; q5_1(xb, &blk); std::memcpy(p, &blk, sizeof blk); break; }
      default: return internal_error("quantize_row_reference: unhandled type");
    }
  }
  return Status::ok();
}

}  // namespace tqkv
