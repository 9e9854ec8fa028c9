// Quantize-on-write, fast path: power-of-two head sizes (64, 128, 256) with the randomized
// Hadamard rotation, 16-byte aligned inputs, no scale search, the decode format pairs. quantize.cu
// reaches it through launch_quantize_old (quantize_old.cu), which tries it first.
//
//
// One warp per (token, head) item, half a warp per side: lanes 0-15 encode the K vector, lanes
// 16-31 the V vector of the same item, at the same time. Lane l (of its half) holds the E = D/16
// contiguous coordinates [l*E, l*E + E) in registers: the input arrives as one 16-byte load
// (fp16, E = 8), the transform is log2(E) in-register butterfly stages plus 4 shuffle stages
// inside the half, the norm and the sum of squared centroids are 4-step half-warp reductions,
// every coordinate's index is an unrolled binary search over the boundaries in shared memory (E
// independent searches per lane), and the packed indices go out through a per-half word buffer
// (atomicOr of each lane's bit range, then whole 32-bit words). A zero vector encodes to index 0
// and scale 0 (codec.h). The next item's inputs are loaded while the current one is encoded.
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>

#include "cuda/cuda_check.h"
#include "cuda/device_utils.cuh"
#include "cuda/hadamard.cuh"
#include "cuda/occupancy_cache.h"
#include "cuda/quantize_internal.h"
#include "tqkv/kv_layout.h"

