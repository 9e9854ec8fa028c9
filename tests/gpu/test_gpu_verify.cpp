// `tqkv verify --device cuda` underneath: gpu_evaluate_perplexity with per_layer (the attention
// probe of GpuContext, include/tqkv/gpu_model.h) against evaluate_perplexity with per_layer on the
// CPU, on tiny random-weight models (tests/common/synthetic_gguf.h), with verify's defaults (keys
// centered and smoothed, 4 sink tokens). Skipped (with a message) without a GPU. Run on an H200
// (2026-11-29, docs/benchmarks.md "tqkv verify --device cuda"): all four pass, 1 s in all.
//
// What verify gates on, GPU against CPU, same model and tokens (3 chunks of 64 tokens, 93 scored
// positions); "measured" = the H200 run:
//  - f16 perplexity within 1% (the GPU keeps weights and GEMM inputs in fp16), the format's
//    perplexity within 5%, as tests/gpu/test_gpu_model.cpp (measured <= 0.03% and <= 1.1%);
//  - KLD against f16: |gpu - cpu| <= 0.1 cpu + 2e-4 (measured within 2.2% of the CPU's). The GPU's K/V
//    differ from the CPU's by fp16 rounding, so a few coordinates near a codebook boundary land on
//    the neighbouring centroid: the same noise level, a slightly different draw;
//  - top-1 agreement within 0.05 (4 of 93 positions; these random models have flat next-token
//    distributions, the CPU's own k4v4 top-1 is 0.82, k2v2 0.38; measured identical);
//  - per layer, the attention error sqrt(att_rel_err) (GPU: its attention output against dense
//    fp32 attention on the host over the same q, k, v; CPU: the same against its dense fp32
//    backend): compressed layers within 5% of the CPU's (the error of a 2-4 bit cache is the
//    average over ~2400 head rows of the same quantizer's noise; the CPU measures 0.035-0.082 at
//    k4v4, 0.14-0.30 at k2v2; measured within 1%); f16 layers (sliding-window layers of Gemma 2,
//    f16_layers) below 5e-3 on the GPU (fp16 rounding of the output; measured 3-4e-4, the CPU's
//    1-2e-4) where every compressed layer is > 0.02. A probe that compared against the wrong
//    positions (window, causal mask, earlier chunks) or the wrong heads would be off by far more.
// Mutation: k2v2 against k8v8 on the GPU, every gate moves the right way (per-layer error at least
// 4x, measured 54-66x; KLD higher; top-1 not higher; perplexity further from f16: on these random
// models a coarse cache moves it either way, the CPU's k2v2 lowers it by 2.4%), and k2v2 also
// matches the CPU.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "gpu_test_support.h"

