// The GPU runtime's prefill through the tiled prefill kernel (cuda::attention_prefill) against the
// previous path (every chunk token through attention_decode as its own sequence:
// GpuPrefillPath::kDecode, TQKV_GPU_PREFILL=decode) and against the CPU runtime. Skipped (with a
// message) without a GPU.
//
// Models: tiny random-weight GGUFs (tests/common/synthetic_gguf.h): a llama-shaped one (GQA 4:2,
// head size 64) and a gemma3-shaped one (7 layers: 6 with sliding window 20, whose f16 ring the
// runtime keeps, and layer 5 global, the one k4v4 compresses; head size 128, GQA 4:1). The prompt is prefilled in chunks of 32 (several chunks; Gemma's sliding ring of
// ceil((20 + 32) / 16) + 2 = 6 pages wraps), logits of every prompt row are compared, then a few
// decode steps.
//
// Tolerances (every compared row of logits):
//   f16 cache:  tiled vs decode path relative L2 <= 1e-2 (both GPU, same pages up to the fp16
//               rounding of earlier layers; the tiled kernel multiplies fp16 Q and P on tensor
//               cores), tiled vs CPU <= 2e-2 and the same top-1 unless the CPU's best two logits
//               are within 0.1 (test_gpu_model.cpp's bound).
//   k4v4 cache: a coordinate of K or V within rounding of a codebook boundary may quantize to the
//               neighbouring centroid on one side and not on the other, so the check is relative to
//               the compression's own effect d_q = ||cpu_k4v4 - cpu_f16||: sqrt(sum ||a - b||^2 /
//               sum d_q^2) <= 0.75 for tiled vs CPU and for tiled vs decode path (independent
//               quantization noise would give about sqrt(2)); per row ||a - b|| <= max(0.1 ||b||,
//               1.5 d_q).
// prefill_batch: three sequences of 37, 70 and 5 tokens through chunks of 32 that mix sequences
// (a sequence split across chunks, several sequences per chunk), then one decode step of the
// three at batch 3: each sequence's last-row logits against prefill() of that sequence alone,
// f16 relative L2 <= 1e-2, on both paths.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "gpu_test_support.h"

