// Continuous batching on the CPU runtime (include/tqkv/serve.h).
#include <algorithm>
#include <chrono>
#include <utility>

#include "tqkv/serve.h"

namespace tqkv {

struct Engine::Seq {
  CompletionRequest req;
  CompletionSink sink;
  int slot = -1;
  std::unique_ptr<Sampler> sampler;
  std::vector<int32_t> context;  // prompt + generated ids (the sampler's repeat window reads it)
  int32_t next = -1;             // sampled, not yet run through the model
  size_t fed = 0;                // prompt tokens run through the model so far (mixed steps)
  int generated = 0;
  Utf8StreamDecoder utf8;
  std::string text;              // decoded text not yet sent (held back while it may start a stop string)
  size_t max_stop = 0;           // longest stop string
  int64_t reserved = 0;          // (KvAdmission::kReserve) pool tokens held for it: prompt + max_tokens
};

namespace {

// The CPU runtime: one KvBackend per slot, a step = one Model::forward_batch.
class CpuServeBackend final : public ServeBackend {
 public:
  CpuServeBackend(const Model& m, std::vector<std::unique_ptr<KvBackend>> own, std::unique_ptr<KvPool> pool, int64_t ctx)
      : model_(m), own_(std::move(own)), pool_(std::move(pool)), ctx_(ctx) {
    if (pool_) {
      for (int i = 0; i < pool_->slots(); ++i) kv_.push_back(&pool_->slot(i));
    } else {
      for (auto& k : own_) kv_.push_back(k.get());
    }
  }
  int slots() const override { return static_cast<int>(kv_.size()); }
  int64_t context() const override { return ctx_; }
  int n_vocab() const override { return model_.config().n_vocab; }
  Status prefill(int slot, const std::vector<int32_t>& prompt, float* logits) override {
    TQKV_RETURN_IF_ERROR(kv_[slot]->reset());
    return model_.forward(prompt.data(), static_cast<int>(prompt.size()), 0, *kv_[slot], logits, LogitsMode::kLast);
  }
  Status step(const int* slots, const int32_t* tokens, int count, float* logits) override {  // (one token each)
    std::vector<StepItem> items(count);
    for (int i = 0; i < count; ++i) items[i] = {slots[i], tokens + i, 1, false};
    return step_mixed(items.data(), count, logits);
  }
  void release(int slot) override { (void)kv_[slot]->reset(); }  // its pages go back to the pool
  bool mixed_steps() const override { return true; }
  bool fits(const StepItem* items, int count) const override {
    if (!pool_) return true;
    std::vector<int> slots(count), n(count);
    for (int i = 0; i < count; ++i) {
      // A prompt's first chunk empties its slot first: count its pages from zero.
      slots[i] = items[i].slot;
      n[i] = items[i].n + (items[i].first ? -static_cast<int>(kv_[items[i].slot]->tokens()) : 0);
    }
    return pool_->fits(slots.data(), n.data(), count);
  }
  Status step_mixed(const StepItem* items, int count, float* logits) override {
    segs_.resize(count);
    for (int i = 0; i < count; ++i) {
      KvBackend& kv = *kv_[items[i].slot];
      if (items[i].first) TQKV_RETURN_IF_ERROR(kv.reset());
      segs_[i] = {items[i].tokens, items[i].n, kv.tokens(), &kv};
    }
    return model_.forward_batch(segs_.data(), count, logits);
  }
  int64_t pool_tokens() const override { return pool_ ? pool_->token_capacity() : 0; }
  int64_t pool_tokens_for(int64_t len) const override {
    const int64_t ps = pool_ ? pool_->page_size() : 1;
    return (len + ps - 1) / ps * ps;
  }
  int64_t kv_bytes(int slot) const override { return kv_[slot]->bytes_in_use(); }
  int64_t kv_f16_bytes(int slot) const override { return kv_[slot]->f16_bytes_for(kv_[slot]->tokens()); }
  std::string describe() const override {
    std::string s = "CPU, " + std::to_string(kv_.size()) + " slots of up to " + std::to_string(ctx_) + " tokens";
    if (pool_)
      s += " sharing a " + std::to_string(pool_->bytes() >> 20) + " MiB page pool (" +
           std::to_string(pool_->token_capacity()) + " tokens in all)";
    return s + ", " + kv_[0]->describe();
  }

