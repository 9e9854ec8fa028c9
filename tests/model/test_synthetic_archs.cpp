// Tiny random-weight GGUF models, one per supported architecture, written with the test GGUF
// writer and run through the runtime (chunked prefill, then one token at a time) against the
// plain-loop reference forward (src/model/reference_forward.cpp).
//
// Tolerance: |ours - ref| <= 2e-5 + 1e-5 * |ref| on every logit with the fp32 KV cache (fp32
// compute against double; logits here are O(1); measured max 2.2e-6); with the f16 cache
// 1e-2 + 1e-2 * |ref| (K/V rounded to fp16 before attention; measured max 2.5e-3). Zero
// violations; NaN fails. Llama and Gemma 3 run 75-80 tokens: more than one internal prefill chunk,
// and (Gemma 3) more than the sliding layers' ring buffer holds, so it wraps.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "../common/synthetic_gguf.h"
#include "tqkv/generate.h"
#include "tqkv/model.h"

namespace {

using tqkv::GgmlType;

struct Spec : tqkv::testing::SyntheticSpec {
  int n_tokens = 21;
};

std::vector<uint8_t> build(const Spec& s) { return tqkv::testing::build_synthetic_gguf(s, 1234); }


void check_arch(const Spec& s, void (*check_config)(const tqkv::ModelConfig&)) {
  const std::vector<uint8_t> file = build(s);
  auto g = tqkv::parse_gguf(file.data(), file.size());
  ASSERT_TRUE(g.is_ok()) << g.status().to_string();
  auto model = tqkv::Model::from_gguf(&*g);
  ASSERT_TRUE(model.is_ok()) << model.status().to_string();
  const tqkv::ModelConfig& c = (*model)->config();
  check_config(c);
  const int V = c.n_vocab, T = s.n_tokens;
  std::vector<int32_t> ids(static_cast<size_t>(T));
  std::mt19937 rng(7);
  for (int32_t& id : ids) id = static_cast<int32_t>(rng() % V);
  auto ref = tqkv::reference_forward(*g, c, ids);
  ASSERT_TRUE(ref.is_ok()) << ref.status().to_string();

  for (const bool fp32 : {true, false}) {
    const double atol = fp32 ? 2e-5 : 1e-2, rtol = fp32 ? 1e-5 : 1e-2;
    tqkv::KvOptions opt;
    opt.dense_fp32 = fp32;
    opt.max_tokens = T;
    auto kv = tqkv::make_kv_backend(c, opt);
    ASSERT_TRUE(kv.is_ok()) << kv.status().to_string();
    // Prefill the first part in one call (split internally when longer than kMaxChunk), then decode.
    const int pre = std::min(T - 3, tqkv::Model::kMaxChunk + 5);
    std::vector<float> got(static_cast<size_t>(T) * V, NAN);
    auto st = (*model)->forward(ids.data(), pre, 0, **kv, got.data(), tqkv::LogitsMode::kAll);
    ASSERT_TRUE(st.is_ok()) << (*kv)->describe() << ": " << st.to_string();
    for (int t = pre; t < T; ++t) {
      st = (*model)->forward(&ids[t], 1, t, **kv, got.data() + static_cast<size_t>(t) * V, tqkv::LogitsMode::kLast);
      ASSERT_TRUE(st.is_ok()) << (*kv)->describe() << ": " << st.to_string();
    }
    int bad = 0;
    double worst = 0;
    for (size_t i = 0; i < got.size(); ++i) {
      const double d = std::fabs(got[i] - (*ref)[i]);
      worst = std::max(worst, std::isfinite(got[i]) ? d : 1e30);
      if (!(d <= atol + rtol * std::fabs((*ref)[i]))) {
        if (++bad <= 5) ADD_FAILURE() << s.arch << (fp32 ? " fp32" : " f16") << " logit " << i << ": "
                                      << got[i] << " vs " << (*ref)[i];
      }
    }
    EXPECT_EQ(bad, 0);
    std::printf("[synthetic] %-6s kv=%s: %zu logits, max |diff| %.3g\n", s.arch.c_str(), fp32 ? "fp32" : "f16 ",
                got.size(), worst);
  }
}

TEST(SyntheticArch, Llama) {
  Spec s{{"llama", 64, 2, 4, 2, 16, 96}};
  s.rope_freqs = true;
  s.wtype = GgmlType::kQ8_0;
  s.n_tokens = 75;  // longer than one internal chunk
  check_arch(s, [](const tqkv::ModelConfig& c) {
    EXPECT_EQ(c.rope_style, tqkv::RopeStyle::kAdjacent);
    EXPECT_TRUE(c.has_rope_freqs);
    EXPECT_TRUE(c.tied_output);
  });
}

TEST(SyntheticArch, Qwen2) {
  Spec s{{"qwen2", 64, 2, 4, 1, 16, 96}};
  s.tied = false;
  s.wtype = GgmlType::kQ4_1;
  check_arch(s, [](const tqkv::ModelConfig& c) {
    EXPECT_EQ(c.rope_style, tqkv::RopeStyle::kHalf);
    EXPECT_TRUE(c.qkv_bias);
    EXPECT_FALSE(c.tied_output);
  });
}

TEST(SyntheticArch, Phi3) {
  Spec s{{"phi3", 192, 2, 2, 2, 96, 128}};
  s.tied = false;
  check_arch(s, [](const tqkv::ModelConfig& c) {
    EXPECT_TRUE(c.fused_qkv);
    EXPECT_TRUE(c.fused_gate_up);
    EXPECT_EQ(c.head_dim, 96);
  });
}

TEST(SyntheticArch, Gemma2) {
  Spec s{{"gemma2", 64, 3, 4, 2, 32, 96}};
  s.window = 6;
  s.attn_softcap = 2.0f;  // small caps so that tanh bends the values these weights produce
  s.final_softcap = 3.0f;
  check_arch(s, [](const tqkv::ModelConfig& c) {
    EXPECT_EQ(c.layer_sliding, (std::vector<uint8_t>{1, 0, 1}));
    EXPECT_FLOAT_EQ(c.attn_softcap, 2.0f);
    EXPECT_FLOAT_EQ(c.final_softcap, 3.0f);
    EXPECT_TRUE(c.post_norms);
    EXPECT_EQ(c.act, tqkv::Activation::kGeluTanh);
  });
}

TEST(SyntheticArch, Gemma3) {
  Spec s{{"gemma3", 96, 7, 4, 1, 64, 96}};  // head_dim * heads != n_embd, as in the real model
  s.window = 5;
  s.wtype = GgmlType::kQ8_0;
  s.n_tokens = 80;
  check_arch(s, [](const tqkv::ModelConfig& c) {
    EXPECT_EQ(c.layer_sliding, (std::vector<uint8_t>{1, 1, 1, 1, 1, 0, 1}));
    EXPECT_TRUE(c.qk_norm);
    EXPECT_TRUE(c.embed_scale);
    EXPECT_FLOAT_EQ(c.rope_base_local, 10000.0f);
    EXPECT_FLOAT_EQ(c.rope_base, 500.0f);
  });
}

TEST(SyntheticArch, UnknownArchitectureIsRejected) {
  Spec s{{"llama", 64, 1, 4, 2, 16, 96}};
  std::vector<uint8_t> file = build(s);
  auto g = tqkv::parse_gguf(file.data(), file.size());
  ASSERT_TRUE(g.is_ok());
  for (auto& kv : g->metadata)
    if (kv.key == "general.architecture") kv.value.str = "mamba";
  auto m = tqkv::Model::from_gguf(&*g);
  ASSERT_FALSE(m.is_ok());
  EXPECT_EQ(m.status().code(), tqkv::StatusCode::kUnsupported);
  EXPECT_NE(m.status().message().find("mamba"), std::string::npos);
}

}  // namespace

