// `tqkv generate --model M (--prompt P | --chat P) -n N --kv FORMAT [sampling] [--json]`:
// streams the model's continuation, then reports prefill and decode speed and the KV bytes used
// (and what an f16 cache would use for the same tokens). Status lines go to stderr, text to stdout.
#include <chrono>
#include <cstdio>
#include <fstream>
#include <memory>
#include <sstream>
#include <nlohmann/json.hpp>
#include <string>

#include "cli/command_registry.h"
#include "cli/kv_transform_flags.h"
#include "tqkv/chat_template.h"
#include "tqkv/generate.h"
#ifdef TQKV_HAVE_GPU_RUNTIME
#include "tqkv/gpu_model.h"
#endif

namespace {

using json = nlohmann::ordered_json;

struct Options {
  std::string model, prompt, chat, system, kv = "k4v4", prompt_file;
  int prompt_tokens = 0;
  int n = 128;
  int ctx = 0;
  tqkv::SamplerOptions s;
  bool as_json = false;
  bool greedy = false;
  std::string device = "cpu";  // cpu or cuda (the GPU runtime, include/tqkv/gpu_model.h)
  std::string center = "keys";  // keys (the CPU default) or none
  std::vector<int> k8_layers;
  tqkv::cli::KvTransformFlags tf;  // --smooth-keys, --scale-search, --sink-tokens
};

double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

int fail(const std::string& what, const tqkv::Status& st) {
  std::fprintf(stderr, "tqkv generate: %s: %s\n", what.c_str(), st.to_string().c_str());
  return 1;
}

// --device cuda: the same loop on the GPU runtime (weights uploaded as fp16, KV cache on the device).
tqkv::Result<tqkv::GenerateStats> generate_on_gpu(const tqkv::Model& model, const tqkv::Tokenizer& tok,
                                                  const tqkv::KvOptions& kv, const std::vector<int32_t>& ids,
                                                  const tqkv::GenerateOptions& go,
                                                  const std::function<void(int32_t)>& on_token) {
#ifdef TQKV_HAVE_GPU_RUNTIME
  TQKV_RETURN_IF_ERROR(tqkv::gpu_available());
  TQKV_ASSIGN_OR_RETURN(auto gm, tqkv::GpuModel::from_gguf(model.gguf(), model.config()));
  std::fprintf(stderr, "  device: cuda, weights %.1f MB fp16\n", gm->weight_bytes() / 1e6);
  return tqkv::gpu_generate(*gm, tok, kv, ids, go, on_token);
#else
  (void)model, (void)tok, (void)kv, (void)ids, (void)go, (void)on_token;
  return tqkv::unsupported("--device cuda: this tqkv was built without the CUDA backend (configure with -DTQKV_CUDA=ON)");
#endif
}

int run(const Options& o) {
  auto fmt = tqkv::parse_kv_format(o.kv);
  if (!fmt.is_ok()) return fail("--kv", fmt.status());
  const auto t0 = std::chrono::steady_clock::now();
  std::fprintf(stderr, "loading %s ...\n", o.model.c_str());
  auto model = tqkv::Model::load(o.model);
  if (!model.is_ok()) return fail(o.model, model.status());
  const tqkv::ModelConfig& cfg = (*model)->config();
  std::fprintf(stderr, "  model: %s, %d layers, %d:%d heads of %d, vocab %d\n", cfg.arch_name.c_str(),
               cfg.n_layer, cfg.n_head, cfg.n_head_kv, cfg.head_dim, cfg.n_vocab);
  auto tok = tqkv::Tokenizer::from_gguf((*model)->gguf());
  if (!tok.is_ok()) return fail("tokenizer", tok.status());
  std::fprintf(stderr, "  tokenizer: %d tokens; loaded in %.2f s\n", (*tok)->vocab_size(), seconds_since(t0));

  std::string text = o.prompt;
  if (!o.prompt_file.empty()) {
    std::ifstream in(o.prompt_file, std::ios::binary);
    if (!in) return fail(o.prompt_file, tqkv::io_error("cannot open the prompt file"));
    std::stringstream ss;
    ss << in.rdbuf();
    text = ss.str();
    // Tokenize only what --prompt-tokens needs (16 bytes per token is generous for English).
    if (o.prompt_tokens > 0 && text.size() > static_cast<size_t>(o.prompt_tokens) * 16) text.resize(o.prompt_tokens * 16);
  }
  if (!o.chat.empty()) {
    auto tmpl = tqkv::chat_template_from_gguf((*model)->gguf());
    if (!tmpl.is_ok()) return fail("--chat", tmpl.status());
    if (!tmpl->note.empty()) std::fprintf(stderr, "  chat template: %s\n", tmpl->note.c_str());
    std::fprintf(stderr, "  chat template: %s\n", tqkv::chat_format_name(tmpl->format));
    text = tmpl->render_user_turn(o.chat, o.system);
  }
  auto ids = (*tok)->encode(text, (*tok)->add_bos(), /*parse_special=*/!o.chat.empty());
  if (!ids.is_ok()) return fail("tokenize", ids.status());
  if (o.prompt_tokens > 0 && static_cast<int>(ids->size()) > o.prompt_tokens) ids->resize(o.prompt_tokens);
  if (ids->empty()) return fail("prompt", tqkv::invalid_argument("the prompt encodes to no tokens"));

  tqkv::KvOptions ko;
  ko.format = *fmt;
  ko.center_keys = o.center == "keys";
  o.tf.apply_to(ko);
  ko.k8_layers = o.k8_layers;
  ko.max_tokens = o.ctx > 0 ? o.ctx : static_cast<int64_t>(ids->size()) + o.n;
  if (ko.max_tokens < static_cast<int64_t>(ids->size()) + o.n)
    return fail("--ctx", tqkv::invalid_argument("--ctx " + std::to_string(o.ctx) + " is smaller than prompt (" +
                                               std::to_string(ids->size()) + ") + -n"));
  tqkv::Result<std::unique_ptr<tqkv::KvBackend>> kv = tqkv::invalid_argument("no CPU KV cache with --device cuda");
  if (o.device == "cpu") {
    kv = tqkv::make_kv_backend(cfg, ko);
    if (!kv.is_ok()) return fail("KV cache", kv.status());
    std::fprintf(stderr, "  KV cache: %s; prompt %zu tokens\n", (*kv)->describe().c_str(), ids->size());
  }

  tqkv::GenerateOptions go;
  go.max_new_tokens = o.n;
  go.sampler = o.s;
  if (o.greedy) go.sampler.temperature = 0.0f;
  tqkv::Utf8StreamDecoder dec;
  std::string out_text;
  // Completion mode echoes the prompt, but only once the first token exists: a run that fails
  // before generating anything (no GPU, exhausted cache) prints only its error.
  const bool echo_prompt = !o.as_json && o.chat.empty() && o.prompt_file.empty();
  bool echoed = false;
  auto echo = [&] {
    if (echo_prompt && !echoed) std::fputs(o.prompt.c_str(), stdout);
    echoed = true;
  };
  auto on_token = [&](int32_t id) {
    echo();
    const std::string piece = dec.push((*tok)->token_to_piece(id, /*render_special=*/false));
    out_text += piece;
    if (!o.as_json) {
      std::fputs(piece.c_str(), stdout);
      std::fflush(stdout);
    }
  };
  auto st = o.device == "cuda" ? generate_on_gpu(**model, **tok, ko, *ids, go, on_token)
                               : tqkv::generate(**model, **tok, **kv, *ids, go, on_token);
  if (!st.is_ok()) return fail("generate", st.status());
  echo();
  const std::string tail = dec.flush();
  out_text += tail;
  const double saved = st->kv_f16_bytes > 0 ? 1.0 - static_cast<double>(st->kv_bytes) / st->kv_f16_bytes : 0.0;
  if (o.as_json) {
    json j;
    j["model"] = o.model;
    j["kv"] = o.kv;
    j["center_keys"] = ko.center_keys;
    j["smooth_keys"] = ko.smooth_keys;
    j["scale_search"] = ko.scale_search;
    j["sink_tokens"] = ko.sink_tokens;
    j["recent_tokens"] = ko.recent_tokens;
    j["prompt_tokens"] = st->prompt_tokens;
    j["generated_tokens"] = st->generated;
    j["text"] = out_text;
    j["ids"] = st->ids;
    j["stop_reason"] = st->stop_reason;
    j["prefill_tok_s"] = st->prefill_tok_s();
    j["decode_tok_s"] = st->decode_tok_s();
    j["kv_bytes"] = st->kv_bytes;
    j["kv_bytes_f16"] = st->kv_f16_bytes;
    j["kv_saved_fraction"] = saved;
    std::printf("%s\n", j.dump(2).c_str());
  } else {
    std::printf("%s\n", tail.c_str());
    std::fprintf(stderr,
                 "\n[%s] prompt %d tokens: prefill %.1f tok/s | %d generated (%s): decode %.1f tok/s\n"
                 "[%s] KV cache %.1f KiB for %d tokens; f16 would use %.1f KiB (%.1f%% saved)\n",
                 o.kv.c_str(), st->prompt_tokens, st->prefill_tok_s(), st->generated, st->stop_reason.c_str(),
                 st->decode_tok_s(), o.kv.c_str(), st->kv_bytes / 1024.0, st->prompt_tokens + st->generated,
                 st->kv_f16_bytes / 1024.0, 100.0 * saved);
  }
  return 0;
}

tqkv::cli::RunFn setup(CLI::App& sub) {
  auto o = std::make_shared<Options>();
  sub.add_option("--model,-m", o->model, "GGUF model file")->required();
  auto* p = sub.add_option("--prompt,-p", o->prompt, "Text to continue");
  auto* c = sub.add_option("--chat", o->chat, "A user message, wrapped in the model's chat template");
  auto* pf = sub.add_option("--prompt-file", o->prompt_file, "Continue the text of this file (e.g. to measure long contexts)");
  p->excludes(c);
  pf->excludes(p);
  pf->excludes(c);
  sub.add_option("--prompt-tokens", o->prompt_tokens, "Cut the prompt to this many tokens");
  sub.add_option("--system", o->system, "System prompt for --chat (default: the template's own, if any)");
  sub.add_option("-n,--n-predict", o->n, "Tokens to generate")->check(CLI::Range(1, 1 << 20));
  sub.add_option("--kv", o->kv, "KV cache format: f16, k8v8, k8v4, k4v4, k4v3, k3v3, k2v2 (default k4v4)");
  sub.add_option("--center", o->center,
                 "keys (default): exact key centering before quantization (docs/formats.md); none: the plain codec "
                 "(CPU and GPU runtimes)")
      ->check(CLI::IsMember({"keys", "none"}));
  o->tf.add_to(sub, /*sinks_per_chunk=*/false);
  sub.add_option("--k8-layers", o->k8_layers, "Layers that keep 8-bit keys (CPU), e.g. 11")->delimiter(',')->allow_extra_args(false);
  sub.add_option("--ctx", o->ctx, "KV cache capacity in tokens (default: prompt + n)");
  sub.add_option("--temp", o->s.temperature, "Temperature; 0 = greedy (default 0)");
  sub.add_option("--top-k", o->s.top_k, "Top-k (default 40; 0 = off)");
  sub.add_option("--top-p", o->s.top_p, "Top-p (default 0.95; 1 = off)");
  sub.add_option("--min-p", o->s.min_p, "Min-p (default 0.05; 0 = off)");
  sub.add_option("--repeat-penalty", o->s.repeat_penalty, "Repetition penalty (default 1 = off)");
  sub.add_option("--repeat-last-n", o->s.repeat_last_n, "Tokens the penalty looks back over (default 64)");
  sub.add_option("--seed", o->s.seed, "Random seed (default 0)");
  sub.add_flag("--greedy", o->greedy, "Greedy decoding (same as --temp 0)");
  sub.add_flag("--json", o->as_json, "Print one JSON object at the end instead of streaming");
  sub.add_option("--device", o->device, "cpu (default) or cuda (the GPU runtime; needs a CUDA build and a GPU)")
      ->check(CLI::IsMember({"cpu", "cuda"}));
  return [o] {
    if (o->prompt.empty() && o->chat.empty() && o->prompt_file.empty()) {
      std::fprintf(stderr, "tqkv generate: give --prompt TEXT, --prompt-file FILE or --chat MESSAGE\n");
      return 2;
    }
    return run(*o);
  };
}

tqkv::cli::CommandRegistrar reg("generate", "Generate text with a GGUF model over a TurboQuant KV cache", &setup);

}  // namespace
