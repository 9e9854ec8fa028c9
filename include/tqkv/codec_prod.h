// TurboQuant_prod: unbiased inner products. (b-1)-bit TurboQuant_mse, then the QJL residual:
// r = x - x~, store sign(S r) (m bits) and |r|, S an m x d matrix of i.i.d. N(0, 1) from the seed.
// Estimate <y, x> ~ <y, x~> + sqrt(pi/2) / m * |r| * <S y, signs>  (E over S is exactly <y, x>,
// since E[sign(<s, r>) <s, y>] = sqrt(2/pi) <r, y> / |r| for s ~ N(0, I)). Not the cache's default:
// its variance hurts attention (../shared/TURBOQUANT.md); kept as a measured option.
#pragma once

#include <vector>

#include "tqkv/codec.h"

namespace tqkv {

struct ProdConfig {
  int head_dim = 128;
  int bits = 4;        // total bits per coordinate, 2..9 with bits-1 in {1, 2, 3, 4, 8}
  int sketch_dim = 0;  // m; 0 means head_dim
  RotationKind rotation = RotationKind::kHadamard;
  uint64_t seed = kDefaultRotationSeed;
};

class QjlProdCodec {
 public:
  static Result<QjlProdCodec> create(const ProdConfig& config);

  int sketch_dim() const { return m_; }
  int64_t sign_bytes() const { return (m_ + 7) / 8; }
  const TurboQuantCodec& mse() const { return mse_; }
  const float* sketch() const { return s_.data(); }  // [m][d] row-major

  // x: [n][d]. indices: [n][mse().index_bytes()], scales: [n], signs: [n][sign_bytes()] (bit i of
  // the vector's bytes, LSB first, is 1 when (S r)_i >= 0), rnorms: [n] |r| in fp32.
  Status encode(const float* x, int64_t n, uint8_t* indices, uint16_t* scales, uint8_t* signs,
                float* rnorms) const;
  // The estimator for one encoded vector and a query y [d]; computed in double.
  double inner_product(const float* y, const uint8_t* indices, uint16_t scale, const uint8_t* signs,
                       float rnorm) const;

 private:
  QjlProdCodec(TurboQuantCodec mse, int m, std::vector<float> s) : mse_(std::move(mse)), m_(m), s_(std::move(s)) {}
  TurboQuantCodec mse_;
  int m_;
  std::vector<float> s_;
};

}  // namespace tqkv
