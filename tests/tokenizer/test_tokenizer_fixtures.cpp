// Token ids of the two real models against the Hugging Face tokenizer (fixtures written by
// tools/make_tokenizer_fixtures.py and committed). Skips when models/ has not been fetched
// (`make models`); `make test` fetches them.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "tokenizer_test_util.h"

namespace tqkv {
namespace {

std::string show(const std::vector<int32_t>& ids) {
  std::string s = "[";
  for (size_t i = 0; i < ids.size(); ++i) s += (i ? ", " : "") + std::to_string(ids[i]);
  return s + "]";
}

void check_fixture(const std::string& name) {
  const std::string fixture = test::source_dir() + "/tests/fixtures/tokenizer/" + name + ".json";
  ASSERT_TRUE(test::file_exists(fixture)) << fixture;
  test::LoadedModel* m = test::load_model(name + ".gguf");
  if (!m) GTEST_SKIP() << "models/" << name << ".gguf is absent; run `make models` to test against it";
  const Tokenizer& tok = *m->tok;
  const auto j = nlohmann::json::parse(test::read_file(fixture));
  ASSERT_EQ(j.at("hf_add_special_tokens_adds_bos").get<bool>(), tok.add_bos());
  ASSERT_GE(j.at("cases").size(), 30u);
  int checked = 0;
  for (const auto& c : j.at("cases")) {
    const std::string text = c.at("text").get<std::string>();
    const auto want = c.at("ids").get<std::vector<int32_t>>();
    const auto want_plain = c.at("ids_plain").get<std::vector<int32_t>>();
    const auto want_bos = c.at("ids_bos").get<std::vector<int32_t>>();
    auto got = tok.encode(text, false, true);
    auto got_plain = tok.encode(text, false, false);
    auto got_bos = tok.encode(text, tok.add_bos(), true);
    ASSERT_TRUE(got.is_ok() && got_plain.is_ok() && got_bos.is_ok());
    EXPECT_EQ(*got, want) << "text: '" << text << "'\n got  " << show(*got) << "\n want " << show(want);
    EXPECT_EQ(*got_plain, want_plain) << "parse_special=false, text: '" << text << "'\n got  "
                                      << show(*got_plain) << "\n want " << show(want_plain);
    EXPECT_EQ(*got_bos, want_bos) << "with BOS, text: '" << text << "'";
    // Both tokenizers are lossless on valid UTF-8: decoding gives the text back, except for the
    // one case of bytes the SmolLM2 vocabulary cannot spell (dropped, as by Hugging Face).
    if (c.value("lossless", true)) {
      EXPECT_EQ(tok.decode(*got), text);
      EXPECT_EQ(tok.decode(*got_plain), text);
    } else {
      EXPECT_NE(tok.decode(*got), text);
      EXPECT_EQ(tok.decode(*got), tok.decode(want));
    }
    ++checked;
  }
  EXPECT_EQ(checked, static_cast<int>(j.at("cases").size()));
}

TEST(TokenizerFixtures, SmolLM2MatchesHuggingFace) { check_fixture("smollm2-135m-instruct-q4_1"); }
TEST(TokenizerFixtures, Gemma3MatchesHuggingFace) { check_fixture("gemma3-270m-q4_k_m"); }

}  // namespace
}  // namespace tqkv
