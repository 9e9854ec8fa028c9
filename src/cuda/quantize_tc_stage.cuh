// Input staging of the tensor-core quantize-on-write (quantize_tc_impl.cuh, STAGE): the shared
// buffer layout of one warp's next tile of inputs and the cp.async copies that fill it.
#pragma once

#include <cstdint>

#include "cuda/device_utils.cuh"
#include "cuda/quantize_internal.h"

namespace tqkv::cuda::tc {

// Input staging (STAGE): each warp copies its next 8-item tile (K rows, then V rows: 2 x 8 x D
// inputs, contiguous in k_new / v_new) into its shared buffer by cp.async while it encodes the
// current tile (the buffer is read into registers at the top of each iteration, then refilled).
// The copy is coalesced (lane l copies 16-byte chunks l, l + 32, ...); chunk c is stored at chunk
// swz(c) so that the reads of lane (g, t) (chunks g * RC + t * RC/4 + i, RC = chunks per item: its
// quarter) hit 8 distinct 16-byte bank groups in every quarter-warp (items 2p, 2p + 1 x quarters
// 0-3): at D = 128 (RC = 16 or 32) the XOR of (c / 8) % 8 into the low bits does it; at D = 96 the
// plain layout does it for fp16 (12 g + 3 t covers the 8 residues mod 8) and leaves 2-way
// conflicts for fp32 (24 g + 6 t: 4 residues; the XOR would make it worse).
template <int D, bool F32>
struct TcStage {
  static constexpr int kEs = F32 ? 4 : 2;
  static constexpr int kSideBytes = 8 * D * kEs;
  static constexpr int kChunks = kSideBytes / 16;  // per side
  static constexpr int kRowChunks = D * kEs / 16;  // per item
  static constexpr int kQChunks = kRowChunks / 4;  // per lane quarter
  static constexpr int kWarpBytes = 2 * kSideBytes;
  static_assert(kChunks % 32 == 0 && kRowChunks % 4 == 0, "whole chunks per lane");
  static constexpr bool kSwizzle = kRowChunks % 16 == 0;
  __device__ static __forceinline__ int swz(int c) { return kSwizzle ? c ^ ((c >> 3) & 7) : c; }
  // Shared address of chunk i of the quarter that starts at chunk c0. With the swizzle, c0 % 4 == 0
  // (kQChunks % 4 == 0), so swz(c0 + i) = swz(c0 + (i & ~3)) ^ (i & 3).
  __device__ static __forceinline__ uint32_t quarter_addr(uint32_t buf, int c0, int i) {
    if constexpr (kSwizzle) return buf + ((swz(c0 + (i & ~3)) ^ (i & 3)) * 16);
    else return buf + (c0 + i) * 16;
  }
};

// cp.async of 16 bytes; zero-fills the destination (reads nothing) when !valid.
__device__ __forceinline__ void cp_async16_zfill(uint32_t dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(valid ? 16 : 0));
}

__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(src));
}

__device__ __forceinline__ uint4 lds128(uint32_t addr) {
  uint4 r;
  asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];\n" : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "r"(addr));
  return r;
}

// Issues the copies of tile m (items 8m .. 8m + 7; items >= total read as zeros) into the buffer
// at shared address buf, and commits them as one group.
template <int D, bool F32>
__device__ __forceinline__ void stage_tile(uint32_t buf, const QuantArgs& a, long long m, long long total, int lane) {
  using S = TcStage<D, F32>;
  constexpr int NC = S::kChunks / 32;
  const long long item0 = m * 8;
  const size_t off = static_cast<size_t>(item0) * (D * S::kEs) + lane * 16;
  const char* src[2] = {static_cast<const char*>(a.src[0]) + off, static_cast<const char*>(a.src[1]) + off};
  if (item0 + 8 <= total) {
#pragma unroll
    for (int side = 0; side < 2; ++side)
#pragma unroll
      for (int k = 0; k < NC; ++k) cp_async16(buf + side * S::kSideBytes + S::swz(k * 32 + lane) * 16, src[side] + k * 512);
  } else {  // the last, partial tile
    const int vchunks = static_cast<int>(total - item0) * S::kRowChunks;
#pragma unroll
    for (int side = 0; side < 2; ++side)
#pragma unroll
      for (int k = 0; k < NC; ++k) {
        const bool ok = k * 32 + lane < vchunks;
        cp_async16_zfill(buf + side * S::kSideBytes + S::swz(k * 32 + lane) * 16, ok ? src[side] + k * 512 : a.src[side], ok);
      }
  }
  detail::cp_async_commit();
}

}  // namespace tqkv::cuda::tc
