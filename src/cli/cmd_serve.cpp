// `tqkv serve --model M [--kv FORMAT] [--port P] [--ctx N] [--max-batch B]`: an OpenAI-compatible
// HTTP server (include/tqkv/http_server.h) over the continuous-batching engine
// (include/tqkv/serve.h) on the CPU runtime. Ctrl-C (SIGINT) or SIGTERM stops it: requests in
// flight get an error, then the process exits 0.
#include <csignal>
#include <cstdio>
#include <memory>
#include <string>

#include <pthread.h>

#include "cli/command_registry.h"
#include "cli/kv_transform_flags.h"
#include "tqkv/chat_template.h"
#include "tqkv/generate.h"
#ifdef TQKV_HAVE_HTTP
#include "tqkv/http_server.h"
#endif
#include "tqkv/serve.h"
#ifdef TQKV_HAVE_GPU_RUNTIME
#include "tqkv/gpu_model.h"
#endif

namespace {

struct Options {
  std::string model, kv = "k4v4", host = "127.0.0.1", center = "keys", name, device = "cpu";
  int port = 8080;
  int ctx = 4096;
  int max_batch = 8;
  int max_queue = 256;
  int prefill_chunk = tqkv::Model::kMaxChunk;
  double kv_budget_mib = 0;
  std::string kv_admit = "reserve";
  tqkv::cli::KvTransformFlags tf;
};

int fail(const std::string& what, const tqkv::Status& st) {
  std::fprintf(stderr, "tqkv serve: %s: %s\n", what.c_str(), st.to_string().c_str());
  return 1;
}

// The GPU model the backend of --device cuda reads (declared before the engine in run(), so it
// outlives it); an incomplete type without the GPU runtime.
#ifdef TQKV_HAVE_GPU_RUNTIME
using GpuModelPtr = std::unique_ptr<tqkv::GpuModel>;
#else
using GpuModelPtr = std::shared_ptr<void>;
#endif

// --device cuda: the GPU runtime's slots (weights uploaded as fp16 into *gm, KV cache on the device).
tqkv::Result<std::unique_ptr<tqkv::ServeBackend>> gpu_backend(const tqkv::Model& model, const tqkv::KvOptions& kv,
                                                              int slots, int64_t budget, GpuModelPtr* gm) {
#ifdef TQKV_HAVE_GPU_RUNTIME
  TQKV_RETURN_IF_ERROR(tqkv::gpu_available());
  TQKV_ASSIGN_OR_RETURN(*gm, tqkv::GpuModel::from_gguf(model.gguf(), model.config()));
  std::fprintf(stderr, "  device: cuda, weights %.1f MB fp16\n", (*gm)->weight_bytes() / 1e6);
  return tqkv::gpu_serve_backend(**gm, kv, slots, budget);
#else
  (void)model, (void)kv, (void)slots, (void)budget, (void)gm;
  return tqkv::unsupported("--device cuda: this tqkv was built without the CUDA backend (configure with -DTQKV_CUDA=ON)");
#endif
}

int run(const Options& o) {
#ifndef TQKV_HAVE_HTTP
  (void)o;
  return fail("serve", tqkv::unsupported("this tqkv was built without cpp-httplib (install libcpp-httplib-dev and rebuild)"));
#else
  auto fmt = tqkv::parse_kv_format(o.kv);
  if (!fmt.is_ok()) return fail("--kv", fmt.status());
  // SIGINT / SIGTERM go to the sigwait below, not to a handler: block them before any thread starts.
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);

  std::fprintf(stderr, "loading %s ...\n", o.model.c_str());
  auto model = tqkv::Model::load(o.model);
  if (!model.is_ok()) return fail(o.model, model.status());
  auto tok = tqkv::Tokenizer::from_gguf((*model)->gguf());
  if (!tok.is_ok()) return fail("tokenizer", tok.status());
  auto tmpl = tqkv::chat_template_from_gguf((*model)->gguf());
  if (!tmpl.is_ok()) std::fprintf(stderr, "  no chat endpoint: %s\n", tmpl.status().to_string().c_str());

