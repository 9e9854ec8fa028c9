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

#include "cuda/quantize_internal.h"
#include "cuda/quantize_tc.cuh"
#include "cuda_test_util.h"
#include "paged_fixture.h"
#include "tqkv/codec.h"
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

// fp16 inputs (f32 = false) or fp32 inputs (the GPU runtime's case).
void run_quant_case(const QuantCase& c, bool f32) {
  SCOPED_TRACE(f32 ? "fp32 input" : "fp16 input");
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
  // Input values (fp16-representable for fp16 inputs, so the reference sees what the GPU reads).
  std::vector<float> kin(static_cast<size_t>(n) * H * d), vin(kin.size());
  for (auto& x : kin) x = nd(rng) * 3.f;
  for (auto& x : vin) x = nd(rng);
  std::vector<__half> kh(kin.size()), vh(vin.size());
  for (size_t i = 0; i < kin.size(); ++i) {
    kh[i] = __float2half_rn(kin[i]);
    vh[i] = __float2half_rn(vin[i]);
    if (!f32) { kin[i] = __half2float(kh[i]); vin[i] = __half2float(vh[i]); }
  }
  DeviceBuffer dk = f32 ? testing::to_device(kin) : testing::to_device(kh);
  DeviceBuffer dv = f32 ? testing::to_device(vin) : testing::to_device(vh);
  DeviceBuffer ds = testing::to_device(slots);
  const Status st = quantize_and_store(view, dbk.get<float>(), dbv.get<float>(), dk.get(), dv.get(),
                                       f32 ? DType::kF32 : DType::kF16, ds.get<int64_t>(), n, nullptr);
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
        const float* x = (side == 0 ? kin.data() : vin.data()) + (static_cast<size_t>(i) * H + h) * d;
        if (bits == kF16Bits) {
          const auto* got = reinterpret_cast<const uint16_t*>(tile) + static_cast<size_t>(row) * d;
          for (int j = 0; j < d; ++j)
            ASSERT_EQ(got[j], __half_as_ushort(__float2half_rn(x[j]))) << "fp16 copy, coord " << j;
          continue;
        }
        const std::vector<float>& cent = side == 0 ? fx.ck : fx.cv;
        const std::vector<float>& bnd = side == 0 ? bk : bv;
        std::vector<double> xd(d), y(d, 0.0);
        double n2 = 0;
        for (int j = 0; j < d; ++j) { xd[j] = x[j]; n2 += xd[j] * xd[j]; }
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

TEST_P(QuantizeOnWrite, MatchesPlainLoopEncoder) {
  TQKV_REQUIRE_GPU();
  for (bool f32 : {false, true}) {
    run_quant_case(GetParam(), f32);
    if (::testing::Test::HasFatalFailure()) return;
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

// The tensor-core kernels (head size 128 Hadamard, 96 dense; quantize_tc.cuh) on the real
// Lloyd-Max codebooks and rotations, fp16 and fp32 inputs, every format pair they are built for,
// 5 heads (items do not align with the 8-item MMA tiles; the last tile is partial), padding
// slots, a zero token (index 0, scale 0), a tiny-norm token (|x| ~ 1e-5: the fp32 hi/lo split
// must keep its precision) and a large-norm token. `crowd` squeezes three centroids of the K
// codebook together so that two boundaries share a grid cell: the kernel must notice and fall back
// to the binary search. Same fp64 reference and tie rule as MatchesPlainLoopEncoder.
void run_tc_case(int d, int kb, int vb, bool f32, bool crowd) {
  SCOPED_TRACE("d " + std::to_string(d) + " k" + std::to_string(kb) + " v" + std::to_string(vb) +
               (f32 ? " f32" : " f16") + (crowd ? " crowded" : ""));
  const int H = 5, n = 53, P = 16, pool_pages = 8;
  const int pool_slots = pool_pages * P;
  auto rot = Rotation::create(d, default_rotation(d), kDefaultRotationSeed);
  ASSERT_TRUE(rot.is_ok());
  const std::vector<float> rotation(rot.value()->matrix(), rot.value()->matrix() + d * d);
  std::vector<float> cent[2], bnd[2];
  for (int side = 0; side < 2; ++side) {
    const int bits = side == 0 ? kb : vb;
    if (bits == kF16Bits) continue;
    auto cb = Codebook::get(d, bits);
    ASSERT_TRUE(cb.is_ok());
    cent[side].assign(cb.value()->centroids(), cb.value()->centroids() + cb.value()->levels());
    if (side == 0 && crowd) {  // c[m], c[m+1], c[m+2] within 2e-6: boundaries 1e-6 apart
      const int m = static_cast<int>(cent[0].size()) / 2 - 1;
      cent[0][m + 1] = cent[0][m] + 1e-6f;
      cent[0][m + 2] = cent[0][m] + 2e-6f;
    }
    bnd[side] = boundaries_of(cent[side]);
  }
  std::vector<DeviceBuffer> keep;
  auto up = [&](const auto& v) { keep.push_back(testing::to_device(v)); return keep.back().get(); };
  const int64_t tb[2] = {tile_bytes(P, d, kb), tile_bytes(P, d, vb)};
  std::vector<uint8_t> pool[2];
  DeviceBuffer dpool[2];
  PagedKVView view;
  view.num_kv_heads = H; view.head_dim = d; view.page_size = P;
  view.rotation = static_cast<const float*>(up(rotation));
  if (rot.value()->signs()) view.hadamard_signs = static_cast<const float*>(up(std::vector<float>(rot.value()->signs(), rot.value()->signs() + d)));
  for (int side = 0; side < 2; ++side) {
    pool[side].assign(static_cast<size_t>(pool_pages) * H * tb[side], 0xAB);
    dpool[side] = testing::to_device(pool[side]);
    KVSideView& sv = side == 0 ? view.k : view.v;
    sv = {dpool[side].get<uint8_t>(), side == 0 ? kb : vb, tb[side],
          cent[side].empty() ? nullptr : static_cast<const float*>(up(cent[side]))};
  }
  const float* dbnd[2] = {bnd[0].empty() ? nullptr : static_cast<const float*>(up(bnd[0])),
                          bnd[1].empty() ? nullptr : static_cast<const float*>(up(bnd[1]))};
  std::mt19937_64 rng(1000 + d + 10 * kb + vb + (f32 ? 7 : 0) + (crowd ? 3 : 0));
  std::vector<int64_t> slots(pool_slots);
  for (int i = 0; i < pool_slots; ++i) slots[i] = i;
  std::shuffle(slots.begin(), slots.end(), rng);
  slots.resize(n);
  slots[7] = -1;
  slots[40] = -1;
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<float> x[2];
  for (int side = 0; side < 2; ++side) {
    x[side].resize(static_cast<size_t>(n) * H * d);
    for (size_t i = 0; i < x[side].size(); ++i) {
      const size_t tok = i / (static_cast<size_t>(H) * d);
      float v = nd(rng) * (side == 0 ? 3.f : 1.f);
      if (tok == 3) v = 0.f;
      if (tok == 4) v *= 1e-6f;
      if (tok == 5) v *= 60.f;
      if (!f32) v = __half2float(__float2half_rn(v));  // the reference sees the fp16 values
      x[side][i] = v;
    }
  }
  const void* din[2];
  for (int side = 0; side < 2; ++side) {
    if (f32) {
      din[side] = up(x[side]);
    } else {
      std::vector<__half> h(x[side].size());
      for (size_t i = 0; i < h.size(); ++i) h[i] = __float2half_rn(x[side][i]);
      din[side] = up(h);
    }
  }
  // Called directly: quantize_and_store sends calls this small (265 vectors) at d = 128 to the
  // one-warp-per-vector kernels (kTcMinRows in quantize.cu).
  ASSERT_TRUE(check_quant_view(view).is_ok());
  const QuantArgs qa{view, {dbnd[0], dbnd[1]}, {din[0], din[1]}, f32 ? DType::kF32 : DType::kF16,
                     static_cast<const int64_t*>(up(slots)), n, {}, {}};
  bool launched = false;
  const Status st = d == 128 ? tc::quantize_tc_d128(qa, nullptr, &launched) : tc::quantize_tc_d96(qa, nullptr, &launched);
  ASSERT_TRUE(st.is_ok()) << st.to_string();
  ASSERT_TRUE(launched) << "the tensor-core kernel did not take the call";
  TQKV_CUDA_ASSERT(cudaDeviceSynchronize());
  int near_ties = 0;
  std::vector<bool> written(pool_slots, false);
  for (int side = 0; side < 2; ++side) {
    const int bits = side == 0 ? kb : vb;
    const auto got = testing::to_host<uint8_t>(dpool[side], pool[side].size());
    const int64_t rb = bits == kF16Bits ? 2LL * d : index_bytes(d, bits);
    for (int i = 0; i < n; ++i) {
      if (slots[i] < 0) continue;
      written[slots[i]] = true;
      const int page = static_cast<int>(slots[i] / P), row = static_cast<int>(slots[i] % P);
      for (int h = 0; h < H; ++h) {
        const uint8_t* tile = got.data() + (static_cast<size_t>(page) * H + h) * tb[side];
        const float* xv = x[side].data() + (static_cast<size_t>(i) * H + h) * d;
        if (bits == kF16Bits) {
          const auto* g16 = reinterpret_cast<const uint16_t*>(tile) + static_cast<size_t>(row) * d;
          for (int j = 0; j < d; ++j) ASSERT_EQ(g16[j], __half_as_ushort(__float2half_rn(xv[j]))) << "fp16 coord " << j;
          continue;
        }
        double n2 = 0;
        for (int j = 0; j < d; ++j) n2 += static_cast<double>(xv[j]) * xv[j];
        const double norm = std::sqrt(n2);
        const uint16_t got_scale = reinterpret_cast<const uint16_t*>(tile + tile_scales_offset(P, d, bits))[row];
        if (n2 == 0) {
          for (int j = 0; j < d; ++j) ASSERT_EQ(unpack_index(tile + row * rb, bits, j), 0u) << "zero vector, coord " << j;
          ASSERT_EQ(got_scale, 0) << "zero vector scale";
          continue;
        }
        double c2 = 0;
        for (int r = 0; r < d; ++r) {
          double y = 0;
          for (int j = 0; j < d; ++j) y += static_cast<double>(rotation[static_cast<size_t>(r) * d + j]) * xv[j];
          y /= norm;
          uint32_t want = 0;
          double gap = INFINITY;
          for (size_t b = 0; b < bnd[side].size(); ++b) {
            if (y > bnd[side][b]) want = static_cast<uint32_t>(b + 1);
            gap = std::min(gap, std::fabs(y - bnd[side][b]));
          }
          const uint32_t g = unpack_index(tile + row * rb, bits, r);
          if (g != want) {
            ASSERT_LT(gap, kTie) << "index mismatch away from a tie: side " << side << " token " << i << " head " << h
                                 << " coord " << r << " y " << y << " got " << g << " want " << want;
            ++near_ties;
          }
          c2 += static_cast<double>(cent[side][g]) * cent[side][g];
        }
        const double want_scale = norm / std::sqrt(c2);
        // 2 fp16 ulps relative, or one subnormal step (2^-24) for scales below 2^-14.
        EXPECT_NEAR(fp16_to_float(got_scale), want_scale, std::max(want_scale * (1.0 / 1024), 0x1p-24))
            << "scale, side " << side << " token " << i << " head " << h;
      }
    }
    for (int sl = 0; sl < pool_slots; ++sl) {  // rows nobody wrote keep their bytes
      if (written[sl]) continue;
      for (int h = 0; h < H; ++h)
        for (int64_t b = 0; b < rb; ++b)
          ASSERT_EQ(got[(static_cast<size_t>(sl / P) * H + h) * tb[side] + (sl % P) * rb + b], 0xAB)
              << "slot " << sl << " was overwritten";
    }
  }
  EXPECT_LE(near_ties, 3) << "too many near-tie index differences";
}

TEST(QuantizeOnWriteTc, RealCodebooksMatchPlainLoopEncoder) {
  TQKV_REQUIRE_GPU();
  for (int d : {128, 96})
    for (auto kv : {std::pair{4, 4}, {3, 3}, {8, 4}, {8, 8}, {2, 2}, {4, 3}, {8, 16}})
      for (bool f32 : {false, true}) {
        run_tc_case(d, kv.first, kv.second, f32, false);
        if (::testing::Test::HasFatalFailure()) return;
      }
}

TEST(QuantizeOnWriteTc, CrowdedBoundariesFallBackToBinarySearch) {
  TQKV_REQUIRE_GPU();
  for (int d : {128, 96})
    for (auto kv : {std::pair{4, 4}, {8, 4}, {3, 3}})
      for (bool f32 : {false, true}) {
        run_tc_case(d, kv.first, kv.second, f32, true);
        if (::testing::Test::HasFatalFailure()) return;
      }
}

// The input staging of the tensor-core kernels (cp.async into a per-warp buffer, refilled with
// the next tile while the current one is encoded; variant 1, the default) only changes where the
// inputs are read from: the pages must be byte-identical to the unstaged kernel's (variant 0). 4099 tokens x 5 heads = 2562 tiles of 8 items (the last partial) is more tiles
// than resident warps, so warps refill their buffer; slots are a random permutation.
TEST(QuantizeOnWriteTc, StagedInputsMatchUnstagedKernelBytes) {
  TQKV_REQUIRE_GPU();
  const int H = 5, n = 4099, P = 16, pages = (n + P - 1) / P + 1;
  for (int d : {128, 96})
    for (auto kv : {std::pair{4, 4}, {3, 3}, {8, 16}})
      for (bool f32 : {false, true}) {
        SCOPED_TRACE("d " + std::to_string(d) + " k" + std::to_string(kv.first) + " v" + std::to_string(kv.second) +
                     (f32 ? " f32" : " f16"));
        auto rot = Rotation::create(d, default_rotation(d), kDefaultRotationSeed);
        ASSERT_TRUE(rot.is_ok());
        std::vector<DeviceBuffer> keep;
        auto up = [&](const auto& v) { keep.push_back(testing::to_device(v)); return keep.back().get(); };
        PagedKVView view;
        view.num_kv_heads = H; view.head_dim = d; view.page_size = P;
        view.rotation = static_cast<const float*>(up(std::vector<float>(rot.value()->matrix(), rot.value()->matrix() + d * d)));
        if (rot.value()->signs())
          view.hadamard_signs = static_cast<const float*>(up(std::vector<float>(rot.value()->signs(), rot.value()->signs() + d)));
        const float* bnd[2] = {nullptr, nullptr};
        int64_t tb[2];
        for (int side = 0; side < 2; ++side) {
          const int bits = side == 0 ? kv.first : kv.second;
          KVSideView& sv = side == 0 ? view.k : view.v;
          tb[side] = tile_bytes(P, d, bits);
          sv.bits = bits;
          sv.tile_bytes = tb[side];
          if (bits == kF16Bits) continue;
          auto cb = Codebook::get(d, bits);
          ASSERT_TRUE(cb.is_ok());
          const std::vector<float> c(cb.value()->centroids(), cb.value()->centroids() + cb.value()->levels());
          sv.centroids = static_cast<const float*>(up(c));
          bnd[side] = static_cast<const float*>(up(boundaries_of(c)));
        }
        std::mt19937_64 rng(77 + d + kv.first + (f32 ? 1 : 0));
        std::vector<int64_t> slots(static_cast<size_t>(pages) * P);
        for (size_t i = 0; i < slots.size(); ++i) slots[i] = static_cast<int64_t>(i);
        std::shuffle(slots.begin(), slots.end(), rng);
        slots.resize(n);
        std::normal_distribution<float> nd(0.f, 1.f);
        const void* din[2];
        for (int side = 0; side < 2; ++side) {
          std::vector<float> x(static_cast<size_t>(n) * H * d);
          for (auto& e : x) e = nd(rng) * (side == 0 ? 3.f : 1.f);
          if (f32) {
            din[side] = up(x);
          } else {
            std::vector<__half> h(x.size());
            for (size_t i = 0; i < h.size(); ++i) h[i] = __float2half_rn(x[i]);
            din[side] = up(h);
          }
        }
        const int64_t* dslots = static_cast<const int64_t*>(up(slots));
        std::vector<uint8_t> got[2][2];  // [unstaged, staged][side]
        for (int staged = 0; staged < 2; ++staged) {
          DeviceBuffer pool[2];
          for (int side = 0; side < 2; ++side) {
            pool[side] = testing::to_device(std::vector<uint8_t>(static_cast<size_t>(pages) * H * tb[side], 0xAB));
            (side == 0 ? view.k : view.v).pages = pool[side].get<uint8_t>();
          }
          tc::set_quantize_tc_variant(staged);
          const Status st = quantize_and_store(view, bnd[0], bnd[1], din[0], din[1], f32 ? DType::kF32 : DType::kF16,
                                               dslots, n, nullptr);
          tc::set_quantize_tc_variant(-1);
          ASSERT_TRUE(st.is_ok()) << st.to_string();
          TQKV_CUDA_ASSERT(cudaDeviceSynchronize());
          for (int side = 0; side < 2; ++side)
            got[staged][side] = testing::to_host<uint8_t>(pool[side], static_cast<size_t>(pages) * H * tb[side]);
        }
        for (int side = 0; side < 2; ++side) {
          size_t differ = 0, first = 0;
          for (size_t i = 0; i < got[0][side].size(); ++i)
            if (got[0][side][i] != got[1][side][i] && differ++ == 0) first = i;
          EXPECT_EQ(differ, 0u) << "side " << side << ": first differing byte " << first;
          // And the kernels wrote: the row of the first token's first head is not the poison.
          const int64_t rb = (side == 0 ? kv.first : kv.second) == kF16Bits ? 2LL * d
                                                                             : index_bytes(d, side == 0 ? kv.first : kv.second);
          const size_t row0 = static_cast<size_t>(slots[0] / P) * H * tb[side] + (slots[0] % P) * rb;
          bool all_poison = true;
          for (int64_t b = 0; b < rb; ++b) all_poison &= got[1][side][row0 + b] == 0xAB;
          EXPECT_FALSE(all_poison) << "side " << side << ": row of token 0 not written";
        }
        if (::testing::Test::HasFailure()) return;
      }
}

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
