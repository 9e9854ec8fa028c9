// The serving engine behind `tqkv serve`: continuous batching on the CPU runtime.
//
// Requests queue up; a scheduler thread keeps up to max_batch of them decoding together. Each
// step runs one token of every active sequence through the model in a single pass
// (Model::forward_batch: the weights are read once for the whole batch), samples each, streams
// the text out and retires finished sequences, whose KV cache slot the next queued request takes
// at once (requests join and leave between steps, not between batches). On the CPU a new
// request's prompt joins the same passes in chunks (at most EngineOptions::prefill_chunk prompt
// tokens per step), so the running sequences keep producing tokens while it is read; the GPU
// backend prefills a new prompt whole, between two steps.
//
// KV memory: max_batch caches of `kv.max_tokens` positions each, in the chosen format, made up
// front, so a request never fails for want of KV memory mid-way; or (kv_budget_bytes, CPU and GPU)
// one page pool of a byte budget that the slots share, where a compressed format holds 4-5x the
// tokens of f16, and EngineOptions::kv_admission decides when requests start. A request that
// cannot fit its context is refused before it starts.
//
// The HTTP front end (OpenAI-compatible, include/tqkv/http_server.h) sits on top of this.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "tqkv/model.h"
#include "tqkv/sampler.h"
#include "tqkv/status.h"
#include "tqkv/tokenizer.h"

