// Shared helpers for the tokenizer tests: loading the real models when they are present.
#pragma once

#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <string>

#include "tqkv/gguf.h"
#include "tqkv/tokenizer.h"

namespace tqkv::test {

inline std::string source_dir() {
  const char* env = std::getenv("TQKV_SOURCE_DIR");
  if (env && *env) return env;
#ifdef TQKV_SOURCE_DIR
  return TQKV_SOURCE_DIR;
#else
  return ".";
#endif
}

inline bool file_exists(const std::string& path) { return std::ifstream(path).good(); }

inline std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// A real model's tokenizer, loaded once per test binary (parsing Gemma's 262k-token vocabulary
// takes a moment). Returns nullptr when models/<file> is absent; the caller then GTEST_SKIPs.
struct LoadedModel {
  GgufMappedFile gguf;
  std::unique_ptr<Tokenizer> tok;
};

inline LoadedModel* load_model(const std::string& file) {
  static std::map<std::string, std::unique_ptr<LoadedModel>> cache;
  auto it = cache.find(file);
  if (it != cache.end()) return it->second.get();
  const std::string path = source_dir() + "/models/" + file;
  std::unique_ptr<LoadedModel> m;
  if (file_exists(path)) {
    auto g = open_gguf(path);
    EXPECT_TRUE(g.is_ok()) << g.status().to_string();
    if (g.is_ok()) {
      m = std::make_unique<LoadedModel>();
      m->gguf = std::move(g).value();
      auto t = Tokenizer::from_gguf(m->gguf.gguf);
      EXPECT_TRUE(t.is_ok()) << t.status().to_string();
      if (t.is_ok()) {
        m->tok = std::move(t).value();
      } else {
        m.reset();
      }
    }
  }
  LoadedModel* raw = m.get();
  cache[file] = std::move(m);
  return raw;
}

}  // namespace tqkv::test
