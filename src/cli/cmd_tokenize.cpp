// `tqkv tokenize`: a model's tokenizer on some text (or ids back to text), for users and for
// debugging tokenization differences.
//   tqkv tokenize --model models/x.gguf --text "Hello world"          id, type and piece per token
//   tqkv tokenize --model M --file prompt.txt --json                  {"ids": [...], "tokens": [...]}
//   tqkv tokenize --model M --decode --text "9259 1902"               ids -> text
#include <chrono>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <span>
#include <sstream>
#include <string>
#include <vector>

#include "cli/command_registry.h"
#include "tqkv/gguf.h"
#include "tqkv/tokenizer.h"

namespace {

struct Options {
  std::string model, text, file;
  bool json = false, decode = false, no_bos = false, no_special = false;
};

const char* type_name(tqkv::TokenType t) {
  switch (t) {
    case tqkv::TokenType::kNormal: return "normal";
    case tqkv::TokenType::kUnknown: return "unknown";
    case tqkv::TokenType::kControl: return "control";
    case tqkv::TokenType::kUserDefined: return "user";
    case tqkv::TokenType::kUnused: return "unused";
    case tqkv::TokenType::kByte: return "byte";
    default: return "undefined";
  }
}

// Printable form of a piece: C-style escapes for control bytes, quotes and invalid UTF-8 kept
// visible as \xNN.
std::string escape(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    if (c == '\n') out += "\\n";
    else if (c == '\t') out += "\\t";
    else if (c == '\r') out += "\\r";
    else if (c == '\\') out += "\\\\";
    else if (c < 0x20 || c == 0x7F) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\x%02X", c);
      out += buf;
    } else {
      out.push_back(static_cast<char>(c));
    }
  }
  return out;
}

int run(const Options& o) {
  std::string input = o.text;
  if (!o.file.empty()) {
    std::ifstream f(o.file, std::ios::binary);
    if (!f) {
      std::fprintf(stderr, "tokenize: cannot read %s\n", o.file.c_str());
      return 1;
    }
    std::stringstream ss;
    ss << f.rdbuf();
    input = ss.str();
  }
  auto g = tqkv::open_gguf(o.model);
  if (!g) {
    std::fprintf(stderr, "tokenize: %s\n", g.status().to_string().c_str());
    return 1;
  }
  auto tr = tqkv::Tokenizer::from_gguf(g->gguf);
  if (!tr) {
    std::fprintf(stderr, "tokenize: %s: %s\n", o.model.c_str(), tr.status().to_string().c_str());
    return 1;
  }
  const tqkv::Tokenizer& tok = **tr;

  std::vector<int32_t> ids;
  double ms = 0;
  if (o.decode) {
    std::stringstream ss(input);
    std::string word;
    while (ss >> word) {
      for (char& c : word) {
        if (c == ',' || c == '[' || c == ']') c = ' ';
      }
      std::stringstream ws(word);
      long long v = 0;
      while (ws >> v) {
        if (v < 0 || v >= tok.vocab_size()) {
          std::fprintf(stderr, "tokenize: id %lld is outside the vocabulary (0..%d)\n", v, tok.vocab_size() - 1);
          return 1;
        }
        ids.push_back(static_cast<int32_t>(v));
      }
      if (!ws.eof()) {
        std::fprintf(stderr, "tokenize: --decode expects token ids, got '%s'\n", word.c_str());
        return 1;
      }
    }
  } else {
    const auto t0 = std::chrono::steady_clock::now();
    auto r = tok.encode(input, tok.add_bos() && !o.no_bos, !o.no_special);
    ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    if (!r) {
      std::fprintf(stderr, "tokenize: %s\n", r.status().to_string().c_str());
      return 1;
    }
    ids = std::move(r).value();
  }
  const std::string text = tok.decode(ids);

  if (o.json) {
    nlohmann::json j;
    j["model"] = o.model;
    j["tokenizer"] = tok.kind() == tqkv::TokenizerKind::kByteLevelBpe ? "gpt2" : "llama";
    j["pre"] = tok.pre_name();
    j["vocab_size"] = tok.vocab_size();
    j["ids"] = ids;
    nlohmann::json toks = nlohmann::json::array();
    for (int32_t id : ids) toks.push_back(tok.token_text(id));
    j["tokens"] = toks;
    j["n_tokens"] = ids.size();
    // Invalid UTF-8 in the decoded text is replaced (U+FFFD) so that the JSON stays valid.
    j["text"] = text;
    if (!o.decode) {
      j["input_bytes"] = input.size();
      // Decoding gives the input back (the BOS we added aside).
      const bool bos = !ids.empty() && tok.add_bos() && !o.no_bos && ids[0] == tok.bos_id();
      j["round_trip"] = tok.decode(std::span<const int32_t>(ids).subspan(bos ? 1 : 0)) == input;
      j["encode_ms"] = ms;
    }
    std::printf("%s\n", j.dump(1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
    return 0;
  }
  if (o.decode) {
    std::fwrite(text.data(), 1, text.size(), stdout);
    std::printf("\n");
    return 0;
  }
  for (int32_t id : ids) {
    std::printf("%8d  %-8s '%s'\n", id, type_name(tok.token_type(id)), escape(tok.token_to_piece(id)).c_str());
  }
  std::printf("%zu tokens for %zu bytes (%s, pre '%s', %d tokens in vocabulary; %.3f ms)\n", ids.size(),
              input.size(), tok.kind() == tqkv::TokenizerKind::kByteLevelBpe ? "byte-level BPE" : "SentencePiece",
              tok.pre_name().c_str(), tok.vocab_size(), ms);
  return 0;
}

tqkv::cli::RunFn setup(CLI::App& sub) {
  auto o = std::make_shared<Options>();
  sub.add_option("--model,-m", o->model, "GGUF model file")->required()->check(CLI::ExistingFile);
  auto* text = sub.add_option("--text,-t", o->text, "Text to tokenize (or ids, with --decode)");
  auto* file = sub.add_option("--file,-f", o->file, "Read the text from this file")->check(CLI::ExistingFile);
  text->excludes(file);
  sub.add_flag("--json", o->json, "Machine-readable output");
  sub.add_flag("--decode", o->decode, "The input is token ids (spaces/commas); print their text");
  sub.add_flag("--no-bos", o->no_bos, "Do not add BOS even if the model's file asks for it");
  sub.add_flag("--no-special", o->no_special, "Tokenize control-token text (<|im_start|>...) as plain text");
  return [o, text, file] {
    if (text->count() == 0 && file->count() == 0) {
      std::fprintf(stderr, "tokenize: give --text or --file\n");
      return 2;
    }
    return run(*o);
  };
}

tqkv::cli::CommandRegistrar reg("tokenize", "Tokenize text (or decode ids) with a GGUF model's tokenizer", &setup);

}  // namespace
