// ModelConfig from GGUF metadata: the shared keys every llama.cpp-style file has, then the few
// per-architecture facts (RoPE pairing, sliding pattern, norms, scales) that the files leave implicit.
#include <cmath>
#include <string>

#include "tqkv/model.h"

namespace tqkv {

const char* model_arch_name(ModelArch a) {
  switch (a) {
    case ModelArch::kLlama: return "llama";
    case ModelArch::kQwen2: return "qwen2";
    case ModelArch::kPhi3: return "phi3";
    case ModelArch::kGemma2: return "gemma2";
    case ModelArch::kGemma3: return "gemma3";
  }
  return "unknown";
}

namespace {

Result<int> get_int(const GgufFile& g, const std::string& key) {
  TQKV_ASSIGN_OR_RETURN(uint32_t v, g.get_u32(key));
  if (v == 0 || v > (1u << 30)) return corrupt_data(key + " out of range: " + std::to_string(v));
  return static_cast<int>(v);
}

// head_count_kv may be stored per layer (an array) in some files; we need one value.
Result<int> get_uniform_int(const GgufFile& g, const std::string& key, int fallback) {
  if (g.find_array(key)) {
    TQKV_ASSIGN_OR_RETURN(std::vector<int64_t> v, g.get_int_array(key));
    if (v.empty()) return corrupt_data(key + " is an empty array");
    for (int64_t x : v)
      if (x != v[0]) return unsupported(key + " differs between layers");
    if (v[0] <= 0 || v[0] > (1 << 20)) return corrupt_data(key + " out of range");
    return static_cast<int>(v[0]);
  }
  if (!g.has(key)) return fallback;
  return get_int(g, key);
}

}  // namespace

Result<ModelConfig> config_from_gguf(const GgufFile& g) {
  ModelConfig c;
  c.arch_name = g.architecture();
  if (c.arch_name == "llama") c.arch = ModelArch::kLlama;
  else if (c.arch_name == "qwen2") c.arch = ModelArch::kQwen2;
  else if (c.arch_name == "phi3") c.arch = ModelArch::kPhi3;
  else if (c.arch_name == "gemma2") c.arch = ModelArch::kGemma2;
  else if (c.arch_name == "gemma3") c.arch = ModelArch::kGemma3;
  else
    return unsupported("architecture '" + c.arch_name +
                       "' is not supported (supported: llama, qwen2, phi3, gemma2, gemma3)");

  auto key = [&](const char* s) { return g.arch_key(s); };
  TQKV_ASSIGN_OR_RETURN(c.n_embd, get_int(g, key("embedding_length")));
  TQKV_ASSIGN_OR_RETURN(c.n_layer, get_int(g, key("block_count")));
  TQKV_ASSIGN_OR_RETURN(c.n_head, get_uniform_int(g, key("attention.head_count"), 0));
  if (c.n_head == 0) return corrupt_data("missing " + key("attention.head_count"));
  TQKV_ASSIGN_OR_RETURN(c.n_head_kv, get_uniform_int(g, key("attention.head_count_kv"), c.n_head));
  TQKV_ASSIGN_OR_RETURN(c.n_ff, get_uniform_int(g, key("feed_forward_length"), 0));
  if (c.n_ff == 0) return corrupt_data("missing " + key("feed_forward_length"));
  TQKV_ASSIGN_OR_RETURN(uint32_t ctx, g.get_u32_or(key("context_length"), 2048));
  c.n_ctx_train = static_cast<int>(ctx);
  if (c.n_head % c.n_head_kv != 0)
    return corrupt_data("head_count " + std::to_string(c.n_head) + " is not a multiple of head_count_kv " +
                        std::to_string(c.n_head_kv));
  const int default_hd = c.n_embd / c.n_head;
  TQKV_ASSIGN_OR_RETURN(c.head_dim, get_uniform_int(g, key("attention.key_length"), default_hd));
  TQKV_ASSIGN_OR_RETURN(int v_len, get_uniform_int(g, key("attention.value_length"), c.head_dim));
  if (v_len != c.head_dim) return unsupported("key_length != value_length");
  if (c.head_dim > 512) return unsupported("head size above 512");
  TQKV_ASSIGN_OR_RETURN(c.n_rot, get_uniform_int(g, key("rope.dimension_count"), c.head_dim));
  if (c.n_rot > c.head_dim || c.n_rot % 2 != 0) return corrupt_data("bad rope.dimension_count");
  TQKV_ASSIGN_OR_RETURN(c.rms_eps, g.get_f32_or(key("attention.layer_norm_rms_epsilon"), 1e-5f));
  TQKV_ASSIGN_OR_RETURN(c.rope_base, g.get_f32_or(key("rope.freq_base"), 10000.0f));
  c.rope_base_local = c.rope_base;
  c.attn_scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));

  const GgufTensorInfo* emb = g.find_tensor("token_embd.weight");
  if (!emb) return corrupt_data("missing tensor token_embd.weight");
  if (emb->dims[0] != c.n_embd) return corrupt_data("token_embd.weight row length != embedding_length");
  c.n_vocab = static_cast<int>(emb->dims[1]);
  c.tied_output = g.find_tensor("output.weight") == nullptr;
  c.has_rope_freqs = g.find_tensor("rope_freqs.weight") != nullptr;
  c.layer_sliding.assign(static_cast<size_t>(c.n_layer), 0);

  switch (c.arch) {
    case ModelArch::kLlama:
      c.rope_style = RopeStyle::kAdjacent;
      break;
    case ModelArch::kQwen2:
      c.rope_style = RopeStyle::kHalf;
      c.qkv_bias = true;
      break;
    case ModelArch::kPhi3:
      c.rope_style = RopeStyle::kHalf;
      c.fused_qkv = g.find_tensor("blk.0.attn_qkv.weight") != nullptr;
      c.fused_gate_up = g.find_tensor("blk.0.ffn_gate.weight") == nullptr;
      if (g.find_tensor("rope_factors_long.weight"))
        return unsupported("phi3 with LongRoPE factors (rope_factors_long) is not supported");
      break;
    case ModelArch::kGemma2:
    case ModelArch::kGemma3: {
      c.rope_style = RopeStyle::kHalf;
      c.embed_scale = true;
      c.post_norms = true;
      c.act = Activation::kGeluTanh;
      c.qk_norm = c.arch == ModelArch::kGemma3;
      TQKV_ASSIGN_OR_RETURN(uint32_t win, g.get_u32_or(key("attention.sliding_window"), 0));
      c.sliding_window = static_cast<int>(win);
      // Gemma 2 alternates (even layers slide); Gemma 3 has five sliding layers to one global.
      const int period = c.arch == ModelArch::kGemma2 ? 2 : 6;
      if (c.sliding_window > 0)
        for (int l = 0; l < c.n_layer; ++l) c.layer_sliding[l] = (l % period) < period - 1 ? 1 : 0;
      if (c.arch == ModelArch::kGemma3) c.rope_base_local = 10000.0f;
      TQKV_ASSIGN_OR_RETURN(c.attn_softcap, g.get_f32_or(key("attn_logit_softcapping"), 0.0f));
      TQKV_ASSIGN_OR_RETURN(c.final_softcap, g.get_f32_or(key("final_logit_softcapping"), 0.0f));
      if (c.arch == ModelArch::kGemma3) c.attn_softcap = c.final_softcap = 0.0f;  // Gemma 3 has none
      break;
    }
  }
  // A file may state the attention scale outright (newer converters).
  TQKV_ASSIGN_OR_RETURN(float scale, g.get_f32_or(key("attention.scale"), 0.0f));
  if (scale > 0.0f) c.attn_scale = scale;
  return c;
}

}  // namespace tqkv
