// attention_prefill: a chunk of new query rows per sequence against its cached pages (the chunk's
// own K/V already written), causal inside the chunk. Host checks and plan; the kernel chain of
// decode_api.cu (query rotation, attention kernel, merge + un-rotation).
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/attention_internal.h"
#include "cuda/cuda_check.h"
#include "tqkv/cuda_attention.h"

namespace tqkv::cuda {
namespace {

using detail::align_up;

// Prefill rows: row r of sequence s (rows grouped by sequence in order) sits at position
// seq_lens[s] - q_lens[s] + i and sees positions [0, that + 1). Rows past sum(q_lens) and rows of
// an inconsistent q_lens (q_lens[s] > seq_lens[s]) get length 0 (zeros out).
__global__ void prefill_rows_kernel(const int32_t* q_lens, const int32_t* seq_lens, int num_seqs, int total_q,
                                    int32_t* row_seq, int32_t* row_len) {
  for (int r = blockIdx.x * blockDim.x + threadIdx.x; r < total_q; r += gridDim.x * blockDim.x) {
    int start = 0, s = 0, len = 0;
    for (; s < num_seqs; ++s) {
      const int ql = max(q_lens[s], 0);
      if (r < start + ql) break;
      start += ql;
    }
    if (s < num_seqs && q_lens[s] <= seq_lens[s]) len = seq_lens[s] - q_lens[s] + (r - start) + 1;
    row_seq[r] = s < num_seqs ? s : 0;
    row_len[r] = len;
  }
}

size_t prefill_extra_bytes(int total_q) { return 2 * align_up(static_cast<size_t>(total_q) * 4); }

}  // namespace

Result<DecodePlan> plan_prefill(const PagedKVView& view, const DecodeParams& params, int32_t total_q,
                                int sm_count) {
  if (total_q <= 0 || total_q > 65535) return invalid_argument("total_q must be in [1, 65535]");
  PagedKVView rows = view;
  rows.num_seqs = total_q;
  TQKV_ASSIGN_OR_RETURN(DecodePlan plan, plan_decode(rows, params, sm_count));
  plan.workspace_bytes += prefill_extra_bytes(total_q);
  return plan;
}

Status attention_prefill(const PagedKVView& view, const DecodeParams& params, const DecodePlan& plan,
                         const int32_t* q_lens, int32_t total_q, const void* q, DType q_type, void* out,
                         DType out_type, void* workspace, size_t workspace_bytes, cudaStream_t stream) {
  if (total_q <= 0 || total_q > 65535) return invalid_argument("total_q must be in [1, 65535]");
  if (!q_lens) return invalid_argument("null q_lens");
  TQKV_RETURN_IF_ERROR(detail::check_view(view, params));  // the sequences themselves
  PagedKVView rows = view;
  rows.num_seqs = total_q;
  TQKV_RETURN_IF_ERROR(
      detail::check_call(rows, params, plan, q, out, workspace, workspace_bytes, prefill_extra_bytes(total_q)));
  auto* ws = static_cast<uint8_t*>(workspace);
  const size_t base = detail::workspace_layout(total_q, params.num_q_heads, view.head_dim, plan.num_splits).total;
  auto* row_seq = reinterpret_cast<int32_t*>(ws + base);
  auto* row_len = reinterpret_cast<int32_t*>(ws + base + align_up(static_cast<size_t>(total_q) * 4));
  prefill_rows_kernel<<<(total_q + 255) / 256, 256, 0, stream>>>(q_lens, view.seq_lens, view.num_seqs, total_q,
                                                                  row_seq, row_len);
  TQKV_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return detail::launch_chain(rows, params, plan, q, q_type, out, out_type, ws, row_seq, row_len, stream);
}

}  // namespace tqkv::cuda
