// Lloyd-Max codebooks for one coordinate of a uniform point on the unit sphere S^{d-1}.
//
// Density: f(t) = Gamma(d/2) / (sqrt(pi) Gamma((d-1)/2)) (1 - t^2)^((d-3)/2) on [-1, 1].
// With t = sin(theta) it becomes f dt ~ cos(theta)^(d-2) dtheta on [-pi/2, pi/2], smooth for every
// d >= 2 (no endpoint singularity at d = 2), so every cell [a, b] is integrated exactly in theta over
// [asin a, asin b] by composite Gauss-Legendre. Nothing is truncated: the outer cells reach +-1.
// The normalising constant is taken from the same quadrature (total mass), so f integrates to 1.
#include <algorithm>
#include <cmath>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>

#include "tqkv/codec.h"

namespace tqkv {
namespace {

// N-point Gauss-Legendre nodes/weights on [-1, 1], computed once by Newton on P_N.
template <int N>
struct GaussLegendre {
  static constexpr int kN = N;
  double x[kN], w[kN];
  GaussLegendre() {
    for (int i = 0; i < kN; ++i) {
      double z = std::cos(M_PI * (i + 0.75) / (kN + 0.5));
      for (int it = 0; it < 100; ++it) {
        double p0 = 1, p1 = 0;
        for (int k = 1; k <= kN; ++k) {
          const double p2 = p1;
          p1 = p0;
          p0 = ((2 * k - 1) * z * p1 - (k - 1) * p2) / k;
        }
        const double dp = kN * (z * p0 - p1) / (z * z - 1);
        const double dz = p0 / dp;
        z -= dz;
        if (std::fabs(dz) < 1e-16) {
          x[i] = z;
          w[i] = 2 / ((1 - z * z) * dp * dp);
          break;
        }
        x[i] = z;
        w[i] = 2 / ((1 - z * z) * dp * dp);
      }
    }
  }
};
template <int N>
const GaussLegendre<N>& gl() {
  static const GaussLegendre<N> g;
  return g;
}

struct Moments {
  double m0 = 0, m1 = 0, m2 = 0;  // integral of w, t w, t^2 w over the cell (unnormalised)
};

// Moments of cos(theta)^(d-2) over theta in [a, b], split into `pieces` equal parts, N points each.
template <int N = 20>
Moments cell_moments(int d, double a, double b, int pieces) {
  Moments m;
  const GaussLegendre<N>& g = gl<N>();
  const double h = (b - a) / pieces;
  for (int p = 0; p < pieces; ++p) {
    const double lo = a + p * h, mid = lo + h / 2;
    for (int i = 0; i < N; ++i) {
      const double th = mid + h / 2 * g.x[i];
      const double c = std::cos(th);
      const double w = g.w[i] * h / 2 * (d == 2 ? 1.0 : std::exp((d - 2) * std::log(std::max(c, 1e-300))));
      const double t = std::sin(th);
      m.m0 += w;
      m.m1 += w * t;
      m.m2 += w * t * t;
    }
  }
  return m;
}

// Inverse standard normal CDF by bisection on erfc (only used for the starting point).
double normal_quantile(double p) {
  double lo = -40, hi = 40;
  for (int i = 0; i < 200; ++i) {
    const double mid = (lo + hi) / 2;
    if (0.5 * std::erfc(-mid / std::sqrt(2.0)) < p) lo = mid; else hi = mid;
  }
  return (lo + hi) / 2;
}

struct Solution {
  std::vector<double> c;
  double distortion;  // per coordinate, E[(t - Q(t))^2]
};

void symmetrize_odd(std::vector<double>& c) {
  const size_t L = c.size();
  for (size_t k = 0; k < L / 2; ++k) {
    const double s = (c[L - 1 - k] - c[k]) / 2;
    c[k] = -s;
    c[L - 1 - k] = s;
  }
}

// One Lloyd step: decision boundaries at the midpoints of `c`, then every centroid moved to the
// conditional mean of its cell. Returns the distortion of the cells it integrated.
double lloyd_step(int d, double total, const std::vector<double>& c, std::vector<double>& out,
                  bool symmetrize = true) {
  const int L = static_cast<int>(c.size());
  const double half_pi = M_PI / 2;
  double distortion = 0;
  double lo = -half_pi;
  for (int k = 0; k < L; ++k) {
    const double hi = k + 1 < L ? std::asin((c[k] + c[k + 1]) / 2) : half_pi;
    // Outer cells span a wide theta range where the mass falls off like a Gaussian: more pieces.
    // 8 bits: the 254 inner cells are each ~1/40 of a standard deviation wide, where an 8-point
    // rule is exact to double precision for all practical purposes.
    const bool outer = k == 0 || k == L - 1;
    const Moments m = outer ? cell_moments<20>(d, lo, hi, 64)
                      : L > 16 ? cell_moments<8>(d, lo, hi, 1)
                               : cell_moments<20>(d, lo, hi, 8);
    const double ck = m.m0 > 0 ? m.m1 / m.m0 : (std::sin(lo) + std::sin(hi)) / 2;
    out[k] = ck;
    distortion += (m.m2 - 2 * ck * m.m1 + ck * ck * m.m0) / total;
    lo = hi;
  }
  // Exact symmetry: the density is even, so the optimum is odd.
  if (symmetrize) symmetrize_odd(out);
  return distortion;
}

bool strictly_increasing(const std::vector<double>& c) {
  for (size_t k = 0; k < c.size(); ++k)
    if (!(c[k] > -1 && c[k] < 1) || (k > 0 && !(c[k] > c[k - 1]))) return false;
  return true;
}

// Lloyd-Max: the fixed point c = T(c) of the Lloyd step. Plain Lloyd iteration contracts slowly
// when there are many cells (thousands of steps at 8 bits), so after a short Lloyd warm-up the
// fixed point is found by Newton's method on F(c) = T(c) - c. Centroid k depends only on
// c[k-1], c[k], c[k+1] (its two boundaries), so the Jacobian is tridiagonal: three perturbed Lloyd
// steps (every third coordinate at once) give it by finite differences, and a Thomas solve gives
// the update. Newton falls back to Lloyd steps if it ever leaves the ordered region.
Solution solve(int d, int bits) {
  const int L = 1 << bits;
  const double sigma = 1.0 / std::sqrt(static_cast<double>(d));
  std::vector<double> c(L), t(L), tp(L);
  // Start: the high-resolution optimum for a Gaussian (point density ~ f^(1/3): sigma * sqrt(3)).
  for (int k = 0; k < L; ++k)
    c[k] = std::clamp(std::sqrt(3.0) * sigma * normal_quantile((k + 0.5) / L), -0.999, 0.999);
  const double total = cell_moments(d, -M_PI / 2, M_PI / 2, 512).m0;  // the normaliser
  const double tol = 1e-13 * sigma;
  double distortion = 0;
  for (int iter = 0; iter < 30; ++iter) {  // warm-up: gets every cell near its optimum
    distortion = lloyd_step(d, total, c, t);
    c.swap(t);
  }
  std::vector<double> lower(L), diag(L), upper(L), rhs(L), cp(L), dp(L);
  for (int newton = 0; newton < 60; ++newton) {
    distortion = lloyd_step(d, total, c, t);
    double resid = 0;
    for (int k = 0; k < L; ++k) resid = std::max(resid, std::fabs(t[k] - c[k]));
    if (resid < tol) {
      c.swap(t);
      break;
    }
    // Jacobian of F = T - I by forward differences, columns j = r, r+3, ... at once.
    const double h = 1e-7 * sigma;
    std::vector<double> base(L);
    lloyd_step(d, total, c, base, /*symmetrize=*/false);
    std::fill(lower.begin(), lower.end(), 0.0);
    std::fill(upper.begin(), upper.end(), 0.0);
    for (int r = 0; r < 3; ++r) {
      std::vector<double> cpert = c;
      for (int j = r; j < L; j += 3) cpert[j] += h;
      // Symmetrising would mix columns: the raw step gives the differences.
      lloyd_step(d, total, cpert, tp, /*symmetrize=*/false);
      for (int j = r; j < L; j += 3) {
        // Row k's entry in column j comes from the perturbed step's centroid k (k = j-1, j, j+1).
        for (int k = std::max(0, j - 1); k <= std::min(L - 1, j + 1); ++k) {
          const double dTdc = (tp[k] - base[k]) / h;
          const double a = dTdc - (k == j ? 1.0 : 0.0);
          if (k == j) diag[k] = a;
          else if (k == j - 1) upper[k] = a;  // row k = j-1, column k+1
          else lower[k] = a;                  // row k = j+1, column k-1
        }
      }
    }
    // Solve J dc = -(T(c) - c) (Thomas algorithm; J is diagonally dominant near the optimum).
    for (int k = 0; k < L; ++k) rhs[k] = -(t[k] - c[k]);
    cp[0] = upper[0] / diag[0];
    dp[0] = rhs[0] / diag[0];
    for (int k = 1; k < L; ++k) {
      const double m = diag[k] - lower[k] * cp[k - 1];
      cp[k] = upper[k] / m;
      dp[k] = (rhs[k] - lower[k] * dp[k - 1]) / m;
    }
    std::vector<double> next(L);
    next[L - 1] = dp[L - 1];
    for (int k = L - 2; k >= 0; --k) next[k] = dp[k] - cp[k] * next[k + 1];
    for (int k = 0; k < L; ++k) next[k] += c[k];
    symmetrize_odd(next);
    if (strictly_increasing(next)) {
      c.swap(next);
    } else {
      for (int i = 0; i < 20; ++i) {  // left the ordered region: plain Lloyd steps instead
        lloyd_step(d, total, c, t);
        c.swap(t);
      }
    }
  }
  distortion = lloyd_step(d, total, c, t);  // distortion of the final codebook itself
  return {c, distortion};
}

}  // namespace

Result<const Codebook*> Codebook::get(int head_dim, int bits) {
  if (!(bits == 1 || bits == 2 || bits == 3 || bits == 4 || bits == 8))
    return invalid_argument("codebook bits must be 1, 2, 3, 4 or 8, got " + std::to_string(bits));
  if (head_dim < 2 || head_dim > 4096)
    return invalid_argument("codebook head_dim must be in [2, 4096], got " + std::to_string(head_dim));
  static std::mutex mu;
  static std::map<std::pair<int, int>, std::unique_ptr<Codebook>> cache;
  std::lock_guard<std::mutex> lock(mu);  // solving under the lock: each (d, bits) is solved once
  auto& slot = cache[{head_dim, bits}];
  if (!slot) {
    const Solution s = solve(head_dim, bits);
    const int L = 1 << bits;
    std::vector<float> cf(L), bf(L - 1);
    for (int k = 0; k < L; ++k) cf[k] = static_cast<float>(s.c[k]);
    for (int k = 0; k + 1 < L; ++k) bf[k] = static_cast<float>((s.c[k] + s.c[k + 1]) / 2);
    slot = std::make_unique<Codebook>(head_dim, bits, std::move(cf), std::move(bf), head_dim * s.distortion);
  }
  return static_cast<const Codebook*>(slot.get());
}

// Nearest centroid = number of decision boundaries strictly below y (a tie goes to the lower cell).
uint32_t Codebook::quantize(float y) const {
  uint32_t lo = 0;
  for (uint32_t step = levels() / 2; step >= 1; step /= 2)
    if (y > boundaries_[lo + step - 1]) lo += step;
  return lo;
}

}  // namespace tqkv
