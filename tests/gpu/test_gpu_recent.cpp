// Recent tokens in the GPU runtime (GpuContextOptions::recent_tokens) against the CPU runtime
// (KvOptions::recent_tokens) on synthetic models (tests/common/synthetic_gguf.h). Skipped without
// a GPU.
//
// Both run k4v4 with 4 sinks and the same ring, prefill in the CPU's chunks (Model::kMaxChunk: the
// ring is the cache's state at each call, so both must chunk alike), then decode steps (graph
// replays from the second on). The compressed-cache ratio test of test_gpu_model.cpp against the
// CPU WITH the ring, sqrt(sum ||gpu - cpu||^2 / sum ||cpu - cpu_f16||^2) <= 0.75, per row
// ||gpu - cpu|| <= max(0.1 ||cpu||, 1.5 ||cpu - cpu_f16||); and, for rings of 16 tokens or more,
// the same measure against the CPU WITHOUT the ring must be at least twice as large (so the test
// can see a GPU that ignores it). Measured on the H200 (2026-11-30 ~01:45 UTC): Llama ring 32 0.145
// (without: 0.442), ring 7 0.147 (0.166), ring 64 0.095 (3.29); Phi3 ring 20 0.133 (0.306); Gemma 3
// ring 32 0.172 (0.367).
// Architectures: Llama (Hadamard rotation; rings of 32, 7 and 64), Phi3 at head size 80 (dense
// rotation), Gemma 3 (sliding layers hold no ring; its global layers do). The per-token decode
// path of prefill (TQKV_GPU_PREFILL=decode) is refused with a ring.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "gpu_test_support.h"

