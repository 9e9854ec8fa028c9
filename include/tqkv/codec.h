// The TurboQuant codec: random rotation, then a Lloyd-Max scalar codebook per coordinate, plus one
// norm-corrected fp16 scale per vector. See ../shared/TURBOQUANT.md and docs/formats.md.
//
// Threads: every object here is immutable after creation and safe to use from many threads.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "tqkv/kv_layout.h"
#include "tqkv/status.h"

namespace tqkv {

// Lloyd-Max codebook for one coordinate of a uniform point on the unit sphere in R^d, solved on
// the exact density f(t) ~ (1 - t^2)^((d-3)/2). Computed once per (d, bits) and cached.
class Codebook {
 public:
  // bits in {1, 2, 3, 4, 8}; head_dim in [2, 4096]. Thread-safe; the reference lives forever.
  static Result<const Codebook*> get(int head_dim, int bits);

  int head_dim() const { return head_dim_; }
  int bits() const { return bits_; }
  int levels() const { return 1 << bits_; }
  const float* centroids() const { return centroids_.data(); }    // [levels], ascending
  const float* boundaries() const { return boundaries_.data(); }  // [levels - 1] midpoints
  // Expected squared error of a unit vector (sum over the d coordinates), from the solver.
  double expected_mse() const { return expected_mse_; }

  // Exposed for tests: index of the nearest centroid.
  uint32_t quantize(float y) const;

  Codebook(int head_dim, int bits, std::vector<float> centroids, std::vector<float> boundaries,
           double expected_mse)
      : head_dim_(head_dim), bits_(bits), centroids_(std::move(centroids)),
        boundaries_(std::move(boundaries)), expected_mse_(expected_mse) {}

 private:
  int head_dim_, bits_;
  std::vector<float> centroids_, boundaries_;
  double expected_mse_;
};

enum class RotationKind : int {
  kHadamard = 0,  // P = H diag(signs) / sqrt(d); power-of-two d only
  kDense = 1,     // seeded random orthogonal matrix (QR of a Gaussian); any d
};
const char* rotation_kind_name(RotationKind kind);
// Hadamard for power-of-two head sizes, dense otherwise.
RotationKind default_rotation(int head_dim);

// A seeded random rotation P. forward: y = P x; inverse: x = P^T y.
class Rotation {
 public:
  static Result<std::shared_ptr<const Rotation>> create(int head_dim, RotationKind kind, uint64_t seed);

  int head_dim() const { return head_dim_; }
  RotationKind kind() const { return kind_; }
  uint64_t seed() const { return seed_; }
  void forward(const float* x, float* y) const;
  void inverse(const float* y, float* x) const;
  const float* matrix() const { return matrix_.data(); }  // [d][d] row-major P, always materialised
  const float* signs() const { return signs_.empty() ? nullptr : signs_.data(); }  // Hadamard only

  Rotation(int head_dim, RotationKind kind, uint64_t seed, std::vector<float> matrix,
           std::vector<float> signs)
      : head_dim_(head_dim), kind_(kind), seed_(seed), matrix_(std::move(matrix)),
        matrix_t_(transposed(matrix_, head_dim)), signs_(std::move(signs)) {}

  // Same transforms with the implementation chosen by the caller (use_avx2 only if
  // cpu_has_avx2_fma_f16c()). Both choices give bit-identical results (same float ops, same order).
  void forward_with(const float* x, float* y, bool use_avx2) const;
  void inverse_with(const float* y, float* x, bool use_avx2) const;
  const float* matrix_transposed() const { return matrix_t_.data(); }  // [d][d] P^T row-major

