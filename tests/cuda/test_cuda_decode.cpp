// Decode attention on the GPU against a plain-loop fp64 reference, for every built format, head
// size, GQA ratio and a batch of mixed lengths with pages placed at random.
//
// Tolerance: |gpu - ref| <= atol + rtol * |ref| per element with rtol = 1e-2 and atol = 4e-3 times
// the largest |ref| of that (sequence, head) row, zero violations, NaN never passes. The kernel
// feeds the tensor cores fp16 operands (query, codebook values / fp16 keys, probabilities) with
// fp32 accumulation, so each operand carries a relative rounding of 2^-11 ~ 4.9e-4; the budget is
// about 8x that.
#include <gtest/gtest.h>

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <random>
#include <string>
#include <vector>

#include "cuda_test_util.h"
#include "paged_fixture.h"
#include "tqkv/cuda_attention.h"

namespace tqkv::cuda {
namespace {

using testing::DeviceBuffer;
using testing::PagedFixture;

using testing::all_format_cases;
using testing::case_name;
using testing::check_rows;
using testing::FormatCase;
using testing::random_q;
using testing::sm_count;

struct RunOptions {
  int hq = 0;
  float softcap = 0.f;
  int window = 0;
  int splits = 0;
  bool half_io = false;
};

// Runs decode once (outputs and workspace poisoned first) and returns the fp32 output.
std::vector<float> run_decode(PagedFixture& fx, const PagedKVView& view, const std::vector<float>& q,
                              const RunOptions& o, Status* status) {
  DecodeParams p;
  p.num_q_heads = o.hq;
  p.scale = 1.f / std::sqrt(static_cast<float>(fx.d));
  p.softcap = o.softcap;
  p.window = o.window;
  p.num_splits = o.splits;
  auto plan = plan_decode(view, p, sm_count());
  if (!plan.is_ok()) { *status = plan.status(); return {}; }
  const size_t n = q.size();
  DeviceBuffer dq = testing::upload_as(q, o.half_io), dout(n * (o.half_io ? 2 : 4)), ws(plan->workspace_bytes);
  testing::poison(dout);
  testing::poison(ws);
  const DType t = o.half_io ? DType::kF16 : DType::kF32;
  *status = attention_decode(view, p, *plan, dq.get(), t, dout.get(), t, ws.get(), ws.bytes(), nullptr);
  if (!status->is_ok()) return {};
  if (cudaDeviceSynchronize() != cudaSuccess) { *status = internal_error("kernel failed"); return {}; }
  return testing::download_as(dout, n, o.half_io);
}

class DecodeFormat : public ::testing::TestWithParam<FormatCase> {};

TEST_P(DecodeFormat, MatchesReferenceForEveryGqaRatioAndLength) {
  TQKV_REQUIRE_GPU();
  const FormatCase c = GetParam();
  PagedFixture fx;
  fx.d = c.d; fx.kb = c.kb; fx.vb = c.vb;
  fx.num_kv_heads = 2;
  fx.lens = {1, 17, 129, 1000, 5000};
  const bool pow2 = (c.d & (c.d - 1)) == 0;
  fx.build(1000 + c.d * 31 + c.kb * 7 + c.vb, pow2);
  fx.decode_all();
  const PagedKVView view = fx.upload();
  for (int group : {1, 4, 8}) {
    const int hq = group * fx.num_kv_heads;
    const auto q = random_q(fx.num_seqs(), hq, c.d, 77 + group, 1.5f);
    Status st;
    const auto got = run_decode(fx, view, q, {hq}, &st);
    ASSERT_TRUE(st.is_ok()) << st.to_string();
    const auto ref = fx.reference(q, hq, 1.0 / std::sqrt(static_cast<double>(c.d)), 0.0, 0);
    const std::string err = check_rows(got, ref, c.d);
    EXPECT_TRUE(err.empty()) << "group " << group << ": " << err;
  }
}

INSTANTIATE_TEST_SUITE_P(AllFormats, DecodeFormat, ::testing::ValuesIn(all_format_cases()), case_name);

// Sliding window, logit soft-capping, evicted leading pages and an empty sequence together.
TEST(CudaDecode, WindowSoftcapEvictionAndEmptySequence) {
  TQKV_REQUIRE_GPU();
  for (auto kv : {std::pair{4, 4}, {16, 16}, {4, 3}}) {
    PagedFixture fx;
    fx.d = 128; fx.kb = kv.first; fx.vb = kv.second;
    fx.num_kv_heads = 2;
    fx.lens = {300, 0, 2000, 45};
    fx.first_page = {4, 0, 10, 0};  // sequence 0 keeps positions >= 64, sequence 2 >= 160
    fx.build(4242 + kv.first, true);
    fx.decode_all();
    const PagedKVView view = fx.upload();
    const int hq = 8;
    const auto q = random_q(fx.num_seqs(), hq, fx.d, 5, 6.f);  // large logits: the cap bites
    for (int window : {0, 100, 1}) {
      Status st;
      const auto got = run_decode(fx, view, q, {hq, 10.f, window}, &st);
      ASSERT_TRUE(st.is_ok()) << st.to_string();
      const auto ref = fx.reference(q, hq, 1.0 / std::sqrt(128.0), 10.0, window);
      const std::string err = check_rows(got, ref, fx.d);
      EXPECT_TRUE(err.empty()) << "k" << kv.first << "v" << kv.second << " window " << window << ": " << err;
    }
  }
}

// The split-KV partition count must not change the result beyond rounding (up to 8 splits the
// CTAs of a row merge in a cluster, fp16 pages only with one split; beyond, merge_splits_kernel);
// fp16 in/out works; a group of 12 query heads (two head chunks) works.
TEST(CudaDecode, SplitCountsHalfIoAndLargeGroups) {
  TQKV_REQUIRE_GPU();
  for (auto kv : {std::pair{4, 4}, {16, 16}}) {
    PagedFixture fx;
    fx.d = 128; fx.kb = kv.first; fx.vb = kv.second;
    fx.num_kv_heads = 2;
    fx.lens = {3000, 700, 16};
    fx.build(99, true);
    fx.decode_all();
    const PagedKVView view = fx.upload();
    const int hq = 24;  // group 12
    const auto q = random_q(fx.num_seqs(), hq, fx.d, 11, 1.5f);
    const auto ref = fx.reference(q, hq, 1.0 / std::sqrt(128.0), 0.0, 0);
    for (int splits : {1, 2, 5, 8, 9, 64, 200}) {
      Status st;
      const auto got = run_decode(fx, view, q, {hq, 0.f, 0, splits}, &st);
      ASSERT_TRUE(st.is_ok()) << st.to_string();
      const std::string err = check_rows(got, ref, fx.d);
      EXPECT_TRUE(err.empty()) << "k" << kv.first << " splits " << splits << ": " << err;
    }
    Status st;
    const auto got = run_decode(fx, view, q, {hq, 0.f, 0, 0, true}, &st);
    ASSERT_TRUE(st.is_ok()) << st.to_string();
    // fp16 output adds one more rounding of the result (relative 2^-11).
    const std::string err = check_rows(got, ref, fx.d);
    EXPECT_TRUE(err.empty()) << "k" << kv.first << " fp16 io: " << err;
  }
}

// Dense rotations (head sizes 80, 96): the query-rotation kernel reads P rows as 16-byte loads
// when P is 16-byte aligned and falls back to scalar loads otherwise; both must give the same
// attention. Also many splits (more than the merge kernel's 128 threads) over a dense un-rotation.
TEST(CudaDecode, DenseRotationUnalignedMatrixAndManySplits) {
  TQKV_REQUIRE_GPU();
  for (int d : {80, 96}) {
    PagedFixture fx;
    fx.d = d; fx.kb = 4; fx.vb = 3;
    fx.num_kv_heads = 2;
    fx.lens = {2500, 33};
    fx.build(300 + d, /*use_hadamard=*/false);
    fx.decode_all();
    PagedKVView view = fx.upload();
    const int hq = 8;
    const auto q = random_q(fx.num_seqs(), hq, d, 21, 1.5f);
    const auto ref = fx.reference(q, hq, 1.0 / std::sqrt(static_cast<double>(d)), 0.0, 0);
    std::vector<float> shifted(fx.rotation.size() + 1, 0.f);
    std::copy(fx.rotation.begin(), fx.rotation.end(), shifted.begin() + 1);
    DeviceBuffer d_shifted = testing::to_device(shifted);
    for (bool unaligned : {false, true}) {
      PagedKVView v = view;
      if (unaligned) v.rotation = d_shifted.get<const float>() + 1;  // 4-byte aligned only
      for (int splits : {0, 157}) {
        Status st;
        const auto got = run_decode(fx, v, q, {hq, 0.f, 0, splits}, &st);
        ASSERT_TRUE(st.is_ok()) << st.to_string();
        const std::string err = check_rows(got, ref, d);
        EXPECT_TRUE(err.empty()) << "d " << d << (unaligned ? " unaligned P" : " aligned P") << " splits " << splits
                                 << ": " << err;
      }
    }
  }
}

// The launch sequence captures into a CUDA graph (no allocation, no host sync) and replays
// to the same result.
TEST(CudaDecode, CapturesIntoGraph) {
  TQKV_REQUIRE_GPU();
  PagedFixture fx;
  fx.d = 128; fx.kb = 3; fx.vb = 3;
  fx.lens = {500, 1200};
  fx.build(7, true);
  fx.decode_all();
  const PagedKVView view = fx.upload();
  const int hq = 8;
  const auto q = random_q(fx.num_seqs(), hq, fx.d, 3, 1.5f);
  DecodeParams p;
  p.num_q_heads = hq;
  p.scale = 1.f / std::sqrt(128.f);
  auto plan = plan_decode(view, p, sm_count());
  ASSERT_TRUE(plan.is_ok());
  DeviceBuffer dq = testing::to_device(q), dout(q.size() * 4), ws(plan->workspace_bytes);
  cudaStream_t stream;
  TQKV_CUDA_ASSERT(cudaStreamCreate(&stream));
  cudaGraph_t graph;
  TQKV_CUDA_ASSERT(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
  const Status st = attention_decode(view, p, *plan, dq.get(), DType::kF32, dout.get(), DType::kF32,
                                     ws.get(), ws.bytes(), stream);
  TQKV_CUDA_ASSERT(cudaStreamEndCapture(stream, &graph));
  ASSERT_TRUE(st.is_ok()) << st.to_string();
  cudaGraphExec_t exec;
  TQKV_CUDA_ASSERT(cudaGraphInstantiate(&exec, graph, 0));
  const auto ref = fx.reference(q, hq, 1.0 / std::sqrt(128.0), 0.0, 0);
  // Several replays, the workspace poisoned before the last: a replay must not depend on what an
  // earlier call left in the workspace.
  for (int rep = 0; rep < 3; ++rep) {
    testing::poison(dout);
    if (rep == 2) testing::poison(ws);
    TQKV_CUDA_ASSERT(cudaGraphLaunch(exec, stream));
    TQKV_CUDA_ASSERT(cudaStreamSynchronize(stream));
    const auto got = testing::to_host<float>(dout, q.size());
    const std::string err = check_rows(got, ref, fx.d);
    EXPECT_TRUE(err.empty()) << "replay " << rep << ": " << err;
  }
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaStreamDestroy(stream);
}

// Unsupported shapes fail loudly before any launch (runs without a GPU too).
TEST(CudaDecode, RejectsUnsupportedShapesAndFormats) {
  PagedKVView v;
  int32_t dummy = 0;
  float fdummy = 0;
  v.k = {reinterpret_cast<uint8_t*>(&dummy), 4, tile_bytes(16, 128, 4), &fdummy};
  v.v = {reinterpret_cast<uint8_t*>(&dummy), 4, tile_bytes(16, 128, 4), &fdummy};
  v.num_kv_heads = 2; v.head_dim = 128; v.page_size = 16; v.num_seqs = 1;
  v.page_table = &dummy; v.max_pages_per_seq = 1; v.seq_lens = &dummy; v.rotation = &fdummy;
  DecodeParams p;
  p.num_q_heads = 8;
  p.scale = 0.1f;
  EXPECT_TRUE(plan_decode(v, p, 132).is_ok());
  PagedKVView bad = v;
  bad.head_dim = 72;
  bad.k.tile_bytes = bad.v.tile_bytes = tile_bytes(16, 72, 4);
  EXPECT_EQ(plan_decode(bad, p, 132).status().code(), StatusCode::kUnsupported);
  bad = v;
  bad.page_size = 32;
  bad.k.tile_bytes = bad.v.tile_bytes = tile_bytes(32, 128, 4);
  EXPECT_EQ(plan_decode(bad, p, 132).status().code(), StatusCode::kUnsupported);
  bad = v;
  bad.k.tile_bytes += 16;
  EXPECT_EQ(plan_decode(bad, p, 132).status().code(), StatusCode::kInvalidArgument);
  DecodeParams bp = p;
  bp.num_q_heads = 7;  // not a multiple of num_kv_heads
  EXPECT_EQ(plan_decode(v, bp, 132).status().code(), StatusCode::kInvalidArgument);
  bp = p;
  bp.num_splits = 5000;  // above the merge kernel's 4096
  EXPECT_EQ(plan_decode(v, bp, 132).status().code(), StatusCode::kInvalidArgument);
  // (k2, v8) is a valid layout but no kernel is built for it: kUnsupported, nothing launched.
  bad = v;
  bad.k.bits = 2; bad.k.tile_bytes = tile_bytes(16, 128, 2);
  bad.v.bits = 8; bad.v.tile_bytes = tile_bytes(16, 128, 8);
  EXPECT_EQ(plan_decode(bad, p, 132).status().code(), StatusCode::kUnsupported);
  DecodePlan plan;
  const Status st = attention_decode(bad, p, plan, &fdummy, DType::kF32, &fdummy, DType::kF32, &fdummy,
                                     1 << 20, nullptr);
  EXPECT_EQ(st.code(), StatusCode::kUnsupported) << st.to_string();
}

}  // namespace
}  // namespace tqkv::cuda
