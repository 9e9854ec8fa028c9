// Small hand-made vocabularies written as GGUF bytes with GgufWriter, for the unit tests and the
// fuzzer: one byte-level BPE ("gpt2", pre "smollm") and one SentencePiece ("llama") tokenizer,
// each with control and user-defined tokens. `mutate` lets a test break one field.
#pragma once

#include <cstdint>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "gguf/gguf_writer.h"
#include "tqkv/gguf.h"

namespace tqkv::test {

// GPT-2's printable spelling of byte b (bytes_to_unicode), as UTF-8.
inline std::string gpt2_letter(int b) {
  const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
  int cp = b;
  if (!printable) {
    int n = 0;
    for (int x = 0; x < b; ++x) {
      if (!((x >= 0x21 && x <= 0x7E) || (x >= 0xA1 && x <= 0xAC) || (x >= 0xAE && x <= 0xFF))) ++n;
    }
    cp = 256 + n;
  }
  std::string s;
  if (cp < 0x80) {
    s.push_back(static_cast<char>(cp));
  } else {
    s.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    s.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
  return s;
}

struct SyntheticVocab {
  std::vector<std::string> tokens;
  std::vector<int32_t> types;
  std::vector<float> scores;       // SentencePiece only
  std::vector<std::string> merges; // BPE only
  std::string pre = "smollm";       // BPE only: tokenizer.ggml.pre
};

// Byte-level BPE: ids 0..2 control (<|endoftext|>, <|im_start|>, <|im_end|>), 3 user-defined
// (<tool>), then the 256 byte letters in byte order, then merge results.
inline SyntheticVocab bpe_vocab() {
  SyntheticVocab v;
  v.tokens = {"<|endoftext|>", "<|im_start|>", "<|im_end|>", "<tool>"};
  v.types = {3, 3, 3, 4};
  for (int b = 0; b < 256; ++b) {
    v.tokens.push_back(gpt2_letter(b));
    v.types.push_back(1);
  }
  const std::string G = gpt2_letter(' ');
  const std::vector<std::pair<std::string, std::string>> merges = {
      {"h", "e"}, {"l", "l"}, {"he", "ll"}, {"hell", "o"}, {G, "w"}, {"o", "r"}, {G + "w", "or"},
      {"l", "d"}, {G + "wor", "ld"}, {G, G}, {"t", "h"}, {G, "th"}, {"e", "r"}, {"i", "n"},
      {G, "t"}, {"th", "e"}, {G + "th", "e"}, {"a", "n"}, {"an", "d"}, {G, "and"}, {"ll", "o"},
  };
  for (const auto& [l, r] : merges) {
    v.merges.push_back(l + " " + r);
    v.tokens.push_back(l + r);
    v.types.push_back(1);
  }
  return v;
}

// SentencePiece: <pad> <eos> <bos> <unk> control-ish, <start_of_turn>/<end_of_turn> control,
// "\n\n" and "  " user-defined, 256 <0xNN> byte tokens, then scored pieces (higher = merged first).
inline SyntheticVocab spm_vocab() {
  SyntheticVocab v;
  v.tokens = {"<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>", "\n\n", "  "};
  v.types = {3, 3, 3, 2, 3, 3, 4, 4};
  v.scores.assign(v.tokens.size(), 0.0f);
  char buf[8];
  for (int b = 0; b < 256; ++b) {
    std::snprintf(buf, sizeof(buf), "<0x%02X>", b);
    v.tokens.push_back(buf);
    v.types.push_back(6);
    v.scores.push_back(0.0f);
  }
  const std::string S = "\xE2\x96\x81";  // ▁
  const std::vector<std::string> pieces = {
      S, "h", "e", "l", "o", "w", "r", "d", "a", "n", "t", "\n",
      "he", "ll", "hell", "hello", S + "hello", S + "w", "or", S + "wor", S + "world", "ld",
      S + "t", S + "th", "th", "the", S + "the", "an", "and", S + "and", "lo", "llo", "\xC3\xA9",
  };
  for (size_t i = 0; i < pieces.size(); ++i) {
    v.tokens.push_back(pieces[i]);
    v.types.push_back(1);
    v.scores.push_back(-static_cast<float>(i));
  }
  return v;
}

// GGUF bytes for a vocabulary. model: "gpt2" or "llama".
inline std::vector<uint8_t> vocab_gguf(const SyntheticVocab& v, const std::string& model,
                                       const std::function<void(GgufWriter&)>& extra = {}) {
  GgufWriter w;
  w.add_string("general.architecture", model == "gpt2" ? "llama" : "gemma3");
  w.add_string("tokenizer.ggml.model", model);
  w.add_string_array("tokenizer.ggml.tokens", v.tokens);
  w.add_i32_array("tokenizer.ggml.token_type", v.types);
  if (model == "gpt2") {
    w.add_string("tokenizer.ggml.pre", v.pre);
    w.add_string_array("tokenizer.ggml.merges", v.merges);
    w.add_u32("tokenizer.ggml.bos_token_id", 1);
    w.add_u32("tokenizer.ggml.eos_token_id", 2);
  } else {
    w.add_f32_array("tokenizer.ggml.scores", v.scores);
    w.add_u32("tokenizer.ggml.bos_token_id", 2);
    w.add_u32("tokenizer.ggml.eos_token_id", 1);
    w.add_u32("tokenizer.ggml.unknown_token_id", 3);
    w.add_bool("tokenizer.ggml.add_space_prefix", false);
  }
  if (extra) extra(w);
  return w.finish();
}

}  // namespace tqkv::test
