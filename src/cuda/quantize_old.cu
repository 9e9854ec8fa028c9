// The quantize-on-write kernels from before the tensor-core ones (quantize_tc*.cu*). quantize.cu
// sends here every shape or format pair the tensor-core kernels are not built for (head sizes 64,
// 80, 256; 96 and 128 with other pairs; 128 with a dense rotation; unaligned inputs), every call
// with the scale search (PagedKVView::scale_search) except d = 128 Hadamard calls of >= 4096
// vectors, and every call when TQKV_CUDA_QUANT=old.
//
// quantize_kernel (any head size): one warp per (token, kv head, side), the next item's input
// loaded while the current one is encoded; a TurboQuant side is rotated
// (fast Walsh-Hadamard across the warp when view.hadamard_signs is set and head_dim is a power of
// two, else the dense P), finds each coordinate's codebook index by binary search over the
// decision boundaries, and stores the packed indices and the norm-corrected fp16 scale
// |x| / |c[idx]| (codec.h). fp16 sides are copied.
// quantize_hadamard_kernel (head sizes 64, 128, 256 with the Hadamard rotation, 16-byte aligned
// inputs, the decode format pairs): half a warp per side; see its comment below.
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>

#include "cuda/cuda_check.h"
#include "cuda/device_utils.cuh"
#include "codec/scale_search.h"
#include "cuda/quantize_internal.h"
#include "tqkv/kv_layout.h"

