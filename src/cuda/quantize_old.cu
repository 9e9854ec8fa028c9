// The quantize-on-write kernels from before the tensor-core ones (quantize_tc*.cu*). quantize.cu
// sends here every shape or format pair the tensor-core kernels are not built for (head sizes 64,
// 80, 256; 96 and 128 with other pairs; 128 with a dense rotation; unaligned inputs), d = 128
// calls of fewer than 4096 vectors (decode steps), every call with the scale search
// (PagedKVView::scale_search) except d = 128 Hadamard calls of >= 4096 vectors, and every call
// when TQKV_CUDA_QUANT=old.
//
// quantize_kernel (any head size): one warp per (token, kv head, side), the next item's input
// loaded while the current one is encoded; a TurboQuant side is rotated
// (fast Walsh-Hadamard across the warp when view.hadamard_signs is set and head_dim is a power of
// two, else the dense P), finds each coordinate's codebook index by binary search over the
// decision boundaries, and stores the packed indices and the norm-corrected fp16 scale
// |x| / |c[idx]| (codec.h). fp16 sides are copied.
// launch_quantize_old tries the Hadamard fast path of quantize_hadamard.cu first (head sizes 64,
// 128, 256 with the Hadamard rotation, 16-byte aligned inputs, no search, the decode format pairs:
// half a warp per side) and runs quantize_kernel for everything else.
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>

#include "cuda/cuda_check.h"
#include "cuda/device_utils.cuh"
#include "cuda/hadamard.cuh"
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
// returns P x = H diag(signs) x / sqrt(D).
template <int E>
__device__ __forceinline__ void fwht_warp(float (&v)[E], const float (&sg)[E], int lane, float inv_sqrt_d) {
#pragma unroll
  for (int e = 0; e < E; ++e) v[e] *= sg[e];
  detail::hadamard_in_lanes<E, 32>(v, lane);
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

}  // namespace

Status launch_quantize_old(const QuantArgs& a, cudaStream_t stream) {
  const PagedKVView& view = a.view;
  const long long items = static_cast<long long>(a.num_tokens) * view.num_kv_heads;
  const int d = view.head_dim;
  int dev = 0, sms = 132;
  TQKV_CUDA_RETURN_IF_ERROR(cudaGetDevice(&dev));
  TQKV_CUDA_RETURN_IF_ERROR(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  bool fast = false;
  TQKV_RETURN_IF_ERROR(launch_quantize_hadamard(a, sms, stream, &fast));
  if (fast) return Status::ok();
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