 private:
  const Model& model_;
  std::vector<std::unique_ptr<KvBackend>> own_;
  std::unique_ptr<KvPool> pool_;
  std::vector<KvBackend*> kv_;
  int64_t ctx_;
  std::vector<Model::BatchSegment> segs_;
};

}  // namespace

Result<std::unique_ptr<ServeBackend>> cpu_serve_backend(const Model& model, const KvOptions& kv, int slots,
                                                        int64_t kv_budget_bytes) {
  if (slots < 1 || slots > 1024) return invalid_argument("max_batch must be in 1..1024");
  if (kv.max_tokens < 2) return invalid_argument("the context must hold at least 2 tokens");
  std::vector<std::unique_ptr<KvBackend>> caches;
  std::unique_ptr<KvPool> pool;
  if (kv_budget_bytes > 0) {
    TQKV_ASSIGN_OR_RETURN(pool, KvPool::create(model.config(), kv, slots, kv_budget_bytes));
  } else {
    for (int i = 0; i < slots; ++i) {
      TQKV_ASSIGN_OR_RETURN(auto c, make_kv_backend(model.config(), kv));
      caches.push_back(std::move(c));
    }
  }
  return std::unique_ptr<ServeBackend>(new CpuServeBackend(model, std::move(caches), std::move(pool), kv.max_tokens));
}

Engine::Engine(std::unique_ptr<ServeBackend> backend, const Tokenizer& tok, const EngineOptions& opt)
    : backend_(std::move(backend)), tok_(tok), opt_(opt) {}

Result<std::unique_ptr<Engine>> Engine::create(const Model& model, const Tokenizer& tok, const EngineOptions& opt) {
  TQKV_ASSIGN_OR_RETURN(auto b, cpu_serve_backend(model, opt.kv, opt.max_batch, opt.kv_budget_bytes));
  return create(std::move(b), tok, opt);
}

Result<std::unique_ptr<Engine>> Engine::create(std::unique_ptr<ServeBackend> backend, const Tokenizer& tok,
                                               const EngineOptions& opt) {
  if (!backend || backend->slots() < 1) return invalid_argument("no serving backend");
  if (opt.max_queue < 0) return invalid_argument("max_queue must be >= 0");
  if (opt.prefill_chunk < 1 || opt.prefill_chunk > Model::kMaxChunk)
    return invalid_argument("prefill_chunk must be in 1.." + std::to_string(Model::kMaxChunk));
  if (backend->context() < 2) return invalid_argument("the context must hold at least 2 tokens");
  std::unique_ptr<Engine> e(new Engine(std::move(backend), tok, opt));
  e->stats_.pool_tokens = e->backend_->pool_tokens();
  for (int i = 0; i < e->backend_->slots(); ++i) e->free_slots_.push_back(i);
  e->stats_.max_batch = e->backend_->slots();
  e->thread_ = std::thread([p = e.get()] { p->loop(); });
  return e;
}

Engine::~Engine() { shutdown(); }

void Engine::shutdown() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  const Status gone = internal_error("the server is shutting down");
  for (auto& s : queue_) finish(*s, "", gone);
  for (auto& s : active_) finish(*s, "", gone);
  queue_.clear();
  active_.clear();
}

