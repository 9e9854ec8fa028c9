// Byte-level BPE (GPT-2 family: SmolLM, Llama 3, Qwen2). Every byte is first spelled as one
// printable code point (GPT-2's bytes_to_unicode), so the vocabulary is a set of strings over a
// 256-letter alphabet; a word is its bytes' letters, merged pair by pair in merge-rank order.
#include <array>
#include <cstdint>
#include <queue>
#include <unordered_map>

#include "tokenizer/pretokenizer.h"
#include "tokenizer/tokenizer_impl.h"
#include "tokenizer/utf8.h"

namespace tqkv {

namespace {

// GPT-2's bytes_to_unicode: printable Latin-1 bytes ('!'..'~', '¡'..'¬', '®'..'ÿ') stand for
// themselves; the other 68 bytes map, in byte order, to U+0100, U+0101, ...
std::array<uint32_t, 256> byte_to_codepoint_table() {
  std::array<uint32_t, 256> t{};
  uint32_t next = 256;
  for (uint32_t b = 0; b < 256; ++b) {
    const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    t[b] = printable ? b : next++;
  }
  return t;
}

class ByteLevelBpeTokenizer final : public Tokenizer {
 public:
  explicit ByteLevelBpeTokenizer(PreTokenizer pre) : pre_(std::move(pre)) {}

  Status init(const GgufFile& g) {
    TQKV_RETURN_IF_ERROR(init_common(g, TokenizerKind::kByteLevelBpe));
    const auto b2c = byte_to_codepoint_table();
    for (int b = 0; b < 256; ++b) {
      std::string s;
      utf8::append_codepoint(s, b2c[b]);
      byte_letter_[b] = s;
      byte_token_[b] = find_token(s);  // -1 if the vocabulary lacks this letter
      codepoint_to_byte_.emplace(b2c[b], static_cast<uint8_t>(b));
    }

    // Merges: "left right" -> (rank, id of left+right). Both halves and the result must be tokens.
    TQKV_ASSIGN_OR_RETURN(auto merges, g.get_string_array("tokenizer.ggml.merges"));
    merges_.reserve(merges.size());
    std::string joined;
    for (size_t r = 0; r < merges.size(); ++r) {
      const std::string& m = merges[r];
      // Split at the first space after the first character: the left half is never empty (a
      // space itself is spelled 'Ġ', so no token text holds a literal space).
      const size_t sp = m.find(' ', 1);
      if (sp == std::string::npos) {
        return corrupt_data("tokenizer: merge " + std::to_string(r) + " '" + m + "' has no space");
      }
      const std::string_view left(m.data(), sp), right(m.data() + sp + 1, m.size() - sp - 1);
      const int32_t l = find_token(left), rt = find_token(right);
      joined.assign(left);
      joined.append(right);
      const int32_t res = find_token(joined);
      if (l < 0 || rt < 0 || res < 0) {
        return corrupt_data("tokenizer: merge " + std::to_string(r) + " '" + m +
                            "' names a token that is not in the vocabulary");
      }
      merges_.emplace(pair_key(l, rt), Merge{static_cast<int32_t>(r), res});  // first rank wins
    }
    return Status::ok();
  }

 protected:
  void encode_fragment(std::string_view text, bool /*at_text_start*/, std::vector<int32_t>& out) const override {
    std::vector<std::string_view> words;
    pre_.split(text, words);
    std::string spelled;
    for (std::string_view w : words) {
      spelled.clear();
      for (char c : w) spelled += byte_letter_[static_cast<uint8_t>(c)];
      if (pre_.ignore_merges()) {
        const int32_t id = find_token(spelled);
        if (id >= 0) {
          out.push_back(id);
          continue;
        }
      }
      merge_word(w, out);
    }
  }