namespace {

using tqkv::GpuPrefillPath;
using namespace tqkv::testing;

int top1(const float* x, int V) { return static_cast<int>(std::max_element(x, x + V) - x); }

// GPU logits of every row: prompt prefilled (kAll) in chunks of `chunk`, then decode steps.
void gpu_run(const tqkv::GpuModel& gm, tqkv::KvFormat fmt, GpuPrefillPath path, const std::vector<int32_t>& ids,
             int pre, int chunk, std::vector<float>* out, std::string* path_name) {
  tqkv::GpuContextOptions o;
  o.format = fmt;
  o.max_tokens = static_cast<int64_t>(ids.size());
  o.max_chunk = chunk;
  o.prefill_path = path;
  std::unique_ptr<tqkv::GpuContext> ctx;
  ASSERT_NO_FATAL_FAILURE(gpu_logits(gm, o, ids, pre, out, &ctx));
  *path_name = ctx->prefill_path_name();
}

void check_paths(const tqkv::testing::SyntheticSpec& s, int n_tokens) {
  SyntheticModels L;
  ASSERT_NO_FATAL_FAILURE(load_synthetic(s, 4321, L));
  const int V = L.cpu->config().n_vocab, T = n_tokens, pre = T - 4;
  const std::vector<int32_t> ids = random_tokens(T, V, 11);
  std::vector<float> cpu_f16;
  for (const char* fs : {"f16", "k4v4"}) {
    auto fmt = tqkv::parse_kv_format(fs);
    ASSERT_TRUE(fmt.is_ok());
    tqkv::KvOptions ko;
    ko.format = *fmt;
    std::vector<float> cpu;
    ASSERT_NO_FATAL_FAILURE(cpu_logits(*L.cpu, ids, pre, ko, &cpu));

    std::vector<float> tiled, dec;
    std::string name_t, name_d;
    ASSERT_NO_FATAL_FAILURE(gpu_run(*L.gpu, *fmt, GpuPrefillPath::kTiled, ids, pre, 32, &tiled, &name_t));
    ASSERT_NO_FATAL_FAILURE(gpu_run(*L.gpu, *fmt, GpuPrefillPath::kDecode, ids, pre, 32, &dec, &name_d));
    EXPECT_EQ(name_t, "tiled");
    EXPECT_EQ(name_d, "decode");

    const bool f16 = std::string(fs) == "f16";
    double worst_td = 0;
    int top1_td = 0;
    RowCheck vs_cpu, vs_dec;
    for (int t = 0; t < T; ++t) {
      const size_t off = static_cast<size_t>(t) * V;
      const float *a = tiled.data() + off, *d = dec.data() + off, *b = cpu.data() + off;
      const std::string what = s.arch + " " + fs + " row " + std::to_string(t) + (t < pre ? " (prefill)" : " (decode)");
      const double td = rel_l2(a, d, V);
      worst_td = std::max(worst_td, td);
      top1_td += top1(a, V) != top1(d, V) ? 1 : 0;
      if (f16) {
        EXPECT_LE(td, 1e-2) << what << ": tiled vs decode path";
        vs_cpu.add(a, b, V, 2e-2, what + ": tiled vs CPU");
      } else {
        vs_cpu.add_ratio(a, b, b, cpu_f16.data() + off, V, what + ": tiled vs CPU");
        vs_dec.add_ratio(a, d, b, cpu_f16.data() + off, V, what + ": tiled vs decode path");
      }
    }
    if (f16) {
      cpu_f16 = cpu;
      std::printf("[gpu prefill] %-6s f16 : %d rows, tiled vs decode path worst rel L2 %.3g (top-1 differs %d), tiled vs CPU "
                  "worst %.3g (near ties %d)\n", s.arch.c_str(), T, worst_td, top1_td, vs_cpu.worst_rel, vs_cpu.near_ties);
    } else {
      EXPECT_LE(vs_cpu.ratio(), 0.75) << s.arch << ": tiled k4v4 vs CPU k4v4";
      EXPECT_LE(vs_dec.ratio(), 0.75) << s.arch << ": tiled k4v4 vs decode-path k4v4";
      std::printf("[gpu prefill] %-6s k4v4: %d rows, |tiled - cpu| / |cpu k4v4 - cpu f16| = %.3f, |tiled - decode path| / "
                  "same = %.3f, worst rel L2 tiled vs decode path %.3g (top-1 differs %d)\n", s.arch.c_str(), T,
                  vs_cpu.ratio(), vs_dec.ratio(), worst_td, top1_td);
    }
  }
}

TEST(GpuPrefill, LlamaTiledMatchesDecodePathAndCpu) {
  SKIP_WITHOUT_GPU();
  check_paths(llama_spec(), 90);  // chunks of 32, 32, 22
}

TEST(GpuPrefill, Gemma3SlidingTiledMatchesDecodePathAndCpu) {
  SKIP_WITHOUT_GPU();
  check_paths(gemma3_spec(), 134);  // 130 prompt tokens: the 6-page sliding ring wraps
}

// Several sequences per chunk (q_lens of 2-3 sequences on the device) and a sequence split over
// chunks, against each sequence prefilled alone; then one decode step of all three.
TEST(GpuPrefill, BatchOfSequencesMatchesOneByOne) {
  SKIP_WITHOUT_GPU();
  for (const auto& spec : {llama_spec(), gemma3_spec()}) {
    SyntheticModels L;
    ASSERT_NO_FATAL_FAILURE(load_synthetic(spec, 4321, L));
    const std::vector<int> lens = {37, 70, 5};
    const auto ids = random_sequences(lens, L.cpu->config().n_vocab, 3);
    for (GpuPrefillPath path : {GpuPrefillPath::kTiled, GpuPrefillPath::kDecode}) {
      tqkv::GpuContextOptions o;
      o.format = {16, 16};
      o.max_tokens = 80;
      o.max_chunk = 32;
      o.max_seqs = 3;
      o.prefill_path = path;
      double worst = 0;
      std::string name;
      ASSERT_NO_FATAL_FAILURE(check_batch_vs_alone(*L.gpu, o, ids, lens, 1e-2, spec.arch + " ", true, &worst, &name));
      std::printf("[gpu prefill batch] %-6s %-6s: 3 sequences (37, 70, 5 tokens, chunks of 32) vs one by one, worst rel L2 %.3g\n",
                  spec.arch.c_str(), name.c_str(), worst);
    }
  }
}

TEST(GpuPrefill, EnvironmentSelectsDecodePathAndBadBatchIsAnError) {
  SKIP_WITHOUT_GPU();
  SyntheticModels L;
  ASSERT_NO_FATAL_FAILURE(load_synthetic(llama_spec(), 4321, L));
  tqkv::GpuContextOptions o;
  o.max_tokens = 16;
  o.max_seqs = 2;
  const char* old = std::getenv("TQKV_GPU_PREFILL");
  const std::string saved = old ? old : "";
  setenv("TQKV_GPU_PREFILL", "decode", 1);
  auto cd = tqkv::GpuContext::create(*L.gpu, o);
  setenv("TQKV_GPU_PREFILL", "tiled", 1);
  auto ct = tqkv::GpuContext::create(*L.gpu, o);
  if (old) setenv("TQKV_GPU_PREFILL", saved.c_str(), 1);
  else unsetenv("TQKV_GPU_PREFILL");
  ASSERT_TRUE(cd.is_ok() && ct.is_ok());
  EXPECT_STREQ((*cd)->prefill_path_name(), "decode");
  EXPECT_STREQ((*ct)->prefill_path_name(), "tiled");

  const std::vector<int32_t> a = {1, 2, 3};
  const int32_t* toks[2] = {a.data(), a.data()};
  const int twice[2] = {1, 1}, ok[2] = {0, 1}, n[2] = {3, 3}, too_long[2] = {3, 17}, none[2] = {3, 0};
  auto& ctx = **ct;
  EXPECT_EQ(ctx.prefill_batch(twice, toks, n, 2, nullptr).code(), tqkv::StatusCode::kInvalidArgument);
  EXPECT_EQ(ctx.prefill_batch(ok, toks, too_long, 2, nullptr).code(), tqkv::StatusCode::kOutOfRange);
  EXPECT_EQ(ctx.prefill_batch(ok, toks, none, 2, nullptr).code(), tqkv::StatusCode::kInvalidArgument);
  const int bad_slot[2] = {0, 2};
  EXPECT_EQ(ctx.prefill_batch(bad_slot, toks, n, 2, nullptr).code(), tqkv::StatusCode::kOutOfRange);
  EXPECT_EQ(ctx.seq_len(0), 0);
  EXPECT_EQ(ctx.seq_len(1), 0);
  EXPECT_TRUE(ctx.prefill_batch(ok, toks, n, 2, nullptr).is_ok());
  EXPECT_EQ(ctx.seq_len(1), 3);
  o.center_keys = true;
  o.format = {4, 4};
  auto cc = tqkv::GpuContext::create(*L.gpu, o);
  ASSERT_TRUE(cc.is_ok());
  EXPECT_EQ((*cc)->prefill_batch(ok, toks, n, 2, nullptr).code(), tqkv::StatusCode::kUnsupported);
}

}  // namespace
