// The generation loop and the perplexity / KL-divergence evaluation, over a Model and a KvBackend.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "tqkv/model.h"
#include "tqkv/sampler.h"
#include "tqkv/tokenizer.h"

namespace tqkv {

struct GenerateOptions {
  int max_new_tokens = 128;
  SamplerOptions sampler;
  bool stop_at_eog = true;  // stop at the tokenizer's end-of-generation tokens
};

struct GenerateStats {
  int prompt_tokens = 0;
  int generated = 0;
  double prefill_seconds = 0, decode_seconds = 0;
  double prefill_tok_s() const { return prefill_seconds > 0 ? prompt_tokens / prefill_seconds : 0; }
  // Decode speed counts the tokens whose forward pass ran after prefill (generated - 1).
  double decode_tok_s() const { return decode_seconds > 0 && generated > 1 ? (generated - 1) / decode_seconds : 0; }
  int64_t kv_bytes = 0, kv_f16_bytes = 0;
  std::string stop_reason;  // "eog", "length"
  std::vector<int32_t> ids;  // generated ids
};

// Prefills `prompt` into `kv` (which must be empty) and samples up to max_new_tokens, calling
// on_token for each generated id as soon as it is chosen (the end-of-generation token is not
// passed on).
Result<GenerateStats> generate(const Model& model, const Tokenizer& tok, KvBackend& kv,
                               const std::vector<int32_t>& prompt, const GenerateOptions& opt,
                               const std::function<void(int32_t)>& on_token);

// The sampling loop every runtime shares: `prefill` runs the prompt and writes the logits of its
// last position ([n_vocab]); `step(id, pos, logits)` runs one token at position `pos`. Samples up
// to opt.max_new_tokens, calls on_token for each, stops at end-of-generation ids. Fills the
// counts, times, ids and stop reason; the caller fills the KV byte counts.
Result<GenerateStats> run_generation_loop(const Tokenizer& tok, int n_vocab, const std::vector<int32_t>& prompt,
                                          const GenerateOptions& opt, const std::function<Status(float*)>& prefill,
                                          const std::function<Status(int32_t, int64_t, float*)>& step,
                                          const std::function<void(int32_t)>& on_token);

struct PerplexityOptions {
  int ctx = 512;          // tokens per chunk; each chunk starts from an empty cache
  int max_chunks = 0;     // 0 = as many as the text holds
  KvFormat format;        // the cache under test
  std::vector<int> f16_layers;  // per-layer policy (KvOptions::f16_layers)
  std::vector<int> k8_layers;   // KvOptions::k8_layers (CPU runtime)
  bool compare_f16 = true;  // when format is not f16, also run an f16 cache and compare
  int32_t bos_id = -1;    // when >= 0, each chunk's first token is replaced by BOS (llama.cpp)
  // KvOptions' exact centering and evaluation-only emulation (include/tqkv/model.h).
  bool center_keys = KvOptions{}.center_keys;
  bool center_values = KvOptions{}.center_values;
  bool smooth_keys = KvOptions{}.smooth_keys;  // KvOptions::smooth_keys (CPU and GPU runtimes)
  int32_t sink_tokens = KvOptions{}.sink_tokens;  // KvOptions::sink_tokens (CPU runtime)
  int32_t recent_tokens = KvOptions{}.recent_tokens;  // KvOptions::recent_tokens (CPU and GPU runtimes)
  bool scale_search = KvOptions{}.scale_search;   // KvOptions::scale_search (CPU and GPU runtimes)
  std::string emulate;
  // Also measure, per layer, the reconstruction error of what the cache holds and the error of
  // the attention output against dense fp32 attention over the same q, k, v (slower).
  bool per_layer = false;
};

// Per-layer diagnostics (PerplexityOptions::per_layer), summed over every token of every chunk.
struct LayerKvError {
  int layer = 0;
  bool compressed = false;
  double k_rel_mse = 0, v_rel_mse = 0;          // sum |x - x~|^2 / sum |x|^2
  double k_rel_mse_vec = 0, v_rel_mse_vec = 0;  // mean over vectors of |x - x~|^2 / |x|^2
  double k_mean_energy = 0, v_mean_energy = 0;  // |mean vector|^2 / mean |x|^2, per KV head, averaged
  double att_rel_err = 0;                       // sum |o - o_ref|^2 / sum |o_ref|^2
};

struct PerplexityResult {
  int chunks = 0;
  int64_t scored = 0;       // predictions scored: the second half of each chunk (llama.cpp's rule)
  double nll_mean = 0, ppl = 0;
  bool compared = false;    // the fields below are set
  double f16_ppl = 0;
  double kld_mean = 0, kld_p99 = 0, kld_max = 0;  // KL(P_f16 || P_format) per scored position, nats
  double top1_agreement = 0;                       // fraction of positions with the same argmax
  int64_t kv_bytes = 0, kv_f16_bytes = 0;          // at the end of a chunk
  double seconds = 0;
  std::vector<LayerKvError> layers;                // per_layer only
  // per_layer only: the codec's relative MSE on random Gaussian vectors of the head size (what it
  // should give on any input after the rotation), for the K and V bit widths.
  double codec_k_rel_mse = 0, codec_v_rel_mse = 0;
};

// Scores next-token predictions: negative log-likelihood of the true next token and, when a
// reference run's logits over the same tokens are given, KL(P_ref || P) and top-1 agreement. The
// scoring of `evaluate_perplexity` and of the GPU runtime's perplexity loop.
class NextTokenScorer {
 public:
  explicit NextTokenScorer(int n_vocab) : n_vocab_(n_vocab) {}
  // logits, ref_logits: [n_vocab] at the position that predicts `next`; ref_logits may be null.
  void add(const float* logits, const float* ref_logits, int32_t next);
  // Sets scored, nll_mean, ppl and, when reference rows were added, compared, f16_ppl, kld_*,
  // top1_agreement.
  void finish(PerplexityResult& r) const;

 private:
  int n_vocab_;
  double nll_ = 0, nll_ref_ = 0;
  int64_t scored_ = 0, agree_ = 0;
  std::vector<double> klds_, lp_, lp_ref_;
};

Result<PerplexityResult> evaluate_perplexity(const Model& model, const std::vector<int32_t>& tokens,
                                             const PerplexityOptions& opt,
                                             const std::function<void(int done, int total)>& progress);

}  // namespace tqkv
