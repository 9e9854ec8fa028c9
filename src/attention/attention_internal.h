// Private pieces shared by the CPU attention files.
#pragma once

#include <cstdint>

#include "tqkv/attention.h"

namespace tqkv::attn_detail {

// First visible key position of a query at `pos` in sequence s (window, eviction checked).
Status key_range(const PagedKVView& kv, const AttentionParams& p, int32_t s, int64_t pos, int64_t* lo);
// Lengths, query counts and evictions of every sequence (q_lens null = decode, one query each).
Status check_seqs(const PagedKVView& kv, const AttentionParams& p, const int32_t* q_lens);

// One unit of fused work: the keys [t0, t1) of sequence s seen by the G query heads of KV head h
// for the query in row `row` (at position `pos`). Writes the partial softmax state.
struct WorkItem {
  int32_t s, h;
  int64_t row, pos, t0, t1;
  bool sink = false;    // keys from the attention-sink tiles (PagedKVView::sinks())
  bool recent = false;  // keys from the recent ring (PagedKVView::recent(); t0, t1 in ring positions)
};

// Processes one work item. qr: [G][head_dim] (rotated when K is TurboQuant); state out:
// m[G], l[G], acc[G][head_dim] (acc in V's rotated space when V is TurboQuant, unnormalised).
// scratch: at least scratch_floats(page_size, head_dim, G) floats.
inline int64_t scratch_floats(int32_t ps, int32_t d, int32_t G) { return 2ll * ps * d + (2ll + G) * ps + G; }
using ChunkFn = void (*)(const PagedKVView& kv, const AttentionParams& p, const WorkItem& w, const float* qr,
                         float* m, float* l, float* acc, float* scratch);
void process_chunk_scalar(const PagedKVView& kv, const AttentionParams& p, const WorkItem& w, const float* qr,
                          float* m, float* l, float* acc, float* scratch);
void process_chunk_avx2(const PagedKVView& kv, const AttentionParams& p, const WorkItem& w, const float* qr,
                        float* m, float* l, float* acc, float* scratch);
void process_chunk_avx512(const PagedKVView& kv, const AttentionParams& p, const WorkItem& w, const float* qr,
                          float* m, float* l, float* acc, float* scratch);

}  // namespace tqkv::attn_detail
