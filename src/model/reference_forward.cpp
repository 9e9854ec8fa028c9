// A plain-loop reference forward pass, written apart from forward.cpp so that tests can check
// the runtime (chunking, KV backends, matmul kernels, RoPE tables) against it. Every weight is
// dequantized whole with the reference dequantizer; sums are in double; attention is dense over
// all positions with an explicit causal / sliding mask. Slow: for tiny test models.
#include <cmath>
#include <vector>

#include "tqkv/model.h"

namespace tqkv {

namespace {

using Vec = std::vector<double>;

Result<std::vector<float>> tensor(const GgufFile& g, const std::string& name) {
  TQKV_ASSIGN_OR_RETURN(const GgufTensorInfo* t, g.get_tensor(name));
  std::vector<float> out(static_cast<size_t>(t->num_elements()));
  const int64_t rows = t->num_rows(), cols = t->row_length();
  for (int64_t r = 0; r < rows; ++r)
    TQKV_RETURN_IF_ERROR(dequantize_row_reference(t->type, t->data + r * t->row_bytes(), out.data() + r * cols, cols));
  return out;
}

// y = W x, W [rows][cols] row-major.
Vec matvec_ref(const std::vector<float>& w, int64_t rows, int64_t cols, const Vec& x) {
  Vec y(static_cast<size_t>(rows), 0.0);
  for (int64_t r = 0; r < rows; ++r) {
    double s = 0;
    for (int64_t c = 0; c < cols; ++c) s += static_cast<double>(w[r * cols + c]) * x[c];
    y[r] = s;
  }
  return y;
}

Vec rms_norm_ref(const Vec& x, const std::vector<float>& w, double eps, size_t off = 0, size_t n = 0) {
  if (n == 0) n = x.size();
  double ss = 0;
  for (size_t i = 0; i < n; ++i) ss += x[off + i] * x[off + i];
  const double inv = 1.0 / std::sqrt(ss / static_cast<double>(n) + eps);
  Vec y(n);
  for (size_t i = 0; i < n; ++i) y[i] = x[off + i] * inv * w[i];
  return y;
}

// RoPE on one head (d values at x[off..]) at position pos.
void rope_ref(Vec& x, size_t off, const ModelConfig& c, int64_t pos, double base,
              const std::vector<float>& factors) {
  const int half = c.n_rot / 2;
  for (int i = 0; i < half; ++i) {
    double freq = std::pow(base, -2.0 * i / c.n_rot);
    if (!factors.empty()) freq /= factors[i];
    const double a = static_cast<double>(pos) * freq;
    const size_t p0 = off + (c.rope_style == RopeStyle::kAdjacent ? 2 * i : i);
    const size_t p1 = off + (c.rope_style == RopeStyle::kAdjacent ? 2 * i + 1 : i + half);
    const double x0 = x[p0], x1 = x[p1];
    x[p0] = x0 * std::cos(a) - x1 * std::sin(a);
    x[p1] = x0 * std::sin(a) + x1 * std::cos(a);
  }
}

}  // namespace

Result<std::vector<float>> reference_forward(const GgufFile& g, const ModelConfig& c,
                                             const std::vector<int32_t>& tokens) {
  const int64_t T = static_cast<int64_t>(tokens.size());
  const int64_t E = c.n_embd, D = c.head_dim, HQ = c.n_head, HK = c.n_head_kv, F = c.n_ff;
  const int64_t Q = HQ * D, KV = HK * D;
  TQKV_ASSIGN_OR_RETURN(std::vector<float> emb, tensor(g, "token_embd.weight"));
  std::vector<float> factors;
  if (c.has_rope_freqs) {
    TQKV_ASSIGN_OR_RETURN(factors, tensor(g, "rope_freqs.weight"));
  }
  std::vector<Vec> x(static_cast<size_t>(T), Vec(static_cast<size_t>(E)));
  for (int64_t t = 0; t < T; ++t) {
    if (tokens[t] < 0 || tokens[t] >= c.n_vocab) return out_of_range("reference_forward: bad token");
    for (int64_t i = 0; i < E; ++i) {
      // The runtime scales in fp32; do the same so the reference sees identical inputs.
      float e = emb[tokens[t] * E + i];
      if (c.embed_scale) e *= std::sqrt(static_cast<float>(E));
      x[t][i] = e;
    }
  }
  for (int l = 0; l < c.n_layer; ++l) {
    const std::string p = "blk." + std::to_string(l) + ".";
    auto get = [&](const std::string& n) { return tensor(g, p + n); };
    TQKV_ASSIGN_OR_RETURN(auto attn_norm, get("attn_norm.weight"));
    TQKV_ASSIGN_OR_RETURN(auto ffn_norm, get("ffn_norm.weight"));
    TQKV_ASSIGN_OR_RETURN(auto wo, get("attn_output.weight"));
    TQKV_ASSIGN_OR_RETURN(auto wdown, get("ffn_down.weight"));
    TQKV_ASSIGN_OR_RETURN(auto wup, get("ffn_up.weight"));
    std::vector<float> wq, wk, wv, wqkv, wgate, bq, bk, bv, qn, kn, pan, pfn;
    if (c.fused_qkv) {
      TQKV_ASSIGN_OR_RETURN(wqkv, get("attn_qkv.weight"));
    } else {
      TQKV_ASSIGN_OR_RETURN(wq, get("attn_q.weight"));
      TQKV_ASSIGN_OR_RETURN(wk, get("attn_k.weight"));
      TQKV_ASSIGN_OR_RETURN(wv, get("attn_v.weight"));
    }
    if (!c.fused_gate_up) {
      TQKV_ASSIGN_OR_RETURN(wgate, get("ffn_gate.weight"));
    }
    if (c.qkv_bias) {
      TQKV_ASSIGN_OR_RETURN(bq, get("attn_q.bias"));
      TQKV_ASSIGN_OR_RETURN(bk, get("attn_k.bias"));
      TQKV_ASSIGN_OR_RETURN(bv, get("attn_v.bias"));
    }
    if (c.qk_norm) {
      TQKV_ASSIGN_OR_RETURN(qn, get("attn_q_norm.weight"));
      TQKV_ASSIGN_OR_RETURN(kn, get("attn_k_norm.weight"));
    }
    if (c.post_norms) {
      TQKV_ASSIGN_OR_RETURN(pan, get("post_attention_norm.weight"));
      TQKV_ASSIGN_OR_RETURN(pfn, get("post_ffw_norm.weight"));
    }
    const bool sliding = c.is_sliding(l) && c.sliding_window > 0;
    const double base = sliding ? c.rope_base_local : c.rope_base;

    std::vector<Vec> q(T), k(T), v(T);
    for (int64_t t = 0; t < T; ++t) {
      Vec h = rms_norm_ref(x[t], attn_norm, c.rms_eps);
      if (c.fused_qkv) {
        Vec all = matvec_ref(wqkv, Q + 2 * KV, E, h);
        q[t].assign(all.begin(), all.begin() + Q);
        k[t].assign(all.begin() + Q, all.begin() + Q + KV);
        v[t].assign(all.begin() + Q + KV, all.end());
      } else {
        q[t] = matvec_ref(wq, Q, E, h);
        k[t] = matvec_ref(wk, KV, E, h);
        v[t] = matvec_ref(wv, KV, E, h);
      }
      if (c.qkv_bias) {
        for (int64_t i = 0; i < Q; ++i) q[t][i] += bq[i];
        for (int64_t i = 0; i < KV; ++i) k[t][i] += bk[i], v[t][i] += bv[i];
      }
      for (int64_t h2 = 0; h2 < HQ; ++h2) {
        if (c.qk_norm) {
          Vec nq = rms_norm_ref(q[t], qn, c.rms_eps, h2 * D, D);
          std::copy(nq.begin(), nq.end(), q[t].begin() + h2 * D);
        }
        rope_ref(q[t], h2 * D, c, t, base, factors);
      }
      for (int64_t h2 = 0; h2 < HK; ++h2) {
        if (c.qk_norm) {
          Vec nk = rms_norm_ref(k[t], kn, c.rms_eps, h2 * D, D);
          std::copy(nk.begin(), nk.end(), k[t].begin() + h2 * D);
        }
        rope_ref(k[t], h2 * D, c, t, base, factors);
      }
    }
    for (int64_t t = 0; t < T; ++t) {
      Vec att(static_cast<size_t>(Q), 0.0);
      for (int64_t h2 = 0; h2 < HQ; ++h2) {
        const int64_t kh = h2 / (HQ / HK);
        std::vector<double> s(static_cast<size_t>(t + 1), -INFINITY);
        double mx = -INFINITY;
        for (int64_t j = 0; j <= t; ++j) {
          if (sliding && t - j >= c.sliding_window) continue;  // masked
          double dot = 0;
          for (int64_t d = 0; d < D; ++d) dot += q[t][h2 * D + d] * k[j][kh * D + d];
          dot *= c.attn_scale;
          if (c.attn_softcap > 0) dot = c.attn_softcap * std::tanh(dot / c.attn_softcap);
          s[j] = dot;
          mx = std::max(mx, dot);
        }
        double sum = 0;
        for (int64_t j = 0; j <= t; ++j) sum += (s[j] = std::isinf(s[j]) ? 0.0 : std::exp(s[j] - mx));
        for (int64_t j = 0; j <= t; ++j)
          for (int64_t d = 0; d < D; ++d) att[h2 * D + d] += s[j] / sum * v[j][kh * D + d];
      }
      Vec o = matvec_ref(wo, E, Q, att);
      if (c.post_norms) o = rms_norm_ref(o, pan, c.rms_eps);
      for (int64_t i = 0; i < E; ++i) x[t][i] += o[i];
      Vec h = rms_norm_ref(x[t], ffn_norm, c.rms_eps);
      Vec gate, up;
      if (c.fused_gate_up) {
        Vec gu = matvec_ref(wup, 2 * F, E, h);
        gate.assign(gu.begin(), gu.begin() + F);
        up.assign(gu.begin() + F, gu.end());
      } else {
        gate = matvec_ref(wgate, F, E, h);
        up = matvec_ref(wup, F, E, h);
      }
      for (int64_t i = 0; i < F; ++i) {
        const double g0 = gate[i];
        const double a = c.act == Activation::kSilu
                             ? g0 / (1.0 + std::exp(-g0))
                             : 0.5 * g0 * (1.0 + std::tanh(std::sqrt(2.0 / M_PI) * (g0 + 0.044715 * g0 * g0 * g0)));
        gate[i] = a * up[i];
      }
      Vec d = matvec_ref(wdown, E, F, gate);
      if (c.post_norms) d = rms_norm_ref(d, pfn, c.rms_eps);
      for (int64_t i = 0; i < E; ++i) x[t][i] += d[i];
    }
  }
  TQKV_ASSIGN_OR_RETURN(auto out_norm, tensor(g, "output_norm.weight"));
  std::vector<float> wout;
  if (g.find_tensor("output.weight")) {
    TQKV_ASSIGN_OR_RETURN(wout, tensor(g, "output.weight"));
  } else {
    wout = emb;
  }
  std::vector<float> logits(static_cast<size_t>(T * c.n_vocab));
  for (int64_t t = 0; t < T; ++t) {
    Vec h = rms_norm_ref(x[t], out_norm, c.rms_eps);
    Vec y = matvec_ref(wout, c.n_vocab, E, h);
    for (int64_t i = 0; i < c.n_vocab; ++i) {
      double z = y[i];
      if (c.final_softcap > 0) z = c.final_softcap * std::tanh(z / c.final_softcap);
      logits[t * c.n_vocab + i] = static_cast<float>(z);
    }
  }
  return logits;
}

}  // namespace tqkv
