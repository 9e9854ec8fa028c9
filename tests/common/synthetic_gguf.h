// Tiny random-weight GGUF models of every supported architecture, written in memory with the test
// GGUF writer: the shared builder of tests/model (against the reference forward) and tests/gpu
// (GPU runtime against the CPU runtime). Test-only, header-only.
#pragma once

#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "gguf/gguf_writer.h"
#include "tqkv/weights.h"

namespace tqkv::testing {

struct SyntheticSpec {
  std::string arch;
  int n_embd, n_layer, n_head, n_head_kv, head_dim, n_ff, vocab = 96;
  bool tied = true;
  bool rope_freqs = false;
  int window = 0;
  float attn_softcap = 0, final_softcap = 0;
  GgmlType wtype = GgmlType::kF32;  // type of the big matrices
  float k_bias = 0.0f;  // qwen2: mean of the K bias (a large common key component, as in real models)
};

class SyntheticBuilder {
 public:
  explicit SyntheticBuilder(uint64_t seed) : rng_(seed) {}
  tqkv::GgufWriter w;

  std::vector<float> rand_vec(int64_t n, float scale, float offset = 0.0f) {
    std::normal_distribution<float> nd(0.0f, 1.0f);
    std::vector<float> v(static_cast<size_t>(n));
    for (float& x : v) x = offset + scale * nd(rng_);
    return v;
  }
  void add(const std::string& name, GgmlType t, std::vector<int64_t> dims, const std::vector<float>& v) {
    std::vector<uint8_t> bytes;
    const int64_t cols = dims[0], rows = static_cast<int64_t>(v.size()) / cols;
    const int64_t rb = static_cast<int64_t>(tqkv::ggml_row_bytes(t, cols));
    bytes.resize(static_cast<size_t>(rb * rows));
    for (int64_t r = 0; r < rows; ++r) {
      auto st = tqkv::quantize_row_reference(t, v.data() + r * cols, bytes.data() + r * rb, cols);
      ASSERT_TRUE(st.is_ok()) << st.to_string();
    }
    auto st = w.add_tensor(name, t, std::move(dims), bytes);
    ASSERT_TRUE(st.is_ok()) << st.to_string();
  }
  void mat(const std::string& name, GgmlType t, int64_t rows, int64_t cols) {
    add(name, t, {cols, rows}, rand_vec(rows * cols, 1.0f / std::sqrt(static_cast<float>(cols))));
  }
  void vec(const std::string& name, int64_t n, float offset = 1.0f) {
    add(name, GgmlType::kF32, {n}, rand_vec(n, 0.1f, offset));
  }

 private:
  std::mt19937_64 rng_;
};

inline std::vector<uint8_t> build_synthetic_gguf(const SyntheticSpec& s, uint64_t seed) {
  SyntheticBuilder b(seed);
  auto& w = b.w;
  const std::string a = s.arch;
  w.add_string("general.architecture", a);
  w.add_u32(a + ".embedding_length", s.n_embd);
  w.add_u32(a + ".block_count", s.n_layer);
  w.add_u32(a + ".attention.head_count", s.n_head);
  w.add_u32(a + ".attention.head_count_kv", s.n_head_kv);
  w.add_u32(a + ".attention.key_length", s.head_dim);
  w.add_u32(a + ".attention.value_length", s.head_dim);
  w.add_u32(a + ".feed_forward_length", s.n_ff);
  w.add_u32(a + ".context_length", 256);
  w.add_u32(a + ".rope.dimension_count", s.head_dim);
  w.add_f32(a + ".rope.freq_base", 500.0f);  // small base: every pair rotates visibly in a few steps
  w.add_f32(a + ".attention.layer_norm_rms_epsilon", 1e-6f);
  if (s.window > 0) w.add_u32(a + ".attention.sliding_window", s.window);
  if (s.attn_softcap > 0) w.add_f32(a + ".attn_logit_softcapping", s.attn_softcap);
  if (s.final_softcap > 0) w.add_f32(a + ".final_logit_softcapping", s.final_softcap);
  const int64_t E = s.n_embd, Q = s.n_head * s.head_dim, KV = s.n_head_kv * s.head_dim, F = s.n_ff;
  b.mat("token_embd.weight", GgmlType::kF32, s.vocab, E);
  if (!s.tied) b.mat("output.weight", s.wtype, s.vocab, E);
  b.vec("output_norm.weight", E);
  if (s.rope_freqs) b.add("rope_freqs.weight", GgmlType::kF32, {s.head_dim / 2}, b.rand_vec(s.head_dim / 2, 0.5f, 2.0f));
  const bool gemma = a == "gemma2" || a == "gemma3";
  for (int l = 0; l < s.n_layer; ++l) {
    const std::string p = "blk." + std::to_string(l) + ".";
    b.vec(p + "attn_norm.weight", E);
    b.vec(p + "ffn_norm.weight", E);
    if (a == "phi3") {
      b.mat(p + "attn_qkv.weight", s.wtype, Q + 2 * KV, E);
      b.mat(p + "ffn_up.weight", s.wtype, 2 * F, E);
    } else {
      b.mat(p + "attn_q.weight", s.wtype, Q, E);
      b.mat(p + "attn_k.weight", s.wtype, KV, E);
      b.mat(p + "attn_v.weight", s.wtype, KV, E);
      b.mat(p + "ffn_gate.weight", s.wtype, F, E);
      b.mat(p + "ffn_up.weight", s.wtype, F, E);
    }
    if (a == "qwen2") {
      b.vec(p + "attn_q.bias", Q, 0.0f);
      b.vec(p + "attn_k.bias", KV, s.k_bias);
      b.vec(p + "attn_v.bias", KV, 0.0f);
    }
    if (a == "gemma3") {
      b.vec(p + "attn_q_norm.weight", s.head_dim);
      b.vec(p + "attn_k_norm.weight", s.head_dim);
    }
    if (gemma) {
      b.vec(p + "post_attention_norm.weight", E);
      b.vec(p + "post_ffw_norm.weight", E);
    }
    b.mat(p + "attn_output.weight", s.wtype, E, Q);
    b.mat(p + "ffn_down.weight", s.wtype, E, F);
  }
  return w.finish();
}

}  // namespace tqkv::testing
