// The one forward pass for every architecture (ModelConfig's flags select the differences).
// Activations are row-major [n tokens][features] fp32; each matrix product runs over the whole
// chunk at once (src/quant matmul: each weight tile is dequantized once per chunk).
#include <algorithm>
#include <cmath>
#include <vector>

#include "model/model_weights.h"

namespace tqkv {

Status apply_matrix(const WeightMatrix& w, const float* x, int64_t n_vec, float* y) {
  if (n_vec == 1) return matvec(w.type, w.data, w.rows, w.cols, x, y);
  return matmul(w.type, w.data, w.rows, w.cols, x, n_vec, y);
}

std::vector<float> rope_inv_freq(int n_rot, float base, const std::vector<float>& factors) {
  std::vector<float> inv(static_cast<size_t>(n_rot / 2));
  for (int i = 0; i < n_rot / 2; ++i) {
    double f = std::pow(static_cast<double>(base), -2.0 * i / n_rot);
    if (!factors.empty()) f /= factors[i];
    inv[i] = static_cast<float>(f);
  }
  return inv;
}

void apply_rope(float* x, int n_heads, int head_dim, int n_rot, RopeStyle style, int64_t pos,
                const float* inv_freq) {
  const int half = n_rot / 2;
  // Angles in double: at position 8K and beyond, a float product loses the low bits of the phase.
  float cs[256], sn[256];
  for (int i = 0; i < half; ++i) {
    const double a = static_cast<double>(pos) * inv_freq[i];
    cs[i] = static_cast<float>(std::cos(a));
    sn[i] = static_cast<float>(std::sin(a));
  }
  for (int h = 0; h < n_heads; ++h) {
    float* v = x + static_cast<int64_t>(h) * head_dim;
    for (int i = 0; i < half; ++i) {
      const int a = style == RopeStyle::kAdjacent ? 2 * i : i;
      const int b = style == RopeStyle::kAdjacent ? 2 * i + 1 : i + half;
      const float x0 = v[a], x1 = v[b];
      v[a] = x0 * cs[i] - x1 * sn[i];
      v[b] = x0 * sn[i] + x1 * cs[i];
    }
  }
}

namespace {

// y = x / rms(x) * w over n rows of d. In place allowed.
void rms_norm_rows(const float* x, const float* w, int64_t n, int d, float eps, float* y) {
  for (int64_t r = 0; r < n; ++r) {
    const float* xr = x + r * d;
    float* yr = y + r * d;
    double ss = 0.0;
    for (int i = 0; i < d; ++i) ss += static_cast<double>(xr[i]) * xr[i];
    const float inv = static_cast<float>(1.0 / std::sqrt(ss / d + eps));
    for (int i = 0; i < d; ++i) yr[i] = xr[i] * inv * w[i];
  }
}

float gelu_tanh(float x) {
  const float k = 0.7978845608028654f;  // sqrt(2/pi)
  return 0.5f * x * (1.0f + std::tanh(k * (x + 0.044715f * x * x * x)));
}
float silu(float x) { return x / (1.0f + std::exp(-x)); }

}  // namespace

Status Model::forward(const int32_t* tokens, int n, int64_t pos0, KvBackend& kv, float* logits,
                      LogitsMode mode) const {
  if (n <= 0) return invalid_argument("forward: no tokens");
  if (tokens == nullptr || logits == nullptr) return invalid_argument("forward: null pointer");
  for (int i = 0; i < n; ++i)
    if (tokens[i] < 0 || tokens[i] >= cfg_.n_vocab)
      return out_of_range("forward: token id " + std::to_string(tokens[i]) + " outside the vocabulary");
  for (int done = 0; done < n;) {
    const int m = std::min(kMaxChunk, n - done);
    const bool last = done + m == n;
    if (mode == LogitsMode::kAll) {
      TQKV_RETURN_IF_ERROR(forward_chunk(tokens + done, m, pos0 + done, kv,
                                         logits + static_cast<int64_t>(done) * cfg_.n_vocab, mode));
    } else {
      // Only the final chunk's last row is wanted; earlier chunks skip the output layer.
      TQKV_RETURN_IF_ERROR(forward_chunk(tokens + done, m, pos0 + done, kv, last ? logits : nullptr, mode));
    }
    done += m;
  }
  return Status::ok();
}

Status Model::forward_batch(const BatchSegment* segs, int count, float* logits) const {
  if (count <= 0 || segs == nullptr || logits == nullptr) return invalid_argument("forward_batch: no segments");
  int total = 0;
  for (int i = 0; i < count; ++i) {
    const BatchSegment& sg = segs[i];
    if (sg.n <= 0 || sg.n > kMaxChunk || sg.tokens == nullptr || sg.kv == nullptr)
      return invalid_argument("forward_batch: each segment needs 1.." + std::to_string(kMaxChunk) + " tokens and a cache");
    for (int j = 0; j < sg.n; ++j)
      if (sg.tokens[j] < 0 || sg.tokens[j] >= cfg_.n_vocab)
        return out_of_range("forward_batch: token id " + std::to_string(sg.tokens[j]) + " outside the vocabulary");
    for (int k = 0; k < i; ++k)
      if (segs[k].kv == sg.kv) return invalid_argument("forward_batch: two segments share one cache");
    total += sg.n;
  }
  return forward_rows(segs, count, total, logits, LogitsMode::kLast);
}

Status Model::forward_chunk(const int32_t* tokens, int n, int64_t pos0, KvBackend& kv, float* logits,
                            LogitsMode mode) const {
  const BatchSegment seg{tokens, n, pos0, &kv};
  return forward_rows(&seg, 1, n, logits, mode);
}

// The rows of every segment go through the weights together (one matrix product per layer); RoPE
// and attention take each segment's own positions and cache. Logits: kLast = the last row of each
// segment ([count][n_vocab]); kAll (one segment) = every row.
Status Model::forward_rows(const BatchSegment* segs, int count, int total, float* logits, LogitsMode mode) const {
  const ModelConfig& c = cfg_;
  const Weights& w = *w_;
  const int E = c.n_embd, Q = c.q_dim(), KV = c.kv_dim(), F = c.n_ff, D = c.head_dim;
  const int64_t N = total;
  std::vector<int32_t> tok_rows(N);
  std::vector<int64_t> pos_rows(N);
  for (int i = 0, r = 0; i < count; ++i)
    for (int j = 0; j < segs[i].n; ++j, ++r) {
      tok_rows[r] = segs[i].tokens[j];
      pos_rows[r] = segs[i].pos0 + j;
    }
  const int32_t* tokens = tok_rows.data();

  std::vector<float> x(N * E), h(N * E), q(N * Q), k(N * KV), v(N * KV), att(N * Q), o(N * E);
  std::vector<float> qkv(c.fused_qkv ? N * (Q + 2 * KV) : 0);
  std::vector<float> g(N * F), u(N * (c.fused_gate_up ? 2 * F : F));

  for (int64_t i = 0; i < N; ++i) {
    const uint64_t row_bytes = ggml_row_bytes(w.tok_embd.type, E);
    TQKV_RETURN_IF_ERROR(dequantize_row(w.tok_embd.type, w.tok_embd.data + tokens[i] * row_bytes,
                                        x.data() + i * E, E));
  }
  if (c.embed_scale) {
    const float s = std::sqrt(static_cast<float>(E));
    for (float& e : x) e *= s;
  }

  for (int l = 0; l < c.n_layer; ++l) {
    const LayerWeights& L = w.layers[l];
    const bool sliding = c.is_sliding(l);
    rms_norm_rows(x.data(), L.attn_norm.data(), N, E, c.rms_eps, h.data());
    if (c.fused_qkv) {
      TQKV_RETURN_IF_ERROR(apply_matrix(L.wqkv, h.data(), N, qkv.data()));
      for (int64_t i = 0; i < N; ++i) {
        const float* r = qkv.data() + i * (Q + 2 * KV);
        std::copy(r, r + Q, q.data() + i * Q);
        std::copy(r + Q, r + Q + KV, k.data() + i * KV);
        std::copy(r + Q + KV, r + Q + 2 * KV, v.data() + i * KV);
      }
    } else {
      TQKV_RETURN_IF_ERROR(apply_matrix(L.wq, h.data(), N, q.data()));
      TQKV_RETURN_IF_ERROR(apply_matrix(L.wk, h.data(), N, k.data()));
      TQKV_RETURN_IF_ERROR(apply_matrix(L.wv, h.data(), N, v.data()));
    }
    if (c.qkv_bias) {
      for (int64_t i = 0; i < N; ++i) {
        for (int j = 0; j < Q; ++j) q[i * Q + j] += L.bq[j];
        for (int j = 0; j < KV; ++j) k[i * KV + j] += L.bk[j];
        for (int j = 0; j < KV; ++j) v[i * KV + j] += L.bv[j];
      }
    }
    if (c.qk_norm) {
      rms_norm_rows(q.data(), L.q_norm.data(), N * c.n_head, D, c.rms_eps, q.data());
      rms_norm_rows(k.data(), L.k_norm.data(), N * c.n_head_kv, D, c.rms_eps, k.data());
    }
    const float* inv = sliding ? rope_inv_freq_local_.data() : rope_inv_freq_global_.data();
    for (int64_t i = 0; i < N; ++i) {
      apply_rope(q.data() + i * Q, c.n_head, D, c.n_rot, c.rope_style, pos_rows[i], inv);
      apply_rope(k.data() + i * KV, c.n_head_kv, D, c.n_rot, c.rope_style, pos_rows[i], inv);
    }
    LayerAttention la;
    la.layer = l;
    la.scale = c.attn_scale;
    la.softcap = c.attn_softcap;
    la.window = sliding ? c.sliding_window : 0;
    for (int i = 0, r = 0; i < count; r += segs[i].n, ++i)
      TQKV_RETURN_IF_ERROR(segs[i].kv->attend(la, segs[i].pos0, segs[i].n, q.data() + int64_t{r} * Q,
                                              k.data() + int64_t{r} * KV, v.data() + int64_t{r} * KV,
                                              att.data() + int64_t{r} * Q));
    TQKV_RETURN_IF_ERROR(apply_matrix(L.wo, att.data(), N, o.data()));
    if (c.post_norms) rms_norm_rows(o.data(), L.post_attn_norm.data(), N, E, c.rms_eps, o.data());
    for (int64_t j = 0; j < N * E; ++j) x[j] += o[j];

    rms_norm_rows(x.data(), L.ffn_norm.data(), N, E, c.rms_eps, h.data());
    if (c.fused_gate_up) {
      TQKV_RETURN_IF_ERROR(apply_matrix(L.up, h.data(), N, u.data()));
      // Rows [gate; up]: split each token's 2F outputs into g (first F) and u (compacted in place).
      for (int64_t i = 0; i < N; ++i) {
        std::copy(u.data() + i * 2 * F, u.data() + i * 2 * F + F, g.data() + i * F);
        std::copy(u.data() + i * 2 * F + F, u.data() + (i + 1) * 2 * F, u.data() + i * F);
      }
    } else {
      TQKV_RETURN_IF_ERROR(apply_matrix(L.gate, h.data(), N, g.data()));
      TQKV_RETURN_IF_ERROR(apply_matrix(L.up, h.data(), N, u.data()));
    }
    for (int64_t j = 0; j < N * F; ++j)
      g[j] = (c.act == Activation::kSilu ? silu(g[j]) : gelu_tanh(g[j])) * u[j];
    TQKV_RETURN_IF_ERROR(apply_matrix(L.down, g.data(), N, o.data()));
    if (c.post_norms) rms_norm_rows(o.data(), L.post_ffn_norm.data(), N, E, c.rms_eps, o.data());
    for (int64_t j = 0; j < N * E; ++j) x[j] += o[j];
  }

  if (logits == nullptr) return Status::ok();
  int64_t rows = N;
  if (mode == LogitsMode::kAll) {
    rms_norm_rows(x.data(), w.output_norm.data(), rows, E, c.rms_eps, h.data());
  } else {  // the last row of each segment
    rows = count;
    for (int i = 0, r = 0; i < count; ++i) {
      r += segs[i].n;
      rms_norm_rows(x.data() + int64_t{r - 1} * E, w.output_norm.data(), 1, E, c.rms_eps, h.data() + int64_t{i} * E);
    }
  }
  TQKV_RETURN_IF_ERROR(apply_matrix(w.output, h.data(), rows, logits));
  if (c.final_softcap > 0.0f) {
    const float cap = c.final_softcap;
    for (int64_t j = 0; j < rows * c.n_vocab; ++j) logits[j] = cap * std::tanh(logits[j] / cap);
  }
  return Status::ok();
}

}  // namespace tqkv