namespace {

using namespace tqkv::testing;

struct Case {
  tqkv::testing::SyntheticSpec spec;
  int n_tokens = 100;
  int recent = 32;
  tqkv::GpuPrefillPath path = tqkv::GpuPrefillPath::kDefault;
};

void check_recent(const Case& cs) {
  SyntheticModels m;
  ASSERT_NO_FATAL_FAILURE(load_synthetic(cs.spec, 4321, m));
  const int V = m.cpu->config().n_vocab, T = cs.n_tokens, pre = T - 6;
  const std::vector<int32_t> ids = random_tokens(T, V, 17);

  tqkv::KvOptions ko;
  ko.format = {16, 16};
  std::vector<float> cpu_f16, cpu_plain, cpu;
  ASSERT_NO_FATAL_FAILURE(cpu_logits(*m.cpu, ids, pre, ko, &cpu_f16));
  ko.format = {4, 4};
  ko.sink_tokens = 4;
  ASSERT_NO_FATAL_FAILURE(cpu_logits(*m.cpu, ids, pre, ko, &cpu_plain));
  ko.recent_tokens = cs.recent;
  ASSERT_NO_FATAL_FAILURE(cpu_logits(*m.cpu, ids, pre, ko, &cpu));

  tqkv::GpuContextOptions o;
  o.format = {4, 4};
  o.max_tokens = T;
  o.max_chunk = tqkv::Model::kMaxChunk;
  o.sink_tokens = 4;
  o.recent_tokens = cs.recent;
  o.prefill_path = cs.path;
  std::vector<float> gpu;
  std::unique_ptr<tqkv::GpuContext> ctx;
  ASSERT_NO_FATAL_FAILURE(gpu_logits(*m.gpu, o, ids, pre, &gpu, &ctx));
  EXPECT_NE(ctx->describe().find("recent tokens"), std::string::npos) << ctx->describe();

  RowCheck rc;
  double e2_plain = 0;
  for (int t = 0; t < T; ++t) {
    const size_t off = static_cast<size_t>(t) * V;
    rc.add_compressed(gpu.data() + off, cpu.data() + off, cpu_f16.data() + off, V, cs.spec.arch + " position " + std::to_string(t));
    e2_plain += sum_sq_diff(gpu.data() + off, cpu_plain.data() + off, static_cast<size_t>(V));
  }
  const double ratio = rc.ratio(), ratio_plain = std::sqrt(e2_plain / std::max(rc.sum_q2, 1e-30));
  EXPECT_LE(ratio, 0.75) << cs.spec.arch << ": GPU k4v4+ring is not much closer to the CPU's k4v4+ring than compression moves it";
  // A ring of a few tokens barely moves the logits (ring 7: 0.166 without against 0.147 with, on
  // the H200), so the test's power to see an ignored ring is checked from 16 tokens up.
  if (cs.recent >= 16)
    EXPECT_GE(ratio_plain, 2 * ratio) << cs.spec.arch << ": the ring barely moves the CPU's logits, or the GPU ignores it";
  std::printf("[gpu recent] %-6s ring %d%s: |gpu - cpu+ring| / |cpu - cpu f16| = %.3f (vs CPU without the ring %.3f), "
              "worst row %.3g\n",
              cs.spec.arch.c_str(), cs.recent, "",
              ratio, ratio_plain, rc.worst_rel);
}

TEST(GpuRecent, Llama) {
  SKIP_WITHOUT_GPU();
  Case cs{llama_spec()};
  check_recent(cs);
  cs.recent = 7;
  check_recent(cs);
  cs.recent = 64;
  cs.path = tqkv::GpuPrefillPath::kTiled;
  check_recent(cs);
}
TEST(GpuRecent, Phi3HeadDim80) {
  SKIP_WITHOUT_GPU();
  Case cs{phi3_spec(80)};
  cs.recent = 20;
  check_recent(cs);
}
TEST(GpuRecent, Gemma3GlobalLayersOnly) {
  SKIP_WITHOUT_GPU();
  Case cs{gemma3_spec()};
  cs.n_tokens = 130;
  check_recent(cs);
}

TEST(GpuRecent, BadRingIsAnErrorAndCapacityCountsIt) {
  SKIP_WITHOUT_GPU();
  SyntheticModels m;
  ASSERT_NO_FATAL_FAILURE(load_synthetic({"llama", 128, 2, 4, 2, 64, 192}, 4321, m));
  tqkv::GpuContextOptions o;
  o.format = {4, 4};
  o.recent_tokens = 65;  // past cuda::kMaxRecentTokens
  EXPECT_EQ(tqkv::GpuContext::create(*m.gpu, o).status().code(), tqkv::StatusCode::kInvalidArgument);
  o.recent_tokens = -1;
  EXPECT_EQ(tqkv::GpuContext::create(*m.gpu, o).status().code(), tqkv::StatusCode::kInvalidArgument);
  // The per-token decode path of prefill cannot tell a row's sequence length: refused.
  o.recent_tokens = 32;
  o.prefill_path = tqkv::GpuPrefillPath::kDecode;
  EXPECT_EQ(tqkv::GpuContext::create(*m.gpu, o).status().code(), tqkv::StatusCode::kUnsupported);
  o.prefill_path = tqkv::GpuPrefillPath::kDefault;
  o.recent_tokens = 32;
  auto with = tqkv::GpuContext::create(*m.gpu, o);
  o.recent_tokens = 0;
  auto without = tqkv::GpuContext::create(*m.gpu, o);
  ASSERT_TRUE(with.is_ok() && without.is_ok());
  const tqkv::ModelConfig& c = m.cpu->config();
  const int64_t per_seq = 2ll * c.n_layer * c.n_head_kv * 32 * c.head_dim * 2;  // sides x layers x heads x rows x d x 2 B
  EXPECT_EQ((*with)->kv_bytes_per_seq(100) - (*without)->kv_bytes_per_seq(100), per_seq);
  EXPECT_EQ((*with)->kv_bytes_allocated() - (*without)->kv_bytes_allocated(), per_seq * o.max_seqs);
}

}  // namespace
