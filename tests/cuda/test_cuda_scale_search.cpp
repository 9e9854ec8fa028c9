// Quantize-on-write with the encoder's scale search (PagedKVView::scale_search; docs/formats.md,
// "Scale search") against the CPU cache that searches too (KVCacheConfig::scale_search): the same
// real codebooks, rotations and inputs, the GPU writing into device copies of the CPU's pools.
//
// The GPU decides the pre-scale from warp sums, the CPU from lane-ordered float sums, so where two
// candidates' objectives J = (y . c)^2 / |c|^2 agree to rounding the two may keep different ones.
// Required per written row: the GPU's indices equal the CPU's, except (a) coordinates within
// kTie of a decision boundary (off by one), or (b) a different pre-scale whose J is within 1e-4
// (relative) of the CPU's choice, i.e. as good; (b) on at most 3% of the rows. Scales of
// identical rows within 1 fp16 ulp. And the search must do something: at 4 bits the GPU rows
// reconstruct the inputs with at least 8% less squared error than the same GPU kernel without the
// search (the codec test measures 14-20% at head sizes 64-128).
//
// Kernels: at d = 128 (Hadamard) the tensor-core kernel searches (quantize_tc_impl.cuh); it is
// called directly (tc::quantize_tc_d128, which must launch) and checked against the CPU like the
// generic kernel (quantize_and_store sends these small calls to the generic kernel; see
// kTcMinRows in quantize.cu); the generic kernel (TQKV_CUDA_QUANT=old) is checked against
// the CPU at d = 128 too.
// Other head sizes: the generic kernel. fp16 inputs: the reference is the searching CPU codec on the
// fp16-rounded inputs (the same codec object as the cache's).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "cpu_cache_fixture.h"
#include "cuda/quantize_internal.h"
#include "cuda/quantize_tc.cuh"
#include "cuda_test_util.h"
#include "tqkv/codec.h"
#include "tqkv/cuda_attention.h"
#include "tqkv/fp16.h"
#include "tqkv/kv_layout.h"

