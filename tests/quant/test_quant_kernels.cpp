// The fast paths against the reference: AVX2 dequantization must be bit-identical to the plain
// reference; dot products (AVX2 and scalar) must match a double-precision sum over the reference
// values within atol + rtol * sum|w x| (zero violations, NaN fails); one-hot vectors must pick out
// single weights exactly; matvec must equal per-row dots. Random blocks, awkward sizes.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "tqkv/fp16.h"
#include "tqkv/weights.h"

namespace tqkv {
// Readable test names in failure messages.
inline void PrintTo(GgmlType t, std::ostream* os) { *os << ggml_type_name(t); }
namespace {

const GgmlType kAll[] = {GgmlType::kF32,  GgmlType::kF16,  GgmlType::kBF16, GgmlType::kQ8_0,
                         GgmlType::kQ4_0, GgmlType::kQ4_1, GgmlType::kQ5_0, GgmlType::kQ5_1,
                         GgmlType::kQ4_K, GgmlType::kQ5_K, GgmlType::kQ6_K};

// Byte offsets of the fp16 scale fields inside one block (the rest of a block is free bits).
std::vector<int> scale_offsets(GgmlType t) {
  switch (t) {
    case GgmlType::kQ8_0: case GgmlType::kQ4_0: case GgmlType::kQ5_0: return {0};
    case GgmlType::kQ4_1: case GgmlType::kQ5_1: case GgmlType::kQ4_K: case GgmlType::kQ5_K: return {0, 2};
    case GgmlType::kQ6_K: return {208};
    default: return {};
  }
}

// `blocks` random blocks with finite fp16 scales of varied size (stored in uint16 for alignment).
std::vector<uint16_t> random_row(GgmlType t, int64_t n, std::mt19937& rng) {
  const GgmlTypeTraits tr = ggml_type_traits(t);
  const size_t bytes = static_cast<size_t>(n / tr.block_size * tr.block_bytes);
  std::vector<uint16_t> buf((bytes + 1) / 2);
  auto* p = reinterpret_cast<uint8_t*>(buf.data());
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::uniform_int_distribution<int> byte(0, 255);
  if (t == GgmlType::kF32) {
    for (int64_t i = 0; i < n; ++i) { const float v = nd(rng); std::memcpy(p + 4 * i, &v, 4); }
  } else if (t == GgmlType::kF16) {
    for (int64_t i = 0; i < n; ++i) buf[i] = float_to_fp16(nd(rng));
  } else if (t == GgmlType::kBF16) {
    for (int64_t i = 0; i < n; ++i) { const float v = nd(rng); uint32_t b; std::memcpy(&b, &v, 4); buf[i] = b >> 16; }
  } else {
    for (size_t i = 0; i < bytes; ++i) p[i] = static_cast<uint8_t>(byte(rng));
    for (int64_t b = 0; b < n / tr.block_size; ++b) {
      for (int off : scale_offsets(t)) {
        const uint16_t h = float_to_fp16(nd(rng) * 0.05f);
        std::memcpy(p + b * tr.block_bytes + off, &h, 2);
      }
    }
  }
  return buf;
}

std::vector<float> random_x(int64_t n, std::mt19937& rng) {
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(n));
  for (float& v : x) v = nd(rng);
  return x;
}

// Lengths: 1, 3 and 17 blocks; float types also odd lengths that exercise the tails.
std::vector<int64_t> lengths(GgmlType t) {
  const int64_t bs = ggml_type_traits(t).block_size;
  if (bs == 1) return {1, 7, 33, 1000, 4352};
  return {bs, 3 * bs, 17 * bs};
}

std::vector<KernelChoice> available_paths() {
  std::vector<KernelChoice> p = {KernelChoice::kScalar};
  if (weight_row_kernels(GgmlType::kF32, KernelChoice::kAvx2).is_ok()) p.push_back(KernelChoice::kAvx2);
  return p;
}

class QuantKernels : public ::testing::TestWithParam<GgmlType> {};

TEST_P(QuantKernels, DequantizeMatchesReferenceBitForBit) {
  const GgmlType t = GetParam();
  std::mt19937 rng(1234 + static_cast<int>(t));
  for (int64_t n : lengths(t)) {
    const std::vector<uint16_t> row = random_row(t, n, rng);
    std::vector<float> ref(static_cast<size_t>(n), std::nanf(""));
    ASSERT_TRUE(dequantize_row_reference(t, row.data(), ref.data(), n).is_ok());
    for (KernelChoice k : available_paths()) {
      const WeightRowKernels kern = weight_row_kernels(t, k).value();
      std::vector<float> got(static_cast<size_t>(n), std::nanf(""));
      kern.dequantize(row.data(), got.data(), n);
      int bad = 0;
      for (int64_t i = 0; i < n; ++i) {
        if (std::memcmp(&got[i], &ref[i], 4) != 0 && ++bad <= 3) {
          ADD_FAILURE() << ggml_type_name(t) << " " << kern.path << " n=" << n << " [" << i << "] " << got[i] << " vs " << ref[i];
        }
      }
      EXPECT_EQ(bad, 0);
    }
  }
}

TEST_P(QuantKernels, DotMatchesDoubleReference) {
  const GgmlType t = GetParam();
  std::mt19937 rng(99 + static_cast<int>(t));
  const double rtol = 3e-5, atol = 1e-6;
  for (int64_t n : lengths(t)) {
    const std::vector<uint16_t> row = random_row(t, n, rng);
    const std::vector<float> x = random_x(n, rng);
    std::vector<float> w(static_cast<size_t>(n));
    ASSERT_TRUE(dequantize_row_reference(t, row.data(), w.data(), n).is_ok());
    double ref = 0.0, mag = 0.0;
    for (int64_t i = 0; i < n; ++i) {
      ref += static_cast<double>(w[i]) * x[i];
      mag += std::fabs(static_cast<double>(w[i]) * x[i]);
    }
    for (KernelChoice k : available_paths()) {
      const WeightRowKernels kern = weight_row_kernels(t, k).value();
      const float got = kern.dot(row.data(), x.data(), n);
      const double err = std::fabs(static_cast<double>(got) - ref);
      EXPECT_TRUE(err <= atol + rtol * mag)  // false for NaN
          << ggml_type_name(t) << " " << kern.path << " n=" << n << ": got " << got << " ref " << ref
          << " err " << err << " bound " << atol + rtol * mag;
    }
    EXPECT_EQ(dot_row(t, row.data(), x.data(), n), weight_row_kernels(t).value().dot(row.data(), x.data(), n));
  }
}

// x = e_j picks out w_j; every kernel must return it exactly (each weight is one rounded
// product, possibly plus one rounded min, as in the reference).
TEST_P(QuantKernels, OneHotDotIsExact) {
  const GgmlType t = GetParam();
  std::mt19937 rng(7 + static_cast<int>(t));
  const int64_t n = ggml_type_traits(t).block_size == 1 ? 40 : 2 * ggml_type_traits(t).block_size;
  const std::vector<uint16_t> row = random_row(t, n, rng);
  std::vector<float> w(static_cast<size_t>(n));
  ASSERT_TRUE(dequantize_row_reference(t, row.data(), w.data(), n).is_ok());
  std::vector<float> x(static_cast<size_t>(n), 0.0f);
  for (KernelChoice k : available_paths()) {
    const WeightRowKernels kern = weight_row_kernels(t, k).value();
    int bad = 0;
    for (int64_t j = 0; j < n; ++j) {
      x[j] = 1.0f;
      const float got = kern.dot(row.data(), x.data(), n);
      x[j] = 0.0f;
      if (!(got == w[j]) && ++bad <= 3) ADD_FAILURE() << ggml_type_name(t) << " " << kern.path << " j=" << j << ": " << got << " vs " << w[j];
    }
    EXPECT_EQ(bad, 0);
  }
}

TEST_P(QuantKernels, MatvecEqualsRowDots) {
  const GgmlType t = GetParam();
  std::mt19937 rng(555 + static_cast<int>(t));
  const GgmlTypeTraits tr = ggml_type_traits(t);
  // Small (serial) and large (OpenMP) shapes; odd row counts.
  for (auto [rows, blocks] : {std::pair<int64_t, int64_t>{37, 3}, std::pair<int64_t, int64_t>{301, 1024 / tr.block_size > 8 ? 8 : 1024 / tr.block_size}}) {
    const int64_t cols = tr.block_size == 1 ? 8 * blocks + 3 : blocks * tr.block_size;
    const std::vector<uint16_t> w = random_row(t, rows * cols, rng);
    const std::vector<float> x = random_x(cols, rng);
    std::vector<float> y(static_cast<size_t>(rows), std::nanf(""));
    ASSERT_TRUE(matvec(t, w.data(), rows, cols, x.data(), y.data()).is_ok());
    const auto* base = reinterpret_cast<const uint8_t*>(w.data());
    const DotRowFn dot = weight_row_kernels(t).value().dot;
    for (int64_t r = 0; r < rows; ++r) {
      const float want = dot(base + r * ggml_row_bytes(t, cols), x.data(), cols);
      ASSERT_EQ(y[r], want) << ggml_type_name(t) << " row " << r;  // same kernel, same order
    }
  }
}

// matmul (prefill) against a double-precision sum over the reference-dequantized weights, for
// 1, 3 and 17 vectors; outputs poisoned with NaN first.
TEST_P(QuantKernels, MatmulMatchesDoubleReference) {
  const GgmlType t = GetParam();
  std::mt19937 rng(321 + static_cast<int>(t));
  const GgmlTypeTraits tr = ggml_type_traits(t);
  const int64_t rows = 45, cols = tr.block_size == 1 ? 77 : 3 * tr.block_size;
  const std::vector<uint16_t> w = random_row(t, rows * cols, rng);
  std::vector<float> wf(static_cast<size_t>(rows * cols));
  ASSERT_TRUE(dequantize_row_reference(t, w.data(), wf.data(), rows * cols).is_ok());
  for (int64_t n_vec : {1, 3, 17}) {
    const std::vector<float> x = random_x(n_vec * cols, rng);
    std::vector<float> y(static_cast<size_t>(n_vec * rows), std::nanf(""));
    ASSERT_TRUE(matmul(t, w.data(), rows, cols, x.data(), n_vec, y.data()).is_ok());
    int bad = 0;
    for (int64_t v = 0; v < n_vec; ++v) {
      for (int64_t r = 0; r < rows; ++r) {
        double ref = 0.0, mag = 0.0;
        for (int64_t c = 0; c < cols; ++c) {
          const double p = static_cast<double>(wf[r * cols + c]) * x[v * cols + c];
          ref += p;
          mag += std::fabs(p);
        }
        const double err = std::fabs(y[v * rows + r] - ref);
        if (!(err <= 1e-6 + 3e-5 * mag) && ++bad <= 3) {
          ADD_FAILURE() << ggml_type_name(t) << " n_vec=" << n_vec << " v=" << v << " r=" << r << ": " << y[v * rows + r] << " vs " << ref;
        }
      }
    }
    EXPECT_EQ(bad, 0);
  }
}

INSTANTIATE_TEST_SUITE_P(AllFormats, QuantKernels, ::testing::ValuesIn(kAll),
                         [](const ::testing::TestParamInfo<GgmlType>& i) {
                           return std::string(ggml_type_name(i.param));
                         });

TEST(QuantErrors, RejectsWhatItCannotDo) {
  float out[256];
  uint16_t buf[256] = {};
  EXPECT_EQ(check_weight_row(GgmlType::kQ2_K, 256).code(), StatusCode::kUnsupported);
  EXPECT_EQ(dequantize_row(GgmlType::kQ3_K, buf, out, 256).code(), StatusCode::kUnsupported);
  EXPECT_EQ(weight_row_kernels(GgmlType::kQ8_K).status().code(), StatusCode::kUnsupported);
  EXPECT_EQ(check_weight_row(GgmlType::kQ4_0, 31).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(check_weight_row(GgmlType::kQ4_K, 0).code(), StatusCode::kInvalidArgument);
  EXPECT_NE(check_weight_row(GgmlType::kQ4_K, 100).message().find("block size 256"), std::string::npos);
  EXPECT_TRUE(std::isnan(dot_row(GgmlType::kQ4_0, buf, out, 33)));
  EXPECT_TRUE(std::isnan(dot_row(GgmlType::kQ2_K, buf, out, 256)));
  const auto* odd = reinterpret_cast<const uint8_t*>(buf) + 1;
  EXPECT_EQ(dequantize_row(GgmlType::kQ8_0, odd, out, 32).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(matvec(GgmlType::kF32, buf, 2, 4, out, nullptr).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(matvec(GgmlType::kF32, buf, -1, 4, out, out + 8).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(matmul(GgmlType::kQ4_0, buf, 2, 33, out, 1, out + 64).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(matmul(GgmlType::kQ2_K, buf, 1, 256, out, 1, out).code(), StatusCode::kUnsupported);
}

}  // namespace
}  // namespace tqkv
