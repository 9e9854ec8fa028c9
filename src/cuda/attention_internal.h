// Host-side pieces shared by attention_decode (decode_api.cu) and attention_prefill
// (prefill_api.cu): the view checks, the workspace layout and the three-kernel chain (query
// rotation, attention kernel, split merge + un-rotation).
#pragma once

#include <cstddef>
#include <cstdint>

#include "cuda/decode_kernel.cuh"
#include "tqkv/cuda_attention.h"

namespace tqkv::cuda::detail {

size_t align_up(size_t x);  // to 256 bytes

// Workspace of one call over `num_seqs` rows: rotated queries, then the split partials.
struct WorkspaceLayout {
  // page_end: [num_seqs] int32, where each row's pages end when the view has a recent ring
  // (min(row length, recent_from)); the split kernels read it as the row length.
  size_t q_rot = 0, part_o = 0, part_lse = 0, page_end = 0, total = 0;
};
WorkspaceLayout workspace_layout(int num_seqs, int num_q_heads, int head_dim, int num_splits);

// Shapes, formats and parameters the kernels are built for.
Status check_view(const PagedKVView& view, const DecodeParams& p);
// check_view plus the call's pointers, plan and workspace size (`extra_bytes` past the layout).
Status check_call(const PagedKVView& view, const DecodeParams& params, const DecodePlan& plan, const void* q,
                  void* out, void* workspace, size_t workspace_bytes, size_t extra_bytes);

// The middle kernel of the chain: reads args.q_rot, writes args.part_o / part_lse for
// args.num_splits splits. Null: the split-KV decode kernel of decode_*.cu.
using MiddleKernel = Status (*)(const DecodeArgs& args, const void* ctx, cudaStream_t stream);

// Query rotation, the middle kernel, merge + un-rotation, chained with programmatic dependent
// launch. `view` has been checked; `ws` holds workspace_layout(view.num_seqs, ...).
Status launch_chain(const PagedKVView& view, const DecodeParams& params, const DecodePlan& plan, const void* q,
                    DType q_type, void* out, DType out_type, uint8_t* ws, const int32_t* row_seq,
                    const int32_t* row_len, cudaStream_t stream, MiddleKernel middle = nullptr,
                    const void* middle_ctx = nullptr);

}  // namespace tqkv::cuda::detail
