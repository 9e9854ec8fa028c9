// The fast merge loops (heap of candidate pairs) against plain-loop references written here:
// BPE that rescans all pairs for the lowest merge rank, and SentencePiece that rescans for the
// best-scoring concatenation. On the real vocabularies (skipped when models/ is absent) and on
// the synthetic ones.
#include <gtest/gtest.h>

#include <map>
#include <random>
#include <string>
#include <unordered_map>
#include <vector>

#include "synthetic_vocab.h"
#include "tokenizer/utf8.h"
#include "tokenizer_test_util.h"

namespace tqkv {
namespace {

// Plain byte-level BPE over one pre-tokenized word.
std::vector<int32_t> reference_bpe(const Tokenizer& tok, const std::map<std::pair<std::string, std::string>, int>& rank,
                                   const std::string& word) {
  std::vector<std::string> syms;
  for (unsigned char c : word) syms.push_back(test::gpt2_letter(c));
  for (;;) {
    int best = -1, best_rank = 0;
    for (size_t i = 0; i + 1 < syms.size(); ++i) {
      auto it = rank.find({syms[i], syms[i + 1]});
      if (it != rank.end() && (best < 0 || it->second < best_rank)) {
        best = static_cast<int>(i);
        best_rank = it->second;
      }
    }
    if (best < 0) break;
    syms[best] += syms[best + 1];
    syms.erase(syms.begin() + best + 1);
  }
  std::vector<int32_t> ids;
  for (const auto& s : syms) ids.push_back(tok.find_token(s));
  return ids;
}

std::map<std::pair<std::string, std::string>, int> merge_ranks(const GgufFile& g) {
  std::map<std::pair<std::string, std::string>, int> rank;
  auto merges = g.get_string_array("tokenizer.ggml.merges");
  EXPECT_TRUE(merges.is_ok());
  for (size_t r = 0; merges.is_ok() && r < merges->size(); ++r) {
    const std::string& m = (*merges)[r];
    const size_t sp = m.find(' ', 1);
    rank.emplace(std::make_pair(m.substr(0, sp), m.substr(sp + 1)), static_cast<int>(r));
  }
  return rank;
}

// Plain SentencePiece BPE over a text with no special tokens, spaces escaped, no prefix.
std::vector<int32_t> reference_spm(const Tokenizer& tok, const std::vector<float>& scores, const std::string& text) {
  std::string s;
  for (char c : text) s += (c == ' ') ? std::string("\xE2\x96\x81") : std::string(1, c);
  std::vector<std::string> syms;
  for (size_t i = 0; i < s.size();) {
    size_t n = utf8::valid_char_length(s, i);
    if (n == 0) n = 1;
    syms.push_back(s.substr(i, n));
    i += n;
  }
  for (;;) {
    int best = -1;
    float best_score = 0;
    for (size_t i = 0; i + 1 < syms.size(); ++i) {
      const int32_t id = tok.find_token(syms[i] + syms[i + 1]);
      if (id >= 0 && (best < 0 || scores[id] > best_score)) {
        best = static_cast<int>(i);
        best_score = scores[id];
      }
    }
    if (best < 0) break;
    syms[best] += syms[best + 1];
    syms.erase(syms.begin() + best + 1);
  }
  std::vector<int32_t> ids;
  char buf[8];
  for (const auto& p : syms) {
    const int32_t id = tok.find_token(p);
    if (id >= 0) {
      ids.push_back(id);
      continue;
    }
    for (unsigned char c : p) {
      std::snprintf(buf, sizeof(buf), "<0x%02X>", c);
      ids.push_back(tok.find_token(buf));
    }
  }
  return ids;
}

TEST(TokenizerReference, SmolLM2RandomWordsMatchPlainBpe) {
  test::LoadedModel* m = test::load_model("smollm2-135m-instruct-q4_1.gguf");
  if (!m) GTEST_SKIP() << "models/smollm2-135m-instruct-q4_1.gguf absent (make models)";
  const auto rank = merge_ranks(m->gguf.gguf);
  std::mt19937 rng(1234);
  // Letters only (optionally after one space): the pre-tokenizer keeps such a string one word.
  const std::string alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
  const char* const accents[] = {"\xC3\xA9", "\xC3\xBC", "\xC3\x9F", "\xC3\xB1"};  // é ü ß ñ
  int compared = 0;
  for (int t = 0; t < 3000; ++t) {
    std::string w = (rng() % 2) ? " " : "";
    const int len = 1 + static_cast<int>(rng() % 16);
    for (int i = 0; i < len; ++i) {
      if (rng() % 10 == 0) w += accents[rng() % 4];
      else w += alphabet[rng() % alphabet.size()];
    }
    auto got = m->tok->encode(w, false, false);
    ASSERT_TRUE(got.is_ok());
    ASSERT_EQ(*got, reference_bpe(*m->tok, rank, w)) << "word '" << w << "'";
    ++compared;
  }
  EXPECT_EQ(compared, 3000);
}

TEST(TokenizerReference, Gemma3RandomTextMatchesPlainSentencePiece) {
  test::LoadedModel* m = test::load_model("gemma3-270m-q4_k_m.gguf");
  if (!m) GTEST_SKIP() << "models/gemma3-270m-q4_k_m.gguf absent (make models)";
  auto scores = m->gguf.gguf.get_float_array("tokenizer.ggml.scores");
  ASSERT_TRUE(scores.is_ok());
  std::mt19937 rng(99);
  // No newline, no double space, no '<': nothing a user-defined or control token could match.
  const char* const pieces[] = {"a", "e", "i", "o", "u", "t", "n", "s", "r", "h", "l", "th", " ", "ing", "1",
                                "7", ".", ",", "\xC3\xA9", "\xE6\x97\xA5", "\xE6\x9C\xAC", "\xF0\x9F\x98\x80",
                                "\xEE\x80\x80" /* U+E000: byte fallback */, "Q", "x", "-", "'"};
  int compared = 0;
  for (int t = 0; t < 1500; ++t) {
    std::string s;
    const int len = 1 + static_cast<int>(rng() % 24);
    for (int i = 0; i < len; ++i) {
      const char* p = pieces[rng() % (sizeof(pieces) / sizeof(pieces[0]))];
      if (*p == ' ' && !s.empty() && s.back() == ' ') continue;
      s += p;
    }
    auto got = m->tok->encode(s, false, false);
    ASSERT_TRUE(got.is_ok());
    ASSERT_EQ(*got, reference_spm(*m->tok, *scores, s)) << "text '" << s << "'";
    ++compared;
  }
  EXPECT_EQ(compared, 1500);
}

TEST(TokenizerReference, SyntheticVocabulariesMatchPlainLoops) {
  const auto bpe_bytes = test::vocab_gguf(test::bpe_vocab(), "gpt2");
  auto bpe_g = parse_gguf(bpe_bytes.data(), bpe_bytes.size());
  ASSERT_TRUE(bpe_g.is_ok()) << bpe_g.status().to_string();
  auto bpe = Tokenizer::from_gguf(*bpe_g);
  ASSERT_TRUE(bpe.is_ok()) << bpe.status().to_string();
  const auto rank = merge_ranks(*bpe_g);
  for (const std::string w : {"hello", " world", "hellohello", "the", " the", "and", " and", "llo", "x"}) {
    auto got = (*bpe)->encode(w, false, false);
    ASSERT_TRUE(got.is_ok());
    EXPECT_EQ(*got, reference_bpe(**bpe, rank, w)) << w;
    EXPECT_EQ((*bpe)->decode(*got), w);
  }
  // "hello" merges all the way: h+e, l+l, he+ll, hell+o (ranks 0, 1, 2, 3) -> one token.
  auto hello = (*bpe)->encode("hello", false, false);
  ASSERT_TRUE(hello.is_ok());
  ASSERT_EQ(hello->size(), 1u);
  EXPECT_EQ((*bpe)->token_text((*hello)[0]), "hello");

  const auto spm_v = test::spm_vocab();
  const auto spm_bytes = test::vocab_gguf(spm_v, "llama");
  auto spm_g = parse_gguf(spm_bytes.data(), spm_bytes.size());
  ASSERT_TRUE(spm_g.is_ok());
  auto spm = Tokenizer::from_gguf(*spm_g);
  ASSERT_TRUE(spm.is_ok()) << spm.status().to_string();
  for (const std::string s : {"hello world", " the and", "hellothe", "zz\xC3\xA9", "q", "\xFF\xFE"}) {
    auto got = (*spm)->encode(s, false, false);
    ASSERT_TRUE(got.is_ok());
    EXPECT_EQ(*got, reference_spm(**spm, spm_v.scores, s)) << s;
    EXPECT_EQ((*spm)->decode(*got), s);
  }
}

}  // namespace
}  // namespace tqkv
