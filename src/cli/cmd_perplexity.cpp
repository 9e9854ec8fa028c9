// `tqkv perplexity --model M --text FILE --ctx C --kv FORMAT [--chunks N] [--json]`:
// perplexity over consecutive chunks of the text (each from an empty cache, the second half of
// each chunk scored, as llama.cpp does). When FORMAT is not f16 an f16 cache runs in the same
// pass and we report the KL divergence of the next-token distribution (mean, p99, max) and top-1
// agreement against it.
#include <cstdio>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "cli/command_registry.h"
#include "cli/kv_transform_flags.h"
#include "cli/text_eval_input.h"
#include "tqkv/generate.h"
#ifdef TQKV_HAVE_GPU_RUNTIME
#include "tqkv/gpu_model.h"
#endif

namespace {

using json = nlohmann::ordered_json;

struct Options {
  std::string model, text, kv = "k4v4";
  int ctx = 512;
  int chunks = 0;
  bool as_json = false;
  bool no_compare = false;
  std::vector<int> f16_layers, k8_layers;
  tqkv::cli::KvTransformFlags tf;  // --smooth-keys, --scale-search, --sink-tokens
  std::string device = "cpu";  // cpu or cuda (the GPU runtime, include/tqkv/gpu_model.h)
  std::string center = "default";  // none, keys, values, kv, default (KvOptions' defaults)
  std::string emulate;
  bool per_layer = false;
};

int fail(const std::string& what, const tqkv::Status& st) {
  std::fprintf(stderr, "tqkv perplexity: %s: %s\n", what.c_str(), st.to_string().c_str());
  return 1;
}

// --device cuda: the same evaluation with the forward pass on the GPU runtime.
tqkv::Result<tqkv::PerplexityResult> perplexity_on_gpu(const tqkv::Model& model, const std::vector<int32_t>& ids,
                                                       const tqkv::PerplexityOptions& po,
                                                       const std::function<void(int, int)>& progress) {
#ifdef TQKV_HAVE_GPU_RUNTIME
  TQKV_RETURN_IF_ERROR(tqkv::gpu_available());
  TQKV_ASSIGN_OR_RETURN(auto gm, tqkv::GpuModel::from_gguf(model.gguf(), model.config()));
  return tqkv::gpu_evaluate_perplexity(*gm, ids, po, progress);
#else
  (void)model, (void)ids, (void)po, (void)progress;
  return tqkv::unsupported("--device cuda: this tqkv was built without the CUDA backend (configure with -DTQKV_CUDA=ON)");
#endif
}

int run(const Options& o) {
  auto fmt = tqkv::parse_kv_format(o.kv);
  if (!fmt.is_ok()) return fail("--kv", fmt.status());
  // Tokenize only what the chunks need (all of the text without --chunks).
  std::string what;
  auto in = tqkv::cli::load_text_eval_input(o.model, o.text, o.chunks > 0 ? static_cast<size_t>(o.chunks) * o.ctx * 16 : 0,
                                            "", &what);
  if (!in.is_ok()) return fail(what, in.status());

  tqkv::PerplexityOptions po;
  po.ctx = o.ctx;
  po.max_chunks = o.chunks;
  po.format = *fmt;
  po.compare_f16 = !o.no_compare;
  po.f16_layers = o.f16_layers;
  po.k8_layers = o.k8_layers;
  if (o.device != "cpu" && !o.k8_layers.empty())
    return fail("--k8-layers", tqkv::unsupported("per-layer 8-bit keys are implemented by the CPU runtime only"));
  po.bos_id = in->tok->add_bos() ? in->tok->bos_id() : -1;
  o.tf.apply_to(po);
  // Default: keys centered (docs/formats.md, "Key centering"), on the CPU and the GPU runtime;
  // value centering is implemented by the CPU runtime only.
  const std::string center = o.center != "default" ? o.center : "keys";
  if (o.device != "cpu" && center != "none" && center != "keys")
    return fail("--center", tqkv::unsupported("value centering is implemented by the CPU runtime only"));
  po.center_keys = center == "keys" || center == "kv";
  po.center_values = center == "values" || center == "kv";
  if (o.device != "cpu" && !o.emulate.empty())
    return fail("--emulate", tqkv::unsupported("this evaluation runs on the CPU runtime only"));
  po.emulate = o.emulate;
  po.per_layer = o.per_layer;
  if (!o.emulate.empty()) po.format = tqkv::KvFormat{16, 16};  // --emulate stores into an f16 cache; --kv is ignored
  auto progress = [&](int done, int total) {
    const int width = 30, fill = done * width / total;
    std::fprintf(stderr, "\r  [%.*s%*s] %d/%d chunks", fill, "==============================", width - fill, "",
                 done, total);
    if (done == total) std::fprintf(stderr, "\n");
  };
  auto r = o.device == "cuda" ? perplexity_on_gpu(*in->model, in->ids, po, progress)
                              : tqkv::evaluate_perplexity(*in->model, in->ids, po, progress);
  if (!r.is_ok()) return fail("perplexity", r.status());
  if (o.as_json) {
    json j;
    j["model"] = o.model;
    j["kv"] = o.kv;
    j["ctx"] = o.ctx;
    j["chunks"] = r->chunks;
    j["scored_tokens"] = r->scored;
    j["ppl"] = r->ppl;
    j["nll_mean"] = r->nll_mean;
    if (r->compared) {
      j["f16_ppl"] = r->f16_ppl;
      j["kld_mean"] = r->kld_mean;
      j["kld_p99"] = r->kld_p99;
      j["kld_max"] = r->kld_max;
      j["top1_agreement"] = r->top1_agreement;
    }
    j["kv_bytes"] = r->kv_bytes;
    j["kv_bytes_f16"] = r->kv_f16_bytes;
    j["seconds"] = r->seconds;
    j["center_keys"] = po.center_keys;
    j["center_values"] = po.center_values;
    j["smooth_keys"] = po.smooth_keys;
    j["scale_search"] = po.scale_search;
    j["sink_tokens"] = po.sink_tokens;
    j["recent_tokens"] = po.recent_tokens;
    if (!po.emulate.empty()) j["emulate"] = po.emulate;
    if (!r->layers.empty()) {
      j["codec_k_rel_mse"] = r->codec_k_rel_mse;
      j["codec_v_rel_mse"] = r->codec_v_rel_mse;
      json layers = json::array();
      for (const auto& e : r->layers)
        layers.push_back({{"layer", e.layer}, {"compressed", e.compressed}, {"k_rel_mse", e.k_rel_mse},
                          {"v_rel_mse", e.v_rel_mse}, {"k_rel_mse_vec", e.k_rel_mse_vec},
                          {"v_rel_mse_vec", e.v_rel_mse_vec}, {"k_mean_energy", e.k_mean_energy},
                          {"v_mean_energy", e.v_mean_energy}, {"att_rel_err", e.att_rel_err}});
      j["layers"] = layers;
    }
    std::printf("%s\n", j.dump(2).c_str());
  } else {
    std::printf("%s  ctx %d, %d chunks, %lld predictions scored\n", o.kv.c_str(), o.ctx, r->chunks,
                static_cast<long long>(r->scored));
    std::printf("  perplexity %.4f\n", r->ppl);
    if (r->compared)
      std::printf("  f16 perplexity %.4f | KLD vs f16: mean %.5f, p99 %.5f, max %.4f | top-1 agreement %.2f%%\n",
                  r->f16_ppl, r->kld_mean, r->kld_p99, r->kld_max, 100.0 * r->top1_agreement);
    std::printf("  KV cache per chunk %.1f KiB (f16: %.1f KiB) | %.1f s\n", r->kv_bytes / 1024.0,
                r->kv_f16_bytes / 1024.0, r->seconds);
    if (!r->layers.empty()) {
      std::printf("  codec on random vectors: K rel MSE %.5f, V rel MSE %.5f\n", r->codec_k_rel_mse,
                  r->codec_v_rel_mse);
      std::printf("  layer  K relMSE (per vec)   V relMSE (per vec)   |mean K|^2  |mean V|^2  attn out rel err\n");
      for (const auto& e : r->layers)
        std::printf("  %5d%s %.5f (%.5f)    %.5f (%.5f)    %.4f      %.4f      %.3e\n", e.layer,
                    e.compressed ? " " : "*", e.k_rel_mse, e.k_rel_mse_vec, e.v_rel_mse, e.v_rel_mse_vec,
                    e.k_mean_energy, e.v_mean_energy, e.att_rel_err);
      std::printf("  (* = layer kept in f16; |mean|^2 is the share of the vectors' energy in their per-head mean)\n");
      if (o.device == "cuda")
        std::printf("  (--device cuda: the attention error is measured from the GPU run; the K/V columns are CPU-only: nan)\n");
    }
  }
  return 0;
}

tqkv::cli::RunFn setup(CLI::App& sub) {
  auto o = std::make_shared<Options>();
  sub.add_option("--model,-m", o->model, "GGUF model file")->required();
  sub.add_option("--text,-f", o->text, "UTF-8 text file")->required();
  sub.add_option("--ctx,-c", o->ctx, "Tokens per chunk (default 512)")->check(CLI::Range(16, 1 << 20));
  sub.add_option("--kv", o->kv, "KV cache format: f16, k8v8, k8v4, k4v4, k4v3, k3v3, k2v2 (default k4v4)");
  sub.add_option("--chunks", o->chunks, "Evaluate at most this many chunks (default: all)");
  sub.add_option("--f16-layers", o->f16_layers, "Layers that keep an f16 cache (negative counts from the end), e.g. 0,-1")
      ->delimiter(',')->allow_extra_args(false);
  sub.add_option("--k8-layers", o->k8_layers, "Layers that keep 8-bit keys (negative counts from the end), e.g. 11")
      ->delimiter(',')->allow_extra_args(false);
  sub.add_flag("--no-compare", o->no_compare, "Do not run the f16 comparison");
  o->tf.add_to(sub, /*sinks_per_chunk=*/true);
  sub.add_option("--center", o->center,
                 "Exact centering before quantization: keys (default), none, values, kv (values: CPU only)")
      ->check(CLI::IsMember({"default", "none", "keys", "values", "kv"}));
  sub.add_option("--emulate", o->emulate,
                 "Evaluation only: q4_0h = llama.cpp's Hadamard-rotated q4_0 KV cache (4.5 bits), emulated in an f16 cache")
      ->check(CLI::IsMember({"q4_0h"}));
  sub.add_flag("--per-layer", o->per_layer,
               "Per-layer diagnostics: reconstruction error of the cache's K and V (CPU), attention output error vs fp32 "
               "(CPU and GPU)");
  sub.add_flag("--json", o->as_json, "Print machine-readable JSON");
  sub.add_option("--device", o->device, "cpu (default) or cuda (the GPU runtime; needs a CUDA build and a GPU)")
      ->check(CLI::IsMember({"cpu", "cuda"}));
  return [o] { return run(*o); };
}

tqkv::cli::CommandRegistrar reg("perplexity", "Perplexity of a text, and KL divergence of a compressed KV cache against f16", &setup);

}  // namespace
