// Sampler (greedy, filters, penalty, seeding) and chat template recognition.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <vector>

#include "tqkv/chat_template.h"
#include "tqkv/sampler.h"

namespace {

tqkv::Sampler make(tqkv::SamplerOptions o) {
  auto s = tqkv::Sampler::create(o);
  EXPECT_TRUE(s.is_ok());
  return std::move(s).value();
}

TEST(Sampler, GreedyPicksArgmaxAndIgnoresNaN) {
  tqkv::SamplerOptions o;
  auto s = make(o);
  std::vector<float> l = {0.1f, 2.0f, NAN, 1.9f};
  EXPECT_EQ(s.sample(l, {}), 1);
}

TEST(Sampler, RepeatPenaltyChangesGreedyChoice) {
  tqkv::SamplerOptions o;
  o.repeat_penalty = 1.5f;
  auto s = make(o);
  std::vector<float> l = {2.0f, 1.5f, -1.0f};
  std::vector<int32_t> recent = {0};
  EXPECT_EQ(s.sample(l, recent), 1);  // 2.0 / 1.5 = 1.33 < 1.5
}

// Empirical frequencies against the exact filtered distribution (chi-square-like bound).
TEST(Sampler, TemperatureTopKTopPMinPDistribution) {
  std::vector<float> logits = {3.0f, 2.5f, 2.0f, 1.0f, 0.0f, -5.0f};
  tqkv::SamplerOptions o;
  o.temperature = 0.8f;
  o.top_k = 4;      // drops ids 4, 5
  o.top_p = 0.95f;  // keeps the prefix reaching 95% of the top-4 mass
  o.min_p = 0.0f;
  o.seed = 42;
  // Expected: softmax(logits[0..3] / 0.8), then the smallest prefix with mass >= 0.95, renormalised.
  std::vector<double> p(4);
  double z = 0;
  for (int i = 0; i < 4; ++i) z += p[i] = std::exp((logits[i] - 3.0) / 0.8);
  for (double& x : p) x /= z;
  int keep = 0;
  double cum = 0;
  while (keep < 4) {
    cum += p[keep++];
    if (cum >= 0.95) break;
  }
  auto s = make(o);
  std::map<int, int> count;
  const int n = 20000;
  for (int i = 0; i < n; ++i) ++count[s.sample(logits, {})];
  for (int i = 0; i < 6; ++i) {
    const double want = i < keep ? p[i] / cum : 0.0;
    const double got = static_cast<double>(count[i]) / n;
    EXPECT_NEAR(got, want, 4 * std::sqrt(want * (1 - want) / n) + 1e-9) << "id " << i;
  }
}

TEST(Sampler, MinPDropsUnlikelyTokensAndSeedReproduces) {
  std::vector<float> logits = {2.0f, 1.9f, -1.0f, -1.2f};
  tqkv::SamplerOptions o;
  o.temperature = 1.0f;
  o.top_k = 0;
  o.top_p = 1.0f;
  o.min_p = 0.2f;  // exp(-3) = 0.05 < 0.2: ids 2 and 3 never drawn
  o.seed = 5;
  auto a = make(o), b = make(o);
  for (int i = 0; i < 2000; ++i) {
    const int x = a.sample(logits, {});
    EXPECT_LT(x, 2);
    EXPECT_EQ(x, b.sample(logits, {}));
  }
}

TEST(Sampler, RejectsBadOptions) {
  tqkv::SamplerOptions o;
  o.top_p = 0.0f;
  EXPECT_FALSE(tqkv::Sampler::create(o).is_ok());
  o = {};
  o.repeat_penalty = 0.0f;
  EXPECT_FALSE(tqkv::Sampler::create(o).is_ok());
}

TEST(ChatTemplate, RecognisesFamilies) {
  const std::string smol =
      "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ "
      "'<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' "
      "}}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% "
      "endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
  auto c = tqkv::detect_chat_template(smol, "llama");
  ASSERT_TRUE(c.is_ok());
  EXPECT_EQ(c->format, tqkv::ChatFormat::kChatML);
  EXPECT_EQ(c->render_user_turn("Hi"),
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
  auto g = tqkv::detect_chat_template("{{ '<start_of_turn>' + role + '\n' }}", "gemma3");
  ASSERT_TRUE(g.is_ok());
  EXPECT_EQ(g->render_user_turn("Hi"), "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n");
  auto none = tqkv::detect_chat_template("", "gemma3");
  ASSERT_TRUE(none.is_ok());
  EXPECT_FALSE(none->note.empty());
  EXPECT_EQ(tqkv::detect_chat_template("<|start_header_id|>", "llama")->format, tqkv::ChatFormat::kLlama3);
  EXPECT_EQ(tqkv::detect_chat_template("<|user|> <|end|>", "phi3")->format, tqkv::ChatFormat::kPhi3);
  EXPECT_EQ(tqkv::detect_chat_template("[INST] x [/INST]", "llama")->format, tqkv::ChatFormat::kMistral);
  auto unknown = tqkv::detect_chat_template("{{ messages }} <custom>", "llama");
  ASSERT_FALSE(unknown.is_ok());
  EXPECT_EQ(unknown.status().code(), tqkv::StatusCode::kUnsupported);
  EXPECT_FALSE(tqkv::detect_chat_template("", "llama").is_ok());
}

}  // namespace
