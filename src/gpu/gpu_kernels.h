// Small CUDA kernels of the GPU model runtime (src/gpu/gpu_kernels.cu): embedding, RMSNorm,
// bias + QK-norm + RoPE, gating, residual adds, soft-capping, argmax, step preparation (slot
// mapping and per-token page tables), random fills for benchmarks. Launchers only enqueue work
// on `stream` (no allocation, no synchronisation) and return the launch error as a Status.
#pragma once

#include <cstdint>

#include "tqkv/cuda_attention.h"
#include "tqkv/status.h"

namespace tqkv::gpu {

// x[t][:] = float(emb[tokens[t]][:]) * scale.  emb: fp16 [vocab][E].
Status embed_rows(const uint16_t* emb, const int32_t* tokens, int T, int E, float scale, float* x,
                  cudaStream_t s);
// out[r][:] = x[r][:] / rms(x[r]) * w (fp32 in); out fp16 when out_f16, else fp32 (may alias x).
Status rms_norm(const float* x, const float* w, int rows, int d, float eps, void* out, bool out_f16,
                cudaStream_t s);

struct QkvPostArgs {
  const float* qkv = nullptr;  // [T][Q + 2 KV]
  int T = 0, n_head = 0, n_head_kv = 0, head_dim = 0, n_rot = 0;
  bool rope_half = false;      // kHalf pairing (j, j + n_rot/2); else adjacent (2i, 2i+1)
  const float* bq = nullptr;   // biases or null
  const float* bk = nullptr;
  const float* bv = nullptr;
  const float* q_norm = nullptr;  // [head_dim] or null (QK-norm off)
  const float* k_norm = nullptr;
  float eps = 1e-6f;
  const float* inv_freq = nullptr;  // [n_rot/2]
  const int32_t* pos = nullptr;     // [T]
  float* q = nullptr;               // [T][Q]
  float* k = nullptr;               // [T][KV]
  float* v = nullptr;               // [T][KV]
};
Status qkv_post(const QkvPostArgs& a, cudaStream_t s);

// out[t][j] = act(gu[t][j]) * gu[t][F + j] as fp16; act = SiLU or GELU-tanh.
Status act_mul(const float* gu, int T, int F, bool gelu, uint16_t* out, cudaStream_t s);
// x[r] += (w ? rms_norm(o[r]) * w : o[r]).
Status residual_add(float* x, const float* o, const float* w, int rows, int d, float eps, cudaStream_t s);
// x = cap * tanh(x / cap).
Status softcap(float* x, int64_t n, float cap, cudaStream_t s);
// out[r] = argmax_j x[r][j] (lowest index on ties).
Status argmax_rows(const float* x, int rows, int V, int32_t* out, cudaStream_t s);

// Per-step preparation for G page-table groups (G <= 2). For each token t of sequence seq[t] at
// position pos[t]:
//   slots[g][t]  = table[g][seq[t]][pos[t] / 16] * 16 + pos[t] % 16
//   vtable[g][t][:] = table[g][seq[t]][:]   (rows of max_pages[g]; the token's own page table)
//   vlen[t] = pos[t] + 1
// Prefill chunks (S > 0): the chunk's tokens form S sequences (rows grouped by sequence) whose
// last rows are seq_last[0..S-1]; then vtable and vlen are per SEQUENCE instead, for s < S:
//   vtable[g][s][:] = table[g][seq[seq_last[s]]][:],  vlen[s] = pos[seq_last[s]] + 1
// (the view of attention_prefill), and slots stay per token.
struct PrepareArgs {
  int T = 0, G = 0;
  int S = 0;                          // 0: decode step (per-token rows); > 0: prefill chunk
  const int32_t* seq_last = nullptr;  // [S] (prefill)
  const int32_t* seq = nullptr;
  const int32_t* pos = nullptr;
  const int32_t* table[2] = {nullptr, nullptr};
  int max_pages[2] = {0, 0};
  int64_t* slots[2] = {nullptr, nullptr};
  int32_t* vtable[2] = {nullptr, nullptr};
  int32_t* vlen = nullptr;
};
Status prepare_step(const PrepareArgs& a, cudaStream_t s);
// pos[t] += 1 (decode graphs advance their own positions).
Status advance_positions(int32_t* pos, int T, cudaStream_t s);

// Key centering (src/model/kv_transform.cpp on the CPU): mu[i] = mean over t < n of k[t][i]
// (k: [n][kv] fp32; double accumulation), and k[t][i] -= mu[seq[t] * seq_stride + i] for t < T.
Status key_mean(const float* k, int n, int kv, float* mu, cudaStream_t s);
Status subtract_key_mean(float* k, const int32_t* seq, int T, int kv, const float* mu, int64_t seq_stride,
                         cudaStream_t s);

// Random fills (benchmarks, synthetic models). Deterministic from seed.
Status fill_uniform_f16(uint16_t* w, int64_t n, float amplitude, uint64_t seed, cudaStream_t s);
Status fill_f32(float* w, int64_t n, float value, cudaStream_t s);
// Key smoothing (KvOptions::smooth_keys, src/model/kv_transform.cpp): the factors of one
// sequence's first write, s[h][j] = sqrt(rms_k / rms_q) (k [n][H*D] after centering, q [n][H*G*D],
// the G query heads of KV head h pooled), geometric mean 1 per head, clamped to [1/64, 64]; then,
// per token t of sequence seq[t], k /= s and q *= s (s at s_base + seq[t] * seq_stride).
Status key_smoothing(const float* k, const float* q, int n, int H, int G, int D, float* s, cudaStream_t st);
Status apply_key_smoothing(float* k, float* q, const int32_t* seq, int T, int H, int G, int D, const float* s_base,
                           int64_t seq_stride, cudaStream_t st);
// Every tile of a pool [n_tiles][tile_bytes] of `bits` (16 = fp16) for head size d: random
// indices and finite scales (~ sqrt(d)), or fp16 values in [-2, 2).
Status fill_random_tiles(uint8_t* pages, int64_t n_tiles, int64_t tile_bytes, int bits, int page_size,
                         int d, uint64_t seed, cudaStream_t s);
// 16-byte grid-stride copy (the copy-bandwidth ceiling); bytes a multiple of 16.
Status copy_kernel(const void* src, void* dst, int64_t bytes, cudaStream_t s);

}  // namespace tqkv::gpu
