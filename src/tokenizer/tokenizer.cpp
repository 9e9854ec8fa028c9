// The parts every tokenizer shares: reading the vocabulary and special ids from GGUF metadata,
// splitting special tokens out of the text (leftmost-longest over a byte trie), decoding, and
// the end-of-generation set.
#include "tqkv/tokenizer.h"

#include <algorithm>
#include <limits>

#include "tokenizer/tokenizer_impl.h"

namespace tqkv {

namespace {

// Control tokens that end a turn in the chat templates we know. A file whose eos is something
// else still stops on these (llama.cpp does the same).
constexpr std::string_view kEndOfTurnTexts[] = {
    "<|eot_id|>", "<|im_end|>", "<end_of_turn>", "<|end|>", "<EOT>", "<|eom_id|>",
    "<|endoftext|>", "<|end_of_text|>", "<end_of_utterance>",
};
// The subset that names "end of turn" when the file gives no tokenizer.ggml.eot_token_id.
constexpr std::string_view kEotTexts[] = {"<|eot_id|>", "<|im_end|>", "<end_of_turn>", "<|end|>", "<EOT>"};

// An optional token id from metadata: -1 when absent; an error when present but out of range.
Result<int32_t> optional_id(const GgufFile& g, std::string_view key, size_t vocab) {
  TQKV_ASSIGN_OR_RETURN(int64_t v, g.get_i64_or(key, -1));
  if (v == -1) return int32_t{-1};
  if (v < 0 || static_cast<uint64_t>(v) >= vocab) {
    return corrupt_data("tokenizer: " + std::string(key) + " = " + std::to_string(v) +
                        " is outside the vocabulary of " + std::to_string(vocab) + " tokens");
  }
  return static_cast<int32_t>(v);
}

}  // namespace

Result<std::unique_ptr<Tokenizer>> Tokenizer::from_gguf(const GgufFile& gguf) {
  TQKV_ASSIGN_OR_RETURN(std::string model, gguf.get_string("tokenizer.ggml.model"));
  if (model == "gpt2") return make_byte_level_bpe_tokenizer(gguf);
  if (model == "llama") return make_sentencepiece_tokenizer(gguf);
  return unsupported("tokenizer: tokenizer.ggml.model '" + model +
                     "' is not supported (supported: gpt2 = byte-level BPE, llama = SentencePiece)");
}

Status Tokenizer::init_common(const GgufFile& g, TokenizerKind kind) {
  kind_ = kind;
  TQKV_ASSIGN_OR_RETURN(auto tokens, g.get_string_array("tokenizer.ggml.tokens"));
  if (tokens.empty()) return corrupt_data("tokenizer: tokenizer.ggml.tokens is empty");
  if (tokens.size() > static_cast<size_t>(std::numeric_limits<int32_t>::max())) {
    return corrupt_data("tokenizer: " + std::to_string(tokens.size()) + " tokens do not fit int32 ids");
  }
  const size_t n = tokens.size();
  tokens_.assign(tokens.begin(), tokens.end());

  types_.assign(n, TokenType::kNormal);
  if (g.has("tokenizer.ggml.token_type")) {
    TQKV_ASSIGN_OR_RETURN(auto types, g.get_int_array("tokenizer.ggml.token_type"));
    if (types.size() != n) {
      return corrupt_data("tokenizer: token_type has " + std::to_string(types.size()) +
                          " entries for " + std::to_string(n) + " tokens");
    }
    for (size_t i = 0; i < n; ++i) {
      if (types[i] < 0 || types[i] > static_cast<int64_t>(TokenType::kByte)) {
        return corrupt_data("tokenizer: token " + std::to_string(i) + " has unknown type " +
                            std::to_string(types[i]));
      }
      types_[i] = static_cast<TokenType>(types[i]);
    }
  }

  token_index_.clear();
  token_index_.reserve(n);
  for (size_t i = 0; i < n; ++i) token_index_.emplace(tokens_[i], static_cast<int32_t>(i));

  TQKV_ASSIGN_OR_RETURN(bos_id_, optional_id(g, "tokenizer.ggml.bos_token_id", n));
  TQKV_ASSIGN_OR_RETURN(eos_id_, optional_id(g, "tokenizer.ggml.eos_token_id", n));
  TQKV_ASSIGN_OR_RETURN(unk_id_, optional_id(g, "tokenizer.ggml.unknown_token_id", n));
  TQKV_ASSIGN_OR_RETURN(pad_id_, optional_id(g, "tokenizer.ggml.padding_token_id", n));
  TQKV_ASSIGN_OR_RETURN(eot_id_, optional_id(g, "tokenizer.ggml.eot_token_id", n));
  TQKV_ASSIGN_OR_RETURN(int32_t eom_id, optional_id(g, "tokenizer.ggml.eom_token_id", n));
  // llama.cpp's defaults when a file does not say: SentencePiece adds BOS, byte-level BPE does not.
  const bool spm = kind == TokenizerKind::kSentencePiece;
  TQKV_ASSIGN_OR_RETURN(add_bos_, g.get_bool_or("tokenizer.ggml.add_bos_token", spm));
  TQKV_ASSIGN_OR_RETURN(add_eos_, g.get_bool_or("tokenizer.ggml.add_eos_token", false));
  TQKV_ASSIGN_OR_RETURN(add_space_prefix_, g.get_bool_or("tokenizer.ggml.add_space_prefix", spm));
  TQKV_ASSIGN_OR_RETURN(pre_name_, g.get_string_or("tokenizer.ggml.pre", ""));

  if (eot_id_ < 0) {
    for (std::string_view t : kEotTexts) {
      const int32_t id = find_token(t);
      if (id >= 0 && types_[id] == TokenType::kControl) {
        eot_id_ = id;
        break;
      }
    }
  }
  eog_ids_.clear();
  for (int32_t id : {eos_id_, eot_id_, eom_id}) {
    if (id >= 0) eog_ids_.push_back(id);
  }
  for (std::string_view t : kEndOfTurnTexts) {
    const int32_t id = find_token(t);
    if (id >= 0 && types_[id] == TokenType::kControl) eog_ids_.push_back(id);
  }
  std::sort(eog_ids_.begin(), eog_ids_.end());
  eog_ids_.erase(std::unique(eog_ids_.begin(), eog_ids_.end()), eog_ids_.end());

  // The special-token trie: control tokens (matched when parse_special) and user-defined ones
  // (always). Built as a pointer-free tree: insert into a map-of-children form first, then flatten.
  special_first_byte_.assign(256, 0);
  struct BuildNode {
    int32_t token = -1;
    std::vector<std::pair<uint8_t, uint32_t>> children;
  };
  std::vector<BuildNode> build(1);
  for (size_t i = 0; i < n; ++i) {
    if (types_[i] != TokenType::kControl && types_[i] != TokenType::kUserDefined) continue;
    const std::string& t = tokens_[i];
    if (t.empty()) continue;
    special_first_byte_[static_cast<uint8_t>(t[0])] = 1;
    uint32_t node = 0;
    for (char c : t) {
      const auto b = static_cast<uint8_t>(c);
      uint32_t next = 0;
      for (const auto& [cb, child] : build[node].children) {
        if (cb == b) next = child;
      }
      if (next == 0) {
        next = static_cast<uint32_t>(build.size());
        build[node].children.push_back({b, next});
        build.emplace_back();
      }
      node = next;
    }
    if (build[node].token < 0) build[node].token = static_cast<int32_t>(i);  // first id wins
  }
  special_trie_.nodes.assign(build.size(), {});
  special_trie_.edges.clear();
  for (size_t i = 0; i < build.size(); ++i) {
    auto& ch = build[i].children;
    std::sort(ch.begin(), ch.end());
    special_trie_.nodes[i].token = build[i].token;
    special_trie_.nodes[i].first_child = static_cast<uint32_t>(special_trie_.edges.size());
    special_trie_.nodes[i].num_children = static_cast<uint32_t>(ch.size());
    for (const auto& [b, child] : ch) special_trie_.edges.push_back({b, child});
  }
  return Status::ok();
}

int32_t Tokenizer::match_special(std::string_view text, size_t pos, bool parse_special, size_t* len) const {
  const auto& nodes = special_trie_.nodes;
  const auto& edges = special_trie_.edges;
  int32_t best = -1;
  size_t best_len = 0;
  uint32_t node = 0;
  for (size_t i = pos; i < text.size(); ++i) {
    const auto b = static_cast<uint8_t>(text[i]);
    const auto* first = edges.data() + nodes[node].first_child;
    const auto* last = first + nodes[node].num_children;
    const auto* it = std::lower_bound(first, last, b, [](const SpecialTrie::Edge& e, uint8_t v) { return e.byte < v; });
    if (it == last || it->byte != b) break;
    node = it->node;
    const int32_t tok = nodes[node].token;
    if (tok >= 0 && (parse_special || types_[tok] == TokenType::kUserDefined)) {
      best = tok;
      best_len = i + 1 - pos;
    }
  }
  *len = best_len;
  return best;
}

Result<std::vector<int32_t>> Tokenizer::encode(std::string_view text, bool add_bos, bool parse_special) const {
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 2);
  if (add_bos && bos_id_ >= 0) out.push_back(bos_id_);
  size_t frag_start = 0;
  size_t pos = 0;
  while (pos < text.size()) {
    if (!special_first_byte_[static_cast<uint8_t>(text[pos])]) {
      ++pos;
      continue;
    }
    size_t len = 0;
    const int32_t id = match_special(text, pos, parse_special, &len);
    if (id < 0) {
      ++pos;
      continue;
    }
    if (pos > frag_start) encode_fragment(text.substr(frag_start, pos - frag_start), frag_start == 0, out);
    out.push_back(id);
    pos += len;
    frag_start = pos;
  }
  if (frag_start < text.size()) encode_fragment(text.substr(frag_start), frag_start == 0, out);
  for (int32_t id : out) {
    if (!is_valid(id)) return internal_error("tokenizer: produced id " + std::to_string(id) + " outside the vocabulary");
  }
  return out;
}

