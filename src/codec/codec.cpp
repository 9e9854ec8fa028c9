// TurboQuantCodec: validation, dispatch, the reference path (plain loops in double: the definition)
// and the scalar path (float, same operation order as the AVX2 path in codec_avx2.cpp).
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "codec/codec_internal.h"
#include "core/cpu_features.h"
#include "tqkv/fp16.h"

static_assert(std::endian::native == std::endian::little, "packing assumes a little-endian host");

namespace tqkv {
namespace codec_detail {

void pack_indices_scalar(const uint32_t* idx, int d, int bits, uint8_t* out) {
  for (int g = 0; g < d; g += 8) {
    uint64_t w = 0;
    for (int k = 0; k < 8; ++k) w |= static_cast<uint64_t>(idx[g + k]) << (k * bits);
    std::memcpy(out + g / 8 * bits, &w, static_cast<size_t>(bits));  // 8 coords = `bits` bytes
  }
}

void unpack_indices_scalar(const uint8_t* in, int d, int bits, uint32_t* idx) {
  const uint64_t mask = (1ull << bits) - 1;
  for (int g = 0; g < d; g += 8) {
    uint64_t w = 0;
    std::memcpy(&w, in + g / 8 * bits, static_cast<size_t>(bits));
    for (int k = 0; k < 8; ++k) idx[g + k] = static_cast<uint32_t>((w >> (k * bits)) & mask);
  }
}

void encode_one_scalar(const CodecKernelArgs& a, const float* x, uint8_t* idx_out, uint16_t* scale_out,
                       float* scratch) {
  const int d = a.d;
  const float n2 = sumsq_lanes_scalar(x, d);
  if (n2 == 0.0f) {
    std::memset(idx_out, 0, static_cast<size_t>(index_bytes(d, a.bits)));
    *scale_out = 0;
    return;
  }
  const float n = std::sqrt(n2);
  float* y = scratch;
  float* cy = scratch + d;
  a.rotation->forward_with(x, y, false);
  const int L = 1 << a.bits;
  uint32_t idx[4096 / 8 * 8];
  // Indices of t = y * m (count of boundaries strictly below t) into idx, their centroids into cy.
  auto quantize = [&](float m) {
    for (int j = 0; j < d; ++j) {
      const float t = y[j] * m;
      uint32_t lo = 0;
      for (int step = L / 2; step >= 1; step /= 2)
        if (t > a.boundaries[lo + step - 1]) lo += step;
      idx[j] = lo;
      cy[j] = a.centroids[lo];
    }
  };
  float inv = 1.0f / n;
  if (a.scale_search) {
    float best = -1.0f, best_m = inv;
    for (int i = 0; i < kScaleSearchSteps; ++i) {
      const float m = inv * scale_search_alpha(i);
      quantize(m);
      const float yc = dot_lanes_scalar(y, cy, d), cc = sumsq_lanes_scalar(cy, d);
      const float j = cc > 0.0f ? yc * yc / cc : 0.0f;
      if (j > best) best = j, best_m = m;
    }
    inv = best_m;
  }
  quantize(inv);
  pack_indices_scalar(idx, d, a.bits, idx_out);
  const float cn = a.norm_correction ? std::sqrt(sumsq_lanes_scalar(cy, d)) : 1.0f;
  *scale_out = float_to_fp16(n / cn);
}

void decode_one_scalar(const CodecKernelArgs& a, const uint8_t* in, uint16_t scale, float* out, float* scratch) {
  const int d = a.d;
  const float s = fp16_to_float(scale);
  uint32_t idx[4096];
  unpack_indices_scalar(in, d, a.bits, idx);
  for (int j = 0; j < d; ++j) scratch[j] = a.centroids[idx[j]] * s;
  a.rotation->inverse_with(scratch, out, false);
}

}  // namespace codec_detail

using namespace codec_detail;

namespace {

// The definition, in double: n = |x|, t = P x / n, idx_j = argmin_k |t_j - c_k| (ties to the lower
// index), scale = n / |c[idx]|; decode x~ = scale * P^T c[idx].
// Scale search (scale_search, docs/formats.md): the same argmin for t * alpha for each
// scale_search_alpha(i), keeping the alpha with the largest (y . c)^2 / |c|^2 (first on ties).
void encode_one_reference(const Codebook& cb, const Rotation& rot, bool norm_correction, bool scale_search,
                          const float* x, uint8_t* out, uint16_t* scale_out) {
  const int d = rot.head_dim(), bits = cb.bits();
  std::memset(out, 0, static_cast<size_t>(index_bytes(d, bits)));
  double n2 = 0;
  for (int j = 0; j < d; ++j) n2 += static_cast<double>(x[j]) * x[j];
  if (n2 == 0) {
    *scale_out = 0;
    return;
  }
  const double n = std::sqrt(n2);
  const float* P = rot.matrix();
  std::vector<double> y(static_cast<size_t>(d));
  for (int i = 0; i < d; ++i) {
    double acc = 0;
    for (int j = 0; j < d; ++j) acc += static_cast<double>(P[static_cast<size_t>(i) * d + j]) * x[j];
    y[i] = acc;
  }
  auto nearest = [&](double t) {
    int best = 0;
    for (int k = 1; k < cb.levels(); ++k)
      if (std::fabs(t - cb.centroids()[k]) < std::fabs(t - cb.centroids()[best])) best = k;
    return best;
  };
  double alpha = 1.0;
  if (scale_search) {
    double best_j = -1;
    for (int ai = 0; ai < kScaleSearchSteps; ++ai) {
      const float a = scale_search_alpha(ai);
      double yc = 0, cc = 0;
      for (int i = 0; i < d; ++i) {
        const double c = cb.centroids()[nearest(y[i] / n * a)];
        yc += y[i] * c;
        cc += c * c;
      }
      const double j = cc > 0 ? yc * yc / cc : 0;
      if (j > best_j) best_j = j, alpha = a;
    }
  }
  double cn2 = 0;
  for (int i = 0; i < d; ++i) {
    const int best = nearest(y[i] / n * alpha);
    pack_index(out, bits, i, static_cast<uint32_t>(best));
    cn2 += static_cast<double>(cb.centroids()[best]) * cb.centroids()[best];
  }
  *scale_out = float_to_fp16(static_cast<float>(norm_correction ? n / std::sqrt(cn2) : n));
}

void decode_one_reference(const Codebook& cb, const Rotation& rot, const uint8_t* in, uint16_t scale, float* out) {
  const int d = rot.head_dim();
  const double s = fp16_to_float(scale);
  const float* P = rot.matrix();
  for (int j = 0; j < d; ++j) {
    double acc = 0;
    for (int i = 0; i < d; ++i)
      acc += static_cast<double>(P[static_cast<size_t>(i) * d + j]) * cb.centroids()[unpack_index(in, cb.bits(), i)];
    out[j] = static_cast<float>(s * acc);
  }
}

CodePath resolve(CodePath path) {
  if (path == CodePath::kAuto) return cpu_has_avx2_fma_f16c() ? CodePath::kAvx2 : CodePath::kScalar;
  if (path == CodePath::kAvx2 && !cpu_has_avx2_fma_f16c()) return CodePath::kScalar;
  return path;
}

// Largest accepted |x|: the stored fp16 scale |x| / |c[idx]| must stay below 65504, and |c[idx]|
// is at least ~0.79 for every (d, bits) we accept (1 bit is the worst case).
constexpr float kMaxNorm = 32768.0f;

}  // namespace

const char* code_path_name(CodePath path) {
  switch (path) {
    case CodePath::kAuto: return "auto";
    case CodePath::kReference: return "reference";
    case CodePath::kScalar: return "scalar";
    case CodePath::kAvx2: return "avx2";
  }
  return "unknown";
}

bool code_path_available(CodePath path) {
  return path != CodePath::kAvx2 || cpu_has_avx2_fma_f16c();
}

Result<TurboQuantCodec> TurboQuantCodec::create(const CodecConfig& config) {
  if (!(config.bits == 1 || config.bits == 2 || config.bits == 3 || config.bits == 4 || config.bits == 8))
    return invalid_argument("codec bits must be 1, 2, 3, 4 or 8, got " + std::to_string(config.bits));
  if (!is_valid_head_dim(config.head_dim))
    return invalid_argument("codec head_dim must be a multiple of 8 in [64, 256], got " +
                            std::to_string(config.head_dim));
  TQKV_ASSIGN_OR_RETURN(const Codebook* cb, Codebook::get(config.head_dim, config.bits));
  TQKV_ASSIGN_OR_RETURN(std::shared_ptr<const Rotation> rot,
                        Rotation::create(config.head_dim, config.rotation, config.seed));
  return TurboQuantCodec(config, cb, std::move(rot));
}

Status TurboQuantCodec::encode(const float* x, int64_t n, uint8_t* indices, uint16_t* scales, CodePath path) const {
  const int d = head_dim();
  if (n < 0) return invalid_argument("encode: negative vector count");
  // Validate everything first so that a failure writes nothing. A NaN or Inf anywhere makes the
  // sum of squares non-finite, so one pass over the data catches both bad values and huge norms.
  for (int64_t v = 0; v < n; ++v) {
    const float* xv = x + v * d;
    const float n2 = sumsq_lanes_scalar(xv, d);
    if (!std::isfinite(n2) || n2 >= kMaxNorm * kMaxNorm) {
      for (int j = 0; j < d; ++j)
        if (!std::isfinite(xv[j]))
          return invalid_argument("encode: vector " + std::to_string(v) + " has a non-finite value at coordinate " +
                                  std::to_string(j));
      return out_of_range("encode: vector " + std::to_string(v) + " has norm >= 32768 (fp16 scale would overflow)");
    }
  }
  const int64_t ib = index_bytes();
  const CodePath p = resolve(path);
  const bool search = scale_search_applies(config_.scale_search, config_.norm_correction, bits());
  if (p == CodePath::kReference) {
    for (int64_t v = 0; v < n; ++v)
      encode_one_reference(*codebook_, *rotation_, config_.norm_correction, search, x + v * d, indices + v * ib, scales + v);
    return Status::ok();
  }
  const CodecKernelArgs a{rotation_.get(), codebook_->centroids(), codebook_->boundaries(), d, bits(), config_.norm_correction, search};
  std::vector<float> scratch(2 * static_cast<size_t>(d));
  for (int64_t v = 0; v < n; ++v) {
    if (p == CodePath::kAvx2) encode_one_avx2(a, x + v * d, indices + v * ib, scales + v, scratch.data());
    else encode_one_scalar(a, x + v * d, indices + v * ib, scales + v, scratch.data());
  }
  return Status::ok();
}

void TurboQuantCodec::decode(const uint8_t* indices, const uint16_t* scales, int64_t n, float* out, CodePath path) const {
  const int d = head_dim();
  const int64_t ib = index_bytes();
  const CodePath p = resolve(path);
  if (p == CodePath::kReference) {
    for (int64_t v = 0; v < n; ++v) decode_one_reference(*codebook_, *rotation_, indices + v * ib, scales[v], out + v * d);
    return;
  }
  const CodecKernelArgs a{rotation_.get(), codebook_->centroids(), codebook_->boundaries(), d, bits(), config_.norm_correction};
  std::vector<float> scratch(static_cast<size_t>(d));
  for (int64_t v = 0; v < n; ++v) {
    if (p == CodePath::kAvx2) decode_one_avx2(a, indices + v * ib, scales[v], out + v * d, scratch.data());
    else decode_one_scalar(a, indices + v * ib, scales[v], out + v * d, scratch.data());
  }
}

}  // namespace tqkv