namespace tqkv::cuda {
namespace {

constexpr int kFastWarps = 8;

template <int E>
__device__ __forceinline__ void load_vec(const void* src, DType t, size_t off, float (&x)[E]) {
  if (t == DType::kF16) {
    const __half* p = static_cast<const __half*>(src) + off;
    if constexpr (E % 8 == 0) {
#pragma unroll
      for (int i = 0; i < E / 8; ++i) {
        const uint4 u = reinterpret_cast<const uint4*>(p)[i];
        const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          const float2 f = __half22float2(*reinterpret_cast<const __half2*>(&w[k]));
          x[8 * i + 2 * k] = f.x;
          x[8 * i + 2 * k + 1] = f.y;
        }
      }
    } else {
      const uint2 u = *reinterpret_cast<const uint2*>(p);
      const uint32_t w[2] = {u.x, u.y};
#pragma unroll
      for (int k = 0; k < 2; ++k) {
        const float2 f = __half22float2(*reinterpret_cast<const __half2*>(&w[k]));
        x[2 * k] = f.x;
        x[2 * k + 1] = f.y;
      }
    }
  } else {
    const float4* p = reinterpret_cast<const float4*>(static_cast<const float*>(src) + off);
#pragma unroll
    for (int i = 0; i < E / 4; ++i) {
      const float4 f = p[i];
      x[4 * i] = f.x; x[4 * i + 1] = f.y; x[4 * i + 2] = f.z; x[4 * i + 3] = f.w;
    }
  }
}

__device__ __forceinline__ float half_sum(float v) {  // sum over the 16 lanes of this half
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  v += __shfl_xor_sync(0xffffffffu, v, 2);
  v += __shfl_xor_sync(0xffffffffu, v, 4);
  v += __shfl_xor_sync(0xffffffffu, v, 8);
  return v;
}

// Indices of this lane's E rotated coordinates y (already divided by |x|) for BITS, by an
// unrolled binary search over the side's boundaries; the sum of their squared centroids.
template <int E, int BITS>
__device__ __forceinline__ float search_indices(const float (&y)[E], const float* bnd, const float* cent,
                                                bool zero, uint32_t (&idx)[E]) {
  if constexpr (BITS == kF16Bits) {
    return 0.f;
  } else {
    constexpr int L = 1 << BITS;
    const float b_mid = bnd[L / 2 - 1];
#pragma unroll
    for (int e = 0; e < E; ++e) idx[e] = y[e] > b_mid ? L / 2 : 0;
#pragma unroll
    for (int st = L / 4; st >= 1; st >>= 1) {
#pragma unroll
      for (int e = 0; e < E; ++e) idx[e] += y[e] > bnd[idx[e] + st - 1] ? st : 0;
    }
    float c2 = 0.f;
#pragma unroll
    for (int e = 0; e < E; ++e) {
      if (zero) idx[e] = 0;  // a zero vector encodes to index 0, scale 0 (codec.h)
      const float c = cent[idx[e]];
      c2 = fmaf(c, c, c2);
    }
    return c2;
  }
}

// Stores this lane's part of one row: fp16 values (BITS 16) or packed indices + the scale.
template <int D, int E, int BITS>
__device__ __forceinline__ void store_row(uint8_t* tile, int page_size, int row, int hl, unsigned hmask,
                                          const float (&x)[E], const uint32_t (&idx)[E], uint32_t* wbuf,
                                          float norm, float c2) {
  if constexpr (BITS == kF16Bits) {
    uint32_t h[E / 2];
#pragma unroll
    for (int e = 0; e < E; e += 2) h[e / 2] = detail::pack_half2(x[e], x[e + 1]);
    uint32_t* dst = reinterpret_cast<uint32_t*>(tile + (static_cast<size_t>(row) * D + hl * E) * 2);
#pragma unroll
    for (int i = 0; i < E / 2; i += 2) *reinterpret_cast<uint2*>(dst + i) = make_uint2(h[i], h[i + 1]);
  } else {
    uint8_t* dst_row = tile + static_cast<size_t>(row) * (D * BITS / 8);
    constexpr int kLaneBits = E * BITS;
    if constexpr (kLaneBits % 32 == 0) {  // whole words per lane: store directly
      uint32_t w[kLaneBits / 32] = {};
#pragma unroll
      for (int e = 0; e < E; ++e) w[e * BITS / 32] |= idx[e] << ((e * BITS) % 32);
      uint32_t* d32 = reinterpret_cast<uint32_t*>(dst_row) + hl * (kLaneBits / 32);
#pragma unroll
      for (int i = 0; i < kLaneBits / 32; ++i) d32[i] = w[i];
    } else {  // lanes share words: OR each lane's bit range into a word buffer, then store words
      constexpr int kWords = D * BITS / 32;
      for (int i = hl; i < kWords; i += 16) wbuf[i] = 0u;
      __syncwarp(hmask);
      const int bit0 = hl * kLaneBits;
      uint64_t v = 0;
#pragma unroll
      for (int e = 0; e < E; ++e) v |= static_cast<uint64_t>(idx[e]) << (e * BITS);
      const int w0 = bit0 >> 5, sh = bit0 & 31;
      atomicOr(&wbuf[w0], static_cast<uint32_t>(v << sh));
      if (kLaneBits + sh > 32) atomicOr(&wbuf[w0 + 1], static_cast<uint32_t>((v << sh) >> 32));
      if (kLaneBits + sh > 64) atomicOr(&wbuf[w0 + 2], static_cast<uint32_t>(v >> (64 - sh)));
      __syncwarp(hmask);
      uint32_t* d32 = reinterpret_cast<uint32_t*>(dst_row);
      for (int i = hl; i < kWords; i += 16) d32[i] = wbuf[i];
      __syncwarp(hmask);
    }
    if (hl == 0) {
      const float scale = (norm > 0.f && c2 > 0.f) ? norm / sqrtf(c2) : 0.f;
      reinterpret_cast<uint16_t*>(tile + tile_scales_offset(page_size, D, BITS))[row] =
          __half_as_ushort(__float2half_rn(scale));
    }
  }
}

template <int D, int KB, int VB>
__global__ void __launch_bounds__(kFastWarps * 32, D >= 256 ? 2 : 4) quantize_hadamard_kernel(const QuantArgs a) {
  constexpr int E = D / 16;
  static_assert(E * 8 <= 128 && E * 4 <= 64, "lane bit range must fit the packing words");
  constexpr int kMaxWords = D * 4 / 32;  // words of one row at up to 4 bits (8-bit rows store directly)
  __shared__ float tables[2][2][256];    // [side][boundaries, centroids]
  __shared__ uint32_t words[kFastWarps][2][kMaxWords];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, half = lane >> 4, hl = lane & 15;
  const PagedKVView& v = a.view;
  for (int s = 0; s < 2; ++s) {
    const int bits = s == 0 ? KB : VB;
    if (bits == kF16Bits) continue;
    const KVSideView& side = s == 0 ? v.k : v.v;
    const int levels = 1 << bits;
    for (int i = threadIdx.x; i < levels; i += blockDim.x) {
      tables[s][1][i] = side.centroids[i];
      if (i + 1 < levels) tables[s][0][i] = a.bnd[s][i];
    }
  }
  __syncthreads();
  const float* bnd = tables[half][0];
  const float* cent = tables[half][1];
  const void* src = a.src[half];
  uint32_t* wbuf = words[warp][half];
  const unsigned hmask = 0xffffu << (16 * half);
  const int H = v.num_kv_heads;
  const long long total = static_cast<long long>(a.num_tokens) * H;
  const float inv_sqrt_d = rsqrtf(static_cast<float>(D));
  float sg[E];
#pragma unroll
  for (int e = 0; e < E; ++e) sg[e] = v.hadamard_signs[hl * E + e];

  const long long stride = static_cast<long long>(gridDim.x) * kFastWarps;
  long long item = static_cast<long long>(blockIdx.x) * kFastWarps + warp;
  float xn[E];
  if (item < total) load_vec<E>(src, a.in_type, static_cast<size_t>(item) * D + hl * E, xn);
  for (; item < total; item += stride) {  // warp-uniform trip count
    float x[E];
#pragma unroll
    for (int e = 0; e < E; ++e) x[e] = xn[e];
    if (item + stride < total) load_vec<E>(src, a.in_type, static_cast<size_t>(item + stride) * D + hl * E, xn);
    const int it32 = static_cast<int>(item);
    const int token = it32 / H, head = it32 - token * H;
    const int64_t slot = a.slots[token];
    __syncwarp();  // the halves stored separately last round: reconverge before the shuffles
    // Norm and transform in straight-line code (all 32 lanes; an fp16 half's results go unused).
    float n2 = 0.f, y[E];
#pragma unroll
    for (int e = 0; e < E; ++e) { n2 = fmaf(x[e], x[e], n2); y[e] = x[e] * sg[e]; }
    detail::hadamard_in_lanes<E, 16>(y, hl);
    const float norm = sqrtf(half_sum(n2));
    const float inv = norm > 0.f ? 1.f / norm : 0.f;
#pragma unroll
    for (int e = 0; e < E; ++e) y[e] = y[e] * inv_sqrt_d * inv;
    uint32_t idx[E];
    float c2;
    if constexpr (KB == VB) {
      c2 = search_indices<E, KB>(y, bnd, cent, norm == 0.f, idx);
    } else {
      c2 = half == 0 ? search_indices<E, KB>(y, bnd, cent, norm == 0.f, idx)
                     : search_indices<E, VB>(y, bnd, cent, norm == 0.f, idx);
    }
    c2 = half_sum(c2);
    if (slot < 0) continue;  // padding token (warp-uniform)
    int page, row;
    if (slot < 0x7fffffff) {  // 32-bit division (the 64-bit one is a long subroutine)
      const uint32_t s32 = static_cast<uint32_t>(slot), ps = static_cast<uint32_t>(v.page_size);
      page = static_cast<int>(s32 / ps);
      row = static_cast<int>(s32 - static_cast<uint32_t>(page) * ps);
    } else {
      page = static_cast<int>(slot / v.page_size);
      row = static_cast<int>(slot % v.page_size);
    }
    if (half == 0) {
      store_row<D, E, KB>(v.k_tile(page, head), v.page_size, row, hl, hmask, x, idx, wbuf, norm, c2);
    } else {
      store_row<D, E, VB>(v.v_tile(page, head), v.page_size, row, hl, hmask, x, idx, wbuf, norm, c2);
    }
  }
}

}  // namespace

