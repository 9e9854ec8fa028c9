// Small device helpers shared by the CUDA kernels: tensor-core mma, in-warp 8x8 transpose,
// cp.async, fp16 packing. Inline PTX only; sm_80+ (built for sm_90).
#pragma once

#include <cuda_fp16.h>

#include <cstdint>

namespace tqkv::cuda::detail {

// D[16x8] (fp32) += A[16x16] (fp16, row-major) * B[16x8] (fp16, col-major).
// Fragments (g = lane / 4, t = lane % 4):
//   a0 = A[g][2t..2t+1]  a1 = A[g+8][2t..2t+1]  a2 = A[g][2t+8..2t+9]  a3 = A[g+8][2t+8..2t+9]
//   b0 = B[2t..2t+1][g]  b1 = B[2t+8..2t+9][g]
//   c0,c1 = C[g][2t..2t+1]  c2,c3 = C[g+8][2t..2t+1]
__device__ __forceinline__ void mma_16816(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2,
                                          uint32_t a3, uint32_t b0, uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// Transposes an 8x8 fp16 matrix held one row-pair per lane (lane holds M[g][2t..2t+1]);
// afterwards the lane holds M^T[g][2t..2t+1] = (M[2t][g], M[2t+1][g]). Whole warp, converged.
__device__ __forceinline__ uint32_t transpose8x8(uint32_t x) {
  uint32_t y;
  asm volatile("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;\n" : "=r"(y) : "r"(x));
  return y;
}

__device__ __forceinline__ uint32_t pack_half2(float lo, float hi) {
  const __half2 h = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&h);
}

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
// 16-byte global -> shared copy that bypasses L1 (streamed data).
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_addr(smem)), "l"(gmem));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// 2^x with the hardware approximation (rel. error ~2^-22; -inf -> 0). Softmax weights only.
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ float warp_max_over_g(float v) {  // reduce over lanes with equal t
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 4));
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 8));
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 16));
  return v;
}
__device__ __forceinline__ float warp_sum_over_g(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 4);
  v += __shfl_xor_sync(0xffffffffu, v, 8);
  v += __shfl_xor_sync(0xffffffffu, v, 16);
  return v;
}
// Brings the 128-byte line holding p into L2 (no register, no wait).
__device__ __forceinline__ void prefetch_l2(const void* p) {
  asm volatile("prefetch.global.L2 [%0];" ::"l"(p));
}
__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// One step of a butterfly reduce-scatter over the lanes: v[k] for k < 2 SH holds this lane's terms
// of 2 SH sums; afterwards v[k] for k < SH holds the lane pair's (lane, lane ^ SH) sums of the half
// this lane keeps (the upper half where lane & SH). Four steps from 16 values (after adding the
// two half-warps) leave sum lane & 15 in v[0].
template <int SH>
__device__ __forceinline__ void reduce_scatter_step(float (&v)[16], int lane) {
  const bool up = (lane & SH) != 0;
#pragma unroll
  for (int k = 0; k < SH; ++k) {
    const float send = up ? v[k] : v[k + SH];
    const float keep = up ? v[k + SH] : v[k];
    v[k] = keep + __shfl_xor_sync(0xffffffffu, send, SH);
  }
}

}  // namespace tqkv::cuda::detail
