// `tqkv serve --device cuda`: the continuous-batching Engine (include/tqkv/serve.h) over the GPU
// runtime's slots (gpu_serve_backend), on the reduced SmolLM2 (scripts/device_runtime.sh prepare
// writes it; the test skips without it or without a GPU).
#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <cstring>
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
  // The third round shares a page pool of 80 tokens (5 pages): a request reserves its prompt (5 to
  // 19) plus max_tokens (10 to 20) in whole pages, 32 or 48 tokens, so at most two run at once.
  const ModelConfig& cfg = (*model)->config();
  const int64_t page = gpu_kv_bytes_per_seq(cfg, kv.format, {}, 16) - gpu_kv_bytes_per_seq(cfg, kv.format, {}, 0);
  const int64_t fixed = gpu_kv_bytes_per_seq(cfg, kv.format, {}, 0, 128, kv.sink_tokens, kv.recent_tokens);
  for (int round = 0; round < 3; ++round) {
    const int slots = round == 0 ? 1 : 3;
    const int64_t budget = round == 2 ? 3 * fixed + 6 * page : 0;  // (5 pages + the scratch page)
    auto backend = gpu_serve_backend(**gm, kv, slots, budget);
    ASSERT_TRUE(backend.is_ok()) << backend.status().to_string();
    if (round == 2) {
      ASSERT_EQ((*backend)->pool_tokens(), 80);
    }
    auto engine = Engine::create(std::move(*backend), **tok, EngineOptions{});
    ASSERT_TRUE(engine.is_ok()) << engine.status().to_string();
    std::vector<Done> d(prompts.size());
    // Round 1 first submits a sampled request: while it runs, steps fetch logits for every row (the greedy
    // rows sample on the host); otherwise every row is greedy and steps return the device's argmax.
    Done sampled;
    if (round == 1) {
      CompletionRequest r;
      r.prompt = prompts[3];
      r.max_tokens = 12;
      r.sampler.temperature = 0.8f;
      r.sampler.seed = 5;
      r.stop_at_eog = false;
      ASSERT_TRUE((*engine)->submit(std::move(r), sampled.sink()).is_ok());
    }
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
      if (slots == 1) {
        EXPECT_TRUE(prefix) << "request " << i << ": '" << d[i].text << "' vs '" << alone[i] << "'";
      }
    }
    if (round == 1) {
      ASSERT_TRUE(sampled.wait());
      EXPECT_TRUE(sampled.last.error.is_ok()) << sampled.last.error.to_string();
      EXPECT_EQ(sampled.last.completion_tokens, 12);
    }
    const EngineStats st = (*engine)->stats();
    std::printf("[gpu serve] slots %d%s: %d of %zu replies equal one-at-a-time, mean decode batch %.2f, %lld steps, "
                "peak %d at once\n", slots, round == 2 ? " (80-token page pool)" : "", same, prompts.size(), st.batch_fill,
                static_cast<long long>(st.steps), st.peak_active);
    EXPECT_GE(same, static_cast<int>(prompts.size()) - (slots == 1 ? 0 : 1));
    if (round == 1) {
      EXPECT_GT(st.batch_fill, 1.5);
    }
    if (round == 2) {
      EXPECT_EQ(st.kv_exhausted, 0);
      EXPECT_EQ(st.pool_tokens, 80);
      EXPECT_EQ(st.peak_active, 2);
      EXPECT_GT(st.admit_waits, 0);
    }
  }
}

