// `tqkv serve --device cuda`: the continuous-batching Engine (include/tqkv/serve.h) over the GPU
// runtime's slots (gpu_serve_backend), on the reduced SmolLM2 (scripts/device_runtime.sh prepare
// writes it; the test skips without it or without a GPU).
#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <fstream>
#include <mutex>
#include <string>
#include <vector>

#include "gpu_test_support.h"
#include "tqkv/gpu_model.h"
#include "tqkv/serve.h"
#include "tqkv/tokenizer.h"

namespace tqkv {
namespace {

std::string serve_fixture_dir() {
  if (const char* e = std::getenv("TQKV_GPU_FIXTURES")) return e;
  return std::string(TQKV_SOURCE_DIR) + "/.device-gpu";
}

struct Done {
  std::mutex mu;
  std::condition_variable cv;
  std::string text;
  bool done = false;
  CompletionEvent last;
  CompletionSink sink() {
    return [this](const CompletionEvent& ev) {
      std::lock_guard<std::mutex> lk(mu);
      text += ev.text;
      if (ev.done) done = true, last = ev;
      cv.notify_all();
      return true;
    };
  }
  bool wait() {
    std::unique_lock<std::mutex> lk(mu);
    return cv.wait_for(lk, std::chrono::seconds(120), [&] { return done; });
  }
};

// One slot: replies equal gpu_generate's, token for token. Three slots, eight requests (so slots
// free up and are retaken while others run, leaving idle slots inside the stepped prefix): every
// request finishes, the first token always matches (it comes from the request's own prefill), and
// at most one reply in eight differs from its one-at-a-time reply (batched products round
// differently, which can flip a near-tie).
TEST(GpuServe, EngineOnGpuSlotsMatchesGpuGenerate) {
  SKIP_WITHOUT_GPU();
  const std::string path = serve_fixture_dir() + "/smollm2-4l.gguf";
  if (!std::ifstream(path).good()) GTEST_SKIP() << path << " absent (scripts/device_runtime.sh prepare)";
  auto model = Model::load(path);
  ASSERT_TRUE(model.is_ok()) << model.status().to_string();
  auto tok = Tokenizer::from_gguf((*model)->gguf());
  ASSERT_TRUE(tok.is_ok());
  auto gm = GpuModel::from_gguf((*model)->gguf(), (*model)->config());
  ASSERT_TRUE(gm.is_ok()) << gm.status().to_string();
  KvOptions kv;
  kv.format = KvFormat{4, 4};
  kv.max_tokens = 160;
  kv.center_keys = true;
  kv.sink_tokens = 4;
  kv.recent_tokens = 8;
  // The reduced file keeps the first 8192 vocabulary rows, which real text hardly ever stays in:
  // prompts are random token ids of 5 to 19 tokens.
  const int V = (*model)->config().n_vocab;
  std::vector<std::vector<int32_t>> prompts;
  for (int i = 0; i < 8; ++i) prompts.push_back(testing::random_tokens(5 + 2 * i, V, 900 + i));
  const int n = 20;
  std::vector<std::string> alone(prompts.size());
  for (size_t i = 0; i < prompts.size(); ++i) {
    const auto& ids = prompts[i];
    GenerateOptions go;
    go.max_new_tokens = n;
    go.stop_at_eog = false;
    auto st = gpu_generate(**gm, **tok, kv, ids, go, nullptr);
    ASSERT_TRUE(st.is_ok()) << st.status().to_string();
    alone[i] = (*tok)->decode(st->ids, false);
  }
  for (int slots : {1, 3}) {
    auto backend = gpu_serve_backend(**gm, kv, slots);
    ASSERT_TRUE(backend.is_ok()) << backend.status().to_string();
    auto engine = Engine::create(std::move(*backend), **tok, EngineOptions{});
    ASSERT_TRUE(engine.is_ok()) << engine.status().to_string();
    std::vector<Done> d(prompts.size());
    for (size_t i = 0; i < prompts.size(); ++i) {
      CompletionRequest r;
      r.prompt = prompts[i];
      r.max_tokens = n - static_cast<int>(i % 3) * 5;  // different lengths: slots free up at different steps
      r.sampler.temperature = 0;
      r.stop_at_eog = false;
      ASSERT_TRUE((*engine)->submit(std::move(r), d[i].sink()).is_ok());
    }
    int same = 0;
    for (size_t i = 0; i < prompts.size(); ++i) {
      ASSERT_TRUE(d[i].wait()) << "slots " << slots << " request " << i;
      ASSERT_TRUE(d[i].last.error.is_ok()) << d[i].last.error.to_string();
      EXPECT_EQ(d[i].last.completion_tokens, n - static_cast<int>(i % 3) * 5);
      // The reply is a prefix of the one-at-a-time reply of n tokens (its own length is shorter).
      const bool prefix = alone[i].rfind(d[i].text, 0) == 0;
      same += prefix;
      if (slots == 1) EXPECT_TRUE(prefix) << "request " << i << ": '" << d[i].text << "' vs '" << alone[i] << "'";
    }
    const EngineStats st = (*engine)->stats();
    std::printf("[gpu serve] slots %d: %d of %zu replies equal one-at-a-time, mean decode batch %.2f, %lld steps\n",
                slots, same, prompts.size(), st.batch_fill, static_cast<long long>(st.steps));
    EXPECT_GE(same, static_cast<int>(prompts.size()) - (slots == 1 ? 0 : 1));
    if (slots > 1) EXPECT_GT(st.batch_fill, 1.5);
  }
}

}  // namespace
}  // namespace tqkv