  std::string piece_bytes(int32_t id) const override {
    const std::string& t = tokens_[id];
    std::string out;
    out.reserve(t.size());
    for (size_t i = 0; i < t.size();) {
      const size_t n = utf8::valid_char_length(t, i);
      if (n == 0) {  // not UTF-8 (a broken file): pass the byte through
        out.push_back(t[i++]);
        continue;
      }
      auto it = codepoint_to_byte_.find(utf8::decode_at(t, i, n));
      if (it != codepoint_to_byte_.end()) {
        out.push_back(static_cast<char>(it->second));
      } else {
        out.append(t, i, n);  // a letter outside the byte alphabet: keep it as written
      }
      i += n;
    }
    return out;
  }

 private:
  struct Merge {
    int32_t rank;
    int32_t result;
  };
  static uint64_t pair_key(int32_t l, int32_t r) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(l)) << 32) | static_cast<uint32_t>(r);
  }

  // BPE over one word: symbols start as one token per byte; repeatedly merge the adjacent pair
  // with the lowest rank (leftmost on ties). A min-heap of candidate pairs, validated when popped
  // (a pair is stale if either side changed since it was pushed): O(n log n) per word.
  void merge_word(std::string_view word, std::vector<int32_t>& out) const {
    struct Sym {
      int32_t id;
      int32_t prev, next;  // neighbours in the live list, -1 at the ends
    };
    std::vector<Sym> syms;
    syms.reserve(word.size());
    for (char c : word) {
      const int32_t id = byte_token_[static_cast<uint8_t>(c)];
      // The vocabulary lacks this byte's letter (SmolLM2 has no token for 21 bytes such as 0x04
      // and 0xF8..0xFF): the byte is dropped, as Hugging Face's byte-level BPE does.
      if (id < 0) continue;
      const auto i = static_cast<int32_t>(syms.size());
      syms.push_back({id, i - 1, -1});
      if (i > 0) syms[i - 1].next = i;
    }
    struct Cand {
      int32_t rank, left, left_id, right_id, result;
      bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : left > o.left; }
    };
    std::priority_queue<Cand, std::vector<Cand>, std::greater<Cand>> heap;
    auto push = [&](int32_t left) {
      if (left < 0 || syms[left].next < 0) return;
      const int32_t right = syms[left].next;
      auto it = merges_.find(pair_key(syms[left].id, syms[right].id));
      if (it != merges_.end()) heap.push({it->second.rank, left, syms[left].id, syms[right].id, it->second.result});
    };
    for (int32_t i = 0; i + 1 < static_cast<int32_t>(syms.size()); ++i) push(i);
    while (!heap.empty()) {
      const Cand c = heap.top();
      heap.pop();
      Sym& l = syms[c.left];
      if (l.id != c.left_id || l.next < 0 || syms[l.next].id != c.right_id) continue;  // stale
      const int32_t right = l.next;
      l.id = c.result;
      l.next = syms[right].next;
      if (l.next >= 0) syms[l.next].prev = c.left;
      syms[right].id = -1;  // dead
      push(l.prev);
      push(c.left);
    }
    for (int32_t i = syms.empty() ? -1 : 0; i >= 0; i = syms[i].next) out.push_back(syms[i].id);
  }

  PreTokenizer pre_;
  std::array<std::string, 256> byte_letter_;  // byte -> its letter, UTF-8
  std::array<int32_t, 256> byte_token_{};      // byte -> id of the one-letter token, or -1
  std::unordered_map<uint32_t, uint8_t> codepoint_to_byte_;
  std::unordered_map<uint64_t, Merge> merges_;
};

}  // namespace

Result<std::unique_ptr<Tokenizer>> make_byte_level_bpe_tokenizer(const GgufFile& gguf) {
  TQKV_ASSIGN_OR_RETURN(std::string pre_name, gguf.get_string_or("tokenizer.ggml.pre", ""));
  TQKV_ASSIGN_OR_RETURN(PreTokenizer pre, PreTokenizer::create(pre_name));
  auto tok = std::make_unique<ByteLevelBpeTokenizer>(std::move(pre));
  TQKV_RETURN_IF_ERROR(tok->init(gguf));
  return std::unique_ptr<Tokenizer>(std::move(tok));
}

}  // namespace tqkv
