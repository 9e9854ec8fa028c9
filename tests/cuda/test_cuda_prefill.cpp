// Prefill attention on the GPU (the tiled prefill kernel, prefill_kernel.cuh, and its per-row
// fallback) against a plain-loop fp64 reference over the same pages (paged_fixture.h: random
// pages at random places in the pool, every byte no token owns 0xFF = NaN in fp16, so reading a
// slot outside a column's visible range shows up as NaN).
//
// Row i of sequence s (q_lens[s] new rows) sits at position lens[s] - q_lens[s] + i and sees
// [max(first_page[s] * 16, pos + 1 - window), pos + 1). Tolerance as the decode tests: per element
// |gpu - ref| <= 4e-3 * max|ref row| + 1e-2 * |ref|, zero violations, NaN never passes (fp16
// tensor-core operands: q, codebook values or fp16 keys, probabilities, each rounded to 2^-11).
// Chunks are deliberately not multiples of the kernel's column tile (8 query rows x 4 heads at
// head size 128), sequences have different lengths, and one sequence has a single new row.
#include <gtest/gtest.h>

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "cuda/prefill_internal.h"
#include "cuda_test_util.h"
#include "paged_fixture.h"
#include "tqkv/cuda_attention.h"

namespace tqkv::cuda {
namespace {

using detail::PrefillPath;
using testing::DeviceBuffer;
using testing::PagedFixture;

using testing::all_format_cases;
using testing::case_name;
using testing::check_rows;
using testing::FormatCase;
using testing::random_q;
using testing::sm_count;

// Restores the default path when a test ends (the setting is process-wide).
struct PathGuard {
  explicit PathGuard(PrefillPath p) { detail::set_prefill_path(p); }
  ~PathGuard() { detail::set_prefill_path(PrefillPath::kTiles); }
};

// fp64 prefill attention over fx.kx / fx.vx (decode_all first): out [total_rows][hq][d]. Rows of a
// sequence with q_lens[s] > lens[s], and rows past sum(q_lens), are zero.
std::vector<double> prefill_reference(const PagedFixture& fx, const std::vector<int32_t>& q_lens, int total_rows,
                                      const std::vector<float>& q, int hq, double softcap, int window) {
  const int d = fx.d;
  const double scale = 1.0 / std::sqrt(static_cast<double>(d));
  std::vector<double> out(static_cast<size_t>(total_rows) * hq * d, 0.0);
  int row = 0;
  for (size_t s = 0; s < q_lens.size(); ++s) {
    for (int i = 0; i < q_lens[s] && row < total_rows; ++i, ++row) {
      if (q_lens[s] > fx.lens[s]) continue;
      const int len = fx.lens[s] - q_lens[s] + i + 1;
      int lo = fx.first_page[s] * fx.page_size;
      if (window > 0) lo = std::max(lo, len - window);
      fx.attend_row(s, &q[static_cast<size_t>(row) * hq * d], lo, len, hq, scale, softcap,
                    &out[static_cast<size_t>(row) * hq * d]);
    }
  }
  return out;
}

struct Opts {
  int hq = 0;
  float softcap = 0.f;
  int window = 0;
  int splits = 0;
  bool half_io = false;
  int total_q = 0;  // 0: sum of q_lens
};

// One attention_prefill call (output and workspace poisoned first); the fp32 output.
std::vector<float> run_prefill(const PagedFixture& fx, const PagedKVView& view, const std::vector<int32_t>& q_lens,
                               const std::vector<float>& q, const Opts& o, Status* status) {
  const int total = static_cast<int>(q.size() / (static_cast<size_t>(o.hq) * fx.d));
  DecodeParams p;
  p.num_q_heads = o.hq;
  p.scale = 1.f / std::sqrt(static_cast<float>(fx.d));
  p.softcap = o.softcap;
  p.window = o.window;
  p.num_splits = o.splits;
  auto plan = plan_prefill(view, p, total, sm_count());
  if (!plan.is_ok()) { *status = plan.status(); return {}; }
  const size_t n = q.size();
  DeviceBuffer dq = testing::upload_as(q, o.half_io), dql = testing::to_device(q_lens),
               dout(n * (o.half_io ? 2 : 4)), ws(plan->workspace_bytes);
  testing::poison(dout);
  testing::poison(ws);
  const DType t = o.half_io ? DType::kF16 : DType::kF32;
  *status = attention_prefill(view, p, *plan, dql.get<int32_t>(), total, dq.get(), t, dout.get(), t, ws.get(),
                              ws.bytes(), nullptr);
  if (!status->is_ok()) return {};
  const cudaError_t e = cudaDeviceSynchronize();
  if (e != cudaSuccess) { *status = internal_error(std::string("kernel failed: ") + cudaGetErrorString(e)); return {}; }
  return testing::download_as(dout, n, o.half_io);
}

int sum(const std::vector<int32_t>& v) {
  int s = 0;
  for (int32_t x : v) s += x;
  return s;
}

class PrefillFormat : public ::testing::TestWithParam<FormatCase> {};

// Every built format and head size, GQA 1/4/8: a whole prompt (40 rows), chunks of 33 and 101
// rows after cached context, and a single new row, in one call.
TEST_P(PrefillFormat, TiledKernelMatchesReference) {
  TQKV_REQUIRE_GPU();
  PathGuard guard(PrefillPath::kTiles);
  const FormatCase c = GetParam();
  PagedFixture fx;
  fx.d = c.d; fx.kb = c.kb; fx.vb = c.vb;
  fx.num_kv_heads = 2;
  fx.lens = {40, 300, 700, 77};
  const std::vector<int32_t> q_lens = {40, 33, 101, 1};
  fx.build(5000 + c.d * 31 + c.kb * 7 + c.vb, (c.d & (c.d - 1)) == 0);
  fx.decode_all();
  const PagedKVView view = fx.upload();
  for (int group : {1, 4, 8}) {
    const int hq = group * fx.num_kv_heads;
    const auto q = random_q(sum(q_lens), hq, c.d, 91 + group, 1.5f);
    Status st;
    const auto got = run_prefill(fx, view, q_lens, q, {hq}, &st);
    ASSERT_TRUE(st.is_ok()) << st.to_string();
    const std::string err = check_rows(got, prefill_reference(fx, q_lens, sum(q_lens), q, hq, 0.0, 0), c.d, true);
    EXPECT_TRUE(err.empty()) << "group " << group << ": " << err;
  }
}

INSTANTIATE_TEST_SUITE_P(AllFormats, PrefillFormat, ::testing::ValuesIn(all_format_cases()), case_name);

// Sliding window with evicted leading pages, soft-capping, forced splits, fp16 in/out and large
// GQA groups (a query row spanning several column tiles), on the tiled kernel AND the per-row
// fallback (same reference).
TEST(CudaPrefill, WindowSoftcapEvictionSplitsHalfIoLargeGroupsBothPaths) {
  TQKV_REQUIRE_GPU();
  for (FormatCase c : {FormatCase{128, 4, 4}, FormatCase{96, 3, 3}, FormatCase{128, 16, 16}, FormatCase{256, 8, 4}}) {
    SCOPED_TRACE(std::to_string(c.d) + " k" + std::to_string(c.kb) + " v" + std::to_string(c.vb));
    PagedFixture fx;
    fx.d = c.d; fx.kb = c.kb; fx.vb = c.vb;
    fx.num_kv_heads = 2;
    fx.lens = {900, 333, 64};
    fx.first_page = {30, 4, 0};  // 480 and 64 leading positions evicted (outside every window below)
    const std::vector<int32_t> q_lens = {130, 45, 64};
    fx.build(600 + c.d + c.kb, (c.d & (c.d - 1)) == 0);
    fx.decode_all();
    const PagedKVView view = fx.upload();
    struct Case {
      int group;
      float softcap;
      int window, splits;
      bool half;
    };
    for (Case k : {Case{4, 5.f, 200, 0, false}, Case{4, 0.f, 150, 5, true}, Case{16, 5.f, 0, 3, false},
                   Case{c.d == 256 ? 64 : 12, 0.f, 220, 0, false}}) {
      const int hq = k.group * fx.num_kv_heads;
      const auto q = random_q(sum(q_lens), hq, c.d, 300 + k.group, k.softcap > 0 ? 3.f : 1.5f);
      const auto ref = prefill_reference(fx, q_lens, sum(q_lens), q, hq, k.softcap, k.window);
      for (PrefillPath path : {PrefillPath::kTiles, PrefillPath::kRows}) {
        PathGuard guard(path);
        Status st;
        Opts o;
        o.hq = hq; o.softcap = k.softcap; o.window = k.window; o.splits = k.splits; o.half_io = k.half;
        const auto got = run_prefill(fx, view, q_lens, q, o, &st);
        ASSERT_TRUE(st.is_ok()) << st.to_string();
        // fp16 output adds one more rounding (2^-11 relative): within the same budget.
        const std::string err = check_rows(got, ref, c.d, true);
        EXPECT_TRUE(err.empty()) << (path == PrefillPath::kTiles ? "tiled" : "rows") << " group " << k.group
                                 << " softcap " << k.softcap << " window " << k.window << " splits " << k.splits
                                 << (k.half ? " fp16 io" : "") << ": " << err;
      }
    }
  }
}

// Rows of an inconsistent sequence (q_lens[s] > seq_lens[s]) and rows past sum(q_lens) get zeros;
// the other rows are unaffected.
TEST(CudaPrefill, InconsistentRowsGetZeros) {
  TQKV_REQUIRE_GPU();
  PathGuard guard(PrefillPath::kTiles);
  PagedFixture fx;
  fx.d = 128; fx.kb = 4; fx.vb = 4;
  fx.lens = {200, 50, 300};
  const std::vector<int32_t> q_lens = {20, 60, 9};  // sequence 1: 60 new rows > 50 tokens
  fx.build(42, true);
  fx.decode_all();
  const PagedKVView view = fx.upload();
  const int hq = 8, total = sum(q_lens) + 7;  // 7 rows past the sum
  const auto q = random_q(total, hq, fx.d, 5, 1.5f);
  Status st;
  const auto got = run_prefill(fx, view, q_lens, q, {hq}, &st);
  ASSERT_TRUE(st.is_ok()) << st.to_string();
  const auto ref = prefill_reference(fx, q_lens, total, q, hq, 0.0, 0);
  EXPECT_TRUE(check_rows(got, ref, fx.d, false).empty()) << check_rows(got, ref, fx.d, false);
  size_t zero_rows = 0;
  for (size_t r = 0; r * fx.d < got.size(); ++r) {
    bool z = true;
    for (int j = 0; j < fx.d; ++j) z &= got[r * fx.d + j] == 0.f;
    zero_rows += z;
  }
  EXPECT_EQ(zero_rows, static_cast<size_t>(60 + 7) * hq);  // exactly the inconsistent and surplus rows
}

// The whole call captures into a CUDA graph (no allocation, no host synchronisation) and replays
// to the reference result.
TEST(CudaPrefill, CapturesIntoGraph) {
  TQKV_REQUIRE_GPU();
  PathGuard guard(PrefillPath::kTiles);
  PagedFixture fx;
  fx.d = 128; fx.kb = 3; fx.vb = 3;
  fx.lens = {500, 1200};
  const std::vector<int32_t> q_lens = {77, 150};
  fx.build(7, true);
  fx.decode_all();
  const PagedKVView view = fx.upload();
  const int hq = 8, total = sum(q_lens);
  const auto q = random_q(total, hq, fx.d, 3, 1.5f);
  DecodeParams p;
  p.num_q_heads = hq;
  p.scale = 1.f / std::sqrt(128.f);
  auto plan = plan_prefill(view, p, total, sm_count());
  ASSERT_TRUE(plan.is_ok());
  DeviceBuffer dq = testing::to_device(q), dql = testing::to_device(q_lens), dout(q.size() * 4),
               ws(plan->workspace_bytes);
  cudaStream_t stream;
  TQKV_CUDA_ASSERT(cudaStreamCreate(&stream));
  cudaGraph_t graph;
  TQKV_CUDA_ASSERT(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
  const Status st = attention_prefill(view, p, *plan, dql.get<int32_t>(), total, dq.get(), DType::kF32, dout.get(),
                                      DType::kF32, ws.get(), ws.bytes(), stream);
  TQKV_CUDA_ASSERT(cudaStreamEndCapture(stream, &graph));
  ASSERT_TRUE(st.is_ok()) << st.to_string();
  cudaGraphExec_t exec;
  TQKV_CUDA_ASSERT(cudaGraphInstantiate(&exec, graph, 0));
  testing::poison(dout);
  testing::poison(ws);
  TQKV_CUDA_ASSERT(cudaGraphLaunch(exec, stream));
  TQKV_CUDA_ASSERT(cudaStreamSynchronize(stream));
  const auto got = testing::to_host<float>(dout, q.size());
  const std::string err = check_rows(got, prefill_reference(fx, q_lens, total, q, hq, 0.0, 0), fx.d, true);
  EXPECT_TRUE(err.empty()) << err;
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaStreamDestroy(stream);
}

// A plan made for the per-row path is too small for the tiled path: rejected, not overrun.
TEST(CudaPrefill, RejectsPlanOfTheOtherPathAndBadInput) {
  TQKV_REQUIRE_GPU();
  PagedFixture fx;
  fx.d = 128; fx.kb = 4; fx.vb = 4;
  fx.lens = {100};
  fx.build(9, true);
  const PagedKVView view = fx.upload();
  DecodeParams p;
  p.num_q_heads = 8;
  p.scale = 0.1f;
  Result<DecodePlan> rows_plan = invalid_argument("unset");
  {
    PathGuard guard(PrefillPath::kRows);
    rows_plan = plan_prefill(view, p, 10, sm_count());
  }
  ASSERT_TRUE(rows_plan.is_ok());
  auto tiles_plan = plan_prefill(view, p, 10, sm_count());
  ASSERT_TRUE(tiles_plan.is_ok());
  const std::vector<int32_t> q_lens = {10};
  DeviceBuffer dq(10 * 8 * 128 * 4), dout(10 * 8 * 128 * 4), dql = testing::to_device(q_lens);
  DeviceBuffer ws(rows_plan->workspace_bytes);
  if (rows_plan->workspace_bytes < tiles_plan->workspace_bytes) {
    const Status st = attention_prefill(view, p, *rows_plan, dql.get<int32_t>(), 10, dq.get(), DType::kF32,
                                        dout.get(), DType::kF32, ws.get(), ws.bytes(), nullptr);
    EXPECT_EQ(st.code(), StatusCode::kInvalidArgument) << st.to_string();
  }
  EXPECT_EQ(plan_prefill(view, p, 0, sm_count()).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(attention_prefill(view, p, *tiles_plan, nullptr, 10, dq.get(), DType::kF32, dout.get(), DType::kF32,
                              ws.get(), ws.bytes(), nullptr)
                .code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
}

}  // namespace
}  // namespace tqkv::cuda
