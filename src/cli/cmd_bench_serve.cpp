// `tqkv bench serve [--device cpu|cuda] (--model M | --synthetic llama3-8b --tokenizer M) [--kv FORMAT]
// [--kv-budget-mib X] [--requests N] [--prompt-len P] [--max-tokens G] [--max-batch B] [--json]`:
// continuous-batching throughput of the serving engine (include/tqkv/serve.h) from one KV memory
// budget, for the f16 cache and FORMAT in the same run. N requests of P random prompt tokens and G
// greedy reply tokens each are submitted at once; the engine runs as many together as its slots and
// (with a budget) its shared page pool allow. Reports per format: wall time, generated tokens/s, the
// most requests running at once, the mean decode batch, requests done / failed, and the pool's size.
// The synthetic model (GPU only) has the Llama-3.1-8B shape with random weights and the vocabulary of
// --tokenizer's file: its replies are meaningless, its speed is the 8B model's.
// Hooked into `tqkv bench` (src/cli/cmd_bench.cpp) as the `serve` subcommand.
#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "cli/command_registry.h"
#include "cli/kv_transform_flags.h"
#include "tqkv/model.h"
#include "tqkv/serve.h"
#include "tqkv/tokenizer.h"
#ifdef TQKV_HAVE_GPU_RUNTIME
#include "tqkv/gpu_model.h"
#endif

