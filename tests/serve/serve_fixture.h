// The real SmolLM2 (make models) loaded once for the serving tests; tests skip without it.
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <thread>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "tqkv/generate.h"
#include "tqkv/model.h"
#include "tqkv/tokenizer.h"

namespace tqkv::testing {

struct LoadedModel {
  std::unique_ptr<Model> model;
  std::unique_ptr<Tokenizer> tok;
};

inline LoadedModel* smollm2() {
  static LoadedModel* m = [] {
    const char* e = std::getenv("TQKV_SOURCE_DIR");
    const std::string path = std::string(e ? e : TQKV_SOURCE_DIR) + "/models/smollm2-135m-instruct-q4_1.gguf";
    if (!std::ifstream(path).good()) return static_cast<LoadedModel*>(nullptr);
    auto lm = new LoadedModel;
    auto model = Model::load(path);
    if (!model.is_ok()) return static_cast<LoadedModel*>(nullptr);
    lm->model = std::move(*model);
    auto tok = Tokenizer::from_gguf(lm->model->gguf());
    if (!tok.is_ok()) return static_cast<LoadedModel*>(nullptr);
    lm->tok = std::move(*tok);
    return lm;
  }();
  return m;
}

#define TQKV_REQUIRE_SMOLLM2()                                                          \
  tqkv::testing::LoadedModel* lm = tqkv::testing::smollm2();                             \
  if (!lm) GTEST_SKIP() << "models/smollm2-135m-instruct-q4_1.gguf absent: run `make models`"

inline KvOptions kv_options(const std::string& fmt, int64_t ctx) {
  KvOptions o;
  o.format = *parse_kv_format(fmt);
  o.max_tokens = ctx;
  o.center_keys = true;
  o.sink_tokens = 4;
  o.recent_tokens = 8;
  return o;
}

inline std::unique_ptr<KvBackend> new_kv(const ModelConfig& c, const KvOptions& o) {
  auto r = make_kv_backend(c, o);
  EXPECT_TRUE(r.is_ok()) << r.status().to_string();
  return r.is_ok() ? std::move(*r) : nullptr;
}

// Greedy ids of `generate` on a fresh cache: the single-sequence reference.
inline std::vector<int32_t> generate_ids(const LoadedModel& lm, const KvOptions& kv, const std::string& prompt, int n) {
  auto cache = make_kv_backend(lm.model->config(), kv);
  EXPECT_TRUE(cache.is_ok());
  auto ids = lm.tok->encode(prompt, lm.tok->add_bos(), false);
  GenerateOptions go;
  go.max_new_tokens = n;
  auto st = generate(*lm.model, *lm.tok, **cache, *ids, go, nullptr);
  EXPECT_TRUE(st.is_ok()) << st.status().to_string();
  return st.is_ok() ? st->ids : std::vector<int32_t>{};
}

// The engine frees a slot just after the request's final event reaches its client: poll.
template <typename E>
int active_after_settling(E& engine) {
  for (int i = 0; i < 200 && engine.stats().active != 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  return engine.stats().active;
}

}  // namespace tqkv::testing
