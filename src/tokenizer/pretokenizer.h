// Regex pre-tokenization for byte-level BPE: the text is cut into words before merges, so that
// merges never cross a word boundary. Which regexes apply is named by tokenizer.ggml.pre.
// Private to tqkv_tokenizer.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "tqkv/status.h"

namespace tqkv {

class PreTokenizer {
 public:
  // The regex chain for a tokenizer.ggml.pre value; kUnsupported for names we do not know.
  // "" (absent), "default" and "gpt2" use GPT-2's regex, as Hugging Face does for such files.
  static Result<PreTokenizer> create(std::string_view pre_name);

  PreTokenizer(PreTokenizer&&) noexcept;
  PreTokenizer& operator=(PreTokenizer&&) noexcept;
  ~PreTokenizer();

  // Appends the words of `text` to `out` (views into text). Each regex in turn splits every piece
  // the previous one produced; matches and the gaps between them both become pieces (Hugging
  // Face's "Isolated" split), so the pieces always concatenate back to `text`. Bytes that are not
  // valid UTF-8 never match and end up in gap pieces.
  void split(std::string_view text, std::vector<std::string_view>& out) const;

  // True when tokenizer.ggml.pre asks for Llama 3's "ignore_merges": a word that is itself a
  // token is emitted whole without merging.
  bool ignore_merges() const { return ignore_merges_; }

 private:
  struct Regex;
  PreTokenizer() = default;
  std::vector<std::unique_ptr<Regex>> regexes_;
  bool ignore_merges_ = false;
};

}  // namespace tqkv