namespace tqkv::cli {

namespace {

struct ServeBenchOptions {
  std::string device = "cpu", model, synthetic, tokenizer, kv = "k4v4", baseline = "f16", admit = "reserve";
  double budget_mib = 0;
  int requests = 32, prompt_len = 256, max_tokens = 64, max_batch = 32, ctx = 4096;
  uint64_t seed = 1;
  bool json = false;
  KvTransformFlags tf;
};

int fail(const std::string& m) {
  std::fprintf(stderr, "tqkv bench serve: %s\n", m.c_str());
  return 1;
}

using Clock = std::chrono::steady_clock;

// Every request's events: when its first text arrived and when it ended.
struct Tracker {
  std::mutex mu;
  std::condition_variable cv;
  int done = 0, failed = 0;
  int64_t tokens = 0;
  std::vector<double> first_s, end_s;
  std::string first_error;
  Clock::time_point t0;
  CompletionSink sink(int i) {
    return [this, i](const CompletionEvent& ev) {
      std::lock_guard<std::mutex> lk(mu);
      const double t = std::chrono::duration<double>(Clock::now() - t0).count();
      if (first_s[i] < 0 && (!ev.text.empty() || ev.done)) first_s[i] = t;
      if (ev.done) {
        end_s[i] = t;
        ++done;
        if (!ev.error.is_ok()) {
          ++failed;
          if (first_error.empty()) first_error = ev.error.to_string();
        }
        tokens += ev.completion_tokens;
        cv.notify_all();
      }
      return true;
    };
  }
};

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

struct Row {
  std::string kv;
  double wall_s = 0, tokens_per_s = 0, ttft_median_s = 0, latency_median_s = 0;
  int done = 0, failed = 0;
  int64_t tokens = 0;
  EngineStats st;
  std::string describe, first_error;
};

Result<Row> run_one(std::unique_ptr<ServeBackend> backend, const Tokenizer& tok, const ServeBenchOptions& o,
                    const std::string& kv, const std::vector<std::vector<int32_t>>& prompts) {
  EngineOptions eo;
  eo.max_queue = o.requests;
  eo.kv_admission = o.admit == "greedy" ? KvAdmission::kGreedy : KvAdmission::kReserve;
  Row r;
  r.kv = kv;
  r.describe = backend->describe();
  TQKV_ASSIGN_OR_RETURN(auto engine, Engine::create(std::move(backend), tok, eo));
  Tracker t;
  t.first_s.assign(prompts.size(), -1);
  t.end_s.assign(prompts.size(), -1);
  t.t0 = Clock::now();
  for (size_t i = 0; i < prompts.size(); ++i) {
    CompletionRequest q;
    q.prompt = prompts[i];
    q.max_tokens = o.max_tokens;
    q.sampler.temperature = 0;
    q.stop_at_eog = false;
    TQKV_RETURN_IF_ERROR(engine->submit(std::move(q), t.sink(static_cast<int>(i))));
  }
  {
    std::unique_lock<std::mutex> lk(t.mu);
    int shown = -1;
    while (t.done < static_cast<int>(prompts.size())) {
      t.cv.wait_for(lk, std::chrono::seconds(2));
      if (!o.json && t.done != shown) {
        shown = t.done;
        std::fprintf(stderr, "\r  %-6s %d / %zu requests", kv.c_str(), t.done, prompts.size());
      }
    }
    if (!o.json) std::fprintf(stderr, "\n");
  }
  r.wall_s = std::chrono::duration<double>(Clock::now() - t.t0).count();
  engine->shutdown();
  r.st = engine->stats();
  r.done = t.done - t.failed;
  r.failed = t.failed;
  r.tokens = t.tokens;
  r.tokens_per_s = static_cast<double>(t.tokens) / r.wall_s;
  r.ttft_median_s = median(t.first_s);
  r.latency_median_s = median(t.end_s);
  r.first_error = t.first_error;
  return r;
}

int run(const ServeBenchOptions& o) {
  auto fmt = parse_kv_format(o.kv);
  if (!fmt.is_ok()) return fail("--kv: " + fmt.status().to_string());
  auto base = parse_kv_format(o.baseline);
  if (!base.is_ok()) return fail("--baseline: " + base.status().to_string());
  if (o.model.empty() == o.synthetic.empty()) return fail("give one of --model and --synthetic");
  if (!o.synthetic.empty() && o.device != "cuda") return fail("--synthetic runs on --device cuda only");
  if (!o.synthetic.empty() && o.tokenizer.empty()) return fail("--synthetic needs --tokenizer (a GGUF file with a tokenizer)");
  if (o.prompt_len + o.max_tokens > o.ctx) return fail("--prompt-len + --max-tokens exceed --ctx");
  const std::string tok_path = o.model.empty() ? o.tokenizer : o.model;
  auto loaded = Model::load(tok_path);
  if (!loaded.is_ok()) return fail(tok_path + ": " + loaded.status().to_string());
  const std::unique_ptr<Model>& file = *loaded;
  auto tokr = Tokenizer::from_gguf(file->gguf());
  if (!tokr.is_ok()) return fail("tokenizer: " + tokr.status().to_string());
  const auto& tok = *tokr;
  const int64_t budget = static_cast<int64_t>(o.budget_mib * 1024 * 1024);

#ifdef TQKV_HAVE_GPU_RUNTIME
  std::unique_ptr<GpuModel> gm;
#endif
  int n_vocab = file->config().n_vocab;
  std::string model_desc = file->config().arch_name + ", " + std::to_string(file->config().n_layer) + " layers";
  if (o.device == "cuda") {
#ifdef TQKV_HAVE_GPU_RUNTIME
    if (const Status st = gpu_available(); !st.is_ok()) return fail("--device cuda: " + st.to_string());
    if (!o.synthetic.empty()) {
      if (o.synthetic != "llama3-8b") return fail("--synthetic: only llama3-8b");
      ModelConfig cfg = GpuModel::llama3_8b_config();
      cfg.n_vocab = tok->vocab_size();
      auto g = GpuModel::synthetic(cfg, o.seed);
      if (!g.is_ok()) return fail("synthetic model: " + g.status().to_string());
      gm = std::move(*g);
      model_desc = "synthetic Llama-3.1-8B shape (random weights), vocabulary " + std::to_string(cfg.n_vocab);
      n_vocab = cfg.n_vocab;
    } else {
      auto g = GpuModel::from_gguf(file->gguf(), file->config());
      if (!g.is_ok()) return fail("GPU model: " + g.status().to_string());
      gm = std::move(*g);
    }
#else
    return fail("--device cuda: this tqkv was built without the CUDA backend");
#endif
  }
  std::mt19937 rng(static_cast<uint32_t>(o.seed));
  std::uniform_int_distribution<int32_t> pick(0, n_vocab - 1);
  std::vector<std::vector<int32_t>> prompts(static_cast<size_t>(o.requests));
  for (auto& p : prompts) {
    p.resize(static_cast<size_t>(o.prompt_len));
    for (auto& id : p) id = pick(rng);
  }

  std::vector<Row> rows;
  for (const auto& [name, f] : {std::pair{o.baseline, *base}, std::pair{o.kv, *fmt}}) {
    KvOptions kv;
    kv.format = f;
    kv.max_tokens = o.ctx;
    kv.center_keys = true;
    o.tf.apply_to(kv);
    Result<std::unique_ptr<ServeBackend>> backend = unsupported("no backend");
    if (o.device == "cuda") {
#ifdef TQKV_HAVE_GPU_RUNTIME
      backend = gpu_serve_backend(*gm, kv, o.max_batch, budget);
#endif
    } else {
      backend = cpu_serve_backend(*file, kv, o.max_batch, budget);
    }
    if (!backend.is_ok()) return fail(name + ": " + backend.status().to_string());
    auto row = run_one(std::move(*backend), *tok, o, name, prompts);
    if (!row.is_ok()) return fail(name + ": " + row.status().to_string());
    rows.push_back(std::move(*row));
  }

  const Row& b = rows[0];
  if (o.json) {
    nlohmann::json out = {{"device", o.device}, {"model", model_desc}, {"requests", o.requests},
                          {"prompt_len", o.prompt_len}, {"max_tokens", o.max_tokens}, {"max_batch", o.max_batch},
                          {"kv_budget_bytes", budget}, {"admission", o.admit}};
    for (const Row& r : rows)
      out["rows"].push_back({{"kv", r.kv},
                             {"wall_s", r.wall_s},
                             {"tokens_generated", r.tokens},
                             {"tokens_per_s", r.tokens_per_s},
                             {"speedup_vs_baseline", r.tokens_per_s / b.tokens_per_s},
                             {"requests_done", r.done},
                             {"requests_failed", r.failed},
                             {"peak_active", r.st.peak_active},
                             {"mean_batch", r.st.batch_fill},
                             {"steps", r.st.steps},
                             {"pool_tokens", r.st.pool_tokens},
                             {"admit_waits", r.st.admit_waits},
                             {"kv_exhausted", r.st.kv_exhausted},
                             {"ttft_median_s", r.ttft_median_s},
                             {"latency_median_s", r.latency_median_s},
                             {"backend", r.describe},
                             {"first_error", r.first_error}});
    std::printf("%s\n", out.dump(2).c_str());
    return 0;
  }
  std::printf("serving bench: %s on %s; %d requests x (%d prompt + %d reply tokens), %d slots, ", model_desc.c_str(),
              o.device.c_str(), o.requests, o.prompt_len, o.max_tokens, o.max_batch);
  if (budget > 0) std::printf("KV budget %.0f MiB (%s admission)\n", o.budget_mib, o.admit.c_str());
  else std::printf("each slot holds %d tokens\n", o.ctx);
  std::printf("%-6s %9s %10s %8s %6s %6s %10s %9s %9s %9s\n", "kv", "wall s", "tokens/s", "vs base", "peak", "batch",
              "pool tok", "done", "failed", "TTFT p50");
  for (const Row& r : rows)
    std::printf("%-6s %9.2f %10.1f %7.2fx %6d %6.2f %10lld %9d %9d %8.2fs\n", r.kv.c_str(), r.wall_s, r.tokens_per_s,
                r.tokens_per_s / b.tokens_per_s, r.st.peak_active, r.st.batch_fill,
                static_cast<long long>(r.st.pool_tokens), r.done, r.failed, r.ttft_median_s);
  for (const Row& r : rows)
    if (!r.first_error.empty()) std::printf("  %s: first error: %s\n", r.kv.c_str(), r.first_error.c_str());
  return 0;
}

}  // namespace

RunFn setup_bench_serve(CLI::App& sub) {
  auto o = std::make_shared<ServeBenchOptions>();
  sub.add_option("--device", o->device, "cpu (default) or cuda")->check(CLI::IsMember({"cpu", "cuda"}));
  sub.add_option("--model,-m", o->model, "GGUF model file");
  sub.add_option("--synthetic", o->synthetic, "llama3-8b: random weights of that shape (cuda only; needs --tokenizer)");
  sub.add_option("--tokenizer", o->tokenizer, "GGUF file whose tokenizer the synthetic model uses");
  sub.add_option("--kv", o->kv, "KV format measured against the baseline (default k4v4)");
  sub.add_option("--baseline", o->baseline, "KV format of the baseline row, run first (default f16)");
  sub.add_option("--kv-budget-mib", o->budget_mib,
                 "The slots share one KV page pool of this many MiB (0 = each slot holds --ctx tokens)")
      ->check(CLI::Range(0.0, 1e7));
  sub.add_option("--kv-admit", o->admit, "reserve (default) or greedy: as tqkv serve")
      ->check(CLI::IsMember({"reserve", "greedy"}));
  sub.add_option("--requests", o->requests, "requests, all submitted at once (default 32)")->check(CLI::Range(1, 100000));
  sub.add_option("--prompt-len", o->prompt_len, "random prompt tokens per request (default 256)")->check(CLI::Range(1, 1 << 20));
  sub.add_option("--max-tokens", o->max_tokens, "reply tokens per request (default 64)")->check(CLI::Range(1, 1 << 20));
  sub.add_option("--max-batch", o->max_batch, "slots: requests running at most at once (default 32)")->check(CLI::Range(1, 1024));
  sub.add_option("--ctx", o->ctx, "context of a slot (default 4096)")->check(CLI::Range(2, 1 << 22));
  sub.add_option("--seed", o->seed, "seed of the prompts and the synthetic weights");
  sub.add_flag("--json", o->json, "print one JSON object");
  o->tf.add_to(sub, /*sinks_per_chunk=*/false);
  return [o] { return run(*o); };
}

}  // namespace tqkv::cli
