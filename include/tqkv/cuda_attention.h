// CUDA kernels over the paged KV cache: quantize-on-write, fused split-KV decode attention over
// compressed (TurboQuant) or fp16 pages, and page dequantization (for tests and tools).
//
// Contract (all launchers):
// - Every pointer, including those inside the PagedKVView, is a DEVICE pointer. The view struct
//   itself is a host value passed by copy. The byte layout is exactly include/tqkv/kv_layout.h,
//   so pages written by the CPU codec decode here and the other way round.
// - Launchers only enqueue work on `stream`: no allocation, no host synchronisation, so every
//   call can be captured in a CUDA graph. Scratch memory is supplied by the caller (see
//   DecodePlan::workspace_bytes).
// - Errors are values: unsupported shapes or formats return kUnsupported / kInvalidArgument
//   before anything is launched; a failed launch returns kInternal with CUDA's message.
// - No framework or CUDA header is needed to include this file (cudaStream_t is forward-declared
//   as the runtime declares it).
#pragma once

#include <cstddef>
#include <cstdint>

#include "tqkv/kv_layout.h"
#include "tqkv/status.h"

struct CUstream_st;
typedef struct CUstream_st* cudaStream_t;  // identical to the CUDA runtime's typedef

namespace tqkv::cuda {

// The largest PagedKVView::recent_tokens the CUDA attention takes (its merges hold the ring's
// scores in arrays of this size); the CPU takes up to 1024.
inline constexpr int kMaxRecentTokens = 64;

// Element type of query / output / new-token tensors in device memory.
enum class DType : int { kF32 = 0, kF16 = 1 };

// Decode attention parameters (same meaning as the CPU AttentionParams in attention.h).
struct DecodeParams {
  int32_t num_q_heads = 0;  // multiple of view.num_kv_heads; group = num_q_heads / num_kv_heads
  float scale = 0.f;        // logit scale, usually 1/sqrt(head_dim)
  float softcap = 0.f;      // > 0: logits = softcap * tanh(logits / softcap) (Gemma 2); 0 = off
  // > 0: the query at position len-1 sees only positions > len-1-window (the last `window`
  // tokens, itself included). 0 = unlimited. Independent of view.first_page (eviction).
  int32_t window = 0;
  int32_t num_splits = 0;   // 0 = choose from the shape (plan_decode); else force this many (<= 4096)
};

// Launch shape and scratch size for one decode call. Compute once per batch shape; reuse for
// every layer. The workspace holds the rotated queries and the split-KV partial results.
struct DecodePlan {
  int32_t num_splits = 1;       // partitions of each sequence's pages
  int32_t head_chunks = 1;      // ceil(group / 8): query heads of a group are handled 8 at a time
  size_t workspace_bytes = 0;   // device bytes (256-byte aligned) the caller passes to attention_decode
};

// `sm_count`: the device's multiprocessor count (cudaDevAttrMultiProcessorCount).
Result<DecodePlan> plan_decode(const PagedKVView& view, const DecodeParams& params, int sm_count);

// Decode attention: one query token per sequence, attending to positions [0, seq_lens[s]) of its
// pages (minus evicted pages and outside the window).
//   q   : [num_seqs][num_q_heads][head_dim]   (q_type)
//   out : [num_seqs][num_q_heads][head_dim]   (out_type); a sequence of length 0 gets zeros
// Supported: head_dim in {64, 80, 96, 128, 256}; (k.bits, v.bits) in {(16,16), (8,8), (4,4),
// (3,3), (2,2), (8,4), (4,3)}; page_size 16; group <= 64. Anything else returns kUnsupported.
// Attention sinks (view.sink_tokens in [0, 16]): positions < sink_tokens come from the view's fp16
// sink tiles (store_sink_tokens), the rest from the pages, as the CPU attention. Recent tokens
// (view.recent_tokens in [0, 64]): positions from view.recent_from(s) come from the ring.
Status attention_decode(const PagedKVView& view, const DecodeParams& params, const DecodePlan& plan,
                        const void* q, DType q_type, void* out, DType out_type, void* workspace,
                        size_t workspace_bytes, cudaStream_t stream);

// Prefill attention (same meaning as tqkv::attention_prefill_reference): sequence s has
// q_lens[s] new queries at positions seq_lens[s] - q_lens[s] .. seq_lens[s] - 1, whose K/V are
// already in the pages (quantize_and_store first); each sees every cached position up to its own
// (causal within the chunk), minus evicted pages and outside params.window.
//   q_lens : DEVICE [view.num_seqs]; total_q = sum of q_lens (host value, 1 .. 65535)
//   q, out : [total_q][num_q_heads][head_dim], rows grouped by sequence in order
// The tiled prefill kernel (src/cuda/prefill_kernel.cuh) reads and dequantizes each K/V page once
// per tile of (query row, head) columns of one sequence and KV head (32 columns at head size 128)
// and runs QK^T and PV on mma.sync tensor cores with a per-column causal mask; environment
// TQKV_CUDA_PREFILL=rows selects the older path (each query row through the decode kernel as its
// own causal prefix). Rows of an inconsistent q_lens (q_lens[s] > seq_lens[s], rows past the sum)
// get zeros. plan_prefill: split count and workspace (row and tile tables included) for total_q
// rows; plan and call under the same TQKV_CUDA_PREFILL setting.
Result<DecodePlan> plan_prefill(const PagedKVView& view, const DecodeParams& params, int32_t total_q,
                                int sm_count);
Status attention_prefill(const PagedKVView& view, const DecodeParams& params, const DecodePlan& plan,
                         const int32_t* q_lens, int32_t total_q, const void* q, DType q_type, void* out,
                         DType out_type, void* workspace, size_t workspace_bytes, cudaStream_t stream);

// Quantize-on-write: rotates, quantizes, packs and stores new tokens (or copies them, for fp16
// sides) into their page slots. Token i of the batch goes to physical slot slot_mapping[i] =
// page * page_size + offset; a negative slot skips the token (padding).
//   k_new, v_new : [num_tokens][num_kv_heads][head_dim]  (in_type)
//   boundaries_k / boundaries_v : [(1 << bits) - 1] decision boundaries of the side's codebook
//     (Codebook::boundaries(), unit-vector scale); null for fp16 sides.
// Uses the fast Walsh-Hadamard transform when view.hadamard_signs is set, the dense
// view.rotation otherwise.
Status quantize_and_store(const PagedKVView& view, const float* boundaries_k,
                          const float* boundaries_v, const void* k_new, const void* v_new,
                          DType in_type, const int64_t* slot_mapping, int32_t num_tokens,
                          cudaStream_t stream);

// Attention sinks (docs/formats.md, "Attention sinks"): writes the new tokens at positions
// < view.sink_tokens, as fp16, into row pos[i] of sink slot seq_slot[i]'s sink tiles (view.sink_k /
// sink_v), each side in its own space: P x (view.rotation) for TurboQuant sides, x for fp16 sides.
// Other tokens (pos outside [0, sink_tokens), negative slot) are skipped, so the call can stay in a
// captured decode step. Keys as they go to the pages (after centering). Recent tokens (docs/formats.md,
// view.recent_tokens = W > 0): every token also goes to row pos[i] % W of its slot's ring (view.recent_k
// / recent_v), except one that a later token of the same call replaces there (pos + W, same slot;
// tokens of a sequence must be contiguous and in position order). No-op when both are 0.
//   k_new, v_new : [num_tokens][num_kv_heads][head_dim]  (in_type);  seq_slot, pos : DEVICE [num_tokens]
// attention_decode / attention_prefill read positions < sink_tokens from these tiles (the split
// kernels skip them; the merge kernel adds the sink positions as one more split).
Status store_sink_tokens(const PagedKVView& view, const void* k_new, const void* v_new, DType in_type,
                         const int32_t* seq_slot, const int32_t* pos, int32_t num_tokens, cudaStream_t stream);

// Decodes whole tiles back to fp32 vectors in the ORIGINAL space (x~ = scale * P^T c[idx]), or
// copies fp16 values, for tests and tools.
//   pages : physical page ids to decode, [num_pages]
//   out   : [num_pages][num_kv_heads][page_size][head_dim] fp32
// `side` 0 = K, 1 = V.
Status dequantize_pages(const PagedKVView& view, int side, const int32_t* pages, int32_t num_pages,
                        float* out, cudaStream_t stream);

}  // namespace tqkv::cuda
