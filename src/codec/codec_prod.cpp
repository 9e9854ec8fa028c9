// QjlProdCodec (TurboQuant_prod): see include/tqkv/codec_prod.h for the estimator.
#include "tqkv/codec_prod.h"

#include <cmath>
#include <cstring>
#include <string>

#include "codec/codec_internal.h"

namespace tqkv {

Result<QjlProdCodec> QjlProdCodec::create(const ProdConfig& config) {
  if (config.bits < 2 || config.bits > 9)
    return invalid_argument("prod bits must be in [2, 9] (MSE part uses bits-1), got " + std::to_string(config.bits));
  const int m = config.sketch_dim == 0 ? config.head_dim : config.sketch_dim;
  if (m < 1 || m > 4096) return invalid_argument("prod sketch_dim must be in [1, 4096], got " + std::to_string(m));
  TQKV_ASSIGN_OR_RETURN(TurboQuantCodec mse,
                        TurboQuantCodec::create({config.head_dim, config.bits - 1, config.rotation, config.seed}));
  // S comes from a stream distinct from the rotation's (seed xor a constant).
  std::vector<double> g(static_cast<size_t>(m) * config.head_dim);
  codec_detail::fill_gaussian(config.seed ^ 0x716a6c736b657463ull, g.data(), static_cast<int64_t>(g.size()));
  std::vector<float> s(g.begin(), g.end());
  return QjlProdCodec(std::move(mse), m, std::move(s));
}

Status QjlProdCodec::encode(const float* x, int64_t n, uint8_t* indices, uint16_t* scales, uint8_t* signs,
                            float* rnorms) const {
  const int d = mse_.head_dim();
  TQKV_RETURN_IF_ERROR(mse_.encode(x, n, indices, scales));
  std::vector<float> xt(d);
  std::vector<double> r(d);
  for (int64_t v = 0; v < n; ++v) {
    mse_.decode(indices + v * mse_.index_bytes(), scales + v, 1, xt.data());
    double rn = 0;
    for (int j = 0; j < d; ++j) rn += (r[j] = static_cast<double>(x[v * d + j]) - xt[j]) * r[j];
    rnorms[v] = static_cast<float>(std::sqrt(rn));
    uint8_t* sg = signs + v * sign_bytes();
    std::memset(sg, 0, static_cast<size_t>(sign_bytes()));
    for (int i = 0; i < m_; ++i) {
      double p = 0;
      for (int j = 0; j < d; ++j) p += static_cast<double>(s_[static_cast<size_t>(i) * d + j]) * r[j];
      if (p >= 0) sg[i / 8] = static_cast<uint8_t>(sg[i / 8] | (1u << (i % 8)));
    }
  }
  return Status::ok();
}

double QjlProdCodec::inner_product(const float* y, const uint8_t* indices, uint16_t scale, const uint8_t* signs,
                                   float rnorm) const {
  const int d = mse_.head_dim();
  std::vector<float> xt(d);
  mse_.decode(indices, &scale, 1, xt.data());
  double base = 0;
  for (int j = 0; j < d; ++j) base += static_cast<double>(y[j]) * xt[j];
  double acc = 0;
  for (int i = 0; i < m_; ++i) {
    double sy = 0;
    for (int j = 0; j < d; ++j) sy += static_cast<double>(s_[static_cast<size_t>(i) * d + j]) * y[j];
    acc += ((signs[i / 8] >> (i % 8)) & 1) ? sy : -sy;
  }
  return base + std::sqrt(M_PI / 2) / m_ * rnorm * acc;
}

}  // namespace tqkv
