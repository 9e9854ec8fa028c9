// The tensors of a loaded model, bound by name from the GGUF file (src/model/model_load.cpp).
// Matrices stay in the file's format and are read through src/quant (matvec at decode, matmul at
// prefill); small vectors (norms, biases) are dequantized to fp32 once at load.
#pragma once

#include <cstdint>
#include <vector>

#include "tqkv/model.h"

namespace tqkv {

// A 2-D weight: `rows` rows of `cols` elements of `type` (GGUF dims {cols, rows}); y = W x maps
// [cols] to [rows].
struct WeightMatrix {
  const uint8_t* data = nullptr;
  GgmlType type = GgmlType::kF32;
  int64_t rows = 0, cols = 0;
  bool present() const { return data != nullptr; }
};

struct LayerWeights {
  std::vector<float> attn_norm, ffn_norm;             // [n_embd]
  std::vector<float> post_attn_norm, post_ffn_norm;   // [n_embd] (post_norms)
  std::vector<float> q_norm, k_norm;                  // [head_dim] (qk_norm)
  std::vector<float> bq, bk, bv;                      // [q_dim], [kv_dim], [kv_dim] (qkv_bias)
  WeightMatrix wq, wk, wv;   // [q_dim x n_embd], [kv_dim x n_embd] x2 (unless fused_qkv)
  WeightMatrix wqkv;         // [(q_dim + 2 kv_dim) x n_embd] (fused_qkv)
  WeightMatrix wo;           // [n_embd x q_dim]
  WeightMatrix gate, up;     // [n_ff x n_embd]; up is [2 n_ff x n_embd] and gate absent when fused_gate_up
  WeightMatrix down;         // [n_embd x n_ff]
};

struct Model::Weights {
  WeightMatrix tok_embd;            // [n_vocab x n_embd]
  WeightMatrix output;              // [n_vocab x n_embd] (tok_embd when tied)
  std::vector<float> output_norm;   // [n_embd]
  std::vector<float> rope_freqs;    // [n_rot/2] frequency divisors, empty when absent
  std::vector<LayerWeights> layers;
};

// y[v][:] = W x[v][:] for v < n_vec (matvec when n_vec == 1). x: [n_vec][cols], y: [n_vec][rows].
Status apply_matrix(const WeightMatrix& w, const float* x, int64_t n_vec, float* y);

// RoPE inverse frequencies for one layer kind: inv[i] = base^(-2i/n_rot) / factor[i], i < n_rot/2.
std::vector<float> rope_inv_freq(int n_rot, float base, const std::vector<float>& factors);
// Rotates the first n_rot dims of each of n_heads heads of one token at position pos in place.
// x: [n_heads][head_dim].
void apply_rope(float* x, int n_heads, int head_dim, int n_rot, RopeStyle style, int64_t pos,
                const float* inv_freq);

}  // namespace tqkv