namespace {

using namespace tqkv::testing;

// verify's options (src/cli/cmd_verify.cpp defaults) at ctx 64.
tqkv::PerplexityOptions verify_options(tqkv::KvFormat f) {
  tqkv::PerplexityOptions po;
  po.ctx = 64;
  po.max_chunks = 3;
  po.format = f;
  po.compare_f16 = true;
  po.per_layer = true;
  po.center_keys = true;
  po.smooth_keys = true;
  po.sink_tokens = tqkv::KvOptions::kDefaultSinkTokens;
  return po;
}

struct Pair {
  tqkv::PerplexityResult cpu, gpu;
};

void run_both(const SyntheticModels& m, const std::vector<int32_t>& ids, const tqkv::PerplexityOptions& po, Pair& p) {
  auto c = tqkv::evaluate_perplexity(*m.cpu, ids, po, nullptr);
  ASSERT_TRUE(c.is_ok()) << c.status().to_string();
  auto g = tqkv::gpu_evaluate_perplexity(*m.gpu, ids, po, nullptr);
  ASSERT_TRUE(g.is_ok()) << g.status().to_string();
  p.cpu = *c;
  p.gpu = *g;
}

double err(const tqkv::LayerKvError& e) { return std::sqrt(e.att_rel_err); }

// The gates of verify, GPU against CPU (tolerances in the header comment).
void expect_gates_match(const Pair& p, const std::string& what) {
  const tqkv::PerplexityResult &c = p.cpu, &g = p.gpu;
  ASSERT_TRUE(c.compared && g.compared) << what;
  EXPECT_EQ(g.chunks, c.chunks) << what;
  EXPECT_EQ(g.scored, c.scored) << what;
  EXPECT_NEAR(g.f16_ppl, c.f16_ppl, 1e-2 * c.f16_ppl) << what << ": f16 perplexity";
  EXPECT_NEAR(g.ppl, c.ppl, 5e-2 * c.ppl) << what << ": perplexity";
  EXPECT_NEAR(g.kld_mean, c.kld_mean, 0.1 * c.kld_mean + 2e-4) << what << ": KLD";
  EXPECT_NEAR(g.top1_agreement, c.top1_agreement, 0.05) << what << ": top-1 agreement";
  ASSERT_EQ(g.layers.size(), c.layers.size()) << what;
  for (size_t l = 0; l < c.layers.size(); ++l) {
    const tqkv::LayerKvError &cl = c.layers[l], &gl = g.layers[l];
    EXPECT_EQ(gl.compressed, cl.compressed) << what << " layer " << l;
    EXPECT_TRUE(std::isnan(gl.k_rel_mse) && std::isnan(gl.v_rel_mse)) << what << ": not measured on the GPU";
    if (cl.compressed) {
      EXPECT_GT(err(cl), 0.02) << what << " layer " << l << ": the test needs a visible compression error";
      EXPECT_NEAR(err(gl), err(cl), 0.05 * err(cl)) << what << " layer " << l << ": attention error";
    } else {
      EXPECT_LT(err(gl), 5e-3) << what << " f16 layer " << l << ": attention error (fp16 rounding)";
    }
  }
  std::printf("[gpu verify] %-22s ppl %.4f (cpu %.4f) f16 %.4f (cpu %.4f) KLD %.5f (cpu %.5f) top-1 %.3f (cpu %.3f)\n",
              what.c_str(), g.ppl, c.ppl, g.f16_ppl, c.f16_ppl, g.kld_mean, c.kld_mean, g.top1_agreement,
              c.top1_agreement);
  for (size_t l = 0; l < c.layers.size(); ++l)
    std::printf("[gpu verify] %-22s layer %zu %-4s attention error gpu %.4f cpu %.4f\n", what.c_str(), l,
                c.layers[l].compressed ? "" : "f16", err(g.layers[l]), err(c.layers[l]));
}

// A synthetic model (seed 9876) on both runtimes, 3 chunks of 64 tokens + 3 (seed `token_seed`),
// verify's options with format `f`: the gates match.
void check_matches_cpu(const tqkv::testing::SyntheticSpec& s, uint32_t token_seed, tqkv::KvFormat f, const std::string& what) {
  SyntheticModels m;
  ASSERT_NO_FATAL_FAILURE(load_synthetic(s, 9876, m));
  const auto ids = random_tokens(64 * 3 + 3, m.cpu->config().n_vocab, token_seed);
  Pair p;
  ASSERT_NO_FATAL_FAILURE(run_both(m, ids, verify_options(f), p));
  expect_gates_match(p, what);
}

TEST(GpuVerify, LlamaK4v4MatchesCpu) {
  SKIP_WITHOUT_GPU();
  check_matches_cpu({"llama", 128, 3, 4, 2, 64, 192}, 11, {4, 4}, "llama k4v4");
}

// Gemma 2: attention soft-capping and sliding-window layers (f16 on both runtimes; the window is
// 20 tokens of a 64-token chunk, so a reference that ignored it would be far off), the global
// layers compressed; --f16-layers 0 on top keeps a global layer in f16 too.
TEST(GpuVerify, Gemma2WindowSoftcapMatchesCpu) {
  SKIP_WITHOUT_GPU();
  tqkv::testing::SyntheticSpec s = gemma2_spec();
  s.n_layer = 4;
  check_matches_cpu(s, 12, {4, 4}, "gemma2 k4v4");
}

// Mutation: a coarser format moves every gate the wrong way, on the GPU as on the CPU.
TEST(GpuVerify, K2v2WorseThanK8v8) {
  SKIP_WITHOUT_GPU();
  SyntheticModels m;
  ASSERT_NO_FATAL_FAILURE(load_synthetic({"llama", 128, 3, 4, 2, 64, 192}, 9876, m));
  const auto ids = random_tokens(64 * 3 + 3, m.cpu->config().n_vocab, 13);
  Pair lo, hi;
  ASSERT_NO_FATAL_FAILURE(run_both(m, ids, verify_options({2, 2}), lo));
  ASSERT_NO_FATAL_FAILURE(run_both(m, ids, verify_options({8, 8}), hi));
  expect_gates_match(lo, "llama k2v2");
  const tqkv::PerplexityResult &a = lo.gpu, &b = hi.gpu;
  ASSERT_EQ(a.layers.size(), b.layers.size());
  for (size_t l = 0; l < a.layers.size(); ++l) {
    EXPECT_GT(err(a.layers[l]), 4 * err(b.layers[l])) << "layer " << l;
    EXPECT_GT(err(b.layers[l]), 0.0) << "layer " << l << ": k8v8 is not lossless";
    std::printf("[gpu verify] mutation layer %zu attention error k2v2 %.4f k8v8 %.4f (cpu k8v8 %.4f)\n", l,
                err(a.layers[l]), err(b.layers[l]), err(hi.cpu.layers[l]));
  }
  EXPECT_GT(a.kld_mean, b.kld_mean);
  EXPECT_LE(a.top1_agreement, b.top1_agreement);
  EXPECT_GT(std::fabs(a.ppl / a.f16_ppl - 1), std::fabs(b.ppl / b.f16_ppl - 1));
  std::printf("[gpu verify] mutation KLD k2v2 %.5f k8v8 %.5f, top-1 %.3f / %.3f, ppl change %.4f / %.4f\n", a.kld_mean,
              b.kld_mean, a.top1_agreement, b.top1_agreement, a.ppl / a.f16_ppl - 1, b.ppl / b.f16_ppl - 1);
}

// The probe's bookkeeping on a GpuContext: off by default; measures prefill chunks of its sequence
// from position 0; a decode step stops it; reset + prefill starts over (same tokens, same error);
// prefill_batch refuses while it is on; a bad slot is an error.
TEST(GpuVerify, ProbeLifecycle) {
  SKIP_WITHOUT_GPU();
  SyntheticModels m;
  ASSERT_NO_FATAL_FAILURE(load_synthetic({"llama", 128, 2, 4, 2, 64, 192}, 9876, m));
  const auto ids = random_tokens(80, m.cpu->config().n_vocab, 14);
  tqkv::GpuContextOptions o;
  o.format = {4, 4};
  o.f16_layers = {1};
  o.max_tokens = 96;
  o.max_chunk = 32;
  o.max_seqs = 2;
  auto ctx = tqkv::GpuContext::create(*m.gpu, o);
  ASSERT_TRUE(ctx.is_ok()) << ctx.status().to_string();
  tqkv::GpuContext& c = **ctx;
  EXPECT_TRUE(c.attention_probe_result().empty());
  EXPECT_FALSE(c.set_attention_probe(2).is_ok());
  ASSERT_TRUE(c.set_attention_probe(0).is_ok());
  ASSERT_TRUE(c.prefill(0, ids.data(), 70, nullptr, tqkv::LogitsMode::kLast).is_ok());  // 3 chunks of 32
  ASSERT_TRUE(c.prefill(1, ids.data(), 10, nullptr, tqkv::LogitsMode::kLast).is_ok());  // another slot: not measured
  EXPECT_EQ(c.attention_probe_rows(), 70);
  const auto r1 = c.attention_probe_result();
  ASSERT_EQ(r1.size(), 2u);
  EXPECT_TRUE(r1[0].compressed);
  EXPECT_FALSE(r1[1].compressed);
  EXPECT_GT(err(r1[0]), 0.02);
  EXPECT_LT(err(r1[0]), 0.5);
  EXPECT_LT(err(r1[1]), 5e-3);
  int32_t next = ids[70];
  ASSERT_TRUE(c.decode(&next, 1, nullptr, nullptr).is_ok());
  ASSERT_TRUE(c.prefill(0, ids.data() + 71, 5, nullptr, tqkv::LogitsMode::kLast).is_ok());
  EXPECT_EQ(c.attention_probe_rows(), 70) << "after a decode step the probe must stop";
  const int seq0 = 0, n = 1;
  const int32_t* tp = ids.data();
  EXPECT_EQ(c.prefill_batch(&seq0, &tp, &n, 1, nullptr).code(), tqkv::StatusCode::kUnsupported);
  // Start over: the probe's sums restart with set_attention_probe; the same tokens give the same error.
  ASSERT_TRUE(c.reset(0).is_ok());
  ASSERT_TRUE(c.set_attention_probe(0).is_ok());
  ASSERT_TRUE(c.prefill(0, ids.data(), 70, nullptr, tqkv::LogitsMode::kLast).is_ok());
  EXPECT_EQ(c.attention_probe_rows(), 70);
  const auto r2 = c.attention_probe_result();
  EXPECT_NEAR(err(r2[0]), err(r1[0]), 1e-5);
  ASSERT_TRUE(c.set_attention_probe(-1).is_ok());
  EXPECT_TRUE(c.attention_probe_result().empty());
}

}  // namespace
