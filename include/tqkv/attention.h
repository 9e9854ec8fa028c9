// Attention over the paged KV cache on the CPU (PagedKVView, include/tqkv/kv_layout.h).
//
// Two implementations of the same math:
// - *_reference: dequantizes every key/value to fp32 (x = scale * P^T c[idx], or fp16 -> fp32),
//   plain loops, fp64 accumulation. Slow; the ground truth for the fused and CUDA paths.
// - *_cpu: fused. Rotates each query once (P q) when K is TurboQuant, scores against the packed
//   indices through the codebook times the fp16 scale, online softmax, accumulates V in rotated
//   space (centroid * scale) and rotates the result back once (P^T). Each KV head is read once for
//   its whole group of query heads (GQA). OpenMP over (sequence, KV head, split-K chunk) with a
//   merge step, so one long sequence still uses every core. AVX2/FMA/F16C when the CPU has them.
//
// Scores: s = scale * (q . k); with softcap > 0, s = softcap * tanh(s / softcap) (Gemma 2); then
// causal and window masks; softmax over the visible keys. A query at position p sees keys at
// positions t <= p with t > p - window (window 0 = no limit). Keys that were evicted from the
// cache (PagedKVView::first_page) but are inside the window are an error (kOutOfRange).
#pragma once

#include <cstdint>

#include "tqkv/kv_layout.h"
#include "tqkv/status.h"

namespace tqkv {

struct AttentionParams {
  int32_t num_q_heads;    // num_q_heads % view.num_kv_heads == 0 (grouped-query attention)
  float scale;            // softmax scale, usually 1/sqrt(head_dim)
  float softcap = 0.f;    // Gemma-2 logit soft-capping s = softcap*tanh(s/softcap); 0 = off
  int32_t window = 0;     // sliding window: a query at position p sees keys at positions > p - window; 0 = all
};

// Decode: one query per sequence, at position seq_lens[s]-1 (its K/V already written to the cache).
// q, out: [num_seqs][num_q_heads][head_dim] fp32. Query head h uses KV head h / (num_q_heads / num_kv_heads).
Status attention_decode_reference(const PagedKVView& kv, const AttentionParams& p, const float* q, float* out);
Status attention_decode_cpu(const PagedKVView& kv, const AttentionParams& p, const float* q, float* out);

// Prefill: sequence s has q_lens[s] new queries at positions seq_lens[s]-q_lens[s] .. seq_lens[s]-1
// (all already written), causal against everything cached before them and each other.
// q, out: [total_q][num_q_heads][head_dim], rows grouped by sequence in order.
Status attention_prefill_reference(const PagedKVView& kv, const AttentionParams& p, const int32_t* q_lens,
                                   const float* q, float* out);
Status attention_prefill_cpu(const PagedKVView& kv, const AttentionParams& p, const int32_t* q_lens,
                             const float* q, float* out);

// Checks a view and parameters the way every path above does (shapes, formats, pointers).
Status validate_attention_args(const PagedKVView& kv, const AttentionParams& p);

// Bytes one decode call reads from the pages (K and V tiles of every visible page, all KV heads),
// for bandwidth figures.
int64_t attention_decode_bytes_read(const PagedKVView& kv, const AttentionParams& p);

}  // namespace tqkv