// The shared page pool against slots that own their pages: the same prefills and decode steps
// (inactive slots included) give bit-identical logits; a prefill the pool cannot hold fails with
// kResourceExhausted before anything runs (the sequence stays empty, no page is taken); reset()
// gives a sequence's pages back and they serve the next one.
TEST(GpuServe, SharedPagePoolMatchesOwnedPages) {
  SKIP_WITHOUT_GPU();
  const std::string path = serve_fixture_dir() + "/smollm2-4l.gguf";
  if (!std::ifstream(path).good()) GTEST_SKIP() << path << " absent (scripts/device_runtime.sh prepare)";
  auto model = Model::load(path);
  ASSERT_TRUE(model.is_ok()) << model.status().to_string();
  auto gm = GpuModel::from_gguf((*model)->gguf(), (*model)->config());
  ASSERT_TRUE(gm.is_ok()) << gm.status().to_string();
  const int V = (*model)->config().n_vocab;
  GpuContextOptions o;
  o.format = KvFormat{4, 4};
  o.max_seqs = 3;
  o.max_tokens = 160;
  o.sink_tokens = 4;
  o.recent_tokens = 8;
  auto own = GpuContext::create(**gm, o);
  o.pool_tokens = 160;  // 10 pages
  auto pool = GpuContext::create(**gm, o);
  ASSERT_TRUE(own.is_ok()) << own.status().to_string();
  ASSERT_TRUE(pool.is_ok()) << pool.status().to_string();
  GpuContext& a = **own;
  GpuContext& b = **pool;
  EXPECT_EQ(a.pool_tokens(), 0);
  EXPECT_EQ(b.pool_tokens(), 160);
  EXPECT_EQ(b.pool_free_tokens(), 160);
  const auto p0 = testing::random_tokens(37, V, 31), p1 = testing::random_tokens(70, V, 32),
             p2 = testing::random_tokens(40, V, 33);
  std::vector<float> la(static_cast<size_t>(3) * V), lb(la.size());
  auto both_prefill = [&](int seq, const std::vector<int32_t>& p) {
    ASSERT_TRUE(a.prefill(seq, p.data(), static_cast<int>(p.size()), la.data(), LogitsMode::kLast).is_ok());
    const Status st = b.prefill(seq, p.data(), static_cast<int>(p.size()), lb.data(), LogitsMode::kLast);
    ASSERT_TRUE(st.is_ok()) << st.to_string();
    EXPECT_EQ(0, std::memcmp(la.data(), lb.data(), static_cast<size_t>(V) * sizeof(float))) << "prefill of " << seq;
  };
  auto both_decode = [&](const std::vector<uint8_t>& active, int steps) {
    for (int s = 0; s < steps; ++s) {
      const std::vector<int32_t> t = testing::random_tokens(3, V, 100 + s);
      ASSERT_TRUE(a.decode(t.data(), 3, la.data(), nullptr, active.data()).is_ok());
      const Status st = b.decode(t.data(), 3, lb.data(), nullptr, active.data());
      ASSERT_TRUE(st.is_ok()) << st.to_string();
      for (int r = 0; r < 3; ++r) {
        if (!active[r]) continue;
        EXPECT_EQ(0, std::memcmp(la.data() + static_cast<size_t>(r) * V, lb.data() + static_cast<size_t>(r) * V,
                                 static_cast<size_t>(V) * sizeof(float)))
            << "decode step " << s << " row " << r;
      }
    }
  };
  both_prefill(0, p0);  // 3 pages
  both_prefill(1, p1);  // 5 pages
  EXPECT_EQ(b.pool_free_tokens(), 32);
  both_decode({1, 1, 0}, 6);  // 37 -> 43 (3 pages), 70 -> 76 (5 pages)
  EXPECT_EQ(b.pool_free_tokens(), 32);
  EXPECT_EQ(b.seq_len(2), 0);
  // 40 tokens need 3 pages; 2 are free.
  const Status full = b.prefill(2, p2.data(), static_cast<int>(p2.size()), lb.data(), LogitsMode::kLast);
  EXPECT_EQ(full.code(), StatusCode::kResourceExhausted) << full.to_string();
  EXPECT_EQ(b.seq_len(2), 0);
  EXPECT_EQ(b.pool_free_tokens(), 32);
  EXPECT_EQ(b.seq_len(0), 43);
  // Sequence 1 ends: its 5 pages serve sequence 2.
  ASSERT_TRUE(a.reset(1).is_ok());
  ASSERT_TRUE(b.reset(1).is_ok());
  EXPECT_EQ(b.pool_free_tokens(), 112);
  both_prefill(2, p2);
  both_decode({1, 0, 1}, 10);  // 43 -> 53 (4 pages), 40 -> 50 (4 pages)
  EXPECT_EQ(b.pool_held_tokens(0), 64);
  EXPECT_EQ(b.pool_held_tokens(1), 0);
  EXPECT_EQ(b.pool_held_tokens(2), 64);
  EXPECT_EQ(b.pool_free_tokens(), 32);
}

}  // namespace
}  // namespace tqkv
