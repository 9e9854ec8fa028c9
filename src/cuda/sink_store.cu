// store_sink_tokens (include/tqkv/cuda_attention.h): the write side of attention sinks and of the
// recent ring on the GPU. New tokens at positions < view.sink_tokens go, as fp16, into their
// sequence's sink tile, and (view.recent_tokens > 0) into their row of its ring, each
// side in the space its kernels work in (docs/formats.md, "Attention sinks"): y = P x with the
// view's dense rotation when the side is TurboQuant, x when it is fp16. The read side is the
// merge kernel of decode_api.cu.
#include <cuda_fp16.h>

#include <cstdint>
#include <string>

#include "cuda/cuda_check.h"
#include "cuda/hadamard.cuh"
#include "tqkv/cuda_attention.h"

namespace tqkv::cuda {
namespace {

// Grid: (token, kv head, side). A token goes to its sink row when its position is below
// sink_tokens, and to its ring row (position % recent) when the ring is on, unless a later token of
// the same call takes that row (position + recent, the same slot: tokens of a sequence are
// contiguous and in position order, as a prefill chunk is), so that no two blocks write one row.
// Tokens that go nowhere return at once.
__global__ void store_sinks_kernel(const void* k_new, const void* v_new, DType in_type, const int32_t* seq_slot,
                                   const int32_t* pos, int num_tokens, int num_kv_heads, int d, int sink_tokens,
                                   size_t tile_halves, int recent, size_t ring_halves, const float* rot_k,
                                   const float* rot_v, const float* signs, __half* sink_k, __half* sink_v,
                                   __half* ring_k, __half* ring_v) {
  extern __shared__ float xs[];  // [d]
  const int t = blockIdx.x, h = blockIdx.y, side = blockIdx.z;
  const int p = pos[t], slot = seq_slot[t];
  if (p < 0 || slot < 0) return;
  const bool to_sink = p < sink_tokens;
  const bool to_ring = recent > 0 && !(t + recent < num_tokens && seq_slot[t + recent] == slot && pos[t + recent] == p + recent);
  if (!to_sink && !to_ring) return;
  const void* src = side == 0 ? k_new : v_new;
  const float* rot = side == 0 ? rot_k : rot_v;
  const size_t in0 = (static_cast<size_t>(t) * num_kv_heads + h) * d;
  // P = H diag(signs) / sqrt(d) (signs set): the fast transform in shared memory, log2(d) stages,
  // instead of d x d products (with a ring every token comes here: the dense product made a
  // batch-32 decode step ~1.4 ms slower over 32 layers).
  const bool fast = rot != nullptr && signs != nullptr;
  for (int i = threadIdx.x; i < d; i += blockDim.x) {
    const float x = in_type == DType::kF32 ? static_cast<const float*>(src)[in0 + i]
                                           : __half2float(static_cast<const __half*>(src)[in0 + i]);
    xs[i] = fast ? x * __ldg(signs + i) : x;
  }
  __syncthreads();
  if (fast) detail::hadamard_rows_block(xs, 1, d);
  const float inv_sqrt_d = rsqrtf(static_cast<float>(d));
  const size_t slot_head = static_cast<size_t>(slot) * num_kv_heads + h;
  __half* dst = to_sink ? (side == 0 ? sink_k : sink_v) + slot_head * tile_halves + static_cast<size_t>(p) * d : nullptr;
  __half* rdst = to_ring ? (side == 0 ? ring_k : ring_v) + slot_head * ring_halves + static_cast<size_t>(p % recent) * d
                         : nullptr;
  for (int i = threadIdx.x; i < d; i += blockDim.x) {
    float y = fast ? xs[i] * inv_sqrt_d : xs[i];
    if (rot && !fast) {  // y_i = sum_j P[i][j] x_j
      y = 0.f;
      const float* pr = rot + static_cast<size_t>(i) * d;
      for (int j = 0; j < d; ++j) y = fmaf(__ldg(pr + j), xs[j], y);
    }
    if (dst) dst[i] = __float2half_rn(y);
    if (rdst) rdst[i] = __float2half_rn(y);
  }
}

}  // namespace

Status store_sink_tokens(const PagedKVView& view, const void* k_new, const void* v_new, DType in_type,
                         const int32_t* seq_slot, const int32_t* pos, int32_t num_tokens, cudaStream_t stream) {
  if (view.sink_tokens == 0 && view.recent_tokens == 0) return Status::ok();
  if (view.sink_tokens < 0 || view.sink_tokens > view.page_size)
    return invalid_argument("sink_tokens must be in [0, page_size] (got " + std::to_string(view.sink_tokens) + ")");
  if (view.recent_tokens < 0 || view.recent_tokens > 1024)
    return invalid_argument("recent_tokens must be in [0, 1024] (got " + std::to_string(view.recent_tokens) + ")");
  if (!is_valid_head_dim(view.head_dim) || view.num_kv_heads <= 0 || view.num_kv_heads > 65535)
    return invalid_argument("bad head_dim or num_kv_heads");
  if (!is_valid_kv_bits(view.k.bits) || !is_valid_kv_bits(view.v.bits)) return invalid_argument("bad bits");
  if (view.sink_tokens > 0 && (!view.sink_k || !view.sink_v)) return invalid_argument("attention sinks without sink tiles");
  if (view.recent_tokens > 0 && (!view.recent_k || !view.recent_v))
    return invalid_argument("recent tokens without ring tiles");
  if ((view.k.bits != kF16Bits || view.v.bits != kF16Bits) && !view.rotation)
    return invalid_argument("TurboQuant side without a rotation matrix");
  if (num_tokens < 0) return invalid_argument("negative num_tokens");
  if (num_tokens == 0) return Status::ok();
  if (!k_new || !v_new || !seq_slot || !pos) return invalid_argument("null k_new, v_new, seq_slot or pos");
  const int d = view.head_dim;
  const dim3 grid(static_cast<unsigned>(num_tokens), static_cast<unsigned>(view.num_kv_heads), 2);
  store_sinks_kernel<<<grid, 128, d * sizeof(float), stream>>>(
      k_new, v_new, in_type, seq_slot, pos, num_tokens, view.num_kv_heads, d, view.sink_tokens,
      static_cast<size_t>(tile_bytes(view.sink_tokens, d, kF16Bits) / 2), view.recent_tokens,
      static_cast<size_t>(tile_bytes(view.recent_tokens, d, kF16Bits) / 2),
      view.k.bits == kF16Bits ? nullptr : view.rotation, view.v.bits == kF16Bits ? nullptr : view.rotation,
      (d & (d - 1)) == 0 ? view.hadamard_signs : nullptr, reinterpret_cast<__half*>(view.sink_k),
      reinterpret_cast<__half*>(view.sink_v), reinterpret_cast<__half*>(view.recent_k),
      reinterpret_cast<__half*>(view.recent_v));
  TQKV_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return Status::ok();
}

}  // namespace tqkv::cuda
