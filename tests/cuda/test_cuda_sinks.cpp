// Attention sinks on the GPU (PagedKVView::sink_tokens, docs/formats.md "Attention sinks"):
// positions below sink_tokens come from the fp16 sink tiles (in each side's space), the rest from
// the pages. The ground truth is the project's CPU code: a one-layer CPU KVCache with sink_tokens
// writes the pages AND the sink tiles (real codec, real rotation), both are copied byte for byte to
// the device, and
//   1. attention_decode / attention_prefill (tiled and per-row paths) on the GPU against
//      attention_decode_reference / attention_prefill_reference on the CPU over the same view with
//      sinks: every built format, head sizes 64/80/96/128/256, GQA 1/4/8, soft-capping, windows
//      (one that hides the sinks, one that cuts into them), sink_tokens 1..16, sequences shorter
//      than sink_tokens. Tolerance as tests/cuda/test_cuda_vs_cpu.cpp: per element
//      |gpu - ref| <= 4e-3 * max|ref row| + 1e-2 * |ref|, zero violations, NaN never passes.
//   2. Sink tiles that differ from the pages (replaced by other random values, host and device
//      alike): the GPU still matches the reference, and the same GPU call with the sinks ignored
//      (sink_tokens = 0, pages read for every position) must NOT match it: the test detects a
//      kernel that skips the sink tiles.
//   3. store_sink_tokens writes the sink tiles the CPU cache writes: fp16 sides bit-identical,
//      TurboQuant sides (rotated in fp32, the sum in another order: GPU dense P, CPU fast
//      Walsh-Hadamard or its own loop) within 1 fp16 ulp + 2e-6 * max|row| (the fp32 rounding of a
//      d-term sum, which shows near zero: seen on the H200, 7.7e-5 against 7.7e-5 - 3e-7).
//   4. Bad views are refused; a captured graph replays the same bytes.
#include <gtest/gtest.h>

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "cuda/prefill_internal.h"
#include "cpu_cache_fixture.h"
#include "cuda_test_util.h"
#include "tqkv/attention.h"
#include "tqkv/cuda_attention.h"
#include "tqkv/fp16.h"
#include "tqkv/kv_cache.h"

