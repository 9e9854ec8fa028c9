// Tokenizers built from a GGUF file's vocabulary (the tokenizer.ggml.* metadata):
//
//   tokenizer.ggml.model == "gpt2"   byte-level BPE: GPT-2 byte-to-unicode alphabet, ranked merges
//                                    from tokenizer.ggml.merges, text first split by the regexes
//                                    tokenizer.ggml.pre names (llama-bpe, smollm, qwen2, gpt2, ...)
//   tokenizer.ggml.model == "llama"  SentencePiece style (Llama 2, Gemma): spaces become U+2581,
//                                    pieces merged best-score-first (tokenizer.ggml.scores), byte
//                                    fallback to <0xNN> tokens for what no piece covers
//
//   TQKV_ASSIGN_OR_RETURN(auto tok, tqkv::Tokenizer::from_gguf(model.gguf));
//   TQKV_ASSIGN_OR_RETURN(auto ids, tok->encode("Hello", tok->add_bos(), /*parse_special=*/true));
//   std::string text = tok->decode(ids);
//
// Special tokens: tokens typed CONTROL (<|im_start|>, <start_of_turn>, <bos>...) are recognised in
// the text only when parse_special is true; tokens typed USER_DEFINED ("\n\n", "</div>", runs of
// spaces in Gemma) are always kept whole, as llama.cpp and Hugging Face do. Matching is
// leftmost-longest. docs/architecture.md ("Tokenizers") describes the algorithms.
//
// Threads: a Tokenizer is immutable after from_gguf; encode/decode may run concurrently.
// Errors: from_gguf rejects a malformed vocabulary with kCorruptData / kUnsupported; encode never
// fails on any byte string (invalid UTF-8 included); decode ignores ids outside [0, vocab_size).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "tqkv/gguf.h"
#include "tqkv/status.h"

namespace tqkv {

// tokenizer.ggml.token_type values (llama.cpp's llama_token_type).
enum class TokenType : int32_t {
  kUndefined = 0,
  kNormal = 1,
  kUnknown = 2,
  kControl = 3,
  kUserDefined = 4,
  kUnused = 5,
  kByte = 6,
};

enum class TokenizerKind {
  kByteLevelBpe,   // "gpt2"
  kSentencePiece,  // "llama"
};

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Builds the tokenizer tokenizer.ggml.model names. Fails (kUnsupported) for models other than
  // "gpt2" and "llama" and for unknown tokenizer.ggml.pre values; (kCorruptData) for arrays of
  // mismatched length, token ids out of range, malformed merges, duplicate byte tokens.
  static Result<std::unique_ptr<Tokenizer>> from_gguf(const GgufFile& gguf);

  // Text -> ids. add_bos prepends bos_id() (when the file has one); EOS is never appended (see
  // add_eos()). parse_special: see above. Any bytes are accepted, invalid UTF-8 included:
  //   byte-level BPE: every byte is a letter of the alphabet; a byte whose letter the vocabulary
  //     lacks (SmolLM2 has none for 21 bytes, e.g. 0x04, 0xF8..0xFF) is dropped, as Hugging Face does;
  //   SentencePiece: what no piece covers becomes <0xNN> byte tokens (unk if the file has none).
  // So decode(encode(x, false, p)) == x for every x the vocabulary can spell, except that
  // SentencePiece decodes a literal U+2581 ("▁") in the text as a space, as sentencepiece does.
  // Fails only with kInternal (a bug).
  Result<std::vector<int32_t>> encode(std::string_view text, bool add_bos, bool parse_special) const;

  // Ids -> bytes. Control tokens are written as their text when render_special is true (so
  // decode(encode(x, false, true)) == x), skipped otherwise. Ids out of range are skipped. The
  // result may end in an incomplete UTF-8 sequence only if the ids do.
  std::string decode(std::span<const int32_t> ids, bool render_special = true) const;

  // The bytes one token stands for (what decode writes for it). Byte-level and byte-fallback
  // tokens can be part of a UTF-8 character: stream through Utf8StreamDecoder before printing.
  // SentencePiece: a leading space from add_space_prefix is NOT stripped here (decode strips it
  // from the first token only).
  std::string token_to_piece(int32_t id, bool render_special = true) const;

