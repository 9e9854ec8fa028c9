// TurboQuant_prod: the inner-product estimator is unbiased.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "tqkv/codec_prod.h"

namespace tqkv {
namespace {

// 100k pairs (x unit, y = unit(x + g), g ~ N(0, I/d)), so <x, y> ~ 0.7 is never near 0 and the
// ratio estimate/true is well defined. Statistics: mean ratio within 1% of 1 (the bar), and
// the mean error mean(est - true) within 5 standard errors of 0 (the sharper test of bias).
TEST(Prod, InnerProductEstimatorIsUnbiased) {
  const int d = 64, n = 100000;
  auto r = QjlProdCodec::create({d, 3, 0, RotationKind::kHadamard, 11});
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  const QjlProdCodec& c = r.value();
  std::mt19937 rng(5);
  std::normal_distribution<double> g;
  std::vector<float> x(static_cast<size_t>(n) * d), y(x.size());
  std::vector<double> truth(n);
  for (int v = 0; v < n; ++v) {
    double sx = 0, sy = 0, dot = 0;
    std::vector<double> a(d), b(d);
    for (int j = 0; j < d; ++j) sx += std::pow(a[j] = g(rng), 2);
    for (int j = 0; j < d; ++j) sy += std::pow(b[j] = a[j] / std::sqrt(sx) + g(rng) / std::sqrt(d), 2);
    for (int j = 0; j < d; ++j) {
      x[v * d + j] = static_cast<float>(a[j] / std::sqrt(sx));
      y[v * d + j] = static_cast<float>(b[j] / std::sqrt(sy));
      dot += static_cast<double>(x[v * d + j]) * y[v * d + j];
    }
    truth[v] = dot;
  }
  std::vector<uint8_t> idx(static_cast<size_t>(n) * c.mse().index_bytes()), sg(static_cast<size_t>(n) * c.sign_bytes());
  std::vector<uint16_t> sc(n);
  std::vector<float> rn(n);
  ASSERT_TRUE(c.encode(x.data(), n, idx.data(), sc.data(), sg.data(), rn.data()).is_ok());
  double ratio = 0, err = 0, err2 = 0;
  for (int v = 0; v < n; ++v) {
    const double est = c.inner_product(y.data() + static_cast<size_t>(v) * d, idx.data() + v * c.mse().index_bytes(),
                                       sc[v], sg.data() + v * c.sign_bytes(), rn[v]);
    ASSERT_TRUE(std::isfinite(est));
    ratio += est / truth[v];
    err += est - truth[v];
    err2 += std::pow(est - truth[v], 2);
  }
  ratio /= n;
  err /= n;
  const double se = std::sqrt((err2 / n - err * err) / n);
  std::printf("prod d=%d bits=3: mean ratio %.5f, mean error %.3g (se %.3g)\n", d, ratio, err, se);
  EXPECT_NEAR(ratio, 1.0, 0.01);
  EXPECT_LT(std::fabs(err), 5 * se);
  EXPECT_GT(se, 0.0);
}

TEST(Prod, RejectsBadParameters) {
  EXPECT_FALSE(QjlProdCodec::create({128, 1}).is_ok());
  EXPECT_FALSE(QjlProdCodec::create({128, 6}).is_ok());  // 5-bit MSE part
  EXPECT_FALSE(QjlProdCodec::create({100, 4}).is_ok());
}

}  // namespace
}  // namespace tqkv
