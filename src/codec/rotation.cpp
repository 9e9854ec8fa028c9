// Seeded random rotations P (y = P x) for the codec.
//
// Hadamard (power-of-two d): P = H diag(s) / sqrt(d), H the Sylvester Walsh-Hadamard matrix
//   (H[i][j] = (-1)^popcount(i & j)), s[j] = +1 or -1 from bit 63 of the j-th splitmix64 output of
//   the seed (1 -> -1). forward: sign flip, FWHT, scale; inverse: FWHT, scale, sign flip.
// Dense (any d): G[i][j] = the (i*d + j)-th standard normal of the seed's stream (fill_gaussian),
//   P = Q with G = Q R, diag(R) > 0, computed by modified Gram-Schmidt on G's columns (twice, in
//   double). forward: y = sum_j x_j (P^T)[j]; inverse: x = sum_i y_i P[i] (row axpys, float).
#include <cmath>
#include <string>
#include <vector>

#include "codec/codec_internal.h"
#include "core/cpu_features.h"

namespace tqkv {
namespace codec_detail {

void fill_gaussian(uint64_t seed, double* out, int64_t count) {
  uint64_t state = seed;
  for (int64_t i = 0; i < count; i += 2) {
    const double u1 = (static_cast<double>(splitmix64(state) >> 11) + 1.0) * 0x1.0p-53;  // (0, 1]
    const double u2 = static_cast<double>(splitmix64(state) >> 11) * 0x1.0p-53;          // [0, 1)
    const double r = std::sqrt(-2.0 * std::log(u1));
    out[i] = r * std::cos(2 * M_PI * u2);
    if (i + 1 < count) out[i + 1] = r * std::sin(2 * M_PI * u2);
  }
}

float sumsq_lanes_scalar(const float* x, int d) {
  float l[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (int j = 0; j < d; j += 8)
    for (int k = 0; k < 8; ++k) l[k] = l[k] + x[j + k] * x[j + k];
  const float a0 = l[0] + l[4], a1 = l[1] + l[5], a2 = l[2] + l[6], a3 = l[3] + l[7];
  return (a0 + a2) + (a1 + a3);
}

float dot_lanes_scalar(const float* x, const float* y, int d) {
  float l[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (int j = 0; j < d; j += 8)
    for (int k = 0; k < 8; ++k) l[k] = l[k] + x[j + k] * y[j + k];
  const float a0 = l[0] + l[4], a1 = l[1] + l[5], a2 = l[2] + l[6], a3 = l[3] + l[7];
  return (a0 + a2) + (a1 + a3);
}

void fwht_scalar(float* v, int n) {
  for (int h = 1; h < n; h *= 2)
    for (int i = 0; i < n; i += 2 * h)
      for (int j = i; j < i + h; ++j) {
        const float a = v[j], b = v[j + h];
        v[j] = a + b;
        v[j + h] = a - b;
      }
}

void axpy_rows_scalar(const float* rows, const float* x, float* y, int d) {
  for (int i = 0; i < d; ++i) y[i] = 0.0f;
  for (int j = 0; j < d; ++j) {
    const float xj = x[j];
    const float* r = rows + static_cast<size_t>(j) * d;
    for (int i = 0; i < d; ++i) y[i] = y[i] + xj * r[i];
  }
}

}  // namespace codec_detail

using namespace codec_detail;

const char* rotation_kind_name(RotationKind kind) {
  switch (kind) {
    case RotationKind::kHadamard: return "hadamard";
    case RotationKind::kDense: return "dense";
  }
  return "unknown";
}

RotationKind default_rotation(int head_dim) {
  return (head_dim > 0 && (head_dim & (head_dim - 1)) == 0) ? RotationKind::kHadamard : RotationKind::kDense;
}

Result<std::shared_ptr<const Rotation>> Rotation::create(int head_dim, RotationKind kind, uint64_t seed) {
  const int d = head_dim;
  if (d < 8 || d % 8 != 0 || d > 4096)
    return invalid_argument("rotation head_dim must be a multiple of 8 in [8, 4096], got " + std::to_string(d));
  std::vector<float> matrix(static_cast<size_t>(d) * d);
  std::vector<float> signs;
  if (kind == RotationKind::kHadamard) {
    if ((d & (d - 1)) != 0)
      return invalid_argument("hadamard rotation needs a power-of-two head_dim, got " + std::to_string(d) +
                              " (use the dense rotation)");
    signs.resize(d);
    uint64_t state = seed;
    for (int j = 0; j < d; ++j) signs[j] = (splitmix64(state) >> 63) ? -1.0f : 1.0f;
    const double inv = 1.0 / std::sqrt(static_cast<double>(d));
    for (int i = 0; i < d; ++i)
      for (int j = 0; j < d; ++j)
        matrix[static_cast<size_t>(i) * d + j] =
            static_cast<float>(((__builtin_popcount(i & j) & 1) ? -inv : inv) * signs[j]);
  } else if (kind == RotationKind::kDense) {
    if (d > 1024) return invalid_argument("dense rotation head_dim must be <= 1024, got " + std::to_string(d));
    std::vector<double> g(static_cast<size_t>(d) * d);
    fill_gaussian(seed, g.data(), static_cast<int64_t>(g.size()));
    // Modified Gram-Schmidt over columns, each column orthogonalised twice for accuracy.
    std::vector<double> col(d);
    for (int j = 0; j < d; ++j) {
      for (int i = 0; i < d; ++i) col[i] = g[static_cast<size_t>(i) * d + j];
      for (int pass = 0; pass < 2; ++pass)
        for (int k = 0; k < j; ++k) {
          double dot = 0;
          for (int i = 0; i < d; ++i) dot += g[static_cast<size_t>(i) * d + k] * col[i];
          for (int i = 0; i < d; ++i) col[i] -= dot * g[static_cast<size_t>(i) * d + k];
        }
      double nrm = 0;
      for (int i = 0; i < d; ++i) nrm += col[i] * col[i];
      nrm = std::sqrt(nrm);
      if (!(nrm > 1e-300)) return internal_error("dense rotation: Gaussian matrix is singular");
      for (int i = 0; i < d; ++i) g[static_cast<size_t>(i) * d + j] = col[i] / nrm;  // positive R_jj
    }
    for (size_t i = 0; i < g.size(); ++i) matrix[i] = static_cast<float>(g[i]);
  } else {
    return invalid_argument("unknown rotation kind " + std::to_string(static_cast<int>(kind)));
  }
  return std::shared_ptr<const Rotation>(
      std::make_shared<Rotation>(d, kind, seed, std::move(matrix), std::move(signs)));
}

namespace {
// P = H diag(signs) / sqrt(d): forward = sign flip, FWHT, scale; inverse = FWHT, scale, sign flip.
// Shared by Rotation and the raw-array entry points, so both give the same bits.
void hadamard_forward(const float* signs, int d, const float* x, float* y, bool use_avx2) {
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(d)));
  for (int j = 0; j < d; ++j) y[j] = x[j] * signs[j];
  if (use_avx2) fwht_avx2(y, d); else fwht_scalar(y, d);
  for (int j = 0; j < d; ++j) y[j] = y[j] * scale;
}
void hadamard_inverse(const float* signs, int d, const float* y, float* x, bool use_avx2) {
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(d)));
  for (int j = 0; j < d; ++j) x[j] = y[j];
  if (use_avx2) fwht_avx2(x, d); else fwht_scalar(x, d);
  for (int j = 0; j < d; ++j) x[j] = x[j] * scale * signs[j];
}
}  // namespace