  TokenizerKind kind() const { return kind_; }
  int32_t vocab_size() const { return static_cast<int32_t>(tokens_.size()); }
  bool is_valid(int32_t id) const { return id >= 0 && id < vocab_size(); }
  // The token's text as the file spells it ("Ġworld", "▁world", "<0x0A>"), "" if out of range.
  const std::string& token_text(int32_t id) const;
  TokenType token_type(int32_t id) const;  // kUndefined if out of range
  // Exact lookup of a token's text; -1 if absent.
  int32_t find_token(std::string_view text) const;

  int32_t bos_id() const { return bos_id_; }  // -1 when the file names none
  int32_t eos_id() const { return eos_id_; }
  int32_t eot_id() const { return eot_id_; }  // end of turn (<end_of_turn>, <|im_end|>...) or -1
  int32_t unk_id() const { return unk_id_; }
  int32_t pad_id() const { return pad_id_; }
  bool add_bos() const { return add_bos_; }  // tokenizer.ggml.add_bos_token
  bool add_eos() const { return add_eos_; }  // tokenizer.ggml.add_eos_token
  bool add_space_prefix() const { return add_space_prefix_; }
  const std::string& pre_name() const { return pre_name_; }  // tokenizer.ggml.pre or ""
  // End of generation: eos, eot, and the control tokens chat templates end turns with.
  bool is_eog(int32_t id) const;
  const std::vector<int32_t>& eog_ids() const { return eog_ids_; }

 protected:
  Tokenizer() = default;

  // Encodes one stretch of text that holds no special token. `at_text_start` is true for the
  // stretch that begins the whole text (SentencePiece adds its space prefix only there).
  virtual void encode_fragment(std::string_view text, bool at_text_start,
                               std::vector<int32_t>& out) const = 0;
  // The bytes of a NORMAL/BYTE/UNUSED/UNKNOWN token (control and user-defined tokens are written
  // as their text by the base class).
  virtual std::string piece_bytes(int32_t id) const = 0;
  // Fills the shared fields (tokens, types, ids, special-token matcher); used by from_gguf.
  Status init_common(const GgufFile& gguf, TokenizerKind kind);

  // Leftmost-longest match of a special token at text[pos...]; returns the id or -1 and its length.
  int32_t match_special(std::string_view text, size_t pos, bool parse_special, size_t* len) const;

  TokenizerKind kind_ = TokenizerKind::kByteLevelBpe;
  std::vector<std::string> tokens_;
  std::vector<TokenType> types_;
  // text -> id (first id when a text repeats). Views point into tokens_, which never changes
  // after init_common.
  std::unordered_map<std::string_view, int32_t> token_index_;
  std::string pre_name_;
  int32_t bos_id_ = -1, eos_id_ = -1, eot_id_ = -1, unk_id_ = -1, pad_id_ = -1;
  bool add_bos_ = false, add_eos_ = false, add_space_prefix_ = false;
  std::vector<int32_t> eog_ids_;

  // Byte trie over the text of CONTROL and USER_DEFINED tokens. Node 0 is the root; a node's
  // children are a sorted list of (byte, node) pairs; `token` is the id ending here or -1.
  struct SpecialTrie {
    struct Node {
      int32_t token = -1;
      uint32_t first_child = 0;  // index into edges
      uint32_t num_children = 0;
    };
    struct Edge {
      uint8_t byte;
      uint32_t node;
    };
    std::vector<Node> nodes;
    std::vector<Edge> edges;
  };
  SpecialTrie special_trie_;
  std::vector<uint8_t> special_first_byte_;  // 256 flags: a special token starts with this byte
};

// Holds back an incomplete UTF-8 sequence at the end of what was pushed, so that streamed token
// pieces can be printed as they arrive. Invalid bytes are passed through unchanged (the output is
// exactly the concatenation of the input once flush() is called).
//
//   Utf8StreamDecoder d;
//   for (int32_t id : generated) std::fputs(d.push(tok->token_to_piece(id)).c_str(), stdout);
//   std::fputs(d.flush().c_str(), stdout);
class Utf8StreamDecoder {
 public:
  // Returns the longest prefix of (held bytes + bytes) that does not end inside a UTF-8
  // sequence that could still be completed; keeps the rest (at most 3 bytes).
  std::string push(std::string_view bytes);
  // Returns whatever is held (an incomplete sequence) and resets.
  std::string flush();
  size_t pending() const { return held_.size(); }

 private:
  std::string held_;
};

}  // namespace tqkv