namespace tqkv::cuda {
namespace {

using detail::warp_sum;

constexpr int kWarpsPerBlock = 8;
// Head sizes whose dense rotation quantize_kernel keeps transposed in shared memory (D * D floats:
// 25 KB at 80, 36 KB at 96, 16 KB at 64). 128 and 256 use the Hadamard rotation by default; a
// configured dense P at those sizes (64 KB, 256 KB) is read from global memory as before.
template <int D>
inline constexpr bool kStagePT = D <= 96;
template <int D>
inline constexpr int kDenseSmemBytes = kStagePT<D> ? D * D * 4 : 0;
// Static (xs, idx_scratch, tables) + dynamic shared memory within the 48 KB a launch gets without
// the cudaFuncAttributeMaxDynamicSharedMemorySize opt-in (d = 96: 47,872 bytes), so no host call
// that a stream capture could object to is needed.
template <int D>
inline constexpr bool kSmemFits = 72 * D + 4096 + kDenseSmemBytes<D> <= 48 * 1024;
static_assert(kSmemFits<64> && kSmemFits<80> && kSmemFits<96> && kSmemFits<128> && kSmemFits<256>);

__device__ __forceinline__ float load_in(const void* p, DType t, size_t i) {
  return t == DType::kF32 ? static_cast<const float*>(p)[i]
                          : __half2float(static_cast<const __half*>(p)[i]);
}

// Lane `lane` holds coordinates lane*E .. lane*E+E-1 (E = D/32) and their signs (registers);
// returns H diag(signs) x / sqrt(D).
template <int E>
__device__ __forceinline__ void fwht_warp(float (&v)[E], const float (&sg)[E], int lane, float inv_sqrt_d) {
#pragma unroll
  for (int e = 0; e < E; ++e) v[e] *= sg[e];
#pragma unroll
  for (int h = 1; h < E; h <<= 1) {  // strides inside the lane
#pragma unroll
    for (int e = 0; e < E; ++e) {
      if ((e & h) == 0) {
        const float a = v[e], b = v[e + h];
        v[e] = a + b;
        v[e + h] = a - b;
      }
    }
  }
#pragma unroll
  for (int lm = 1; lm < 32; lm <<= 1) {  // strides across lanes: h = lm * E
#pragma unroll
    for (int e = 0; e < E; ++e) {
      const float u = __shfl_xor_sync(0xffffffffu, v[e], lm);
      v[e] = (lane & lm) ? u - v[e] : v[e] + u;
    }
  }
#pragma unroll
  for (int e = 0; e < E; ++e) v[e] *= inv_sqrt_d;
}

// Encodes one side's vector (rotated coordinates y, unnormalised, in the warp's scratch `ys`)
// into tile row `row`. Every lane takes part; the D/32 coordinates of a lane are searched
// independently (unrolled) so their table reads overlap.
// Scale search (search = true, 2-4 bits; CodecConfig::scale_search, docs/formats.md): the index
// pass runs on t * alpha for the CPU encoder's seven pre-scales and keeps the alpha with the
// largest (t . c)^2 / |c|^2, decided on lane 0's warp sums and broadcast (the sums are reduced in
// another order than the CPU's, so a near-tie between two alphas may go the other way).

template <int D>
__device__ void encode_store(const float* ys, float norm, uint8_t* idx_scratch, const float* bnd,
                             const float* centroids, int bits, uint8_t* tile, int page_size, int row,
                             int lane, bool search) {
  constexpr int kPer = (D + 31) / 32;
  const int levels = 1 << bits;
  const float inv = norm > 0.f ? 1.f / norm : 0.f;
  float y[kPer];
  uint32_t q[kPer];
#pragma unroll
  for (int k = 0; k < kPer; ++k) {
    const int j = lane + 32 * k;
    y[k] = j < D ? ys[j] * inv : 0.f;
    q[k] = 0;
  }
  float alpha = 1.f;
  if (search && norm > 0.f) {  // the caller passes search only where scale_search_applies
    // The pre-scales are evaluated G at a time with their binary searches and warp sums
    // interleaved (G * kPer independent lookup chains, 2 G independent shuffle chains): a decode
    // step quantizes one vector per warp, so the latency of seven serial passes was the cost.
    // Same sums in the same order as one pass per pre-scale, so the same choice.
    constexpr int G = kPer <= 2 ? kScaleSearchSteps : kPer <= 4 ? 4 : 1;  // within the 80 registers of 3 blocks / SM
    float best = -1.f;
#pragma unroll
    for (int a0 = 0; a0 < kScaleSearchSteps; a0 += G) {
      uint32_t qi[G][kPer];
#pragma unroll
      for (int g = 0; g < G; ++g)
#pragma unroll
        for (int k = 0; k < kPer; ++k) qi[g][k] = 0;
      for (int s = levels >> 1; s >= 1; s >>= 1) {
#pragma unroll
        for (int g = 0; g < G; ++g) {
          if (a0 + g >= kScaleSearchSteps) continue;
          const float al = scale_search_alpha(a0 + g);
#pragma unroll
          for (int k = 0; k < kPer; ++k) qi[g][k] += y[k] * al > bnd[qi[g][k] + s - 1] ? s : 0;
        }
      }
      float yc[G], cc[G];
#pragma unroll
      for (int g = 0; g < G; ++g) {
        yc[g] = 0.f;
        cc[g] = 0.f;
#pragma unroll
        for (int k = 0; k < kPer; ++k) {
          const float c = lane + 32 * k < D ? centroids[qi[g][k]] : 0.f;
          yc[g] = fmaf(y[k], c, yc[g]);
          cc[g] = fmaf(c, c, cc[g]);
        }
      }
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) {  // warp_sum's order, all 2 G sums in step
#pragma unroll
        for (int g = 0; g < G; ++g) {
          yc[g] += __shfl_xor_sync(0xffffffffu, yc[g], o);
          cc[g] += __shfl_xor_sync(0xffffffffu, cc[g], o);
        }
      }
#pragma unroll
      for (int g = 0; g < G; ++g) {
        if (a0 + g >= kScaleSearchSteps) continue;
        const float jv = cc[g] > 0.f ? yc[g] * yc[g] / cc[g] : 0.f;
        if (jv > best) best = jv, alpha = scale_search_alpha(a0 + g);
      }
    }
    alpha = __shfl_sync(0xffffffffu, alpha, 0);  // one decision for the whole warp
#pragma unroll
    for (int k = 0; k < kPer; ++k) y[k] *= alpha;
  }
  for (int s = levels >> 1; s >= 1; s >>= 1) {  // binary search, all coordinates in step
#pragma unroll
    for (int k = 0; k < kPer; ++k) q[k] += y[k] > bnd[q[k] + s - 1] ? s : 0;
  }
  float c2 = 0.f;
#pragma unroll
  for (int k = 0; k < kPer; ++k) {
    const int j = lane + 32 * k;
    if (j < D) {
      idx_scratch[j] = static_cast<uint8_t>(q[k]);
      const float c = centroids[q[k]];
      c2 = fmaf(c, c, c2);
    }
  }
  c2 = warp_sum(c2);
  __syncwarp();
  const int nbytes = D * bits / 8;
  uint8_t* dst = tile + static_cast<size_t>(row) * nbytes;
  for (int k = lane; k < nbytes; k += 32) {  // byte k holds bits [8k, 8k+8) of the bitstream
    uint32_t v = 0;
    for (int j = (8 * k) / bits; j < D && j * bits < 8 * k + 8; ++j) {
      const int sh = j * bits - 8 * k;
      v |= sh >= 0 ? (static_cast<uint32_t>(idx_scratch[j]) << sh) : (static_cast<uint32_t>(idx_scratch[j]) >> -sh);
    }
    dst[k] = static_cast<uint8_t>(v & 0xffu);
  }
  if (lane == 0) {
    const float scale = (norm > 0.f && c2 > 0.f) ? norm / sqrtf(c2) : 0.f;
    uint16_t* scales = reinterpret_cast<uint16_t*>(tile + tile_scales_offset(page_size, D, bits));
    scales[row] = __half_as_ushort(__float2half_rn(scale));
  }
  __syncwarp();
}

// Fast path: lane holds the E = D/32 contiguous rotated coordinates y[] (unnormalised) of one
// vector. Indices by unrolled binary search (BITS known), the lane's E*BITS bits OR-ed into a
// zeroed word buffer (lanes' ranges are adjacent, so neighbours share words), then stored as
// 32-bit words (rows are 4-byte aligned for power-of-two D).
template <int D, int BITS>
__device__ __forceinline__ void encode_fast(const float (&y)[D / 32], float norm, const float* bnd,
                                            const float* cent, uint32_t* words, uint8_t* tile,
                                            int page_size, int row, int lane) {
  constexpr int E = D / 32, L = 1 << BITS, NW = D * BITS / 32;
  const float inv = norm > 0.f ? 1.f / norm : 0.f;
  uint64_t v = 0;
  float c2 = 0.f;
#pragma unroll
  for (int e = 0; e < E; ++e) {
    const float yy = y[e] * inv;
    uint32_t idx = 0;
#pragma unroll
    for (int st = L >> 1; st >= 1; st >>= 1) idx += yy > bnd[idx + st - 1] ? st : 0;
    const float c = cent[idx];
    c2 = fmaf(c, c, c2);
    v |= static_cast<uint64_t>(idx) << (e * BITS);
  }
  for (int i = lane; i < NW; i += 32) words[i] = 0u;
  __syncwarp();
  const int bit0 = lane * E * BITS, w0 = bit0 >> 5, sh = bit0 & 31;
  const uint64_t lo = v << sh;
  atomicOr(&words[w0], static_cast<uint32_t>(lo));
  if (E * BITS + sh > 32) atomicOr(&words[w0 + 1], static_cast<uint32_t>(lo >> 32));
  if (E * BITS + sh > 64) atomicOr(&words[w0 + 2], static_cast<uint32_t>(v >> (64 - sh)));
  __syncwarp();
  uint32_t* dst = reinterpret_cast<uint32_t*>(tile + static_cast<size_t>(row) * (D * BITS / 8));
  for (int i = lane; i < NW; i += 32) dst[i] = words[i];
  c2 = warp_sum(c2);
  if (lane == 0) {
    const float scale = (norm > 0.f && c2 > 0.f) ? norm / sqrtf(c2) : 0.f;
    reinterpret_cast<uint16_t*>(tile + tile_scales_offset(page_size, D, BITS))[row] =
        __half_as_ushort(__float2half_rn(scale));
  }
  __syncwarp();
}

template <int D>
__global__ void __launch_bounds__(kWarpsPerBlock * 32, 3) quantize_kernel(const QuantArgs a) {
  constexpr bool kPow2 = (D & (D - 1)) == 0;
  constexpr int E = kPow2 ? D / 32 : 1;
  __shared__ float xs[kWarpsPerBlock][2][D];
  __shared__ __align__(16) uint8_t idx_scratch[kWarpsPerBlock][D];
  __shared__ float tables[2][2][256];  // [side][boundaries, centroids]
  // kStagePT: the dense rotation's transpose in shared memory (dynamic, kDenseSmemBytes), so that
  // lane i reads P[i][j] at pt[j * D + i], 32 consecutive words per load; read from global memory
  // instead, every load of the product touched 32 rows' cache lines, and the kernel was bound by
  // those L1 wavefronts (about 90 us for a decode step of 256 vectors at d = 96, 20 ms for 32768).
  extern __shared__ float pt[];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const PagedKVView& v = a.view;
  if constexpr (kStagePT<D>) {
    // rotation is null when both sides are fp16 (nothing is rotated then)
    if (v.rotation != nullptr && !(kPow2 && v.hadamard_signs != nullptr)) {
      for (int e = threadIdx.x; e < D * D; e += blockDim.x) {  // coalesced reads, transposed writes
        const int i = e / D, j = e - i * D;
        pt[j * D + i] = v.rotation[e];
      }
    }
  }
  for (int s = 0; s < 2; ++s) {
    const KVSideView& side = s == 0 ? v.k : v.v;
    if (side.bits == kF16Bits) continue;
    const int levels = 1 << side.bits;
    for (int i = threadIdx.x; i < levels; i += blockDim.x) {
      tables[s][1][i] = side.centroids[i];
      if (i + 1 < levels) tables[s][0][i] = a.bnd[s][i];
    }
  }
  __syncthreads();
  const int H = v.num_kv_heads;
  // One warp per (token, KV head, side): item 2 i is the K vector of (token, head) i, 2 i + 1 its V
  // vector, so a decode step's K and V are encoded by two warps at once (the kernel's time there
  // is one warp's instruction latency, ~3,700 instructions for both sides with the scale search).
  const long long total = 2LL * a.num_tokens * H;
  const bool fast = kPow2 && v.hadamard_signs != nullptr;
  const float inv_sqrt_d = rsqrtf(static_cast<float>(D));
  float sg[kPow2 ? E : 1];  // this lane's Hadamard signs, loaded once
#pragma unroll
  for (int e = 0; e < (kPow2 ? E : 1); ++e) sg[e] = fast ? v.hadamard_signs[lane * E + e] : 1.f;

  auto process_item = [&](long long item, const float (&xcur)[kPow2 ? E : 1]) {
    const int it32 = static_cast<int>(item >> 1);  // < 2^31 (checked on the host)
    const int s_item = static_cast<int>(item & 1);  // 0 = K, 1 = V
    const int token = it32 / H, head = it32 - token * H;
    const int64_t slot = a.slots[token];
    if (slot < 0) return;
    const int page = static_cast<int>(slot / v.page_size), row = static_cast<int>(slot % v.page_size);
    const size_t base = static_cast<size_t>(it32) * D;

    const auto& x = xcur;
    for (int s = s_item; s == s_item; ++s) {  // this item's side (a loop for its `continue`s)
      const KVSideView& side = s == 0 ? v.k : v.v;
      uint8_t* tile = s == 0 ? v.k_tile(page, head) : v.v_tile(page, head);
      float* ys = xs[warp][s];
      if (side.bits == kF16Bits) {
        uint16_t* dst = reinterpret_cast<uint16_t*>(tile) + static_cast<size_t>(row) * D;
        if constexpr (kPow2) {  // E halves per lane, stored as E/2 words (rows are 2D-byte aligned)
          uint32_t* d32 = reinterpret_cast<uint32_t*>(dst + lane * E);
#pragma unroll
          for (int e = 0; e < E; e += 2) d32[e / 2] = detail::pack_half2(x[e], x[e + 1]);
        } else {
          for (int j = lane; j < D; j += 32)
            dst[j] = __half_as_ushort(__float2half_rn(load_in(a.src[s], a.in_type, base + j)));
        }
        continue;
      }
      float n2 = 0.f;
      const bool search = scale_search_applies(v.scale_search != 0, /*norm_correction=*/true, side.bits);
      if (fast) {
        if constexpr (kPow2) {
          float y[E];
#pragma unroll
          for (int e = 0; e < E; ++e) { y[e] = x[e]; n2 = fmaf(y[e], y[e], n2); }
          fwht_warp<E>(y, sg, lane, inv_sqrt_d);
          if (search) {  // the searching encoder reads the rotated vector from shared memory
#pragma unroll
            for (int e = 0; e < E; ++e) ys[lane * E + e] = y[e];
            __syncwarp();
            encode_store<D>(ys, sqrtf(warp_sum(n2)), idx_scratch[warp], tables[s][0], tables[s][1], side.bits, tile,
                            v.page_size, row, lane, true);
            continue;
          }
          const float norm = sqrtf(warp_sum(n2));
          uint32_t* words = reinterpret_cast<uint32_t*>(idx_scratch[warp]);
          const float* bnd = tables[s][0];
          const float* cent = tables[s][1];
          switch (side.bits) {
            case 2: encode_fast<D, 2>(y, norm, bnd, cent, words, tile, v.page_size, row, lane); break;
            case 3: encode_fast<D, 3>(y, norm, bnd, cent, words, tile, v.page_size, row, lane); break;
            case 4: encode_fast<D, 4>(y, norm, bnd, cent, words, tile, v.page_size, row, lane); break;
            default: encode_fast<D, 8>(y, norm, bnd, cent, words, tile, v.page_size, row, lane); break;
          }
          continue;
        }
      } else {  // dense: y_i = sum_j P[i][j] x_j
        float* xin = xs[warp][s];
        float xr[(D + 31) / 32];
#pragma unroll
        for (int k = 0; k < (D + 31) / 32; ++k) {
          const int j = lane + 32 * k;
          xr[k] = j < D ? load_in(a.src[s], a.in_type, base + j) : 0.f;
          n2 = fmaf(xr[k], xr[k], n2);
        }
        // Stage x in the other side's buffer (a warp encodes one side), then compute y into ys.
        float* stage = xs[warp][1 - s];
#pragma unroll
        for (int k = 0; k < (D + 31) / 32; ++k)
          if (lane + 32 * k < D) stage[lane + 32 * k] = xr[k];
        __syncwarp();
        float yr[(D + 31) / 32];
        if constexpr (kStagePT<D>) {  // the same fmaf chain per output, P from the shared transpose
#pragma unroll
          for (int k = 0; k < (D + 31) / 32; ++k) yr[k] = 0.f;
#pragma unroll 4
          for (int j = 0; j < D; ++j) {
            const float xj = stage[j];
#pragma unroll
            for (int k = 0; k < (D + 31) / 32; ++k)
              if (lane + 32 * k < D) yr[k] = fmaf(pt[j * D + lane + 32 * k], xj, yr[k]);
          }
        } else {
#pragma unroll
          for (int k = 0; k < (D + 31) / 32; ++k) {
            const int i = lane + 32 * k;
            float acc = 0.f;
            if (i < D) {
              const float* pr = v.rotation + static_cast<size_t>(i) * D;
              for (int j = 0; j < D; ++j) acc = fmaf(pr[j], stage[j], acc);
            }
            yr[k] = acc;
          }
        }
        __syncwarp();
#pragma unroll
        for (int k = 0; k < (D + 31) / 32; ++k)
          if (lane + 32 * k < D) xin[lane + 32 * k] = yr[k];
      }
      __syncwarp();
      const float norm = sqrtf(warp_sum(n2));
      encode_store<D>(ys, norm, idx_scratch[warp], tables[s][0], tables[s][1], side.bits, tile,
                      v.page_size, row, lane, search);
    }
  };
  // Inputs of the next item are loaded while the current one is processed (one item is only
  // 2 * D * 2 bytes per warp).
  float xc[kPow2 ? E : 1], xn[kPow2 ? E : 1];  // the item's side only
  auto load_item = [&](long long item, float (&x)[kPow2 ? E : 1]) {
    const size_t base = static_cast<size_t>(item >> 1) * D;
    if constexpr (kPow2) {
      const int s = static_cast<int>(item & 1);  // only this item's side
      {
        if (a.in_type == DType::kF16 && E % 2 == 0) {  // paired loads (lane chunks are 4-byte aligned)
          const __half2* src = reinterpret_cast<const __half2*>(static_cast<const __half*>(a.src[s]) + base + lane * E);
#pragma unroll
          for (int e = 0; e < E; e += 2) {
            const float2 f = __half22float2(src[e / 2]);
            x[e] = f.x;
            x[e + 1] = f.y;
          }
        } else {
#pragma unroll
          for (int e = 0; e < E; ++e) x[e] = load_in(a.src[s], a.in_type, base + lane * E + e);
        }
      }
    }
  };
  const long long stride = static_cast<long long>(gridDim.x) * kWarpsPerBlock;
  long long item = static_cast<long long>(blockIdx.x) * kWarpsPerBlock + warp;
  if (item < total) load_item(item, xc);
  for (; item < total; item += stride) {
    if (item + stride < total) load_item(item + stride, xn);
    process_item(item, xc);
#pragma unroll
    for (int e = 0; e < (kPow2 ? E : 1); ++e) xc[e] = xn[e];
  }
}

// ---- Fast path: power-of-two head size, randomized Hadamard rotation ----
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
#pragma unroll
    for (int hs = 1; hs < E; hs <<= 1) {
#pragma unroll
      for (int e = 0; e < E; ++e) {
        if ((e & hs) == 0) {
          const float p = y[e], q = y[e + hs];
          y[e] = p + q;
          y[e + hs] = p - q;
        }
      }
    }
#pragma unroll
    for (int lm = 1; lm < 16; lm <<= 1) {
      const float sgn = (hl & lm) ? -1.f : 1.f;  // upper lane: partner - own; lower: own + partner
#pragma unroll
      for (int e = 0; e < E; ++e) {
        const float u = __shfl_xor_sync(0xffffffffu, y[e], lm);
        y[e] = fmaf(sgn, y[e], u);  // exact: one rounding, like the add it replaces
      }
    }
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

Status launch_quantize_old(const QuantArgs& a, cudaStream_t stream) {
  const PagedKVView& view = a.view;
  const long long items = static_cast<long long>(a.num_tokens) * view.num_kv_heads;
  const int d = view.head_dim;
  const bool aligned = reinterpret_cast<uintptr_t>(a.src[0]) % 16 == 0 && reinterpret_cast<uintptr_t>(a.src[1]) % 16 == 0;
  int dev = 0, sms = 132;
  TQKV_CUDA_RETURN_IF_ERROR(cudaGetDevice(&dev));
  TQKV_CUDA_RETURN_IF_ERROR(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  if (view.hadamard_signs && (d == 64 || d == 128 || d == 256) && aligned && !view.scale_search) {
    auto launch = [&](auto kernel) -> Status {
      int per_sm = 1;
      TQKV_CUDA_RETURN_IF_ERROR(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kFastWarps * 32, 0));
      const long long blocks = (items + kFastWarps - 1) / kFastWarps;
      const int grid = static_cast<int>(std::min<long long>(blocks, static_cast<long long>(std::max(per_sm, 1)) * sms));
      kernel<<<grid, kFastWarps * 32, 0, stream>>>(a);
      TQKV_CUDA_RETURN_IF_ERROR(cudaGetLastError());
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
  // Enough resident blocks to fill the device (__launch_bounds__(256, 3): 3 per SM, one wave);
  // the kernel loops over the rest (grid-stride), so per-block set-up is paid once per block.
  // quantize_kernel's items are (token, head, side): two per (token, head), one warp each.
  const long long blocks = (2 * items + kWarpsPerBlock - 1) / kWarpsPerBlock;
  const int grid = static_cast<int>(std::min<long long>(blocks, 3LL * sms));
  auto launch = [&](auto kernel, int smem) -> Status {
    kernel<<<grid, kWarpsPerBlock * 32, smem, stream>>>(a);
    TQKV_CUDA_RETURN_IF_ERROR(cudaGetLastError());
    return Status::ok();
  };
  switch (d) {
    case 64: return launch(quantize_kernel<64>, kDenseSmemBytes<64>);
    case 80: return launch(quantize_kernel<80>, kDenseSmemBytes<80>);
    case 96: return launch(quantize_kernel<96>, kDenseSmemBytes<96>);
    case 128: return launch(quantize_kernel<128>, kDenseSmemBytes<128>);
    case 256: return launch(quantize_kernel<256>, kDenseSmemBytes<256>);
    default: return unsupported("head_dim");
  }
}

}  // namespace tqkv::cuda
