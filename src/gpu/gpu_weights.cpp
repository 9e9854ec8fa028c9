// GPU runtime: a GpuModel's weights, dequantized from the GGUF on the CPU (src/quant) and uploaded
// as fp16, or random for the synthetic shapes (include/tqkv/gpu_model.h).
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <numeric>
#include <random>
#include <vector>

#include "cuda/cuda_check.h"
#include "gpu/gpu_kernels.h"
#include "tqkv/codec.h"
#include "tqkv/cuda_attention.h"
#include "tqkv/fp16.h"
#include "tqkv/gpu_model.h"
#include "tqkv/kv_layout.h"
#include "tqkv/weights.h"
#include "gpu/gpu_internal.h"

namespace tqkv {

using namespace gpu_detail;

GpuModel::~GpuModel() = default;

namespace {

// Dequantizes `rows` rows of tensor t starting at row r0 into fp16 device memory at dst.
Status upload_rows(const GgufTensorInfo& t, int64_t r0, int64_t rows, uint16_t* dst) {
  const int64_t cols = t.dims[0];
  const uint64_t rb = t.row_bytes();
  TQKV_ASSIGN_OR_RETURN(WeightRowKernels k, weight_row_kernels(t.type));
  const int64_t block = std::max<int64_t>(1, (int64_t{16} << 20) / (cols * 2));
  std::vector<uint16_t> host(static_cast<size_t>(std::min(block, rows) * cols));
  for (int64_t b = 0; b < rows; b += block) {
    const int64_t m = std::min(block, rows - b);
#pragma omp parallel
    {
      std::vector<float> tmp(static_cast<size_t>(cols));
#pragma omp for schedule(static)
      for (int64_t r = 0; r < m; ++r) {
        k.dequantize(t.data + (r0 + b + r) * rb, tmp.data(), cols);
        uint16_t* o = host.data() + r * cols;
        for (int64_t c = 0; c < cols; ++c) o[c] = float_to_fp16(tmp[c]);
      }
    }
    CK(cudaMemcpy(dst + b * cols, host.data(), static_cast<size_t>(m * cols) * 2, cudaMemcpyHostToDevice));
  }
  return Status::ok();
}

Result<const GgufTensorInfo*> matrix_tensor(const GgufFile& g, const std::string& name, int64_t rows, int64_t cols) {
  TQKV_ASSIGN_OR_RETURN(const GgufTensorInfo* t, g.get_tensor(name));
  if (t->dims[0] != cols || t->num_rows() != rows)
    return corrupt_data(name + ": unexpected shape (" + std::to_string(t->dims[0]) + " x " +
                        std::to_string(t->num_rows()) + ")");
  TQKV_RETURN_IF_ERROR(check_weight_row(t->type, cols));
  return t;
}

// Uploads the row-concatenation of the named matrices (each [rows_i][cols]) as one fp16 matrix.
Result<DevMat> upload_matrix(DeviceArena& a, const GgufFile& g, const std::vector<std::pair<std::string, int64_t>>& parts,
                             int64_t cols) {
  DevMat m;
  m.cols = cols;
  for (auto& p : parts) m.rows += p.second;
  TQKV_ASSIGN_OR_RETURN(m.w, a.alloc<uint16_t>(static_cast<size_t>(m.rows * cols)));
  int64_t r = 0;
  for (auto& p : parts) {
    TQKV_ASSIGN_OR_RETURN(const GgufTensorInfo* t, matrix_tensor(g, p.first, p.second, cols));
    TQKV_RETURN_IF_ERROR(upload_rows(*t, 0, p.second, m.w + r * cols));
    r += p.second;
  }
  return m;
}

Result<std::vector<float>> host_vector(const GgufFile& g, const std::string& name, int64_t n) {
  TQKV_ASSIGN_OR_RETURN(const GgufTensorInfo* t, g.get_tensor(name));
  if (t->num_elements() != n) return corrupt_data(name + ": expected " + std::to_string(n) + " elements");
  std::vector<float> v(static_cast<size_t>(n));
  TQKV_RETURN_IF_ERROR(dequantize_row(t->type, t->data, v.data(), n));
  return v;
}

Result<float*> vector_to_device(DeviceArena& a, const GgufFile& g, const std::string& name, int64_t n) {
  TQKV_ASSIGN_OR_RETURN(std::vector<float> v, host_vector(g, name, n));
  return upload_f32(a, v);
}

}  // namespace

Result<std::unique_ptr<GpuModel>> GpuModel::from_gguf(const GgufFile& g, const ModelConfig& c) {
  TQKV_RETURN_IF_ERROR(gpu_available());
  std::unique_ptr<GpuModel> m(new GpuModel());
  m->cfg_ = c;
  m->impl_ = std::make_unique<Impl>();
  Impl& w = *m->impl_;
  DeviceArena& a = w.arena;
  const int64_t E = c.n_embd, Q = c.q_dim(), KV = c.kv_dim(), F = c.n_ff, D = c.head_dim, V = c.n_vocab;

  {
    TQKV_ASSIGN_OR_RETURN(const GgufTensorInfo* t, matrix_tensor(g, "token_embd.weight", V, E));
    TQKV_ASSIGN_OR_RETURN(w.tok_embd, a.alloc<uint16_t>(static_cast<size_t>(V * E)));
    TQKV_RETURN_IF_ERROR(upload_rows(*t, 0, V, w.tok_embd));
  }
  if (c.tied_output) {
    w.output = DevMat{w.tok_embd, V, E};
  } else {
    TQKV_ASSIGN_OR_RETURN(w.output, upload_matrix(a, g, {{"output.weight", V}}, E));
  }
  TQKV_ASSIGN_OR_RETURN(w.output_norm, vector_to_device(a, g, "output_norm.weight", E));
  std::vector<float> factors;
  if (c.has_rope_freqs) {
    TQKV_ASSIGN_OR_RETURN(factors, host_vector(g, "rope_freqs.weight", c.n_rot / 2));
  }
  TQKV_ASSIGN_OR_RETURN(w.inv_freq_global, upload_f32(a, inv_freq_of(c.n_rot, c.rope_base, factors)));
  TQKV_ASSIGN_OR_RETURN(w.inv_freq_local, upload_f32(a, inv_freq_of(c.n_rot, c.rope_base_local, factors)));

  w.layers.resize(static_cast<size_t>(c.n_layer));
  for (int l = 0; l < c.n_layer; ++l) {
    Impl::Layer& L = w.layers[l];
    const std::string p = "blk." + std::to_string(l) + ".";
    TQKV_ASSIGN_OR_RETURN(L.attn_norm, vector_to_device(a, g, p + "attn_norm.weight", E));
    TQKV_ASSIGN_OR_RETURN(L.ffn_norm, vector_to_device(a, g, p + "ffn_norm.weight", E));
    if (c.fused_qkv) {
      TQKV_ASSIGN_OR_RETURN(L.wqkv, upload_matrix(a, g, {{p + "attn_qkv.weight", Q + 2 * KV}}, E));
    } else {
      TQKV_ASSIGN_OR_RETURN(L.wqkv, upload_matrix(a, g, {{p + "attn_q.weight", Q}, {p + "attn_k.weight", KV}, {p + "attn_v.weight", KV}}, E));
    }
    if (c.qkv_bias) {
      TQKV_ASSIGN_OR_RETURN(L.bq, vector_to_device(a, g, p + "attn_q.bias", Q));
      TQKV_ASSIGN_OR_RETURN(L.bk, vector_to_device(a, g, p + "attn_k.bias", KV));
      TQKV_ASSIGN_OR_RETURN(L.bv, vector_to_device(a, g, p + "attn_v.bias", KV));
    }
    if (c.qk_norm) {
      TQKV_ASSIGN_OR_RETURN(L.q_norm, vector_to_device(a, g, p + "attn_q_norm.weight", D));
      TQKV_ASSIGN_OR_RETURN(L.k_norm, vector_to_device(a, g, p + "attn_k_norm.weight", D));
    }
    if (c.post_norms) {
      TQKV_ASSIGN_OR_RETURN(L.post_attn_norm, vector_to_device(a, g, p + "post_attention_norm.weight", E));
      TQKV_ASSIGN_OR_RETURN(L.post_ffn_norm, vector_to_device(a, g, p + "post_ffw_norm.weight", E));
    }
    TQKV_ASSIGN_OR_RETURN(L.wo, upload_matrix(a, g, {{p + "attn_output.weight", E}}, Q));
    if (c.fused_gate_up) {
      TQKV_ASSIGN_OR_RETURN(L.wgu, upload_matrix(a, g, {{p + "ffn_up.weight", 2 * F}}, E));
    } else {
      TQKV_ASSIGN_OR_RETURN(L.wgu, upload_matrix(a, g, {{p + "ffn_gate.weight", F}, {p + "ffn_up.weight", F}}, E));
    }
    TQKV_ASSIGN_OR_RETURN(L.down, upload_matrix(a, g, {{p + "ffn_down.weight", E}}, F));
  }
  m->weight_bytes_ = 2 * (V * E * (c.tied_output ? 1 : 2) +
                          static_cast<int64_t>(c.n_layer) * ((Q + 2 * KV) * E + E * Q + 2 * F * E + E * F));
  return m;
}

ModelConfig GpuModel::llama3_8b_config() {
  ModelConfig c;
  c.arch = ModelArch::kLlama;
  c.arch_name = "llama";
  c.n_vocab = 128256;
  c.n_embd = 4096;
  c.n_layer = 32;
  c.n_head = 32;
  c.n_head_kv = 8;
  c.head_dim = 128;
  c.n_ff = 14336;
  c.n_ctx_train = 131072;
  c.n_rot = 128;
  c.rms_eps = 1e-5f;
  c.rope_style = RopeStyle::kAdjacent;
  c.rope_base = c.rope_base_local = 500000.0f;
  c.attn_scale = 1.0f / std::sqrt(128.0f);
  c.layer_sliding.assign(32, 0);
  return c;
}

Result<std::unique_ptr<GpuModel>> GpuModel::synthetic(const ModelConfig& c, uint64_t seed) {
  TQKV_RETURN_IF_ERROR(gpu_available());
  if (c.qkv_bias || c.qk_norm || c.post_norms) return unsupported("synthetic: only llama-style configurations");
  std::unique_ptr<GpuModel> m(new GpuModel());
  m->cfg_ = c;
  m->impl_ = std::make_unique<Impl>();
  Impl& w = *m->impl_;
  DeviceArena& a = w.arena;
  const int64_t E = c.n_embd, Q = c.q_dim(), KV = c.kv_dim(), F = c.n_ff, V = c.n_vocab;
  uint64_t s = seed;
  auto mat = [&](int64_t rows, int64_t cols) -> Result<DevMat> {
    DevMat d{nullptr, rows, cols};
    TQKV_ASSIGN_OR_RETURN(d.w, a.alloc<uint16_t>(static_cast<size_t>(rows * cols)));
    TQKV_RETURN_IF_ERROR(gpu::fill_uniform_f16(d.w, rows * cols, std::sqrt(3.0f / cols), ++s * 0x9e3779b97f4a7c15ull, nullptr));
    return d;
  };
  auto ones = [&](int64_t n) -> Result<float*> {
    TQKV_ASSIGN_OR_RETURN(float* p, a.alloc<float>(n));
    TQKV_RETURN_IF_ERROR(gpu::fill_f32(p, n, 1.0f, nullptr));
    return p;
  };
  TQKV_ASSIGN_OR_RETURN(DevMat emb, mat(V, E));
  w.tok_embd = emb.w;
  TQKV_ASSIGN_OR_RETURN(w.output, mat(V, E));
  TQKV_ASSIGN_OR_RETURN(w.output_norm, ones(E));
  TQKV_ASSIGN_OR_RETURN(w.inv_freq_global, upload_f32(a, inv_freq_of(c.n_rot, c.rope_base, {})));
  TQKV_ASSIGN_OR_RETURN(w.inv_freq_local, upload_f32(a, inv_freq_of(c.n_rot, c.rope_base_local, {})));
  w.layers.resize(static_cast<size_t>(c.n_layer));
  for (auto& L : w.layers) {
    TQKV_ASSIGN_OR_RETURN(L.attn_norm, ones(E));
    TQKV_ASSIGN_OR_RETURN(L.ffn_norm, ones(E));
    TQKV_ASSIGN_OR_RETURN(L.wqkv, mat(Q + 2 * KV, E));
    TQKV_ASSIGN_OR_RETURN(L.wo, mat(E, Q));
    TQKV_ASSIGN_OR_RETURN(L.wgu, mat(2 * F, E));
    TQKV_ASSIGN_OR_RETURN(L.down, mat(E, F));
  }
  CK(cudaDeviceSynchronize());
  m->weight_bytes_ = 2 * (2 * V * E + static_cast<int64_t>(c.n_layer) * ((Q + 2 * KV) * E + E * Q + 2 * F * E + E * F));
  return m;
}

}  // namespace tqkv