 private:
  static std::vector<float> transposed(const std::vector<float>& m, int d) {
    std::vector<float> t(m.size());
    for (int i = 0; i < d; ++i)
      for (int j = 0; j < d; ++j) t[static_cast<size_t>(j) * d + i] = m[static_cast<size_t>(i) * d + j];
    return t;
  }
  int head_dim_;
  RotationKind kind_;
  uint64_t seed_;
  std::vector<float> matrix_;
  std::vector<float> matrix_t_;  // P^T, so forward is a sequence of row axpys like inverse
  std::vector<float> signs_;
};

// The rotation as a PagedKVView carries it (kv_layout.h: `rotation` = P row-major, `hadamard_signs`
// set when P = H diag(signs) / sqrt(d)), applied without a Rotation object: y = P x, x = P^T y.
// With signs, the fast Walsh-Hadamard transform (d log d); else the dense matrix. Float arithmetic
// (AVX2 when the CPU has it), like Rotation::forward / inverse.
void rotate_forward_raw(const float* P, const float* signs, int d, const float* x, float* y);
void rotate_inverse_raw(const float* P, const float* signs, int d, const float* y, float* x);

// Which implementation runs; kAuto picks the fastest the CPU supports (checked at run time).
enum class CodePath : int { kAuto = 0, kReference = 1, kScalar = 2, kAvx2 = 3 };
const char* code_path_name(CodePath path);
bool code_path_available(CodePath path);

inline constexpr uint64_t kDefaultRotationSeed = 0x7475726271756e74ull;  // "turbqunt"

struct CodecConfig {
  int head_dim = 128;
  int bits = 4;                 // 1, 2, 3, 4 or 8
  RotationKind rotation = RotationKind::kHadamard;
  uint64_t seed = kDefaultRotationSeed;
  // true: scale = |x| / |c[idx]| (the reconstruction keeps the input's norm; the cache's format).
  // false: scale = |x|, the paper's plain TurboQuant_mse (what the theoretical MSE figures describe).
  bool norm_correction = true;
  // true: for 2-4 bits with norm correction, the encoder tries 7 pre-scales of the rotated vector
  // and keeps the indices whose reconstruction direction is closest to the input (docs/formats.md,
  // "Scale search"): the same format and decoder, about 15-20% lower MSE at 4 bits for head sizes
  // 64-128. Off by default in the library (the plain codec stays the reference); the CLI turns it
  // on, for the CPU and the GPU runtime (PagedKVView::scale_search).
  bool scale_search = false;
};

// TurboQuant_mse. Encoded vector = packed indices (index_bytes(head_dim, bits) bytes, bitstream
// of kv_layout.h) + one fp16 scale = |x| / |c[idx]| (norm correction: the reconstruction has the
// input's norm). A zero vector encodes to scale 0 and decodes to zeros.
class TurboQuantCodec {
 public:
  static Result<TurboQuantCodec> create(const CodecConfig& config);

  const CodecConfig& config() const { return config_; }
  int head_dim() const { return config_.head_dim; }
  int bits() const { return config_.bits; }
  int64_t index_bytes() const { return tqkv::index_bytes(config_.head_dim, config_.bits); }
  const Codebook& codebook() const { return *codebook_; }
  const Rotation& rotation() const { return *rotation_; }

  // x: [n][head_dim] fp32. indices: [n][index_bytes()], scales: [n] fp16 bits.
  // Fails (writing nothing) if any input is NaN or Inf.
  Status encode(const float* x, int64_t n, uint8_t* indices, uint16_t* scales,
                CodePath path = CodePath::kAuto) const;
  // out: [n][head_dim] fp32.
  void decode(const uint8_t* indices, const uint16_t* scales, int64_t n, float* out,
              CodePath path = CodePath::kAuto) const;

  // Rotated-space helpers for fused attention (q.k = (Pq).(Pk); sum p v = P^T sum p (Pv)).
  void rotate(const float* x, float* y) const { rotation_->forward(x, y); }
  void unrotate(const float* y, float* x) const { rotation_->inverse(y, x); }

 private:
  TurboQuantCodec(CodecConfig config, const Codebook* codebook, std::shared_ptr<const Rotation> rotation)
      : config_(config), codebook_(codebook), rotation_(std::move(rotation)) {}
  CodecConfig config_;
  const Codebook* codebook_;
  std::shared_ptr<const Rotation> rotation_;
};

}  // namespace tqkv
