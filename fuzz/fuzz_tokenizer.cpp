// libFuzzer target for the tokenizers on arbitrary bytes. The first input byte picks the
// tokenizer and the flags; the rest is the text. Checked on every input:
//   encode succeeds, every id is in the vocabulary, decode(encode(x)) == x (minus the bytes a
//   byte-level vocabulary cannot spell; SentencePiece: with U+2581 read as a space), and streaming the pieces through Utf8StreamDecoder
//   reassembles exactly decode's output.
// Tokenizers: the two synthetic vocabularies of tests/tokenizer/synthetic_vocab.h, plus the real
// SmolLM2 and Gemma 3 files when models/ is present (run from the repository root).
// An input that starts with "GGUF" is instead parsed as a file and handed to from_gguf, which
// must fail cleanly or give a tokenizer that then encodes a fixed text.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "../tests/tokenizer/synthetic_vocab.h"
#include "tqkv/gguf.h"
#include "tqkv/tokenizer.h"

namespace {

struct Loaded {
  std::vector<uint8_t> bytes;  // synthetic files: kept alive with their parse
  tqkv::GgufMappedFile mapped;
  std::unique_ptr<tqkv::Tokenizer> tok;
  std::vector<uint8_t> spellable;  // byte-level BPE: byte b has a letter token
};

std::vector<std::unique_ptr<Loaded>> load_all() {
  std::vector<std::unique_ptr<Loaded>> out;
  auto finish = [&](std::unique_ptr<Loaded> l) {
    l->spellable.assign(256, 1);
    if (l->tok->kind() == tqkv::TokenizerKind::kByteLevelBpe) {
      for (int b = 0; b < 256; ++b) l->spellable[b] = l->tok->find_token(tqkv::test::gpt2_letter(b)) >= 0;
    }
    out.push_back(std::move(l));
  };
  for (const char* model : {"gpt2", "llama"}) {
    auto l = std::make_unique<Loaded>();
    l->bytes = tqkv::test::vocab_gguf(model[0] == 'g' ? tqkv::test::bpe_vocab() : tqkv::test::spm_vocab(), model);
    auto g = tqkv::parse_gguf(l->bytes.data(), l->bytes.size());
    if (!g.is_ok()) __builtin_trap();
    auto t = tqkv::Tokenizer::from_gguf(*g);
    if (!t.is_ok()) __builtin_trap();
    l->tok = std::move(t).value();
    finish(std::move(l));
  }
  for (const char* path : {"models/smollm2-135m-instruct-q4_1.gguf", "models/gemma3-270m-q4_k_m.gguf"}) {
    auto g = tqkv::open_gguf(path);
    if (!g.is_ok()) continue;  // models not fetched: fuzz the synthetic vocabularies only
    auto l = std::make_unique<Loaded>();
    l->mapped = std::move(g).value();
    auto t = tqkv::Tokenizer::from_gguf(l->mapped.gguf);
    if (!t.is_ok()) __builtin_trap();
    l->tok = std::move(t).value();
    finish(std::move(l));
  }
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::vector<std::unique_ptr<Loaded>> toks = load_all();
  if (size == 0) return 0;
  if (size >= 4 && data[0] == 'G' && data[1] == 'G' && data[2] == 'U' && data[3] == 'F') {
    auto g = tqkv::parse_gguf(data, size);
    if (!g.is_ok()) return 0;
    auto t = tqkv::Tokenizer::from_gguf(*g);
    if (!t.is_ok()) {
      if (t.status().message().empty()) __builtin_trap();
      return 0;
    }
    auto ids = (*t)->encode("Hello <|im_start|> world\n\n  12345 \xC3\xA9", true, true);
    if (!ids.is_ok()) __builtin_trap();
    (void)(*t)->decode(*ids);
    return 0;
  }
  const uint8_t flags = data[0];
  const Loaded& l = *toks[(flags >> 2) % toks.size()];
  const tqkv::Tokenizer& tok = *l.tok;
  const std::string text(reinterpret_cast<const char*>(data + 1), size - 1);
  const bool parse_special = flags & 1;
  const bool add_bos = flags & 2;

  auto r = tok.encode(text, add_bos, parse_special);
  if (!r.is_ok()) __builtin_trap();
  std::vector<int32_t> ids = std::move(r).value();
  for (int32_t id : ids) {
    if (!tok.is_valid(id)) __builtin_trap();
  }
  if (add_bos && tok.bos_id() >= 0) {
    if (ids.empty() || ids[0] != tok.bos_id()) __builtin_trap();
    ids.erase(ids.begin());
  }
  std::string expect;
  for (unsigned char c : text) {
    if (l.spellable[c]) expect.push_back(static_cast<char>(c));
  }
  if (tok.kind() == tqkv::TokenizerKind::kSentencePiece) {
    // SentencePiece writes spaces as U+2581, so a U+2581 in the text decodes as a space (the
    // sentencepiece library does the same). Only outside user-defined/control tokens, which none
    // of our vocabularies spell with U+2581.
    for (size_t p = 0; (p = expect.find("\xE2\x96\x81", p)) != std::string::npos;) expect.replace(p, 3, " ");
  }
  const std::string decoded = tok.decode(ids);
  if (decoded != expect) __builtin_trap();

  tqkv::Utf8StreamDecoder d;
  std::string streamed;
  for (int32_t id : ids) streamed += d.push(tok.token_to_piece(id));
  streamed += d.flush();
  if (streamed != decoded) __builtin_trap();
  return 0;
}