Status Engine::submit(CompletionRequest req, CompletionSink sink) {
  if (!sink) return invalid_argument("no event sink");
  if (req.prompt.empty()) return invalid_argument("the prompt encodes to no tokens");
  const int n_vocab = backend_->n_vocab();
  for (int32_t id : req.prompt)
    if (id < 0 || id >= n_vocab) return out_of_range("prompt token id " + std::to_string(id) + " outside the vocabulary");
  const int64_t room = context() - static_cast<int64_t>(req.prompt.size());
  if (room < 1)
    return invalid_argument("the prompt has " + std::to_string(req.prompt.size()) + " tokens; the context holds " +
                            std::to_string(context()));
  if (req.max_tokens < 1) return invalid_argument("max_tokens must be >= 1");
  req.max_tokens = static_cast<int>(std::min<int64_t>(req.max_tokens, room));
  const int64_t pool = backend_->pool_tokens();
  if (pool > 0) {  // a shared pool: the request must fit in the whole of it
    const int64_t pool_room = pool - static_cast<int64_t>(req.prompt.size());
    if (pool_room < 1)
      return invalid_argument("the prompt has " + std::to_string(req.prompt.size()) + " tokens; the KV pool holds " +
                              std::to_string(pool) + " in all");
    req.max_tokens = static_cast<int>(std::min<int64_t>(req.max_tokens, pool_room));
  }
  auto s = std::make_unique<Seq>();
  TQKV_ASSIGN_OR_RETURN(Sampler sm, Sampler::create(req.sampler));
  s->sampler = std::make_unique<Sampler>(std::move(sm));
  for (const auto& st : req.stop) {
    if (st.empty()) return invalid_argument("empty stop string");
    s->max_stop = std::max(s->max_stop, st.size());
  }
  s->req = std::move(req);
  s->sink = std::move(sink);
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (stopping_) return internal_error("the server is shutting down");
    if (static_cast<int>(queue_.size()) >= opt_.max_queue)
      return resource_exhausted("the request queue is full (" + std::to_string(opt_.max_queue) + " waiting)");
    queue_.push_back(std::move(s));
    stats_.queued = static_cast<int>(queue_.size());
  }
  cv_.notify_all();
  return Status::ok();
}

EngineStats Engine::stats() const {
  std::lock_guard<std::mutex> lk(mu_);
  return stats_;
}

void Engine::finish(Seq& s, const std::string& reason, const Status& error) {
  CompletionEvent ev;
  ev.done = true;
  ev.error = error;
  ev.finish_reason = reason;
  ev.prompt_tokens = static_cast<int>(s.req.prompt.size());
  ev.completion_tokens = s.generated;
  if (error.is_ok()) ev.text = s.text + s.utf8.flush();
  s.text.clear();
  {  // counted before the client can see its reply (a client may ask /health right after)
    std::lock_guard<std::mutex> lk(mu_);
    (error.is_ok() ? stats_.requests_done : stats_.requests_failed) += 1;
  }
  if (s.sink) s.sink(ev);
  s.sink = nullptr;
}

// Appends a sampled token: decides whether the request ends here, sends the text that can no
// longer be part of a stop string. Returns false when the request is finished (finish() called).
bool Engine::emit_token(Seq& s, int32_t id) {
  if (s.req.stop_at_eog && tok_.is_eog(id)) {
    finish(s, "stop", Status::ok());
    return false;
  }
  s.generated += 1;
  s.context.push_back(id);
  {
    std::lock_guard<std::mutex> lk(mu_);
    stats_.tokens_generated += 1;
  }
  s.text += s.utf8.push(tok_.token_to_piece(id, /*render_special=*/false));
  for (const auto& st : s.req.stop) {
    const size_t at = s.text.find(st);
    if (at != std::string::npos) {
      s.text.resize(at);
      s.utf8.flush();  // (bytes after the stop string are dropped with it)
      finish(s, "stop", Status::ok());
      return false;
    }
  }
  if (s.generated >= s.req.max_tokens) {
    finish(s, "length", Status::ok());
    return false;
  }
  // Hold back the tail that could still grow into a stop string.
  const size_t keep = s.max_stop > 0 ? std::min(s.text.size(), s.max_stop - 1) : 0;
  if (s.text.size() > keep) {
    CompletionEvent ev;
    ev.text = s.text.substr(0, s.text.size() - keep);
    s.text.erase(0, s.text.size() - keep);
    if (!s.sink(ev)) {
      s.sink = nullptr;  // cancelled: no final event
      std::lock_guard<std::mutex> lk(mu_);
      stats_.requests_failed += 1;
      return false;
    }
  }
  s.next = id;
  return true;
}

bool Engine::admit(std::unique_ptr<Seq>& s) {
  std::vector<float> logits(static_cast<size_t>(backend_->n_vocab()));
  const Status st = backend_->prefill(s->slot, s->req.prompt, logits.data());
  if (!st.is_ok()) {
    finish(*s, "", st);
    return false;
  }
  s->fed = s->req.prompt.size();
  {
    std::lock_guard<std::mutex> lk(mu_);
    stats_.prompt_tokens += static_cast<int64_t>(s->fed);
  }
  return emit_sampled(*s, logits.data());
}

