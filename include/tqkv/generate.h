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

struct PerplexityOptions {
  int ctx = 512;          // tokens per chunk; each chunk starts from an empty cache
  int max_chunks = 0;     // 0 = as many as the text holds
  KvFormat format;        // the cache under test
  std::vector<int> f16_layers;  // per-layer policy (KvOptions::f16_layers)
  bool compare_f16 = true;  // when format is not f16, also run an f16 cache and compare
  int32_t bos_id = -1;    // when >= 0, each chunk's first token is replaced by BOS (llama.cpp)
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
};

Result<PerplexityResult> evaluate_perplexity(const Model& model, const std::vector<int32_t>& tokens,
                                             const PerplexityOptions& opt,
                                             const std::function<void(int done, int total)>& progress);

}  // namespace tqkv
