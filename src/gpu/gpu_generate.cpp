// Generation and perplexity over the GPU runtime: the loops of src/model/generate.cpp and
// src/model/perplexity.cpp with the forward pass on the device (sampling and scoring on the host).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <vector>

#include "tqkv/gpu_model.h"

namespace tqkv {

GpuContextOptions gpu_context_options(const KvOptions& kv, int max_seqs) {
  GpuContextOptions co;
  co.format = kv.format;
  co.f16_layers = kv.f16_layers;
  co.max_seqs = max_seqs;
  co.max_tokens = kv.max_tokens;
  co.center_keys = kv.center_keys;
  co.smooth_keys = kv.smooth_keys;
  co.scale_search = kv.scale_search;
  co.sink_tokens = kv.sink_tokens;
  co.recent_tokens = kv.recent_tokens;
  return co;
}

Result<GenerateStats> gpu_generate(const GpuModel& model, const Tokenizer& tok, const KvOptions& kv,
                                   const std::vector<int32_t>& prompt, const GenerateOptions& opt,
                                   const std::function<void(int32_t)>& on_token) {
  if (prompt.empty()) return invalid_argument("generate: empty prompt");
  if (!kv.k8_layers.empty()) return unsupported("generate: per-layer 8-bit keys are implemented by the CPU runtime only");
  if (kv.center_values) return unsupported("generate: value centering is implemented by the CPU runtime only");
  if (!kv.emulate.empty()) return unsupported("generate: --emulate is implemented by the CPU runtime only");
  TQKV_ASSIGN_OR_RETURN(auto ctx, GpuContext::create(model, gpu_context_options(kv, 1)));
  auto prefill = [&](float* logits) {
    return ctx->prefill(0, prompt.data(), static_cast<int>(prompt.size()), logits, LogitsMode::kLast);
  };
  auto step = [&](int32_t id, int64_t /*pos: the context tracks it*/, float* logits) {
    return ctx->decode(&id, 1, logits, nullptr);
  };
  TQKV_ASSIGN_OR_RETURN(GenerateStats st,
                        run_generation_loop(tok, model.config().n_vocab, prompt, opt, prefill, step, on_token));
  st.kv_bytes = ctx->kv_bytes_per_seq(ctx->seq_len(0));
  st.kv_f16_bytes = gpu_kv_bytes_per_seq(model.config(), KvFormat{16, 16}, {}, ctx->seq_len(0));
  return st;
}

Result<PerplexityResult> gpu_evaluate_perplexity(const GpuModel& model, const std::vector<int32_t>& tokens,
                                                 const PerplexityOptions& opt,
                                                 const std::function<void(int, int)>& progress) {
  if (opt.ctx < 16) return invalid_argument("perplexity: --ctx must be at least 16");
  if (opt.center_values) return unsupported("perplexity: value centering is implemented by the CPU runtime only");
  if (!opt.k8_layers.empty()) return unsupported("perplexity: per-layer 8-bit keys are implemented by the CPU runtime only");
  if (!opt.emulate.empty()) return unsupported("perplexity: --emulate is implemented by the CPU runtime only");
  const int64_t avail = static_cast<int64_t>(tokens.size()) / opt.ctx;
  if (avail < 1)
    return invalid_argument("perplexity: the text has " + std::to_string(tokens.size()) +
                            " tokens, fewer than one chunk of " + std::to_string(opt.ctx));
  const int chunks = static_cast<int>(opt.max_chunks > 0 ? std::min<int64_t>(opt.max_chunks, avail) : avail);
  const bool compare = opt.compare_f16 && !(opt.format.k_bits == 16 && opt.format.v_bits == 16);
  const int V = model.config().n_vocab;
  constexpr int kChunk = 128;

  GpuContextOptions co;
  co.format = opt.format;
  co.f16_layers = opt.f16_layers;
  co.max_seqs = 1;
  co.max_tokens = opt.ctx;
  co.max_chunk = kChunk;
  co.center_keys = opt.center_keys;
  co.smooth_keys = opt.smooth_keys;
  co.scale_search = opt.scale_search;
  co.sink_tokens = opt.sink_tokens;
  co.recent_tokens = opt.recent_tokens;
  TQKV_ASSIGN_OR_RETURN(auto kv, GpuContext::create(model, co));
  if (opt.per_layer) TQKV_RETURN_IF_ERROR(kv->set_attention_probe(0));  // measured from this run
  std::unique_ptr<GpuContext> kv_ref;
  if (compare) {
    GpuContextOptions cr = co;
    cr.format = KvFormat{16, 16};
    TQKV_ASSIGN_OR_RETURN(kv_ref, GpuContext::create(model, cr));
  }

  const auto t0 = std::chrono::steady_clock::now();
  PerplexityResult r;
  NextTokenScorer scorer(V);
  std::vector<float> la(static_cast<size_t>(kChunk) * V), lb(compare ? la.size() : 0);
  const int first_scored = opt.ctx / 2;
  for (int c = 0; c < chunks; ++c) {
    std::vector<int32_t> ids(tokens.begin() + static_cast<int64_t>(c) * opt.ctx,
                             tokens.begin() + static_cast<int64_t>(c + 1) * opt.ctx);
    if (opt.bos_id >= 0) ids[0] = opt.bos_id;
    TQKV_RETURN_IF_ERROR(kv->reset(0));
    if (compare) TQKV_RETURN_IF_ERROR(kv_ref->reset(0));
    for (int b = 0; b < opt.ctx; b += kChunk) {
      const int m = std::min(kChunk, opt.ctx - b);
      TQKV_RETURN_IF_ERROR(kv->prefill(0, ids.data() + b, m, la.data(), LogitsMode::kAll));
      if (compare) TQKV_RETURN_IF_ERROR(kv_ref->prefill(0, ids.data() + b, m, lb.data(), LogitsMode::kAll));
      for (int i = 0; i < m; ++i) {
        const int p = b + i;
        if (p < first_scored || p + 1 >= opt.ctx) continue;
        scorer.add(la.data() + static_cast<int64_t>(i) * V, compare ? lb.data() + static_cast<int64_t>(i) * V : nullptr,
                   ids[p + 1]);
      }
    }
    r.kv_bytes = kv->kv_bytes_per_seq(kv->seq_len(0));
    r.kv_f16_bytes = gpu_kv_bytes_per_seq(model.config(), KvFormat{16, 16}, {}, kv->seq_len(0));
    if (progress) progress(c + 1, chunks);
  }
  r.chunks = chunks;
  scorer.finish(r);
  if (opt.per_layer) {
    r.layers = kv->attention_probe_result();
    r.codec_k_rel_mse = r.codec_v_rel_mse = std::numeric_limits<double>::quiet_NaN();  // not measured here
  }
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

}  // namespace tqkv