Status launch_quantize_hadamard(const QuantArgs& a, int sms, cudaStream_t stream, bool* launched) {
  *launched = false;
  const PagedKVView& view = a.view;
  const long long items = static_cast<long long>(a.num_tokens) * view.num_kv_heads;
  const int d = view.head_dim;
  const bool aligned = reinterpret_cast<uintptr_t>(a.src[0]) % 16 == 0 && reinterpret_cast<uintptr_t>(a.src[1]) % 16 == 0;
  if (view.hadamard_signs && (d == 64 || d == 128 || d == 256) && aligned && !view.scale_search) {
    auto launch = [&](auto kernel) -> Status {
      int per_sm = 1;
      TQKV_CUDA_RETURN_IF_ERROR(
          detail::cached_blocks_per_sm(reinterpret_cast<const void*>(kernel), kFastWarps * 32, 0, &per_sm));
      const long long blocks = (items + kFastWarps - 1) / kFastWarps;
      const int grid = static_cast<int>(std::min<long long>(blocks, static_cast<long long>(std::max(per_sm, 1)) * sms));
      kernel<<<grid, kFastWarps * 32, 0, stream>>>(a);
      TQKV_CUDA_RETURN_IF_ERROR(cudaGetLastError());
      *launched = true;
      return Status::ok();
    };
#define TQKV_QUANT_FAST(KB, VB)                                                              \
    if (view.k.bits == KB && view.v.bits == VB) {                                            \
      switch (d) {                                                                           \
        case 64: return launch(quantize_hadamard_kernel<64, KB, VB>);                         \
        case 128: return launch(quantize_hadamard_kernel<128, KB, VB>);                       \
        default: return launch(quantize_hadamard_kernel<256, KB, VB>);                        \
      }                                                                                      \
    }
    TQKV_QUANT_FAST(16, 16)
    TQKV_QUANT_FAST(8, 8)
    TQKV_QUANT_FAST(4, 4)
    TQKV_QUANT_FAST(3, 3)
    TQKV_QUANT_FAST(2, 2)
    TQKV_QUANT_FAST(8, 4)
    TQKV_QUANT_FAST(4, 3)
#undef TQKV_QUANT_FAST
  }
  return Status::ok();  // a pair or shape this kernel is not built for: *launched stays false
}

}  // namespace tqkv::cuda
