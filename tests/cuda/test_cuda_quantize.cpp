// Quantize-on-write and page dequantization on the GPU against plain-loop CPU code over the
// same byte layout (kv_layout.h).
//
// Encoder reference (fp64): n = |x|, y = P x / n, idx_j = nearest centroid (count of boundaries
// below y_j), scale = n / |c[idx]|. GPU indices must equal the reference except where y_j lies
// within kTie of a boundary (fp32 rotation vs fp64: a near-tie may round either way); scales
// within 2 fp16 ulps (relative 2^-10); fp16 sides bit-exact; bytes of untouched rows unchanged.
// Dequantization: |gpu - ref| <= 1e-5 * max|row| + 1e-5 * |ref| (fp32 vs fp64 of one d-term sum).
#include <gtest/gtest.h>

#include <cuda_fp16.h>

#include <cmath>
#include <random>
#include <vector>

#include "cuda_test_util.h"
#include "paged_fixture.h"
#include "tqkv/cuda_attention.h"
#include "tqkv/fp16.h"

namespace tqkv::cuda {
namespace {

using testing::DeviceBuffer;
using testing::PagedFixture;

constexpr double kTie = 2e-5;

std::vector<float> boundaries_of(const std::vector<float>& c) {
  std::vector<float> b(c.size() - 1);
  for (size_t i = 0; i + 1 < c.size(); ++i) b[i] = 0.5f * (c[i] + c[i + 1]);
  return b;
}

struct QuantCase {
  int d, kb, vb;
  bool hadamard;
};

class QuantizeOnWrite : public ::testing::TestWithParam<QuantCase> {};

TEST_P(QuantizeOnWrite, MatchesPlainLoopEncoder) {
  TQKV_REQUIRE_GPU();
  const QuantCase c = GetParam();
  PagedFixture fx;  // only its layout, tables and rotation are used; the pool starts as 0xAB
  fx.d = c.d; fx.kb = c.kb; fx.vb = c.vb;
  fx.num_kv_heads = 3;
  fx.lens = {40};
  fx.build(31 + c.d + c.kb, c.hadamard);
  std::fill(fx.kp.begin(), fx.kp.end(), 0xAB);
  std::fill(fx.vp.begin(), fx.vp.end(), 0xAB);
  const PagedKVView view = fx.upload();
  const std::vector<float> bk = fx.kb != kF16Bits ? boundaries_of(fx.ck) : std::vector<float>{};
  const std::vector<float> bv = fx.vb != kF16Bits ? boundaries_of(fx.cv) : std::vector<float>{};
  DeviceBuffer dbk = testing::to_device(bk), dbv = testing::to_device(bv);

  // 37 new tokens, one of them skipped (slot -1), written to random distinct slots of the pool.
  const int n = 37, H = fx.num_kv_heads, d = fx.d;
  std::mt19937_64 rng(5);
  std::vector<int64_t> slots(fx.pool_pages * fx.page_size);
  for (size_t i = 0; i < slots.size(); ++i) slots[i] = static_cast<int64_t>(i);
  std::shuffle(slots.begin(), slots.end(), rng);
  slots.resize(n);
  slots[11] = -1;
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<__half> kin(static_cast<size_t>(n) * H * d), vin(kin.size());
  for (auto& x : kin) x = __float2half_rn(nd(rng) * 3.f);
  for (auto& x : vin) x = __float2half_rn(nd(rng));
  DeviceBuffer dk = testing::to_device(kin), dv = testing::to_device(vin), ds = testing::to_device(slots);
  const Status st = quantize_and_store(view, dbk.get<float>(), dbv.get<float>(), dk.get(), dv.get(),
                                       DType::kF16, ds.get<int64_t>(), n, nullptr);
  ASSERT_TRUE(st.is_ok()) << st.to_string();
  TQKV_CUDA_ASSERT(cudaDeviceSynchronize());
  const auto kp = testing::to_host<uint8_t>(fx.d_kp, fx.kp.size());
  const auto vp = testing::to_host<uint8_t>(fx.d_vp, fx.vp.size());

  std::vector<bool> written(static_cast<size_t>(fx.pool_pages) * fx.page_size, false);
  int near_ties = 0;
  for (int i = 0; i < n; ++i) {
    if (slots[i] < 0) continue;
    written[slots[i]] = true;
    const int page = static_cast<int>(slots[i] / fx.page_size), row = static_cast<int>(slots[i] % fx.page_size);
    for (int h = 0; h < H; ++h) {
      for (int side = 0; side < 2; ++side) {
        const int bits = side == 0 ? fx.kb : fx.vb;
        const int64_t tb = side == 0 ? fx.tk : fx.tv;
        const uint8_t* tile = (side == 0 ? kp.data() : vp.data()) + (static_cast<size_t>(page) * H + h) * tb;
        const __half* x = (side == 0 ? kin.data() : vin.data()) + (static_cast<size_t>(i) * H + h) * d;
        if (bits == kF16Bits) {
          const auto* got = reinterpret_cast<const uint16_t*>(tile) + static_cast<size_t>(row) * d;
          for (int j = 0; j < d; ++j) ASSERT_EQ(got[j], __half_as_ushort(x[j])) << "fp16 copy, coord " << j;
          continue;
        }
        const std::vector<float>& cent = side == 0 ? fx.ck : fx.cv;
        const std::vector<float>& bnd = side == 0 ? bk : bv;
        std::vector<double> xd(d), y(d, 0.0);
        double n2 = 0;
        for (int j = 0; j < d; ++j) { xd[j] = __half2float(x[j]); n2 += xd[j] * xd[j]; }
        const double norm = std::sqrt(n2);
        for (int r = 0; r < d; ++r) {
          for (int j = 0; j < d; ++j) y[r] += static_cast<double>(fx.rotation[static_cast<size_t>(r) * d + j]) * xd[j];
          y[r] /= norm;
        }
        const int64_t ib = index_bytes(d, bits);
        double c2 = 0;
        for (int j = 0; j < d; ++j) {
          uint32_t want = 0;
          double gap = INFINITY;
          for (size_t b = 0; b < bnd.size(); ++b) {
            if (y[j] > bnd[b]) want = static_cast<uint32_t>(b + 1);
            gap = std::min(gap, std::fabs(y[j] - bnd[b]));
          }
          const uint32_t got = unpack_index(tile + row * ib, bits, j);
          if (got != want) {
            ASSERT_LT(gap, kTie) << "index mismatch away from a tie: side " << side << " coord " << j
                                 << " y " << y[j] << " got " << got << " want " << want;
            ++near_ties;
          }
          c2 += static_cast<double>(cent[got]) * cent[got];
        }
        const double want_scale = norm / std::sqrt(c2);
        const double got_scale = fp16_to_float(
            reinterpret_cast<const uint16_t*>(tile + tile_scales_offset(fx.page_size, d, bits))[row]);
        ASSERT_TRUE(std::isfinite(got_scale));
        EXPECT_NEAR(got_scale, want_scale, want_scale * (1.0 / 1024)) << "scale, side " << side;
      }
    }
  }
  EXPECT_LE(near_ties, 3) << "too many near-tie index differences";
  // Rows nobody wrote are untouched (checked on the index/value rows of every tile).
  for (int side = 0; side < 2; ++side) {
    const int bits = side == 0 ? fx.kb : fx.vb;
    const int64_t row_bytes = bits == kF16Bits ? 2LL * d : index_bytes(d, bits);
    const int64_t tb = side == 0 ? fx.tk : fx.tv;
    const auto& pool = side == 0 ? kp : vp;
    for (int s = 0; s < fx.pool_pages * fx.page_size; ++s) {
      if (written[s]) continue;
      const int page = s / fx.page_size, row = s % fx.page_size;
      for (int h = 0; h < H; ++h)
        for (int64_t b = 0; b < row_bytes; ++b)
          ASSERT_EQ(pool[(static_cast<size_t>(page) * H + h) * tb + row * row_bytes + b], 0xAB)
              << "slot " << s << " was overwritten";
    }
  }
}

std::vector<QuantCase> quant_cases() {
  std::vector<QuantCase> v;
  for (int d : {64, 80, 96, 128, 256}) {
    const bool pow2 = (d & (d - 1)) == 0;
    for (auto kv : {std::pair{4, 4}, {3, 2}, {8, 16}, {16, 3}}) {
      v.push_back({d, kv.first, kv.second, false});
      if (pow2) v.push_back({d, kv.first, kv.second, true});
    }
  }
  return v;
}
INSTANTIATE_TEST_SUITE_P(Formats, QuantizeOnWrite, ::testing::ValuesIn(quant_cases()),
                         [](const ::testing::TestParamInfo<QuantCase>& i) {
                           auto b = [](int x) { return x == 16 ? std::string("f16") : std::to_string(x); };
                           return "d" + std::to_string(i.param.d) + "_k" + b(i.param.kb) + "_v" + b(i.param.vb) +
                                  (i.param.hadamard ? "_hadamard" : "_dense");
                         });

// GPU dequantization of randomly filled pages equals the fp64 plain-loop decode.
TEST(CudaDequantize, MatchesPlainLoopDecode) {
  TQKV_REQUIRE_GPU();
  for (auto kv : {std::pair{4, 3}, {8, 2}, {16, 4}}) {
    for (int d : {80, 128}) {
      PagedFixture fx;
      fx.d = d; fx.kb = kv.first; fx.vb = kv.second;
      fx.lens = {64, 48};  // whole pages
      fx.build(17 + d, d == 128);
      const PagedKVView view = fx.upload();
      std::vector<int32_t> pages;
      for (int s = 0; s < fx.num_seqs(); ++s)
        for (int p = 0; p < fx.lens[s] / fx.page_size; ++p) pages.push_back(fx.page_table[s * fx.max_pages + p]);
      DeviceBuffer dpages = testing::to_device(pages);
      const size_t n = pages.size() * fx.num_kv_heads * fx.page_size * d;
      DeviceBuffer out(n * 4);
      for (int side = 0; side < 2; ++side) {
        testing::poison(out);
        const Status st = dequantize_pages(view, side, dpages.get<int32_t>(), static_cast<int>(pages.size()),
                                           out.get<float>(), nullptr);
        ASSERT_TRUE(st.is_ok()) << st.to_string();
        TQKV_CUDA_ASSERT(cudaDeviceSynchronize());
        const auto got = testing::to_host<float>(out, n);
        std::vector<double> ref(n);
        size_t k = 0;
        for (int s = 0; s < fx.num_seqs(); ++s)
          for (int p = 0; p < fx.lens[s] / fx.page_size; ++p)
            for (int h = 0; h < fx.num_kv_heads; ++h)
              for (int r = 0; r < fx.page_size; ++r, k += d)
                fx.decode_token(s, p * fx.page_size + r, h, side, &ref[k]);
        for (size_t row = 0; row < n; row += d) {
          double mx = 0;
          for (int j = 0; j < d; ++j) mx = std::max(mx, std::fabs(ref[row + j]));
          const std::string e = testing::compare(&got[row], &ref[row], d, 1e-5 * mx, 1e-5);
          ASSERT_TRUE(e.empty()) << "side " << side << " d " << d << " row " << row / d << ": " << e;
        }
      }
    }
  }
}

}  // namespace
}  // namespace tqkv::cuda