namespace tqkv::cuda {
namespace {

using testing::CpuCache;
using testing::DeviceBuffer;

constexpr double kTie = 2e-5;

struct Written {
  std::vector<uint8_t> k, v;  // the GPU pools after quantize_and_store
};

enum class Path { kPublic, kTcDirect, kGeneric };

// The inputs of `c` in write order ([token][H][d], sequences one after another), rounded to fp16
// values when f16.
std::vector<float> inputs(const CpuCache& c, int side, bool f16) {
  std::vector<float> x;
  for (int s = 0; s < c.host.num_seqs; ++s) {
    const std::vector<float>& t = side == 0 ? c.k_tokens[s] : c.v_tokens[s];
    x.insert(x.end(), t.begin(), t.begin() + static_cast<size_t>(c.lens[s]) * c.H * c.d);
  }
  if (f16)
    for (float& v : x) v = fp16_to_float(float_to_fp16(v));
  return x;
}

// Runs quantize_and_store (or, kTcDirect, the d = 128 tensor-core kernel itself, which must launch;
// kGeneric: the generic kernel) over every token of `c` into device copies of its pools, with or
// without the search, fp32 or fp16 inputs, and returns the pools.
Written gpu_write(CpuCache& c, bool search, bool f16, Path path = Path::kPublic) {
  std::vector<uint8_t> pk = c.pool(0), pv = c.pool(1);
  std::fill(pk.begin(), pk.end(), 0xff);
  std::fill(pv.begin(), pv.end(), 0xff);
  std::vector<int64_t> slots;
  for (int s = 0; s < c.host.num_seqs; ++s)
    for (int pos = 0; pos < c.lens[s]; ++pos) {
      const int32_t page = c.host.page_table[static_cast<size_t>(s) * c.host.max_pages_per_seq + pos / 16 - c.host.first_page[s]];
      slots.push_back(static_cast<int64_t>(page) * 16 + pos % 16);
    }
  const std::vector<float> kin = inputs(c, 0, false), vin = inputs(c, 1, false);
  PagedKVView dv = c.upload(&pk, &pv);
  dv.scale_search = search ? 1 : 0;
  DeviceBuffer dk, dvin;
  if (f16) {
    std::vector<uint16_t> hk(kin.size()), hv(vin.size());
    for (size_t i = 0; i < kin.size(); ++i) hk[i] = float_to_fp16(kin[i]);
    for (size_t i = 0; i < vin.size(); ++i) hv[i] = float_to_fp16(vin[i]);
    dk = testing::to_device(hk);
    dvin = testing::to_device(hv);
  } else {
    dk = testing::to_device(kin);
    dvin = testing::to_device(vin);
  }
  DeviceBuffer ds = testing::to_device(slots);
  DeviceBuffer dbk = testing::to_device(c.boundaries_k), dbv = testing::to_device(c.boundaries_v);
  const DType dt = f16 ? DType::kF16 : DType::kF32;
  Status st;
  if (path == Path::kTcDirect) {
    const QuantArgs a{dv, {dbk.get<float>(), dbv.get<float>()}, {dk.get(), dvin.get()}, dt, ds.get<int64_t>(),
                      static_cast<int32_t>(slots.size()), {}, {}};
    bool launched = false;
    st = tc::quantize_tc_d128(a, nullptr, &launched);
    EXPECT_TRUE(launched) << "the d = 128 tensor-core kernel did not take the searching call";
  } else {
    if (path == Path::kGeneric) tc::set_quantize_kernel_old(1);
    st = quantize_and_store(dv, dbk.get<float>(), dbv.get<float>(), dk.get(), dvin.get(), dt, ds.get<int64_t>(),
                            static_cast<int32_t>(slots.size()), nullptr);
    tc::set_quantize_kernel_old(-1);
  }
  EXPECT_TRUE(st.is_ok()) << st.to_string();
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  return {testing::to_host<uint8_t>(c.d_kp, pk.size()), testing::to_host<uint8_t>(c.d_vp, pv.size())};
}

// Checks the searched GPU pools `w` against the reference (the CPU cache's pools for fp32 inputs;
// the searching codec on the inputs (fp16-rounded for f16) when f16 or `recode`), and the error
// against the GPU's own rows without the search (`plain`; not for crafted inputs: error_checks).
void check_against_cpu(CpuCache& c, const Written& w, const Written& plain, bool f16, const char* label,
                       bool recode = false, bool error_checks = true) {
  const int d = c.d;
  for (int side = 0; side < 2; ++side) {
    const int bits = side == 0 ? c.kb : c.vb;
    if (bits == kF16Bits) continue;
    const TurboQuantCodec* codec = side == 0 ? c.cache->k_codec(0) : c.cache->v_codec(0);
    ASSERT_TRUE(codec->config().scale_search || bits > 4) << "the CPU cache's codec does not search";
    const float* cent = codec->codebook().centroids();
    const float* bnd = codec->codebook().boundaries();
    const int L = codec->codebook().levels();
    const int64_t ib = index_bytes(d, bits), tb = tile_bytes(16, d, bits);
    const std::vector<float> xin = inputs(c, side, f16);
    std::vector<uint8_t> cpu = c.pool(side);
    const std::vector<uint8_t>& gpu = side == 0 ? w.k : w.v;
    const std::vector<uint8_t>& gpu0 = side == 0 ? plain.k : plain.v;
    int rows = 0, other_scale = 0;
    double err_search = 0, err_plain = 0;
    std::vector<float> y(d), xs(d), x0(d);
    size_t tok = 0;  // index of the token in write order
    for (int s = 0; s < c.host.num_seqs; ++s)
      for (int pos = 0; pos < c.lens[s]; ++pos, ++tok) {
        const int32_t page = c.host.page_table[static_cast<size_t>(s) * c.host.max_pages_per_seq + pos / 16 - c.host.first_page[s]];
        const int r = pos % 16;
        for (int h = 0; h < c.H; ++h) {
          ++rows;
          const int64_t t0 = (static_cast<int64_t>(page) * c.H + h) * tb;
          const uint8_t* gi = gpu.data() + t0 + r * ib;
          uint8_t* ci = cpu.data() + t0 + r * ib;
          uint16_t* cs = reinterpret_cast<uint16_t*>(cpu.data() + t0 + tile_scales_offset(16, d, bits)) + r;
          const float* x = xin.data() + (tok * c.H + h) * d;
          if (f16 || recode) {  // the reference row: the searching CPU encoder on the fp16 values
            uint16_t sc16 = 0;
            ASSERT_TRUE(codec->encode(x, 1, ci, &sc16).is_ok());
            std::memcpy(cs, &sc16, 2);
          }
          codec->rotate(x, y.data());
          double n2 = 0;
          for (int j = 0; j < d; ++j) n2 += static_cast<double>(x[j]) * x[j];
          auto objective = [&](const uint8_t* idx) {
            double yc = 0, cc = 0;
            for (int j = 0; j < d; ++j) {
              const double cj = cent[unpack_index(idx, bits, j)];
              yc += y[j] * cj;
              cc += cj * cj;
            }
            return cc > 0 ? yc * yc / cc : 0.0;
          };
          int off_by_tie = 0, other = 0;
          for (int j = 0; j < d; ++j) {
            const uint32_t a = unpack_index(gi, bits, j), b = unpack_index(ci, bits, j);
            if (a == b) continue;
            double near = 1e9;
            for (int k = 0; k < L - 1; ++k) near = std::min(near, std::fabs(y[j] / std::sqrt(n2) - bnd[k]));
            if (near < kTie && (a > b ? a - b : b - a) == 1) ++off_by_tie;
            else ++other;
          }
          uint16_t sg, sc;
          std::memcpy(&sg, gpu.data() + t0 + tile_scales_offset(16, d, bits) + 2 * r, 2);
          std::memcpy(&sc, cs, 2);
          if (other > 0) {  // another pre-scale: as good as the CPU's
            ++other_scale;
            const double jg = objective(gi), jc = objective(ci);
            ASSERT_GE(jg, jc * (1 - 1e-4)) << label << " seq " << s << " pos " << pos << " head " << h
                                          << ": GPU's pre-scale is worse (J " << jg << " vs CPU " << jc << ")";
          } else if (off_by_tie == 0) {
            ASSERT_LE(std::abs(static_cast<int>(sg) - static_cast<int>(sc)), 1) << label << " scale bits, pos " << pos;
          }
          // Reconstruction error of the GPU rows, searched and plain.
          uint16_t s0;
          std::memcpy(&s0, gpu0.data() + t0 + tile_scales_offset(16, d, bits) + 2 * r, 2);
          codec->decode(gi, &sg, 1, xs.data());
          codec->decode(gpu0.data() + t0 + r * ib, &s0, 1, x0.data());
          for (int j = 0; j < d; ++j) {
            err_search += std::pow(static_cast<double>(xs[j]) - x[j], 2);
            err_plain += std::pow(static_cast<double>(x0[j]) - x[j], 2);
          }
        }
      }
    EXPECT_LE(other_scale, rows * 3 / 100 + 1) << label << " side " << side << ": rows with another pre-scale";
    if (!error_checks) continue;
    if (bits == 4 && d <= 128) {
      EXPECT_LT(err_search, 0.92 * err_plain) << label << " side " << side;
    }
    if (bits == 8) {
      EXPECT_NEAR(err_search, err_plain, 1e-3 * err_plain) << label << " 8-bit sides are not searched";
    }
    EXPECT_LE(err_search, err_plain * 1.001) << label << " side " << side << ": the search made the error larger";
    std::printf("[ info ] d%d %d-bit side %d %s: %d rows, %d with another pre-scale than the CPU's, squared error "
                "searched / plain = %.3f\n", d, bits, side, label, rows, other_scale, err_search / err_plain);
  }
}

TEST(CudaScaleSearch, GpuSearchMatchesCpuSearchAndLowersTheError) {
  TQKV_REQUIRE_GPU();
  struct Bits { int kb, vb; };
  for (int d : {64, 80, 96, 128, 256})
    for (Bits f : {Bits{4, 4}, Bits{3, 3}, Bits{2, 2}, Bits{8, 4}, Bits{4, 3}}) {
      if (f.kb == 4 && f.vb == 3 && d != 128) continue;  // (4, 3): a pair of the d = 128 tensor-core kernel
      SCOPED_TRACE("d" + std::to_string(d) + " k" + std::to_string(f.kb) + "v" + std::to_string(f.vb));
      CpuCache c;
      c.d = d; c.kb = f.kb; c.vb = f.vb; c.H = 2;
      c.lens = {40, 57};
      c.scale_search = true;
      ASSERT_TRUE(c.build(900 + d + 7 * f.kb + f.vb).is_ok());
      for (bool f16 : {false, true}) {
        const Written w = gpu_write(c, true, f16);
        const Written plain = gpu_write(c, false, f16);
        check_against_cpu(c, w, plain, f16, f16 ? "fp16 in" : "fp32 in");
        if (::testing::Test::HasFatalFailure()) return;
        if (d == 128) {
          // The tensor-core kernel searches (quantize_and_store takes it from 4096 vectors a call;
          // these calls are smaller and take the generic kernel, checked above), against the CPU too.
          const Written tcw = gpu_write(c, true, f16, Path::kTcDirect);
          check_against_cpu(c, tcw, plain, f16, f16 ? "tensor-core, fp16 in" : "tensor-core, fp32 in");
          if (::testing::Test::HasFatalFailure()) return;
          // The generic kernel at d = 128, against the CPU too.
          const Written gen = gpu_write(c, true, f16, Path::kGeneric);
          check_against_cpu(c, gen, plain, f16, f16 ? "generic, fp16 in" : "generic, fp32 in");
          if (::testing::Test::HasFatalFailure()) return;
        }
      }
    }
}

// Rotated vectors with one or two large coordinates (|t| up to ~1): at the plain grid scale u * alpha
// would leave the tensor-core kernel's index grid for alpha > 1 (the cell index wraps and the spike
// gets a wrong index); the searched sides use Grid::kSearchScale (quantize_tc_impl.cuh) so that it
// stays inside. Reference: the searching CPU codec.
TEST(CudaScaleSearch, SpikyRotatedVectorsAtD128) {
  TQKV_REQUIRE_GPU();
  struct Bits { int kb, vb; };
  for (Bits f : {Bits{4, 4}, Bits{3, 3}, Bits{2, 2}, Bits{8, 4}})
    for (bool f16 : {false, true}) {
      SCOPED_TRACE("k" + std::to_string(f.kb) + "v" + std::to_string(f.vb) + (f16 ? " fp16" : " fp32"));
      CpuCache c;
      c.d = 128; c.kb = f.kb; c.vb = f.vb; c.H = 2;
      c.lens = {45};
      c.scale_search = true;
      ASSERT_TRUE(c.build(77 + 7 * f.kb + f.vb).is_ok());
      std::mt19937_64 rng(5);
      std::normal_distribution<float> nd(0.f, 1.f);
      std::vector<float> y(128);
      for (int side = 0; side < 2; ++side) {
        const TurboQuantCodec* codec = side == 0 ? c.cache->k_codec(0) : c.cache->v_codec(0);
        std::vector<float>& t = side == 0 ? c.k_tokens[0] : c.v_tokens[0];
        for (size_t v = 0; v < t.size() / 128; ++v) {
          for (float& e : y) e = 0.02f * nd(rng);
          const int j = static_cast<int>((v * 37) % 128);
          if (v % 3 == 0) {
            y[j] = v % 2 ? 3.f : -3.f;  // |t| ~ 0.99
          } else if (v % 3 == 1) {
            y[j] = 2.f; y[(j + 5) % 128] = -1.5f;  // |t| ~ 0.8 and 0.6
          } else {
            y[j] = -2.5f; y[(j + 9) % 128] = 0.6f;  // |t| ~ 0.97
          }
          codec->unrotate(y.data(), t.data() + v * 128);
        }
      }
      const Written w = gpu_write(c, true, f16);
      const Written plain = gpu_write(c, false, f16);
      check_against_cpu(c, w, plain, f16, f16 ? "spiky, fp16 in" : "spiky, fp32 in", true, false);
      if (::testing::Test::HasFatalFailure()) return;
      const Written tcw = gpu_write(c, true, f16, Path::kTcDirect);
      check_against_cpu(c, tcw, plain, f16, f16 ? "spiky, tensor-core, fp16 in" : "spiky, tensor-core, fp32 in", true, false);
    }
}

}  // namespace
}  // namespace tqkv::cuda