namespace {

// evaluate_perplexity against perplexity computed by hand from the reference forward's logits
// (chunks of 32 tokens, second half scored), and the KLD / top-1 fields' basic laws.
TEST(SyntheticArch, PerplexityMatchesReferenceLogits) {
  Spec s{{"gemma3", 96, 7, 4, 1, 64, 96}};
  s.window = 5;
  const std::vector<uint8_t> file = build(s);
  auto g = tqkv::parse_gguf(file.data(), file.size());
  ASSERT_TRUE(g.is_ok());
  auto model = tqkv::Model::from_gguf(&*g);
  ASSERT_TRUE(model.is_ok());
  const tqkv::ModelConfig& c = (*model)->config();
  const int ctx = 32, chunks = 2, V = c.n_vocab;
  std::vector<int32_t> ids(ctx * chunks + 5);
  std::mt19937 rng(11);
  for (int32_t& id : ids) id = static_cast<int32_t>(rng() % V);
  double nll = 0;
  int scored = 0;
  for (int ch = 0; ch < chunks; ++ch) {
    std::vector<int32_t> chunk(ids.begin() + ch * ctx, ids.begin() + (ch + 1) * ctx);
    auto ref = tqkv::reference_forward(*g, c, chunk);
    ASSERT_TRUE(ref.is_ok());
    for (int p = ctx / 2; p + 1 < ctx; ++p) {
      const float* row = ref->data() + static_cast<size_t>(p) * V;
      double mx = row[0], z = 0;
      for (int t = 0; t < V; ++t) mx = std::max(mx, static_cast<double>(row[t]));
      for (int t = 0; t < V; ++t) z += std::exp(row[t] - mx);
      nll -= row[chunk[p + 1]] - mx - std::log(z);
      ++scored;
    }
  }
  const double want = std::exp(nll / scored);
  tqkv::PerplexityOptions po;
  po.ctx = ctx;
  po.max_chunks = chunks;
  po.format = {8, 4};
  auto r = tqkv::evaluate_perplexity(**model, ids, po, nullptr);
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  EXPECT_EQ(r->chunks, chunks);
  EXPECT_EQ(r->scored, scored);
  ASSERT_TRUE(r->compared);
  // The f16 run against the fp64 reference: f16 K/V rounding only.
  EXPECT_NEAR(r->f16_ppl, want, 1e-3 * want);
  EXPECT_GE(r->kld_mean, 0.0);
  EXPECT_GE(r->kld_max, r->kld_p99);
  EXPECT_GT(r->kld_max, 0.0);  // 4-bit values do move the distribution
  EXPECT_GE(r->top1_agreement, 0.0);
  EXPECT_LE(r->top1_agreement, 1.0);
  EXPECT_LT(r->kv_bytes, r->kv_f16_bytes);
  // Too little text for one chunk is an error, not a crash.
  std::vector<int32_t> few(ids.begin(), ids.begin() + 10);
  EXPECT_FALSE(tqkv::evaluate_perplexity(**model, few, po, nullptr).is_ok());
}

}  // namespace