namespace tqkv::cuda {
namespace {

using testing::AttnCase;
using testing::CpuCache;
using testing::DeviceBuffer;
using testing::Fmt;
using testing::fmt_name;
using testing::kFormats;
using testing::kHeadDims;
using testing::run_decode;
using testing::run_prefill;
using testing::sm_count;

// Sink tests accept up to half of the reference rows being zero (windows that hide everything
// but a sink of a zero-length view row are fine): the rest still proves the comparison.
constexpr double kMinNonzero = 0.5;

// ---- 1. decode and prefill with sinks against the CPU reference ----
TEST(CudaSinks, DecodeMatchesCpuReferenceEveryFormatAndHeadSize) {
  TQKV_REQUIRE_GPU();
  int sinks = 0;
  for (int d : kHeadDims) {
    for (Fmt f : kFormats) {
      CpuCache c;
      c.d = d; c.kb = f.kb; c.vb = f.vb; c.H = 2;
      c.sinks = sinks % 16 + 1;  // 1 .. 16 over the 35 cases
      sinks += 5;
      SCOPED_TRACE(fmt_name(d, f) + " sinks " + std::to_string(c.sinks));
      c.lens = {1, 3, 4, 5, 16, 17, 300};  // shorter than, equal to and past the sinks
      ASSERT_TRUE(c.build(100 + d * 7 + f.kb * 3 + f.vb).is_ok());
      ASSERT_EQ(c.host.sink_tokens, c.sinks);
      const PagedKVView dv = c.upload();
      for (AttnCase a : {AttnCase{1, 0.f, 0}, AttnCase{4, 0.f, 0}, AttnCase{8, 5.f, 0}, AttnCase{4, 0.f, 3},
                         AttnCase{4, 0.f, 64}}) {
        const std::string e = run_decode(c.host, dv, c.H, d, a, 10 + a.group + a.window, kMinNonzero);
        EXPECT_TRUE(e.empty()) << "group " << a.group << " softcap " << a.softcap << " window " << a.window << ": " << e;
      }
    }
  }
}

TEST(CudaSinks, DecodeEverySinkCount) {
  TQKV_REQUIRE_GPU();
  for (int sinks = 1; sinks <= 16; ++sinks) {
    CpuCache c;
    c.d = 128; c.kb = 4; c.vb = 4; c.H = 2; c.sinks = sinks;
    SCOPED_TRACE("sinks " + std::to_string(sinks));
    c.lens = {1, sinks, sinks + 1, 33, 200};
    ASSERT_TRUE(c.build(500 + sinks).is_ok());
    const PagedKVView dv = c.upload();
    // Split counts: the planned one, 3 (the fused merge: a cluster of 3 CTAs combines the splits
    // and adds the sink split) and 12 (more than a cluster: merge_splits_kernel does it).
    for (AttnCase a : {AttnCase{4, 0.f, 0}, AttnCase{8, 5.f, 0}, AttnCase{4, 0.f, 0, 3}, AttnCase{8, 5.f, 0, 12}}) {
      const std::string e = run_decode(c.host, dv, c.H, 128, a, 20 + a.group, kMinNonzero);
      EXPECT_TRUE(e.empty()) << "group " << a.group << " splits " << a.splits << ": " << e;
    }
  }
}

TEST(CudaSinks, PrefillMatchesCpuReferenceTiledAndRowPaths) {
  TQKV_REQUIRE_GPU();
  for (detail::PrefillPath path : {detail::PrefillPath::kTiles, detail::PrefillPath::kRows}) {
    detail::set_prefill_path(path);
    for (int d : kHeadDims) {
      for (Fmt f : kFormats) {
        if (path == detail::PrefillPath::kRows && d != 128 && d != 80) continue;
        CpuCache c;
        c.d = d; c.kb = f.kb; c.vb = f.vb; c.H = 2;
        c.sinks = (d + f.kb + f.vb) % 16 + 1;
        SCOPED_TRACE(fmt_name(d, f) + " sinks " + std::to_string(c.sinks) +
                     (path == detail::PrefillPath::kRows ? " rows path" : " tiled"));
        c.lens = {3, 20, 300};
        ASSERT_TRUE(c.build(900 + d * 7 + f.kb * 3 + f.vb).is_ok());
        const PagedKVView dv = c.upload();
        // Whole prompts (rows inside the sinks too) and a chunk after cached context.
        const std::vector<int32_t> q_lens = {3, 20, 37};
        for (AttnCase a : {AttnCase{1, 0.f, 0}, AttnCase{4, 0.f, 0}, AttnCase{8, 5.f, 0}, AttnCase{4, 0.f, 6}}) {
          const std::string e = run_prefill(c.host, dv, c.H, d, q_lens, a, 40 + a.group + a.window, kMinNonzero);
          EXPECT_TRUE(e.empty()) << "group " << a.group << " softcap " << a.softcap << " window " << a.window << ": " << e;
        }
      }
    }
  }
  detail::set_prefill_path(detail::PrefillPath::kTiles);
}

// ---- 2. sink tiles that differ from the pages: the GPU reads the tiles ----
TEST(CudaSinks, SinkTilesNotPagesAreReadAndIgnoringThemFails) {
  TQKV_REQUIRE_GPU();
  for (Fmt f : {Fmt{4, 4}, Fmt{16, 16}, Fmt{8, 4}}) {
    for (int d : {96, 128}) {
      CpuCache c;
      c.d = d; c.kb = f.kb; c.vb = f.vb; c.H = 2; c.sinks = 8;
      SCOPED_TRACE(fmt_name(d, f));
      c.lens = {2, 8, 12, 40, 70};
      ASSERT_TRUE(c.build(1300 + d + f.kb).is_ok());
      // Replace the sink tiles (host and device alike) with other values: keys that draw
      // attention (large norm) and values far from the pages'.
      std::mt19937_64 rng(77 + d);
      std::normal_distribution<float> nd(0.f, 1.f);
      std::vector<uint8_t> sk = c.sink_pool(0), sv = c.sink_pool(1);
      for (size_t i = 0; i < sk.size() / 2; ++i) {
        reinterpret_cast<uint16_t*>(sk.data())[i] = float_to_fp16(2.f * nd(rng));
        reinterpret_cast<uint16_t*>(sv.data())[i] = float_to_fp16(4.f * nd(rng));
      }
      c.own_sk = sk;
      c.own_sv = sv;
      c.host.sink_k = c.own_sk.data();
      c.host.sink_v = c.own_sv.data();
      const PagedKVView dv = c.upload();
      PagedKVView ignored = dv;  // the mutation: a kernel that reads the pages for every position
      ignored.sink_tokens = 0;
      for (AttnCase a : {AttnCase{4, 0.f, 0}, AttnCase{8, 5.f, 0}}) {
        EXPECT_EQ(run_decode(c.host, dv, c.H, d, a, 60 + a.group, kMinNonzero), "") << "group " << a.group;
        EXPECT_NE(run_decode(c.host, dv, c.H, d, a, 60 + a.group, kMinNonzero, nullptr, &ignored), "")
            << "decode ignoring the sinks matched the reference: the test cannot see sinks";
        const std::vector<int32_t> q_lens = {2, 8, 12, 9, 16};
        for (detail::PrefillPath path : {detail::PrefillPath::kTiles, detail::PrefillPath::kRows}) {
          detail::set_prefill_path(path);
          EXPECT_EQ(run_prefill(c.host, dv, c.H, d, q_lens, a, 80 + a.group, kMinNonzero), "") << "prefill group " << a.group;
          EXPECT_NE(run_prefill(c.host, dv, c.H, d, q_lens, a, 80 + a.group, kMinNonzero, &ignored), "")
              << "prefill ignoring the sinks matched the reference";
        }
        detail::set_prefill_path(detail::PrefillPath::kTiles);
      }
    }
  }
}

// ---- 3. store_sink_tokens writes what the CPU cache writes ----
TEST(CudaSinks, StoreSinkTokensMatchesCpuCacheTiles) {
  TQKV_REQUIRE_GPU();
  for (int d : kHeadDims) {
    for (Fmt f : {Fmt{4, 4}, Fmt{8, 8}, Fmt{3, 3}, Fmt{16, 4}, Fmt{4, 16}}) {
      CpuCache c;
      c.d = d; c.kb = f.kb; c.vb = f.vb; c.H = 3; c.sinks = 5;
      SCOPED_TRACE(fmt_name(d, f));
      c.lens = {2, 5, 30};
      ASSERT_TRUE(c.build(1700 + d + f.kb * 3 + f.vb).is_ok());
      const PagedKVView dv = c.upload();
      // All tokens of all sequences in one call (positions past the sinks are skipped), into
      // tiles poisoned with NaN where nothing is written... then compare only the written rows.
      std::vector<float> k, v;
      std::vector<int32_t> slot, pos;
      for (size_t s = 0; s < c.lens.size(); ++s) {
        k.insert(k.end(), c.k_tokens[s].begin(), c.k_tokens[s].end());
        v.insert(v.end(), c.v_tokens[s].begin(), c.v_tokens[s].end());
        for (int p = 0; p < c.lens[s]; ++p) { slot.push_back(c.host.sink_slot[s]); pos.push_back(p); }
      }
      DeviceBuffer dk = testing::to_device(k), dvv = testing::to_device(v), ds = testing::to_device(slot),
                   dp = testing::to_device(pos), gk(c.sink_bytes()), gv(c.sink_bytes());
      testing::poison(gk);
      testing::poison(gv);
      PagedKVView w = dv;
      w.sink_k = gk.get<uint8_t>();
      w.sink_v = gv.get<uint8_t>();
      ASSERT_TRUE(store_sink_tokens(w, dk.get(), dvv.get(), DType::kF32, ds.get<int32_t>(), dp.get<int32_t>(),
                                    static_cast<int32_t>(pos.size()), nullptr).is_ok());
      ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
      for (int side = 0; side < 2; ++side) {
        const std::vector<uint8_t> cpu = c.sink_pool(side);
        const std::vector<uint8_t> gpu = testing::to_host<uint8_t>(side == 0 ? gk : gv, c.sink_bytes());
        const bool f16 = (side == 0 ? f.kb : f.vb) == kF16Bits;
        int diffs = 0;
        for (size_t s = 0; s < c.lens.size(); ++s)
          for (int p = 0; p < std::min(c.lens[s], c.sinks); ++p)
            for (int h = 0; h < c.H; ++h) {
              const size_t row0 = (static_cast<size_t>(c.host.sink_slot[s]) * c.H + h) * c.sink_tile / 2 +
                                  static_cast<size_t>(p) * d;
              const std::string e = testing::compare_exact_row(gpu, cpu, row0, d, f16, &diffs);
              ASSERT_TRUE(e.empty()) << "side " << side << " seq " << s << " pos " << p << " head " << h << ": " << e;
            }
        EXPECT_LT(diffs, d * 4) << "too many 1-ulp differences on side " << side;
      }
    }
  }
}

// ---- 4. bad views; graph capture ----
TEST(CudaSinks, BadSinkViewsAreRefused) {
  TQKV_REQUIRE_GPU();
  CpuCache c;
  c.sinks = 4;
  c.lens = {20, 40};
  ASSERT_TRUE(c.build(31).is_ok());
  const PagedKVView dv = c.upload();
  DecodeParams p;
  p.num_q_heads = 8;
  p.scale = 0.1f;
  PagedKVView bad = dv;
  bad.sink_tokens = 17;
  EXPECT_EQ(plan_decode(bad, p, sm_count()).status().code(), StatusCode::kInvalidArgument);
  bad.sink_tokens = -1;
  EXPECT_EQ(plan_decode(bad, p, sm_count()).status().code(), StatusCode::kInvalidArgument);
  bad = dv;
  bad.sink_v = nullptr;
  EXPECT_EQ(plan_decode(bad, p, sm_count()).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(plan_prefill(bad, p, 4, sm_count()).status().code(), StatusCode::kInvalidArgument);
  bad = dv;
  bad.sink_slot = nullptr;
  EXPECT_EQ(plan_decode(bad, p, sm_count()).status().code(), StatusCode::kInvalidArgument);
  bad = dv;
  bad.sink_k = nullptr;
  const float x = 0.f;
  const int32_t zero = 0;
  EXPECT_EQ(store_sink_tokens(bad, &x, &x, DType::kF32, &zero, &zero, 1, nullptr).code(), StatusCode::kInvalidArgument);
  bad = dv;
  bad.sink_tokens = 0;  // no sinks: nothing to do, whatever the pointers
  EXPECT_TRUE(store_sink_tokens(bad, nullptr, nullptr, DType::kF32, nullptr, nullptr, 5, nullptr).is_ok());
}

TEST(CudaSinks, GraphCaptureReplaysTheSameOutput) {
  TQKV_REQUIRE_GPU();
  CpuCache c;
  c.sinks = 4;
  c.lens = {2, 4, 100, 1000};
  ASSERT_TRUE(c.build(41).is_ok());
  const PagedKVView dv = c.upload();
  std::vector<float> direct;
  const AttnCase a{4, 0.f, 0};
  ASSERT_EQ(run_decode(c.host, dv, c.H, c.d, a, 7, kMinNonzero, &direct), "");
  // The same call captured in a graph and replayed.
  const int hq = a.group * c.H;
  std::mt19937_64 rng(7);
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<float> q(static_cast<size_t>(c.host.num_seqs) * hq * c.d);
  for (auto& v : q) v = nd(rng);
  DecodeParams p;
  p.num_q_heads = hq;
  p.scale = 1.f / std::sqrt(static_cast<float>(c.d));
  auto plan = plan_decode(dv, p, sm_count());
  ASSERT_TRUE(plan.is_ok());
  DeviceBuffer dq = testing::to_device(q), dout(q.size() * 4), ws(plan->workspace_bytes);
  testing::poison(dout);
  cudaStream_t s = nullptr;
  TQKV_CUDA_ASSERT(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  cudaGraph_t g = nullptr;
  TQKV_CUDA_ASSERT(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
  const Status st = attention_decode(dv, p, *plan, dq.get(), DType::kF32, dout.get(), DType::kF32, ws.get(), ws.bytes(), s);
  TQKV_CUDA_ASSERT(cudaStreamEndCapture(s, &g));
  ASSERT_TRUE(st.is_ok()) << st.to_string();
  cudaGraphExec_t ge = nullptr;
  TQKV_CUDA_ASSERT(cudaGraphInstantiate(&ge, g, 0));
  TQKV_CUDA_ASSERT(cudaGraphLaunch(ge, s));
  TQKV_CUDA_ASSERT(cudaGraphLaunch(ge, s));
  TQKV_CUDA_ASSERT(cudaStreamSynchronize(s));
  const std::vector<float> got = testing::to_host<float>(dout, q.size());
  EXPECT_EQ(std::memcmp(got.data(), direct.data(), got.size() * 4), 0) << "graph replay differs from the direct call";
  cudaGraphExecDestroy(ge);
  cudaGraphDestroy(g);
  cudaStreamDestroy(s);
}

}  // namespace
}  // namespace tqkv::cuda
