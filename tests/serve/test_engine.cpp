// Model::forward_batch and the continuous-batching Engine (include/tqkv/serve.h) on the real SmolLM2.
#include <gtest/gtest.h>

#include <atomic>

#include <chrono>
#include <cmath>
#include <condition_variable>
#include <functional>
#include <future>
#include <mutex>
#include <string>
#include <vector>

#include "serve_fixture.h"
#include "tqkv/serve.h"

namespace tqkv {
namespace {

using testing::generate_ids;
using testing::kv_options;

// Three sequences at different lengths stepped in one pass: each one's logits must match the
// single-sequence forward over a cache holding the same tokens (to the rounding of the batched
// matrix kernel), and the caches must end up holding what single-sequence forward would put there
// (checked through the next step's logits).
TEST(ForwardBatch, MatchesSingleSequenceForward) {
  TQKV_REQUIRE_SMOLLM2();
  const Model& m = *lm->model;
  const int V = m.config().n_vocab;
  for (const std::string fmt : {"f16", "k4v4"}) {
    const KvOptions kvo = kv_options(fmt, 256);
    const std::vector<std::vector<int32_t>> prompts = {*lm->tok->encode("The quick brown fox", true, false),
                                                       *lm->tok->encode("In 1492, a ship sailed west from Spain and", true, false),
                                                       *lm->tok->encode("def add(a, b):", true, false)};
    std::vector<std::unique_ptr<KvBackend>> a, b;  // a: batched, b: one at a time
    std::vector<float> la(V), lb(V);
    for (const auto& p : prompts) {
      a.push_back(testing::new_kv(m.config(), kvo));
      b.push_back(testing::new_kv(m.config(), kvo));
      ASSERT_TRUE(m.forward(p.data(), static_cast<int>(p.size()), 0, *a.back(), la.data(), LogitsMode::kLast).is_ok());
      ASSERT_TRUE(m.forward(p.data(), static_cast<int>(p.size()), 0, *b.back(), lb.data(), LogitsMode::kLast).is_ok());
    }
    const int n = static_cast<int>(prompts.size());
    std::vector<int32_t> toks = {17, 400, 2025};
    for (int step = 0; step < 3; ++step) {
      std::vector<Model::BatchSegment> segs(n);
      for (int i = 0; i < n; ++i) segs[i] = {&toks[i], 1, a[i]->tokens(), a[i].get()};
      std::vector<float> batched(static_cast<size_t>(n) * V);
      ASSERT_TRUE(m.forward_batch(segs.data(), n, batched.data()).is_ok());
      for (int i = 0; i < n; ++i) {
        ASSERT_TRUE(m.forward(&toks[i], 1, b[i]->tokens(), *b[i], lb.data(), LogitsMode::kLast).is_ok());
        double num = 0, den = 0, worst = 0;
        for (int j = 0; j < V; ++j) {
          const double d = batched[static_cast<size_t>(i) * V + j] - lb[j];
          num += d * d;
          den += static_cast<double>(lb[j]) * lb[j];
          worst = std::max(worst, std::fabs(d));
        }
        EXPECT_LT(std::sqrt(num / den), 2e-3) << fmt << " step " << step << " sequence " << i << " (worst " << worst << ")";
        EXPECT_EQ(a[i]->tokens(), b[i]->tokens());
      }
      for (auto& t : toks) t += 3;
    }
  }
}

TEST(ForwardBatch, RejectsBadSegments) {
  TQKV_REQUIRE_SMOLLM2();
  const Model& m = *lm->model;
  auto kv = testing::new_kv(m.config(), kv_options("k4v4", 64));
  std::vector<float> logits(2 * m.config().n_vocab);
  int32_t t = 5, bad = m.config().n_vocab;
  Model::BatchSegment two[2] = {{&t, 1, 0, kv.get()}, {&t, 1, 0, kv.get()}};
  EXPECT_EQ(m.forward_batch(two, 2, logits.data()).code(), StatusCode::kInvalidArgument);  // one cache twice
  Model::BatchSegment oob{&bad, 1, 0, kv.get()};
  EXPECT_EQ(m.forward_batch(&oob, 1, logits.data()).code(), StatusCode::kOutOfRange);
  Model::BatchSegment empty{&t, 0, 0, kv.get()};
  EXPECT_EQ(m.forward_batch(&empty, 1, logits.data()).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(kv->tokens(), 0);  // nothing was written
}

// Waits are long: under `ctest -j` on 2 shared cores, OpenMP threads of several test processes
// contend, and a request that takes 10 s alone can take minutes.
constexpr double kWaitSeconds = 600;

// Collects one request's events; wait() returns the text and the final event.
struct Collector {
  std::mutex mu;
  std::condition_variable cv;
  std::string text;
  std::vector<std::string> pieces;
  bool done = false;
  CompletionEvent last;
  int cancel_after = -1;  // > 0: return false from the sink after this many pieces
  CompletionSink sink() {
    return [this](const CompletionEvent& ev) {
      std::lock_guard<std::mutex> lk(mu);
      text += ev.text;
      if (!ev.done) pieces.push_back(ev.text);
      if (ev.done) {
        done = true;
        last = ev;
      }
      cv.notify_all();
      return !(cancel_after > 0 && static_cast<int>(pieces.size()) >= cancel_after);
    };
  }
  bool wait(double seconds = kWaitSeconds) {
    std::unique_lock<std::mutex> lk(mu);
    return cv.wait_for(lk, std::chrono::duration<double>(seconds), [&] { return done; });
  }
  bool wait_pieces(int n, double seconds = kWaitSeconds) {
    std::unique_lock<std::mutex> lk(mu);
    return cv.wait_for(lk, std::chrono::duration<double>(seconds), [&] { return static_cast<int>(pieces.size()) >= n; });
  }
};

// An engine over the CPU runtime with `fmt` caches of `ctx` tokens in `slots` slots; `more` may set
// the other options. Null (and a test failure) when it cannot be made.
std::unique_ptr<Engine> cpu_engine(testing::LoadedModel& lm, const std::string& fmt, int ctx, int slots,
                                   const std::function<void(EngineOptions&)>& more = nullptr) {
  EngineOptions eo;
  eo.kv = kv_options(fmt, ctx);
  eo.max_batch = slots;
  if (more) more(eo);
  auto e = Engine::create(*lm.model, *lm.tok, eo);
  EXPECT_TRUE(e.is_ok()) << e.status().to_string();
  return e.is_ok() ? std::move(*e) : nullptr;
}

// Declared after a test's collectors: stops the engine before they are destroyed, also when an
// assertion returns early (the engine's thread would otherwise call into freed collectors).
struct ShutdownOnExit {
  Engine* e;
  ~ShutdownOnExit() {
    if (e) e->shutdown();
  }
};

CompletionRequest greedy(const Tokenizer& tok, const std::string& prompt, int n) {
  CompletionRequest r;
  r.prompt = *tok.encode(prompt, tok.add_bos(), false);
  r.max_tokens = n;
  r.sampler.temperature = 0;
  return r;
}

const std::vector<std::string> kPrompts = {"The capital of France is", "Once upon a time", "1, 2, 3, 4,",
                                           "The best way to learn a language is", "Water boils at",
                                           "My favourite colour is"};

// One slot: requests run one after another, so every reply must be generate()'s, id for id.
TEST(Engine, OneSlotRepliesEqualGenerate) {
  TQKV_REQUIRE_SMOLLM2();
  const KvOptions kv = kv_options("k4v4", 256);
  auto engine = cpu_engine(*lm, "k4v4", 256, 1);
  ASSERT_TRUE(engine);
  std::vector<Collector> c(kPrompts.size());
  const ShutdownOnExit stop_first{engine.get()};
  for (size_t i = 0; i < kPrompts.size(); ++i) {
    CompletionRequest r = greedy(*lm->tok, kPrompts[i], 16);
    r.stop_at_eog = true;
    ASSERT_TRUE(engine->submit(std::move(r), c[i].sink()).is_ok());
  }
  for (size_t i = 0; i < kPrompts.size(); ++i) {
    ASSERT_TRUE(c[i].wait()) << "request " << i << " never finished";
    ASSERT_TRUE(c[i].last.error.is_ok()) << c[i].last.error.to_string();
    const auto ids = generate_ids(*lm, kv, kPrompts[i], 16);
    EXPECT_EQ(c[i].text, lm->tok->decode(ids, false)) << kPrompts[i];
    EXPECT_EQ(c[i].last.completion_tokens, static_cast<int>(ids.size()));
    EXPECT_EQ(c[i].last.finish_reason, ids.size() == 16 ? "length" : "stop");
  }
  EXPECT_EQ(engine->stats().requests_done, static_cast<int64_t>(kPrompts.size()));
}

// Three slots, six requests: they share decode steps (mean batch > 1), every one finishes, and
// the replies match the one-at-a-time replies except where the batched matrix kernel's rounding
// flips a near-tie (at most one of six here; the first token comes from the prompt's own pass
// and must always match).
TEST(Engine, BatchedRepliesMatchOneAtATime) {
  TQKV_REQUIRE_SMOLLM2();
  const KvOptions kv = kv_options("k4v4", 256);
  auto engine = cpu_engine(*lm, "k4v4", 256, 3);
  ASSERT_TRUE(engine);
  std::vector<Collector> c(kPrompts.size());
  const ShutdownOnExit stop_first{engine.get()};
  for (size_t i = 0; i < kPrompts.size(); ++i)
    ASSERT_TRUE(engine->submit(greedy(*lm->tok, kPrompts[i], 24), c[i].sink()).is_ok());
  int same = 0;
  for (size_t i = 0; i < kPrompts.size(); ++i) {
    ASSERT_TRUE(c[i].wait());
    ASSERT_TRUE(c[i].last.error.is_ok()) << c[i].last.error.to_string();
    const auto ids = generate_ids(*lm, kv, kPrompts[i], 24);
    const std::string want = lm->tok->decode(ids, false);
    same += c[i].text == want;
    ASSERT_FALSE(c[i].pieces.empty());
    EXPECT_EQ(want.rfind(c[i].pieces[0], 0), 0u) << "first piece of " << kPrompts[i];
  }
  EXPECT_GE(same, static_cast<int>(kPrompts.size()) - 1);
  const EngineStats st = engine->stats();
  EXPECT_GT(st.batch_fill, 1.5) << "requests did not share decode steps";
  EXPECT_EQ(st.requests_done, static_cast<int64_t>(kPrompts.size()));
  EXPECT_EQ(testing::active_after_settling(*engine), 0);
}

TEST(Engine, StopStringsLimitsQueueAndCancellation) {
  TQKV_REQUIRE_SMOLLM2();
  const KvOptions kv = kv_options("k4v4", 64);
  auto engine = cpu_engine(*lm, "k4v4", 64, 1, [](EngineOptions& o) { o.max_queue = 2; });
  ASSERT_TRUE(engine);
  Engine& e = *engine;
  // Stop string: the reply ends before it and does not contain it.
  const auto ids = generate_ids(*lm, kv, "1, 2, 3, 4,", 20);
  const std::string full = lm->tok->decode(ids, false);
  ASSERT_NE(full.find(" 7"), std::string::npos) << full;
  {
    Collector c;
    CompletionRequest r = greedy(*lm->tok, "1, 2, 3, 4,", 20);
    r.stop = {" 7"};
    ASSERT_TRUE(e.submit(std::move(r), c.sink()).is_ok());
    ASSERT_TRUE(c.wait());
    EXPECT_EQ(c.text, full.substr(0, full.find(" 7")));
    EXPECT_EQ(c.last.finish_reason, "stop");
  }
  // Bad requests fail at submit and queue nothing.
  Collector unused;
  const ShutdownOnExit stop_first_u{engine.get()};
  CompletionRequest empty;
  EXPECT_EQ(e.submit(empty, unused.sink()).code(), StatusCode::kInvalidArgument);
  CompletionRequest longp = greedy(*lm->tok, "x", 4);
  longp.prompt.assign(64, longp.prompt.back());
  EXPECT_EQ(e.submit(longp, unused.sink()).code(), StatusCode::kInvalidArgument);  // fills the context
  CompletionRequest oov = greedy(*lm->tok, "x", 4);
  oov.prompt.push_back(lm->model->config().n_vocab);
  EXPECT_EQ(e.submit(oov, unused.sink()).code(), StatusCode::kOutOfRange);
  // max_tokens beyond the context is cut to the room left: "length" at the context's end.
  {
    Collector c;
    CompletionRequest r = greedy(*lm->tok, "Once upon a time", 1000);
    r.stop_at_eog = false;
    const int room = 64 - static_cast<int>(r.prompt.size());
    ASSERT_TRUE(e.submit(std::move(r), c.sink()).is_ok());
    ASSERT_TRUE(c.wait());
    EXPECT_EQ(c.last.completion_tokens, room);
    EXPECT_EQ(c.last.finish_reason, "length");
  }
  // Cancellation frees the slot: a request whose sink refuses after 6 pieces ends, and the
  // requests queued behind it (one slot) still finish. A full queue refuses with kResourceExhausted.
  Collector a, b, d;
  const ShutdownOnExit stop_first{engine.get()};
  a.cancel_after = 6;
  CompletionRequest ra = greedy(*lm->tok, "Once upon a time", 40);
  ra.stop_at_eog = false;
  ASSERT_TRUE(e.submit(std::move(ra), a.sink()).is_ok());
  ASSERT_TRUE(a.wait_pieces(1));  // a holds the one slot: b and d fill the queue of 2
  ASSERT_TRUE(e.submit(greedy(*lm->tok, "Water boils at", 8), b.sink()).is_ok());
  ASSERT_TRUE(e.submit(greedy(*lm->tok, "Water boils at", 8), d.sink()).is_ok());
  const Status full_q = e.submit(greedy(*lm->tok, "Water boils at", 8), unused.sink());
  EXPECT_EQ(full_q.code(), StatusCode::kResourceExhausted) << full_q.to_string();
  ASSERT_TRUE(b.wait());
  ASSERT_TRUE(d.wait());
  EXPECT_TRUE(b.last.error.is_ok());
  EXPECT_FALSE(a.done) << "a cancelled request gets no final event";
  EXPECT_EQ(a.pieces.size(), 6u);
}

// Shutting down with requests in flight: each gets a final event carrying an error.
TEST(Engine, ShutdownEndsRequestsInFlight) {
  TQKV_REQUIRE_SMOLLM2();
  const KvOptions kv = kv_options("f16", 128);
  auto engine = cpu_engine(*lm, "f16", 128, 1);
  ASSERT_TRUE(engine);
  Collector a, b;
  const ShutdownOnExit stop_first{engine.get()};
  CompletionRequest r = greedy(*lm->tok, "Once upon a time", 100);
  r.stop_at_eog = false;
  ASSERT_TRUE(engine->submit(r, a.sink()).is_ok());
  ASSERT_TRUE(engine->submit(r, b.sink()).is_ok());
  ASSERT_TRUE(a.wait_pieces(1));
  engine->shutdown();
  ASSERT_TRUE(a.wait(5));
  ASSERT_TRUE(b.wait(5));
  EXPECT_FALSE(a.last.error.is_ok());
  EXPECT_FALSE(b.last.error.is_ok());
  EXPECT_EQ(engine->submit(r, a.sink()).code(), StatusCode::kInternal);
}


// Chunked prompts (mixed steps): a long prompt that arrives while another request decodes is read
// 16 tokens per step beside it, so the running request keeps getting tokens meanwhile (with the
// prompt prefilled whole, it would get none until the prompt was read). The newcomer's first
// piece is that of a one-at-a-time run (its 16-token first write gives the cache transforms other
// statistics than generate's 64-token one, and its chunks share passes with the other request, so
// only the first token is compared).
TEST(Engine, LongPromptJoinsInChunksWhileOthersDecode) {
  TQKV_REQUIRE_SMOLLM2();
  const KvOptions kv = kv_options("k4v4", 512);
  auto engine = cpu_engine(*lm, "k4v4", 512, 2, [](EngineOptions& o) { o.prefill_chunk = 16; });
  ASSERT_TRUE(engine);
  std::mutex mu;
  std::vector<char> order;  // 'a' = a piece of the running request, 'b' = of the newcomer
  auto logged = [&](char who, Collector& c) {
    CompletionSink inner = c.sink();
    return CompletionSink([&, who, inner](const CompletionEvent& ev) {
      {
        std::lock_guard<std::mutex> lk(mu);
        if (!ev.done) order.push_back(who);
      }
      return inner(ev);
    });
  };
  Collector a, b;
  const ShutdownOnExit stop_first{engine.get()};
  CompletionRequest ra = greedy(*lm->tok, "Once upon a time", 120);
  ra.stop_at_eog = false;
  ASSERT_TRUE(engine->submit(std::move(ra), logged('a', a)).is_ok());
  ASSERT_TRUE(a.wait_pieces(3));
  std::string story;
  for (int i = 0; i < 30; ++i) story += "The river ran past the old mill and the children watched it. ";
  CompletionRequest rb = greedy(*lm->tok, story, 8);
  const size_t prompt_b = rb.prompt.size();
  ASSERT_GT(prompt_b, 200u);
  ASSERT_TRUE(engine->submit(rb, logged('b', b)).is_ok());
  ASSERT_TRUE(b.wait());
  ASSERT_TRUE(a.wait());
  // Pieces of a between the submit of b (a had >= 3 then) and b's first piece.
  int a_before_b = 0, a_seen = 0;
  {
    std::lock_guard<std::mutex> lk(mu);
    bool b_started = false;
    for (char w : order) {
      if (w == 'b') b_started = true;
      if (w == 'a' && !b_started && ++a_seen > 3) ++a_before_b;
    }
  }
  const int chunks = static_cast<int>((prompt_b + 15) / 16);
  EXPECT_GE(a_before_b, chunks / 2) << "the running request stalled while the " << prompt_b << "-token prompt was read";
  EXPECT_GE(engine->stats().prompt_tokens, static_cast<int64_t>(prompt_b));
  const auto ids = generate_ids(*lm, kv, story, 8);
  const std::string want = lm->tok->decode(ids, false);
  ASSERT_FALSE(b.pieces.empty());
  EXPECT_EQ(want.rfind(b.pieces[0], 0), 0u) << "first piece '" << b.pieces[0] << "' of '" << want << "'";
}


// One page pool shared by the slots: the same bytes hold ~3.7x the tokens in k4v4 as in f16;
// fits() predicts exactly when an append would fail; a failed append leaves the other slots and
// the failing slot's own tokens as they were.
TEST(KvPool, SharedPagesCapacityAndExhaustion) {
  TQKV_REQUIRE_SMOLLM2();
  const ModelConfig& cfg = lm->model->config();
  const int64_t budget = 24ll << 20;
  KvOptions f16 = kv_options("f16", 2048), k4 = kv_options("k4v4", 2048);
  auto pf = KvPool::create(cfg, f16, 4, budget);
  auto pk = KvPool::create(cfg, k4, 4, budget);
  ASSERT_TRUE(pf.is_ok()) << pf.status().to_string();
  ASSERT_TRUE(pk.is_ok()) << pk.status().to_string();
  const double ratio = static_cast<double>((*pk)->token_capacity()) / (*pf)->token_capacity();
  std::printf("[kv pool] 24 MiB: f16 %lld tokens, k4v4 %lld tokens (%.2fx)\n",
              static_cast<long long>((*pf)->token_capacity()), static_cast<long long>((*pk)->token_capacity()), ratio);
  EXPECT_GT(ratio, 3.0);
  // Fill slot 0 and 1 of the f16 pool until the pool is full, one 64-token chunk at a time.
  KvPool& p = **pf;
  const int V = cfg.n_vocab;
  std::vector<float> logits(V);
  std::vector<int32_t> chunk(64);
  for (int i = 0; i < 64; ++i) chunk[i] = 100 + i;
  int slot = 0, chunks = 0;
  for (;;) {
    const int n = 64;
    if (!p.fits(&slot, &n, 1)) break;
    KvBackend& kv = p.slot(slot);
    if (kv.tokens() + 64 > 2048) {
      ++slot;
      ASSERT_LT(slot, 4);
      continue;
    }
    ASSERT_TRUE(lm->model->forward(chunk.data(), 64, kv.tokens(), kv, logits.data(), LogitsMode::kLast).is_ok());
    ++chunks;
  }
  EXPECT_GE(chunks * 64, p.token_capacity() - 64 * 4);  // (whole pages; up to a chunk left per slot)
  KvBackend& kv = p.slot(slot);
  const int64_t before = kv.tokens(), other = p.slot(0).tokens();
  const Status st = lm->model->forward(chunk.data(), 64, kv.tokens(), kv, logits.data(), LogitsMode::kLast);
  EXPECT_EQ(st.code(), StatusCode::kResourceExhausted) << st.to_string();
  EXPECT_NE(st.message().find("pool exhausted"), std::string::npos) << st.to_string();
  EXPECT_EQ(kv.tokens(), before);
  EXPECT_EQ(p.slot(0).tokens(), other);
  // Freeing a slot (reset) makes room again.
  ASSERT_TRUE(p.slot(0).reset().is_ok());
  const int n = 64;
  EXPECT_TRUE(p.fits(&slot, &n, 1));
}

// The shared-pool tests' engine: f16, 4 slots of `ctx` tokens sharing 26 pages of 16 tokens (30
// layers, 3 KV heads, head size 64, f16 K and V: 360 KiB per page across the layers) = 416 tokens.
std::unique_ptr<Engine> pool_engine(testing::LoadedModel& lm, int ctx, KvAdmission admission) {
  return cpu_engine(lm, "f16", ctx, 4, [admission](EngineOptions& o) {
    o.kv_budget_bytes = 26ll * 30 * 3 * 2 * 16 * 64 * 2;
    o.kv_admission = admission;
  });
}

// Four greedy requests of 120 tokens each that do not stop at an end-of-generation token.
void submit_four_long_requests(testing::LoadedModel& lm, Engine& engine, std::vector<Collector>& c) {
  for (int i = 0; i < 4; ++i) {
    CompletionRequest r = greedy(*lm.tok, kPrompts[i], 120);
    r.stop_at_eog = false;
    ASSERT_TRUE(engine.submit(std::move(r), c[i].sink()).is_ok());
  }
}

// Greedy admission from a shared pool too small for every request at once: nothing crashes, every
// request ends (done, or with a clear "KV cache pool is full" error), at least two complete, and
// the engine keeps serving afterwards.
TEST(Engine, SharedKvPoolExhaustionEndsOnlyTheNewest) {
  TQKV_REQUIRE_SMOLLM2();
  // Room for 3 of the 4 sequences of ~126 tokens below.
  auto engine = pool_engine(*lm, 256, KvAdmission::kGreedy);
  ASSERT_TRUE(engine);
  std::vector<Collector> c(4);
  const ShutdownOnExit stop_first{engine.get()};
  submit_four_long_requests(*lm, *engine, c);
  int ok = 0, full = 0;
  for (int i = 0; i < 4; ++i) {
    ASSERT_TRUE(c[i].wait()) << "request " << i;
    if (c[i].last.error.is_ok()) {
      ++ok;
      EXPECT_EQ(c[i].last.completion_tokens, 120);
    } else {
      EXPECT_EQ(c[i].last.error.code(), StatusCode::kResourceExhausted) << c[i].last.error.to_string();
      EXPECT_NE(c[i].last.error.message().find("KV cache pool is full"), std::string::npos);
      ++full;
    }
  }
  const EngineStats st = engine->stats();
  std::printf("[kv pool] 4 requests of 120 tokens: %d done, %d ended for want of pages, %lld prompt chunks put off\n", ok,
              full, static_cast<long long>(st.prompt_waits));
  EXPECT_GE(ok, 2);
  EXPECT_GE(full, 1);
  EXPECT_EQ(st.kv_exhausted, full);
  Collector after;
  const ShutdownOnExit stop_after{engine.get()};
  ASSERT_TRUE(engine->submit(greedy(*lm->tok, "Water boils at", 8), after.sink()).is_ok());
  ASSERT_TRUE(after.wait());
  EXPECT_TRUE(after.last.error.is_ok()) << after.last.error.to_string();
}

// Reserving admission (the default) from the same pool: a request starts only when the pool holds
// its prompt and all of max_tokens beside the running ones', so all four complete, at most three run
// at once (416 tokens / 128-144 reserved each), and the fourth waits in the queue instead of failing.
// A prompt larger than the whole pool is refused at submit; max_tokens is cut to the pool.
TEST(Engine, SharedKvPoolReserveAdmissionCompletesEveryRequest) {
  TQKV_REQUIRE_SMOLLM2();
  auto engine = pool_engine(*lm, 1024, KvAdmission::kReserve);
  ASSERT_TRUE(engine);
  const EngineStats st0 = engine->stats();
  ASSERT_EQ(st0.pool_tokens, 416);
  std::vector<Collector> c(4);
  const ShutdownOnExit stop_first{engine.get()};
  submit_four_long_requests(*lm, *engine, c);
  for (int i = 0; i < 4; ++i) {
    ASSERT_TRUE(c[i].wait()) << "request " << i;
    EXPECT_TRUE(c[i].last.error.is_ok()) << "request " << i << ": " << c[i].last.error.to_string();
    EXPECT_EQ(c[i].last.completion_tokens, 120) << "request " << i;
  }
  const EngineStats st = engine->stats();
  std::printf("[kv pool] reserve: 4 requests of 120 tokens in 416 pool tokens: peak %d at once, %lld admission waits\n",
              st.peak_active, static_cast<long long>(st.admit_waits));
  EXPECT_EQ(st.kv_exhausted, 0);
  EXPECT_EQ(st.requests_failed, 0);
  EXPECT_GE(st.peak_active, 2);
  EXPECT_LE(st.peak_active, 3);
  EXPECT_GT(st.admit_waits, 0);
  // Larger than the pool: refused at once; max_tokens beyond the pool: cut to it.
  std::vector<int32_t> big(500, 100);
  CompletionRequest r;
  r.prompt = big;
  Collector never;
  const Status refused = engine->submit(r, never.sink());
  EXPECT_EQ(refused.code(), StatusCode::kInvalidArgument) << refused.to_string();
  EXPECT_NE(refused.message().find("KV pool holds 416"), std::string::npos) << refused.to_string();
  Collector cut;
  CompletionRequest r2 = greedy(*lm->tok, "Water boils at", 1000);
  r2.stop_at_eog = false;
  const int prompt = static_cast<int>(r2.prompt.size());
  ASSERT_TRUE(engine->submit(std::move(r2), cut.sink()).is_ok());
  ASSERT_TRUE(cut.wait());
  EXPECT_TRUE(cut.last.error.is_ok()) << cut.last.error.to_string();
  EXPECT_EQ(cut.last.completion_tokens, 416 - prompt);
  EXPECT_EQ(cut.last.finish_reason, "length");
}

// A backend without a model: its logits put all the weight on token 200 + (length % 37) of the
// slot's sequence, and it counts which kind of step the engine asked for.
class FakeBackend final : public ServeBackend {
 public:
  FakeBackend(int slots, int vocab) : len_(static_cast<size_t>(slots), 0), vocab_(vocab) {}
  int slots() const override { return static_cast<int>(len_.size()); }
  int64_t context() const override { return 512; }
  int n_vocab() const override { return vocab_; }
  Status prefill(int slot, const std::vector<int32_t>& prompt, float* logits) override {
    len_[slot] = static_cast<int64_t>(prompt.size());
    fill(slot, logits);
    return Status::ok();
  }
  Status step(const int* slots, const int32_t* tokens, int count, float* logits) override {
    (void)tokens;
    ++logit_steps;
    for (int i = 0; i < count; ++i) {
      ++len_[slots[i]];
      fill(slots[i], logits + static_cast<size_t>(i) * vocab_);
    }
    return Status::ok();
  }
  bool argmax_steps() const override { return true; }
  Status step_argmax(const int* slots, const int32_t* tokens, int count, int32_t* ids) override {
    (void)tokens;
    ++argmax_calls;
    for (int i = 0; i < count; ++i) ids[i] = static_cast<int32_t>(want(++len_[slots[i]]));
    return Status::ok();
  }
  void release(int slot) override { len_[slot] = 0; }
  int64_t kv_bytes(int) const override { return 0; }
  int64_t kv_f16_bytes(int) const override { return 0; }
  std::string describe() const override { return "fake"; }
  static int64_t want(int64_t len) { return 200 + len % 37; }
  std::atomic<int> logit_steps{0}, argmax_calls{0};

 private:
  void fill(int slot, float* l) const {
    std::fill(l, l + vocab_, 0.f);
    l[want(len_[slot])] = 10.f;
  }
  std::vector<int64_t> len_;
  int vocab_;
};

// Steps whose every request is plain greedy take the backend's argmax rows (no logits); a sampled
// request in the batch (here top-k 1, so its token is still the argmax) brings the logits path back.
// The replies are the same either way.
TEST(Engine, GreedyStepsUseTheBackendsArgmax) {
  TQKV_REQUIRE_SMOLLM2();
  auto backend = std::make_unique<FakeBackend>(2, lm->tok->vocab_size());
  FakeBackend* fake = backend.get();
  auto created = Engine::create(std::move(backend), *lm->tok, EngineOptions{});
  ASSERT_TRUE(created.is_ok()) << created.status().to_string();
  Engine& engine = **created;
  const int n = 12;
  auto expected = [&](const CompletionRequest& r) {
    std::vector<int32_t> ids;
    for (int k = 0; k < n; ++k) ids.push_back(static_cast<int32_t>(FakeBackend::want(static_cast<int64_t>(r.prompt.size()) + k)));
    return lm->tok->decode(ids, false);
  };
  std::vector<Collector> both(4);  // two per round
  const ShutdownOnExit stop{&engine};
  for (bool sampled : {false, true}) {
    const int logit_before = fake->logit_steps, argmax_before = fake->argmax_calls;
    Collector* c = both.data() + (sampled ? 2 : 0);
    std::vector<std::string> want;
    for (int i = 0; i < 2; ++i) {
      CompletionRequest r = greedy(*lm->tok, kPrompts[i], n);
      r.stop_at_eog = false;
      if (sampled && i == 1) {
        r.sampler.temperature = 0.8f;
        r.sampler.top_k = 1;
      }
      want.push_back(expected(r));
      ASSERT_TRUE(engine.submit(std::move(r), c[i].sink()).is_ok());
    }
    for (int i = 0; i < 2; ++i) {
      ASSERT_TRUE(c[i].wait());
      EXPECT_TRUE(c[i].last.error.is_ok()) << c[i].last.error.to_string();
      EXPECT_EQ(c[i].text, want[i]) << (sampled ? "with a sampled request" : "greedy only") << ", request " << i;
    }
    if (sampled) {
      EXPECT_GT(fake->logit_steps - logit_before, 0);
    } else {
      EXPECT_GT(fake->argmax_calls - argmax_before, 0);
      EXPECT_EQ(fake->logit_steps - logit_before, 0);
    }
  }
}

}  // namespace
}  // namespace tqkv