bool Engine::emit_sampled(Seq& s, const float* logits) {
  if (s.context.empty()) s.context = s.req.prompt;  // (its first token: the prompt is the context)
  const int V = backend_->n_vocab();
  return emit_token(s, s.sampler->sample({logits, static_cast<size_t>(V)}, s.context));
}

void Engine::loop() {
  const int V = backend_->n_vocab();
  std::vector<float> logits;
  std::vector<int> slots;
  std::vector<int32_t> toks, ids;
  for (;;) {
    // ---- take waiting requests while there are free slots ----
    std::vector<std::unique_ptr<Seq>> joining;
    {
      std::unique_lock<std::mutex> lk(mu_);
      cv_.wait(lk, [&] { return stopping_ || !active_.empty() || (!queue_.empty() && !free_slots_.empty()); });
      if (stopping_) return;
      // kReserve: the pool tokens the running requests hold (prompt + max_tokens each).
      const int64_t pool = backend_->pool_tokens();
      const bool reserve = pool > 0 && opt_.kv_admission == KvAdmission::kReserve;
      int64_t reserved = 0;
      for (const auto& a : active_) reserved += a->reserved;
      while (!queue_.empty() && !free_slots_.empty()) {
        if (reserve) {
          const CompletionRequest& r = queue_.front()->req;
          const int64_t need = backend_->pool_tokens_for(static_cast<int64_t>(r.prompt.size()) + r.max_tokens);
          // (submit cut max_tokens to the pool, so with nothing running the request fits)
          if (reserved + need > pool && reserved > 0) {
            ++stats_.admit_waits;
            break;
          }
          queue_.front()->reserved = need;
          reserved += need;
        }
        auto s = std::move(queue_.front());
        queue_.pop_front();
        // The lowest free slot: the GPU backend steps a prefix of its slots (fewer idle ones).
        const auto lowest = std::min_element(free_slots_.begin(), free_slots_.end());
        s->slot = *lowest;
        free_slots_.erase(lowest);
        joining.push_back(std::move(s));
      }
      stats_.queued = static_cast<int>(queue_.size());
    }
    auto release = [&](std::unique_ptr<Seq>& s) {
      backend_->release(s->slot);
      std::lock_guard<std::mutex> lk(mu_);
      free_slots_.push_back(s->slot);
    };
    const bool mixed = backend_->mixed_steps();
    for (auto& s : joining) {
      if (mixed) active_.push_back(std::move(s));  // its prompt joins the next steps in chunks
      else if (admit(s)) active_.push_back(std::move(s));
      else release(s);
    }
    if (active_.empty()) {
      std::lock_guard<std::mutex> lk(mu_);
      stats_.active = 0;
      stats_.kv_bytes_in_use = stats_.kv_f16_bytes = 0;
      continue;
    }
    // ---- one step: a token of every decoding sequence and (mixed steps) prompt chunks, one pass ----
    // item_of[i]: sequence i's item in this step, or -1 (a prompt waiting for the chunk budget).
    std::vector<int> item_of(active_.size(), -1);
    std::vector<ServeBackend::StepItem> items;
    int budget = opt_.prefill_chunk;
    int64_t prompt_fed = 0;
    for (size_t i = 0; i < active_.size(); ++i) {
      Seq& s = *active_[i];
      if (s.fed < s.req.prompt.size()) {  // still reading its prompt (mixed steps only)
        const int take = static_cast<int>(std::min<size_t>(static_cast<size_t>(budget), s.req.prompt.size() - s.fed));
        if (take == 0) continue;
        budget -= take;
        prompt_fed += take;
        item_of[i] = static_cast<int>(items.size());
        items.push_back({s.slot, s.req.prompt.data() + s.fed, take, s.fed == 0});
      } else {
        item_of[i] = static_cast<int>(items.size());
        items.push_back({s.slot, &s.next, 1, false});
      }
    }
    // KV memory (a shared page pool): put off prompt chunks, newest first, while some sequence
    // still decodes; then end the newest decoding sequences with a clear error. The others go on.
    std::vector<char> exhausted(active_.size(), 0);
    int64_t waits = 0;
    while (!items.empty() && !backend_->fits(items.data(), static_cast<int>(items.size()))) {
      int last_prompt = -1, last_decode = -1;  // indices into active_ of the newest items of each kind
      for (size_t i = 0; i < active_.size(); ++i) {
        if (item_of[i] < 0) continue;
        if (active_[i]->fed < active_[i]->req.prompt.size()) last_prompt = static_cast<int>(i);
        else last_decode = static_cast<int>(i);
      }
      const bool any_decode = last_decode >= 0;
      // Prompt chunks wait while something decodes (it will finish and free pages); otherwise the
      // newest sequence ends.
      const int victim = last_prompt >= 0 ? last_prompt : last_decode;
      if (victim < 0) break;
      const bool prompt = active_[victim]->fed < active_[victim]->req.prompt.size();
      if (prompt && any_decode) {
        ++waits;
        prompt_fed -= items[item_of[victim]].n;
      } else {
        exhausted[victim] = 1;
        backend_->release(active_[victim]->slot);  // its pages count as free for the next check
      }
      items.erase(items.begin() + item_of[victim]);
      const int removed = item_of[victim];
      item_of[victim] = -1;
      for (int& it : item_of)
        if (it > removed) --it;
    }
    const int n = static_cast<int>(items.size());
    logits.resize(static_cast<size_t>(std::max(n, 1)) * V);
    Status st;
    bool use_ids = false;  // the step returned argmax ids, not logits
    if (n == 0) {
      // (nothing fits: only the endings below)
    } else if (mixed) {
      st = backend_->step_mixed(items.data(), n, logits.data());
    } else {
      toks.resize(n);
      slots.resize(n);
      for (int i = 0; i < n; ++i) {
        toks[i] = *items[i].tokens;
        slots[i] = items[i].slot;
      }
      // Every sequence of the step greedy: the backend's argmax rows, no logits to the host.
      use_ids = backend_->argmax_steps();
      for (size_t i = 0; i < active_.size() && use_ids; ++i)
        use_ids = item_of[i] < 0 || active_[i]->sampler->is_plain_greedy();
      if (use_ids) {
        ids.resize(n);
        st = backend_->step_argmax(slots.data(), toks.data(), n, ids.data());
      } else {
        st = backend_->step(slots.data(), toks.data(), n, logits.data());
      }
    }
    const int running = static_cast<int>(active_.size());
    std::vector<std::unique_ptr<Seq>> still;
    for (size_t i = 0; i < active_.size(); ++i) {
      auto& s = active_[i];
      bool keep = true;
      const int it = item_of[i];
      if (exhausted[i]) {
        {
          std::lock_guard<std::mutex> lk(mu_);
          stats_.kv_exhausted += 1;
        }
        finish(*s, "", resource_exhausted("the KV cache pool is full (" + std::to_string(active_.size()) +
                                          " sequences hold it); retry later or raise --kv-budget"));
        keep = false;
      } else if (it < 0) {
        // (no item this step: its prompt waits for the chunk budget)
      } else if (!st.is_ok()) {
        finish(*s, "", st);
        keep = false;
      } else {
        const bool prompt_chunk = s->fed < s->req.prompt.size();
        if (prompt_chunk) s->fed += static_cast<size_t>(items[it].n);
        if (use_ids) keep = emit_token(*s, ids[it]);
        else if (!prompt_chunk || s->fed == s->req.prompt.size())  // a token to sample
          keep = emit_sampled(*s, logits.data() + static_cast<size_t>(it) * V);
      }
      if (keep) still.push_back(std::move(s));
      else release(s);
    }
    active_ = std::move(still);
    std::lock_guard<std::mutex> lk(mu_);
    stats_.steps += 1;
    stats_.prompt_tokens += prompt_fed;
    stats_.prompt_waits += waits;
    fill_sum_ += n;
    stats_.batch_fill = fill_sum_ / static_cast<double>(stats_.steps);
    stats_.active = static_cast<int>(active_.size());
    stats_.peak_active = std::max(stats_.peak_active, running);
    int64_t used = 0, f16 = 0;
    for (const auto& s : active_) {
      used += backend_->kv_bytes(s->slot);
      f16 += backend_->kv_f16_bytes(s->slot);
    }
    stats_.kv_bytes_in_use = used;
    stats_.kv_f16_bytes = f16;
  }
}

}  // namespace tqkv
