// SentencePiece-style BPE (tokenizer.ggml.model "llama": Llama 2, Gemma). Spaces are written as
// U+2581 ("▁"); the text starts as one symbol per UTF-8 character and adjacent symbols are merged
// when their concatenation is a token, best score first (leftmost on ties). What no token covers
// falls back to <0xNN> byte tokens (or unk when the file has none).
#include <array>
#include <cmath>
#include <cstdint>
#include <queue>

#include "tokenizer/tokenizer_impl.h"
#include "tokenizer/utf8.h"

namespace tqkv {

namespace {

constexpr std::string_view kSpaceMark = "\xE2\x96\x81";  // U+2581

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

class SentencePieceTokenizer final : public Tokenizer {
 public:
  Status init(const GgufFile& g) {
    TQKV_RETURN_IF_ERROR(init_common(g, TokenizerKind::kSentencePiece));
    TQKV_ASSIGN_OR_RETURN(scores_, g.get_float_array("tokenizer.ggml.scores"));
    if (scores_.size() != tokens_.size()) {
      return corrupt_data("tokenizer: scores has " + std::to_string(scores_.size()) + " entries for " +
                          std::to_string(tokens_.size()) + " tokens");
    }
    for (size_t i = 0; i < scores_.size(); ++i) {
      // The merge heap orders by score; a NaN would break its ordering.
      if (!std::isfinite(scores_[i])) {
        return corrupt_data("tokenizer: score of token " + std::to_string(i) + " is not finite");
      }
    }
    byte_token_.fill(-1);
    for (size_t i = 0; i < tokens_.size(); ++i) {
      if (types_[i] != TokenType::kByte) continue;
      const std::string& t = tokens_[i];
      // Exactly "<0xNN>" with two upper- or lower-case hex digits.
      const int hi = t.size() == 6 ? hex_digit(t[3]) : -1;
      const int lo = t.size() == 6 ? hex_digit(t[4]) : -1;
      if (t.size() != 6 || t.compare(0, 3, "<0x") != 0 || t[5] != '>' || hi < 0 || lo < 0) {
        return corrupt_data("tokenizer: byte token " + std::to_string(i) + " '" + t + "' is not <0xNN>");
      }
      const int v = hi * 16 + lo;
      if (byte_token_[v] >= 0) {
        return corrupt_data("tokenizer: byte <0x" + t.substr(3, 2) + "> appears twice (tokens " +
                            std::to_string(byte_token_[v]) + " and " + std::to_string(i) + ")");
      }
      byte_token_[v] = static_cast<int32_t>(i);
    }
    return Status::ok();
  }

 protected:
  void encode_fragment(std::string_view text, bool at_text_start, std::vector<int32_t>& out) const override {
    // Escape spaces (and add the dummy prefix when the file asks for it).
    std::string s;
    s.reserve(text.size() + 8);
    if (add_space_prefix_ && at_text_start) s += kSpaceMark;
    for (char c : text) {
      if (c == ' ') {
        s += kSpaceMark;
      } else {
        s.push_back(c);
      }
    }
    // Symbols: one per UTF-8 character; an invalid byte is a symbol of its own.
    struct Sym {
      uint32_t off, len;
      int32_t prev, next;
    };
    std::vector<Sym> syms;
    for (size_t i = 0; i < s.size();) {
      size_t n = utf8::valid_char_length(s, i);
      if (n == 0) n = 1;
      const auto k = static_cast<int32_t>(syms.size());
      syms.push_back({static_cast<uint32_t>(i), static_cast<uint32_t>(n), k - 1, -1});
      if (k > 0) syms[k - 1].next = k;
      i += n;
    }
    // Candidate merges, best score first, leftmost on ties; validated when popped by checking
    // that both sides still have the lengths they had (symbols only ever grow to the right).
    struct Cand {
      float score;
      int32_t left;
      uint32_t left_len, right_len;
      int32_t id;
    };
    auto worse = [](const Cand& a, const Cand& b) {
      return a.score != b.score ? a.score < b.score : a.left > b.left;
    };
    std::priority_queue<Cand, std::vector<Cand>, decltype(worse)> heap(worse);
    auto push = [&](int32_t left) {
      if (left < 0 || syms[left].next < 0) return;
      const Sym& l = syms[left];
      const Sym& r = syms[l.next];
      const int32_t id = find_token(std::string_view(s).substr(l.off, l.len + r.len));
      if (id >= 0) heap.push({scores_[id], left, l.len, r.len, id});
    };
    for (int32_t i = 0; i + 1 < static_cast<int32_t>(syms.size()); ++i) push(i);
    while (!heap.empty()) {
      const Cand c = heap.top();
      heap.pop();
      Sym& l = syms[c.left];
      if (l.len != c.left_len || l.next < 0 || syms[l.next].len != c.right_len) continue;  // stale
      Sym& r = syms[l.next];
      l.len += r.len;
      r.len = 0;  // dead
      l.next = r.next;
      if (l.next >= 0) syms[l.next].prev = c.left;
      push(l.prev);
      push(c.left);
    }
    for (int32_t i = syms.empty() ? -1 : 0; i >= 0; i = syms[i].next) {
      const std::string_view piece = std::string_view(s).substr(syms[i].off, syms[i].len);
      const int32_t id = find_token(piece);
      if (id >= 0) {
        out.push_back(id);
        continue;
      }
      for (char c : piece) {  // byte fallback
        const int32_t b = byte_token_[static_cast<uint8_t>(c)];
        if (b >= 0) {
          out.push_back(b);
        } else if (unk_id_ >= 0) {
          out.push_back(unk_id_);
          break;  // one unk per piece, as SentencePiece does without byte fallback
        }
      }
    }
  }

  std::string piece_bytes(int32_t id) const override {
    if (types_[id] == TokenType::kByte) {
      // from_gguf checked every BYTE token is "<0xNN>".
      const std::string& t = tokens_[id];
      return std::string(1, static_cast<char>(hex_digit(t[3]) * 16 + hex_digit(t[4])));
    }
    // "▁" -> " ".
    const std::string& t = tokens_[id];
    std::string out;
    out.reserve(t.size());
    for (size_t i = 0; i < t.size();) {
      if (t.compare(i, kSpaceMark.size(), kSpaceMark) == 0) {
        out.push_back(' ');
        i += kSpaceMark.size();
      } else {
        out.push_back(t[i++]);
      }
    }
    return out;
  }

 private:
  std::vector<float> scores_;
  std::array<int32_t, 256> byte_token_{};
};

}  // namespace

Result<std::unique_ptr<Tokenizer>> make_sentencepiece_tokenizer(const GgufFile& gguf) {
  auto tok = std::make_unique<SentencePieceTokenizer>();
  TQKV_RETURN_IF_ERROR(tok->init(gguf));
  return std::unique_ptr<Tokenizer>(std::move(tok));
}

}  // namespace tqkv
