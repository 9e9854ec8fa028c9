// Model::load: map the file, read the configuration, bind and check every tensor.
#include <string>

#include "model/model_weights.h"

namespace tqkv {

Model::~Model() = default;

namespace {

std::string shape_str(const GgufTensorInfo& t) {
  std::string s = "{";
  for (int i = 0; i < t.n_dims; ++i) s += (i ? ", " : "") + std::to_string(t.dims[i]);
  return s + "}";
}

Result<WeightMatrix> bind_matrix(const GgufFile& g, const std::string& name, int64_t rows, int64_t cols) {
  TQKV_ASSIGN_OR_RETURN(const GgufTensorInfo* t, g.get_tensor(name));
  if (t->dims[0] != cols || t->num_rows() != rows)
    return corrupt_data(name + " has shape " + shape_str(*t) + ", expected {" + std::to_string(cols) +
                        ", " + std::to_string(rows) + "}");
  TQKV_RETURN_IF_ERROR(check_weight_row(t->type, cols));
  if (t->row_bytes() % 2 != 0) return unsupported(name + ": rows not 2-byte aligned");
  return WeightMatrix{t->data, t->type, rows, cols};
}

Result<std::vector<float>> bind_vector(const GgufFile& g, const std::string& name, int64_t n) {
  TQKV_ASSIGN_OR_RETURN(const GgufTensorInfo* t, g.get_tensor(name));
  if (t->num_elements() != n)
    return corrupt_data(name + " has shape " + shape_str(*t) + ", expected " + std::to_string(n) + " elements");
  std::vector<float> v(static_cast<size_t>(n));
  TQKV_RETURN_IF_ERROR(dequantize_row(t->type, t->data, v.data(), n));
  return v;
}

}  // namespace

Result<std::unique_ptr<Model>> Model::load(const std::string& path) {
  auto owned = std::make_unique<GgufMappedFile>();
  TQKV_ASSIGN_OR_RETURN(*owned, open_gguf(path));
  const GgufFile* g = &owned->gguf;
  TQKV_ASSIGN_OR_RETURN(std::unique_ptr<Model> m, from_gguf(g));
  m->owned_ = std::move(owned);
  return m;
}

Result<std::unique_ptr<Model>> Model::from_gguf(const GgufFile* gp) {
  const GgufFile& g = *gp;
  std::unique_ptr<Model> m(new Model());
  m->gguf_ = gp;
  TQKV_ASSIGN_OR_RETURN(m->cfg_, config_from_gguf(g));
  const ModelConfig& c = m->cfg_;
  m->w_ = std::make_unique<Weights>();
  Weights& w = *m->w_;
  const int64_t E = c.n_embd, Q = c.q_dim(), KV = c.kv_dim(), F = c.n_ff, D = c.head_dim;

  TQKV_ASSIGN_OR_RETURN(w.tok_embd, bind_matrix(g, "token_embd.weight", c.n_vocab, E));
  if (c.tied_output) {
    w.output = w.tok_embd;
  } else {
    TQKV_ASSIGN_OR_RETURN(w.output, bind_matrix(g, "output.weight", c.n_vocab, E));
  }
  TQKV_ASSIGN_OR_RETURN(w.output_norm, bind_vector(g, "output_norm.weight", E));
  if (c.has_rope_freqs) {
    TQKV_ASSIGN_OR_RETURN(w.rope_freqs, bind_vector(g, "rope_freqs.weight", c.n_rot / 2));
  }

  w.layers.resize(static_cast<size_t>(c.n_layer));
  for (int l = 0; l < c.n_layer; ++l) {
    LayerWeights& L = w.layers[l];
    const std::string p = "blk." + std::to_string(l) + ".";
    TQKV_ASSIGN_OR_RETURN(L.attn_norm, bind_vector(g, p + "attn_norm.weight", E));
    TQKV_ASSIGN_OR_RETURN(L.ffn_norm, bind_vector(g, p + "ffn_norm.weight", E));
    if (c.fused_qkv) {
      TQKV_ASSIGN_OR_RETURN(L.wqkv, bind_matrix(g, p + "attn_qkv.weight", Q + 2 * KV, E));
    } else {
      TQKV_ASSIGN_OR_RETURN(L.wq, bind_matrix(g, p + "attn_q.weight", Q, E));
      TQKV_ASSIGN_OR_RETURN(L.wk, bind_matrix(g, p + "attn_k.weight", KV, E));
      TQKV_ASSIGN_OR_RETURN(L.wv, bind_matrix(g, p + "attn_v.weight", KV, E));
    }
    if (c.qkv_bias) {
      TQKV_ASSIGN_OR_RETURN(L.bq, bind_vector(g, p + "attn_q.bias", Q));
      TQKV_ASSIGN_OR_RETURN(L.bk, bind_vector(g, p + "attn_k.bias", KV));
      TQKV_ASSIGN_OR_RETURN(L.bv, bind_vector(g, p + "attn_v.bias", KV));
    }
    if (c.qk_norm) {
      TQKV_ASSIGN_OR_RETURN(L.q_norm, bind_vector(g, p + "attn_q_norm.weight", D));
      TQKV_ASSIGN_OR_RETURN(L.k_norm, bind_vector(g, p + "attn_k_norm.weight", D));
    }
    if (c.post_norms) {
      TQKV_ASSIGN_OR_RETURN(L.post_attn_norm, bind_vector(g, p + "post_attention_norm.weight", E));
      TQKV_ASSIGN_OR_RETURN(L.post_ffn_norm, bind_vector(g, p + "post_ffw_norm.weight", E));
    }
    TQKV_ASSIGN_OR_RETURN(L.wo, bind_matrix(g, p + "attn_output.weight", E, Q));
    if (c.fused_gate_up) {
      TQKV_ASSIGN_OR_RETURN(L.up, bind_matrix(g, p + "ffn_up.weight", 2 * F, E));
    } else {
      TQKV_ASSIGN_OR_RETURN(L.gate, bind_matrix(g, p + "ffn_gate.weight", F, E));
      TQKV_ASSIGN_OR_RETURN(L.up, bind_matrix(g, p + "ffn_up.weight", F, E));
    }
    TQKV_ASSIGN_OR_RETURN(L.down, bind_matrix(g, p + "ffn_down.weight", E, F));
  }
  m->rope_inv_freq_global_ = rope_inv_freq(c.n_rot, c.rope_base, w.rope_freqs);
  m->rope_inv_freq_local_ = rope_inv_freq(c.n_rot, c.rope_base_local, w.rope_freqs);
  return m;
}

}  // namespace tqkv
