// store_sink_tokens (include/tqkv/cuda_attention.h): the write side of attention sinks on the GPU.
// New tokens at positions < view.sink_tokens go, as fp16, into their sequence's sink tile, each
// side in the space its kernels work in (docs/formats.md, "Attention sinks"): y = P x with the
// view's dense rotation when the side is TurboQuant, x when it is fp16. The read side is the
// merge kernel of decode_api.cu.
#include <cuda_fp16.h>

#include <cstdint>
#include <string>

#include "cuda/cuda_check.h"
#include "tqkv/cuda_attention.h"

namespace tqkv::cuda {
namespace {

// Grid: (token, kv head, side). Tokens at positions outside [0, sink_tokens) return at once, so
// a decode step past the sinks costs one empty launch.
__global__ void store_sinks_kernel(const void* k_new, const void* v_new, DType in_type, const int32_t* seq_slot,
                                   const int32_t* pos, int num_kv_heads, int d, int sink_tokens, size_t tile_halves,
                                   const float* rot_k, const float* rot_v, __half* sink_k, __half* sink_v) {
  extern __shared__ float xs[];  // [d]
  const int t = blockIdx.x, h = blockIdx.y, side = blockIdx.z;
  const int p = pos[t], slot = seq_slot[t];
  if (p < 0 || p >= sink_tokens || slot < 0) return;
  const void* src = side == 0 ? k_new : v_new;
  const float* rot = side == 0 ? rot_k : rot_v;
  const size_t in0 = (static_cast<size_t>(t) * num_kv_heads + h) * d;
  for (int i = threadIdx.x; i < d; i += blockDim.x)
    xs[i] = in_type == DType::kF32 ? static_cast<const float*>(src)[in0 + i]
                                   : __half2float(static_cast<const __half*>(src)[in0 + i]);
  __syncthreads();
  __half* dst = (side == 0 ? sink_k : sink_v) + (static_cast<size_t>(slot) * num_kv_heads + h) * tile_halves +
                static_cast<size_t>(p) * d;
  for (int i = threadIdx.x; i < d; i += blockDim.x) {
    float y = xs[i];
    if (rot) {  // y_i = sum_j P[i][j] x_j
      y = 0.f;
      const float* pr = rot + static_cast<size_t>(i) * d;
      for (int j = 0; j < d; ++j) y = fmaf(__ldg(pr + j), xs[j], y);
    }
    dst[i] = __float2half_rn(y);
  }
}

}  // namespace

Status store_sink_tokens(const PagedKVView& view, const void* k_new, const void* v_new, DType in_type,
                         const int32_t* seq_slot, const int32_t* pos, int32_t num_tokens, cudaStream_t stream) {
  if (view.sink_tokens == 0) return Status::ok();
  if (view.sink_tokens < 0 || view.sink_tokens > view.page_size)
    return invalid_argument("sink_tokens must be in [0, page_size] (got " + std::to_string(view.sink_tokens) + ")");
  if (!is_valid_head_dim(view.head_dim) || view.num_kv_heads <= 0 || view.num_kv_heads > 65535)
    return invalid_argument("bad head_dim or num_kv_heads");
  if (!is_valid_kv_bits(view.k.bits) || !is_valid_kv_bits(view.v.bits)) return invalid_argument("bad bits");
  if (!view.sink_k || !view.sink_v) return invalid_argument("attention sinks without sink tiles");
  if ((view.k.bits != kF16Bits || view.v.bits != kF16Bits) && !view.rotation)
    return invalid_argument("TurboQuant side without a rotation matrix");
  if (num_tokens < 0) return invalid_argument("negative num_tokens");
  if (num_tokens == 0) return Status::ok();
  if (!k_new || !v_new || !seq_slot || !pos) return invalid_argument("null k_new, v_new, seq_slot or pos");
  const int d = view.head_dim;
  const dim3 grid(static_cast<unsigned>(num_tokens), static_cast<unsigned>(view.num_kv_heads), 2);
  store_sinks_kernel<<<grid, 128, d * sizeof(float), stream>>>(
      k_new, v_new, in_type, seq_slot, pos, view.num_kv_heads, d, view.sink_tokens,
      static_cast<size_t>(tile_bytes(view.sink_tokens, d, kF16Bits) / 2),
      view.k.bits == kF16Bits ? nullptr : view.rotation, view.v.bits == kF16Bits ? nullptr : view.rotation,
      reinterpret_cast<__half*>(view.sink_k), reinterpret_cast<__half*>(view.sink_v));
  TQKV_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return Status::ok();
}

}  // namespace tqkv::cuda