std::string Tokenizer::token_to_piece(int32_t id, bool render_special) const {
  if (!is_valid(id)) return {};
  switch (types_[id]) {
    case TokenType::kControl:
    case TokenType::kUnknown:
      return render_special ? tokens_[id] : std::string();
    case TokenType::kUserDefined:
      return tokens_[id];
    default:
      return piece_bytes(id);
  }
}

std::string Tokenizer::decode(std::span<const int32_t> ids, bool render_special) const {
  std::string out;
  bool first = true;
  for (int32_t id : ids) {
    if (!is_valid(id)) continue;
    std::string piece = token_to_piece(id, render_special);
    // SentencePiece with a space prefix: the prefix the encoder added is not part of the text.
    if (first && kind_ == TokenizerKind::kSentencePiece && add_space_prefix_ && !piece.empty() &&
        piece[0] == ' ' && (types_[id] == TokenType::kNormal)) {
      piece.erase(0, 1);
    }
    // Control tokens (BOS) before the text do not count as its first token.
    if (types_[id] != TokenType::kControl && types_[id] != TokenType::kUnknown) first = false;
    out += piece;
  }
  return out;
}

const std::string& Tokenizer::token_text(int32_t id) const {
  static const std::string kEmpty;
  return is_valid(id) ? tokens_[id] : kEmpty;
}

TokenType Tokenizer::token_type(int32_t id) const { return is_valid(id) ? types_[id] : TokenType::kUndefined; }

int32_t Tokenizer::find_token(std::string_view text) const {
  auto it = token_index_.find(text);
  return it == token_index_.end() ? -1 : it->second;
}

bool Tokenizer::is_eog(int32_t id) const {
  return std::binary_search(eog_ids_.begin(), eog_ids_.end(), id);
}

}  // namespace tqkv