  tqkv::EngineOptions eo;
  eo.kv.format = *fmt;
  eo.kv.center_keys = o.center == "keys";
  o.tf.apply_to(eo.kv);
  eo.kv.max_tokens = o.ctx;
  eo.max_batch = o.max_batch;
  eo.max_queue = o.max_queue;
  eo.prefill_chunk = o.prefill_chunk;
  eo.kv_budget_bytes = static_cast<int64_t>(o.kv_budget_mib * 1024 * 1024);
  eo.kv_admission = o.kv_admit == "greedy" ? tqkv::KvAdmission::kGreedy : tqkv::KvAdmission::kReserve;
  GpuModelPtr gpu_model;
  auto backend = o.device == "cuda" ? gpu_backend(**model, eo.kv, o.max_batch, eo.kv_budget_bytes, &gpu_model)
                                    : tqkv::cpu_serve_backend(**model, eo.kv, o.max_batch, eo.kv_budget_bytes);
  if (!backend.is_ok()) return fail("KV cache", backend.status());
  auto engine = tqkv::Engine::create(std::move(*backend), **tok, eo);
  if (!engine.is_ok()) return fail("engine", engine.status());
  const tqkv::ModelConfig& cfg = (*model)->config();
  std::fprintf(stderr, "  model: %s, %d layers; KV %s: %s\n", cfg.arch_name.c_str(), cfg.n_layer, o.kv.c_str(),
               (*engine)->describe().c_str());

  tqkv::HttpServerOptions ho;
  ho.host = o.host;
  ho.port = o.port;
  ho.kv_format = o.kv;
  ho.model_name = o.name.empty() ? o.model.substr(o.model.find_last_of('/') + 1) : o.name;
  tqkv::HttpServer server(**engine, **tok, tmpl.is_ok() ? &*tmpl : nullptr, ho);
  auto port = server.start();
  if (!port.is_ok()) return fail("listen", port.status());
  std::fprintf(stderr, "listening on http://%s:%d (POST /v1/completions, /v1/chat/completions; GET /health)\n",
               o.host.c_str(), *port);
  int sig = 0;
  sigwait(&sigs, &sig);
  std::fprintf(stderr, "tqkv serve: signal %d, stopping\n", sig);
  (*engine)->shutdown();  // waiting requests end with an error first, so no handler stays blocked
  server.stop();
  return 0;
#endif
}

tqkv::cli::RunFn setup(CLI::App& sub) {
  auto o = std::make_shared<Options>();
  sub.add_option("--model,-m", o->model, "GGUF model file")->required();
  sub.add_option("--kv", o->kv, "KV cache format: f16, k8v8, k8v4, k4v4, k4v3, k3v3, k2v2 (default k4v4)");
  sub.add_option("--host", o->host, "Address to listen on (default 127.0.0.1)");
  sub.add_option("--port", o->port, "Port (default 8080; 0 = any free port)")->check(CLI::Range(0, 65535));
  sub.add_option("--ctx", o->ctx, "Context of each sequence, prompt + reply (default 4096)")->check(CLI::Range(2, 1 << 20));
  sub.add_option("--max-batch", o->max_batch, "Sequences decoding together, each with its own KV cache (default 8)")
      ->check(CLI::Range(1, 1024));
  sub.add_option("--max-queue", o->max_queue, "Requests that may wait for a slot; beyond, 503 (default 256)")
      ->check(CLI::Range(0, 1 << 20));
  sub.add_option("--prefill-chunk", o->prefill_chunk,
                 "Prompt tokens read per step beside the decoding sequences (CPU; default 64): smaller keeps "
                 "their tokens flowing more evenly while a long prompt is read")
      ->check(CLI::Range(1, tqkv::Model::kMaxChunk));
  sub.add_option("--kv-budget-mib", o->kv_budget_mib,
                 "The slots share one KV page pool of this many MiB (CPU and cuda), pages taken as sequences "
                 "grow: a compressed --kv holds ~4x the tokens of f16, so more requests run at once. Default 0: "
                 "each slot holds --ctx tokens of its own")
      ->check(CLI::Range(0.0, 1e7));
  sub.add_option("--kv-admit", o->kv_admit,
                 "With --kv-budget-mib: reserve (default) starts a request only when the pool can hold its prompt "
                 "and all of max_tokens beside the running ones' (none ever fails for want of KV); greedy starts "
                 "it whenever a slot is free and, when the pool runs out, ends the newest with a 503")
      ->check(CLI::IsMember({"reserve", "greedy"}));
  sub.add_option("--name", o->name, "Model name in responses (default: the file's name)");
  sub.add_option("--center", o->center, "keys (default): exact key centering before quantization; none: the plain codec")
      ->check(CLI::IsMember({"keys", "none"}));
  o->tf.add_to(sub, /*sinks_per_chunk=*/false);
  sub.add_option("--device", o->device, "cpu (default) or cuda (the GPU runtime; needs a CUDA build and a GPU)")
      ->check(CLI::IsMember({"cpu", "cuda"}));
  return [o] { return run(*o); };
}

tqkv::cli::CommandRegistrar reg("serve", "OpenAI-compatible HTTP server with continuous batching (CPU, or --device cuda)", &setup);

}  // namespace
