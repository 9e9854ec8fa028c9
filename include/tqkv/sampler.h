// Next-token sampling from logits: greedy, or temperature with top-k, top-p and min-p filters,
// and a repetition penalty over recent tokens. Seeded, so a run is reproducible.
//
// Order (as llama.cpp's default chain): repetition penalty -> top-k -> softmax at temperature ->
// top-p -> min-p -> draw. temperature <= 0 means greedy (argmax after the penalty).
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <vector>

#include "tqkv/status.h"

namespace tqkv {

struct SamplerOptions {
  float temperature = 0.0f;      // <= 0: greedy
  int top_k = 40;                // <= 0: off
  float top_p = 0.95f;           // >= 1: off
  float min_p = 0.05f;           // <= 0: off; keep tokens with p >= min_p * p_max
  float repeat_penalty = 1.0f;   // 1: off; > 1 divides positive logits (multiplies negative ones)
  int repeat_last_n = 64;        // how many recent tokens the penalty looks at
  uint64_t seed = 0;
};

class Sampler {
 public:
  static Result<Sampler> create(const SamplerOptions& opt);
  // Picks a token from logits [n_vocab]; `recent` is the context so far (for the penalty).
  // Never fails on finite logits; NaN logits are treated as -inf.
  int32_t sample(std::span<const float> logits, std::span<const int32_t> recent);
  const SamplerOptions& options() const { return opt_; }
  // Plain argmax, first index on ties (greedy without a repetition penalty): a backend's own argmax
  // gives the same token.
  bool is_plain_greedy() const {
    return opt_.temperature <= 0.0f && (opt_.repeat_penalty == 1.0f || opt_.repeat_last_n <= 0);
  }

 private:
  explicit Sampler(const SamplerOptions& opt) : opt_(opt), rng_(opt.seed) {}
  SamplerOptions opt_;
  std::mt19937_64 rng_;
  std::vector<float> work_;
  std::vector<int32_t> order_;
};

}  // namespace tqkv