namespace tqkv {

// What the engine runs sequences on: `slots()` sequence slots, each with its own KV cache of
// `context()` positions. The CPU runtime (cpu_serve_backend below) and the GPU runtime
// (gpu_serve_backend, include/tqkv/gpu_model.h) implement it. Called from the engine's thread only.
class ServeBackend {
 public:
  virtual ~ServeBackend() = default;
  virtual int slots() const = 0;
  virtual int64_t context() const = 0;
  virtual int n_vocab() const = 0;
  // Empties `slot` and runs `prompt` into it; logits [n_vocab] of its last token.
  virtual Status prefill(int slot, const std::vector<int32_t>& prompt, float* logits) = 0;
  // One token for each of `count` distinct busy slots, appended at their lengths, in one pass;
  // logits [count][n_vocab] in the order given.
  virtual Status step(const int* slots, const int32_t* tokens, int count, float* logits) = 0;
  virtual void release(int slot) { (void)slot; }  // the slot's sequence is over
  // Steps whose every sequence samples by plain argmax (Sampler::is_plain_greedy): the backend may
  // return each row's argmax (first index on ties, NaN never wins) in ids [count] instead of logits,
  // which spares the GPU backend copying [count][n_vocab] floats to the host every step.
  virtual bool argmax_steps() const { return false; }
  virtual Status step_argmax(const int* slots, const int32_t* tokens, int count, int32_t* ids) {
    (void)slots, (void)tokens, (void)count, (void)ids;
    return unsupported("this serving backend has no argmax steps");
  }
  // Mixed steps: prompt chunks and decode tokens of different slots in one pass. An item with
  // `first` empties its slot before its tokens (a prompt's first chunk). logits [count][n_vocab]:
  // the last token of each item. Backends without it (mixed_steps() false) get prefill() + step().
  struct StepItem {
    int slot = 0;
    const int32_t* tokens = nullptr;
    int n = 0;
    bool first = false;
  };
  virtual bool mixed_steps() const { return false; }
  // Whether the KV memory holds these items' new tokens together (a shared page pool may not);
  // the engine postpones prompt chunks, then ends the newest sequences, until a step fits.
  virtual bool fits(const StepItem* items, int count) const {
    (void)items, (void)count;
    return true;
  }
  virtual Status step_mixed(const StepItem* items, int count, float* logits) {
    (void)items, (void)count, (void)logits;
    return unsupported("this serving backend has no mixed steps");
  }
  // A KV page pool that the slots share: its size in tokens (whole pages; 0 = no shared pool, each
  // slot holds context() positions), and the tokens a sequence of `len` positions takes from it (len
  // rounded up to whole pages). The engine's admission (EngineOptions::kv_admission) reads them.
  virtual int64_t pool_tokens() const { return 0; }
  virtual int64_t pool_tokens_for(int64_t len) const { return len; }
  virtual int64_t kv_bytes(int slot) const = 0;       // bytes its tokens occupy
  virtual int64_t kv_f16_bytes(int slot) const = 0;   // what an f16 cache would use for them
  virtual std::string describe() const = 0;
};

// The CPU runtime: `slots` caches made by make_kv_backend(model.config(), kv) (kv.max_tokens =
// the context), or with kv_budget_bytes > 0 one KvPool of that many bytes that the slots share
// (pages taken as sequences grow); a step is one Model::forward_batch over the busy slots.
Result<std::unique_ptr<ServeBackend>> cpu_serve_backend(const Model& model, const KvOptions& kv, int slots,
                                                        int64_t kv_budget_bytes = 0);

// How requests start when the backend's slots share a page pool (ServeBackend::pool_tokens() > 0).
enum class KvAdmission {
  // A request starts only when the pool can hold its prompt and all of max_tokens beside what the
  // running requests have reserved: no request ever ends for want of KV pages; the others queue.
  kReserve,
  // A request starts whenever a slot is free; pages are taken as sequences grow. When the pool runs
  // out, prompt chunks wait while others decode, then the newest sequence ends with
  // kResourceExhausted (HTTP 503). More sequences at once, at that risk.
  kGreedy,
};

struct EngineOptions {
  KvOptions kv;           // (CPU, Engine::create(model, ...)) format, transforms; kv.max_tokens = context
  int max_batch = 8;      // (CPU) sequences decoding together (= KV cache slots)
  int max_queue = 256;    // requests waiting beyond this are refused (kResourceExhausted)
  int prefill_chunk = Model::kMaxChunk;  // prompt tokens per step (mixed steps; 1..Model::kMaxChunk)
  int64_t kv_budget_bytes = 0;  // (CPU, Engine::create(model, ...)) > 0: the slots share a KvPool of this size
  KvAdmission kv_admission = KvAdmission::kReserve;  // (shared pools) see KvAdmission
};

struct CompletionRequest {
  std::vector<int32_t> prompt;
  int max_tokens = 128;
  SamplerOptions sampler;
  std::vector<std::string> stop;  // stop strings (not part of the returned text)
  bool stop_at_eog = true;
};

// What a request receives, in order: zero or more pieces of text, then one final event.
struct CompletionEvent {
  std::string text;              // new text (may be empty on the final event)
  bool done = false;
  std::string finish_reason;     // final event: "stop" (end of generation or a stop string), "length"
  Status error = Status::ok();   // final event: not ok when the request failed
  int prompt_tokens = 0, completion_tokens = 0;
};

// Called on the engine's thread. Return false to cancel the request (e.g. the client went away);
// it then gets no further events.
using CompletionSink = std::function<bool(const CompletionEvent&)>;

struct EngineStats {
  int64_t requests_done = 0, requests_failed = 0, tokens_generated = 0, steps = 0;
  int active = 0, queued = 0, max_batch = 0;
  int64_t kv_bytes_in_use = 0, kv_f16_bytes = 0;  // over the active sequences
  double batch_fill = 0;  // mean sequences per step (decoding, or reading a prompt chunk)
  int64_t prompt_tokens = 0;  // prompt tokens read (prefill)
  int64_t kv_exhausted = 0;   // requests ended because the shared KV pool was full
  int64_t prompt_waits = 0;   // prompt chunks put off a step for want of KV pages
  int64_t admit_waits = 0;    // (kReserve) steps in which the next queued request waited for pool room
  int peak_active = 0;        // most sequences running at once
  int64_t pool_tokens = 0;    // the shared pool's size in tokens (0: none)
};

class Engine {
 public:
  // `model` and `tok` must outlive the engine. The CPU runtime with opt.max_batch slots.
  static Result<std::unique_ptr<Engine>> create(const Model& model, const Tokenizer& tok, const EngineOptions& opt);
  // Any backend (its slots are the batch; opt.kv and opt.max_batch are not used).
  static Result<std::unique_ptr<Engine>> create(std::unique_ptr<ServeBackend> backend, const Tokenizer& tok,
                                                const EngineOptions& opt);
  ~Engine();  // shutdown()
  // Stops the thread: queued and active requests get an error event, later submits fail. Idempotent.
  void shutdown();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Queues a request. Fails at once (nothing queued) on an empty prompt, a prompt that leaves no
  // room in the context (or, with a shared pool, in the whole pool), bad sampler options or a full
  // queue. max_tokens is cut to the room left (in the context, and in the pool).
  Status submit(CompletionRequest req, CompletionSink sink);
  EngineStats stats() const;
  const EngineOptions& options() const { return opt_; }
  int64_t context() const { return backend_->context(); }
  std::string describe() const { return backend_->describe(); }

 private:
  struct Seq;
  Engine(std::unique_ptr<ServeBackend> backend, const Tokenizer& tok, const EngineOptions& opt);
  void loop();
  bool admit(std::unique_ptr<Seq>& s);        // prefill; false when the request ended there
  bool emit_token(Seq& s, int32_t id);        // false when the request is finished
  bool emit_sampled(Seq& s, const float* logits);  // samples from logits [n_vocab], then emit_token
  void finish(Seq& s, const std::string& reason, const Status& error);

  std::unique_ptr<ServeBackend> backend_;
  const Tokenizer& tok_;
  EngineOptions opt_;
  std::vector<int> free_slots_;
  std::vector<std::unique_ptr<Seq>> active_;
  std::deque<std::unique_ptr<Seq>> queue_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  EngineStats stats_;
  double fill_sum_ = 0;
  std::thread thread_;
};

}  // namespace tqkv
