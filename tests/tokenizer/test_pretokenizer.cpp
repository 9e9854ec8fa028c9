// The PCRE2 pre-tokenizer against Hugging Face's (tokenizers' Split / Digits / ByteLevel) word
// splits, recorded in tests/fixtures/tokenizer/pretokenizer_splits.json for each family we support:
// gpt2, smollm, llama-bpe (Llama 3) and qwen2. Needs no model file.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "tokenizer/pretokenizer.h"
#include "tokenizer_test_util.h"

namespace tqkv {
namespace {

TEST(PreTokenizer, SplitsMatchHuggingFace) {
  const std::string path = test::source_dir() + "/tests/fixtures/tokenizer/pretokenizer_splits.json";
  ASSERT_TRUE(test::file_exists(path)) << path;
  const auto j = nlohmann::json::parse(test::read_file(path));
  int families = 0, checked = 0;
  for (const auto& [name, cases] : j.at("families").items()) {
    auto pre = PreTokenizer::create(name);
    ASSERT_TRUE(pre.is_ok()) << pre.status().to_string();
    ++families;
    for (const auto& c : cases) {
      const std::string text = c.at("text").get<std::string>();
      const auto want = c.at("pieces").get<std::vector<std::string>>();
      std::vector<std::string_view> views;
      pre->split(text, views);
      const std::vector<std::string> got(views.begin(), views.end());
      EXPECT_EQ(got, want) << name << ": '" << text << "'";
      ++checked;
    }
  }
  EXPECT_EQ(families, 4);
  EXPECT_GE(checked, 4 * 40);
}

TEST(PreTokenizer, PiecesCoverInvalidUtf8AndUnknownNamesFail) {
  for (const char* name : {"gpt2", "smollm", "llama-bpe", "qwen2"}) {
    auto pre = PreTokenizer::create(name);
    ASSERT_TRUE(pre.is_ok());
    const std::string text = "ab\xFF\xC3 12\x80\xE6\x97 x\xF0\x9F\x98\x80y";
    std::vector<std::string_view> pieces;
    pre->split(text, pieces);
    std::string joined;
    for (auto p : pieces) {
      EXPECT_FALSE(p.empty());
      joined += p;
    }
    EXPECT_EQ(joined, text) << name;
  }
  EXPECT_EQ(PreTokenizer::create("tekken-9").status().code(), StatusCode::kUnsupported);
  EXPECT_TRUE(PreTokenizer::create("llama-bpe")->ignore_merges());
  EXPECT_FALSE(PreTokenizer::create("smollm")->ignore_merges());
}

}  // namespace
}  // namespace tqkv