void Rotation::forward_with(const float* x, float* y, bool use_avx2) const {
  const int d = head_dim_;
  if (kind_ == RotationKind::kHadamard) {
    hadamard_forward(signs_.data(), d, x, y, use_avx2);
  } else {
    if (use_avx2) axpy_rows_avx2(matrix_t_.data(), x, y, d); else axpy_rows_scalar(matrix_t_.data(), x, y, d);
  }
}

void Rotation::inverse_with(const float* y, float* x, bool use_avx2) const {
  const int d = head_dim_;
  if (kind_ == RotationKind::kHadamard) {
    hadamard_inverse(signs_.data(), d, y, x, use_avx2);
  } else {
    if (use_avx2) axpy_rows_avx2(matrix_.data(), y, x, d); else axpy_rows_scalar(matrix_.data(), y, x, d);
  }
}

void rotate_forward_raw(const float* P, const float* signs, int d, const float* x, float* y) {
  const bool avx2 = cpu_has_avx2_fma_f16c() && d % 8 == 0;
  if (signs != nullptr) {
    hadamard_forward(signs, d, x, y, avx2);
    return;
  }
  // y_i = P[i] . x, with 8 lane accumulators (the compiler vectorizes the lanes; d % 8 == 0 for
  // TurboQuant head sizes, the tail loop covers any other d).
  for (int i = 0; i < d; ++i) {
    const float* r = P + static_cast<size_t>(i) * d;
    float lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int j = 0;
    for (; j + 8 <= d; j += 8)
      for (int l = 0; l < 8; ++l) lane[l] += r[j + l] * x[j + l];
    float a = ((lane[0] + lane[4]) + (lane[2] + lane[6])) + ((lane[1] + lane[5]) + (lane[3] + lane[7]));
    for (; j < d; ++j) a += r[j] * x[j];
    y[i] = a;
  }
}

void rotate_inverse_raw(const float* P, const float* signs, int d, const float* y, float* x) {
  const bool avx2 = cpu_has_avx2_fma_f16c() && d % 8 == 0;
  if (signs != nullptr) {
    hadamard_inverse(signs, d, y, x, avx2);
    return;
  }
  if (avx2) axpy_rows_avx2(P, y, x, d); else axpy_rows_scalar(P, y, x, d);  // x = sum_j y_j P[j]
}

void Rotation::forward(const float* x, float* y) const { forward_with(x, y, cpu_has_avx2_fma_f16c()); }
void Rotation::inverse(const float* y, float* x) const { inverse_with(y, x, cpu_has_avx2_fma_f16c()); }

}  // namespace tqkv
