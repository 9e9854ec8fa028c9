// Codebook solver: symmetry, monotonicity, the large-d Gaussian limit and the table in
// ../shared/TURBOQUANT.md, and parameter checks.
#include <gtest/gtest.h>

#include <cmath>

#include "tqkv/codec.h"

namespace tqkv {
namespace {

TEST(Codebook, RejectsBadParameters) {
  for (int bits : {0, 5, 6, 7, 9, 16, -1}) EXPECT_FALSE(Codebook::get(128, bits).is_ok()) << bits;
  for (int d : {0, 1, -4, 4097}) EXPECT_FALSE(Codebook::get(d, 4).is_ok()) << d;
}

TEST(Codebook, SymmetricMonotoneAndMidpointBoundaries) {
  for (int d : {64, 80, 96, 128, 256})
    for (int bits : {1, 2, 3, 4, 8}) {
      auto r = Codebook::get(d, bits);
      ASSERT_TRUE(r.is_ok());
      const Codebook& cb = *r.value();
      const int L = cb.levels();
      for (int k = 0; k < L; ++k) {
        ASSERT_TRUE(std::isfinite(cb.centroids()[k]));
        EXPECT_EQ(cb.centroids()[k], -cb.centroids()[L - 1 - k]);
        if (k > 0) EXPECT_LT(cb.centroids()[k - 1], cb.centroids()[k]);
        EXPECT_LT(std::fabs(cb.centroids()[k]), 1.0f);
      }
      for (int k = 0; k + 1 < L; ++k) {
        const double mid = (static_cast<double>(cb.centroids()[k]) + cb.centroids()[k + 1]) / 2;
        EXPECT_NEAR(cb.boundaries()[k], mid, 1e-7 * std::fabs(mid) + 1e-9);
        EXPECT_EQ(cb.quantize(cb.centroids()[k]), static_cast<uint32_t>(k));
      }
      EXPECT_EQ(cb.quantize(cb.centroids()[L - 1]), static_cast<uint32_t>(L - 1));
      EXPECT_GT(cb.expected_mse(), 0.0);
      EXPECT_LT(cb.expected_mse(), 1.0);
    }
}

TEST(Codebook, ReturnsTheSameCachedObject) {
  auto a = Codebook::get(128, 3), b = Codebook::get(128, 3);
  ASSERT_TRUE(a.is_ok() && b.is_ok());
  EXPECT_EQ(a.value(), b.value());
}

// As d grows, centroids * sqrt(d) tend to the N(0,1) Lloyd-Max values and the unit-vector MSE to the
// Gaussian figure. Table: ../shared/TURBOQUANT.md (4 significant digits). At d = 4096 the finite-d
// deviation is O(1/d), far below the tolerance used here.
TEST(Codebook, LargeDimensionMatchesGaussianLloydMax) {
  const double c1[] = {0.7979}, c2[] = {0.4528, 1.5104}, c3[] = {0.2451, 0.7560, 1.3439, 2.1519};
  const double c4[] = {0.1284, 0.3880, 0.6568, 0.9423, 1.2562, 1.6180, 2.0690, 2.7326};
  const double* tab[] = {nullptr, c1, c2, c3, c4};
  const double mse[] = {0, 0.3634, 0.1175, 0.03455, 0.00950};
  const int d = 4096;
  for (int bits = 1; bits <= 4; ++bits) {
    auto r = Codebook::get(d, bits);
    ASSERT_TRUE(r.is_ok());
    const int L = 1 << bits;
    for (int k = 0; k < L / 2; ++k) {
      const double got = r.value()->centroids()[L / 2 + k] * std::sqrt(static_cast<double>(d));
      EXPECT_NEAR(got, tab[bits][k], 1.5e-3 * tab[bits][k] + 2e-4) << "bits " << bits << " k " << k;
    }
    EXPECT_NEAR(r.value()->expected_mse(), mse[bits], 2e-3 * mse[bits] + 5e-5) << bits;
  }
}

// Finite d: the exact density has lighter tails than N(0, 1/d), so the MSE at d = 64 is slightly
// below the Gaussian figure, approaching it monotonically.
TEST(Codebook, FiniteDimensionApproachesGaussianFromBelow) {
  for (int bits : {2, 3, 4}) {
    double prev = 0;
    for (int d : {64, 128, 256, 1024}) {
      const double m = Codebook::get(d, bits).value()->expected_mse();
      if (prev > 0) EXPECT_GT(m, prev) << "bits " << bits << " d " << d;
      prev = m;
    }
  }
}

}  // namespace
}  // namespace tqkv
