// Kernel templates of the tensor-core quantize-on-write (design notes in quantize_tc.cuh).
// Included by quantize_tc_d128.cu and quantize_tc_d96.cu, each instantiating its head size.
#pragma once

#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "cuda/cuda_check.h"
#include "cuda/device_utils.cuh"
#include "cuda/occupancy_cache.h"
#include "cuda/quantize_tc.cuh"
#include "cuda/quantize_tc_codec.cuh"
#include "cuda/quantize_tc_stage.cuh"
#include "tqkv/kv_layout.h"

namespace tqkv::cuda::tc {

// Static shared memory: [K table] [V table] (fixed addresses: table lookups are LDS [reg + imm]).
// Dynamic: [dense B fragments] [staging buffers, STAGE].
// SEARCH: the searched sides' tables hold C[L] too.
template <int D, int KB, int VB, bool HAD, bool STAGE = false, bool F32 = false, bool SEARCH = false>
struct TcLayout {
  static constexpr int kTabK = 0;
  static constexpr int kTabV = SEARCH ? Grid<KB>::kSearchBytes : Grid<KB>::kBytes;
  static constexpr int kTabBytes = kTabV + (SEARCH ? Grid<VB>::kSearchBytes : Grid<VB>::kBytes);
  static constexpr int kFragBytes = HAD ? 0 : (D / 16) * (D / 8) * 32 * 16;
  static constexpr int kStage = kFragBytes;
  static constexpr int kBytes = kStage + (STAGE ? kTcWarps * TcStage<D, F32>::kWarpBytes : 0);
};

// Loads lane t's quarter of item `it`'s vector into fp16 words `h` (hi part) and, for fp32
// inputs, `l` (lo part), after scaling by the power of two `pw` from the fp32 norm. `f16row`
// receives the unscaled fp16 words (for fp16 sides). Returns |x|^2 for fp32 inputs (0 otherwise).
// fetch(i) returns the lane's 16-byte chunk i (from global memory or the staging buffer).
template <int D, bool F32, typename Fetch>
__device__ __forceinline__ float load_quarter(Fetch&& fetch, uint32_t (&h)[D / 8], uint32_t (&l)[D / 8],
                                              uint32_t (&f16row)[D / 8], float& pw) {
  constexpr int Q = D / 4;
  if constexpr (!F32) {
#pragma unroll
    for (int i = 0; i < Q / 8; ++i) {
      const uint4 u = fetch(i);
      h[4 * i] = u.x; h[4 * i + 1] = u.y; h[4 * i + 2] = u.z; h[4 * i + 3] = u.w;
    }
#pragma unroll
    for (int i = 0; i < Q / 2; ++i) { f16row[i] = h[i]; l[i] = 0u; }
    pw = 1.f;
    return 0.f;
  } else {
    float x[Q];
#pragma unroll
    for (int i = 0; i < Q / 4; ++i) {
      const uint4 u = fetch(i);
      x[4 * i] = __uint_as_float(u.x); x[4 * i + 1] = __uint_as_float(u.y);
      x[4 * i + 2] = __uint_as_float(u.z); x[4 * i + 3] = __uint_as_float(u.w);
    }
    float n2 = 0.f;
#pragma unroll
    for (int i = 0; i < Q; ++i) n2 = fmaf(x[i], x[i], n2);
    n2 = quad_sum(n2);
    pw = prescale(n2);
#pragma unroll
    for (int i = 0; i < Q / 2; ++i) {
      f16row[i] = pack_half2(x[2 * i], x[2 * i + 1]);
      const float a = x[2 * i] * pw, b = x[2 * i + 1] * pw;
      h[i] = pack_half2(a, b);
      const float2 hf = __half22float2(*reinterpret_cast<const __half2*>(&h[i]));
      l[i] = pack_half2(a - hf.x, b - hf.y);
    }
    return n2;
  }
}

template <int D, int KB, int VB, bool F32, bool HAD, int MT, bool GRID, bool STAGE, bool SEARCH>
__device__ __forceinline__ void tc_loop(const QuantArgs& a, const uint8_t* smem, const uint8_t* tabs, const uint32_t (&sm)[D / 8],
                                        const uint32_t (&hb)[2][2], int64_t slot0) {
  static_assert(!STAGE || MT == 1, "staging: one m-tile");
  static_assert(!SEARCH || HAD, "scale search: Hadamard path only");
  constexpr int Q = D / 4, NK = D / 16, NT = D / 8, NW = D / 8;  // NW: fp16 words per quarter
  constexpr int NUK = KB == kF16Bits ? 1 : (Q * KB + 31) / 32;
  constexpr int NUV = VB == kF16Bits ? 1 : (Q * VB + 31) / 32;
  using L = TcLayout<D, KB, VB, HAD, STAGE, F32, SEARCH>;
  using S = TcStage<D, F32>;
  const uint8_t* tabK = tabs + L::kTabK;
  const uint8_t* tabV = tabs + L::kTabV;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  const PagedKVView& v = a.view;
  const int H = v.num_kv_heads;
  const long long total = static_cast<long long>(a.num_tokens) * H;
  const long long tiles = (total + 8 * MT - 1) / (8 * MT);
  const int gsrc = (lane & ~3) | (g >> 1);
  // u = value * S / (rotation gain * |x| * pw): Hadamard values carry sqrt(D), dense ones 16.
  const float gain = HAD ? sqrtf(static_cast<float>(D)) : 16.f;

  const long long mstride = static_cast<long long>(gridDim.x) * kTcWarps;
  const uint32_t sbuf = detail::smem_addr(smem + L::kStage + warp * S::kWarpBytes);
  // Slot id of lane's item in tile m (clamped to the last item), loaded one tile ahead with the
  // staged inputs so that the branch on it does not wait for the load.
  auto slot_of = [&](long long m) -> int64_t {
    const long long item = m * 8 + g;
    const int it32 = static_cast<int>(item < total ? item : total - 1);
    return a.slots[fast_div(a.div_heads, static_cast<uint32_t>(it32))];
  };
  int64_t slot_next = slot0;  // the first tile's copies were issued at kernel entry (stage_first)

  for (long long m = static_cast<long long>(blockIdx.x) * kTcWarps + warp; m < tiles; m += mstride) {
    if constexpr (STAGE) {  // this tile's copy (issued one iteration earlier) has landed
      detail::cp_async_wait<0>();
      __syncwarp();
    }
    uint32_t xk[MT][NW], xv[MT][NW], lk[MT][NW], lv[MT][NW];
    float nk2[MT], nv2[MT], mk[MT], mv[MT];
    bool store[MT];
    uint8_t* ktile[MT];
    uint8_t* vtile[MT];
    int row[MT];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      const long long item = (m * MT + mt) * 8 + g;
      const bool valid = item < total;
      const long long it = valid ? item : total - 1;
      const int it32 = static_cast<int>(it);
      const int token = static_cast<int>(fast_div(a.div_heads, static_cast<uint32_t>(it32))), head = it32 - token * H;
      const int64_t slot = STAGE ? slot_next : a.slots[token];
      store[mt] = valid && slot >= 0;
      int page = 0, r = 0;
      if (store[mt]) {
        if (slot < 0x7fffffff) {
          const uint32_t s32 = static_cast<uint32_t>(slot), ps = static_cast<uint32_t>(v.page_size);
          page = static_cast<int>(fast_div(a.div_page, s32));
          r = static_cast<int>(s32 - static_cast<uint32_t>(page) * ps);
        } else {
          page = static_cast<int>(slot / v.page_size);
          r = static_cast<int>(slot % v.page_size);
        }
      }
      row[mt] = r;
      ktile[mt] = v.k_tile(page, head);
      vtile[mt] = v.v_tile(page, head);
      uint32_t fk[NW], fv[NW];
      float pwk, pwv;
      float n2k, n2v;
      if constexpr (STAGE) {
        const int c0 = g * S::kRowChunks + t * S::kQChunks;
        n2k = load_quarter<D, F32>([&](int i) { return lds128(S::quarter_addr(sbuf, c0, i)); }, xk[mt], lk[mt], fk, pwk);
        n2v = load_quarter<D, F32>([&](int i) { return lds128(S::quarter_addr(sbuf + S::kSideBytes, c0, i)); }, xv[mt],
                                   lv[mt], fv, pwv);
        __syncwarp();  // every lane has read the buffer: refill it with the next tile
        if (m + mstride < tiles) {
          stage_tile<D, F32>(sbuf, a, m + mstride, total, lane);
          slot_next = slot_of(m + mstride);
        }
      } else {
        const size_t off = static_cast<size_t>(it) * D + t * Q;  // elements
        if constexpr (F32) {
          const uint4* pk = reinterpret_cast<const uint4*>(static_cast<const float*>(a.src[0]) + off);
          const uint4* pv = reinterpret_cast<const uint4*>(static_cast<const float*>(a.src[1]) + off);
          n2k = load_quarter<D, F32>([&](int i) { return pk[i]; }, xk[mt], lk[mt], fk, pwk);
          n2v = load_quarter<D, F32>([&](int i) { return pv[i]; }, xv[mt], lv[mt], fv, pwv);
        } else {
          const uint4* pk = reinterpret_cast<const uint4*>(static_cast<const __half*>(a.src[0]) + off);
          const uint4* pv = reinterpret_cast<const uint4*>(static_cast<const __half*>(a.src[1]) + off);
          n2k = load_quarter<D, F32>([&](int i) { return pk[i]; }, xk[mt], lk[mt], fk, pwk);
          n2v = load_quarter<D, F32>([&](int i) { return pv[i]; }, xv[mt], lv[mt], fv, pwv);
        }
      }
      if constexpr (KB == kF16Bits) {
        if (store[mt]) store_f16_chunk<D>(ktile[mt], r, t, fk);
      }
      if constexpr (VB == kF16Bits) {
        if (store[mt]) store_f16_chunk<D>(vtile[mt], r, t, fv);
      }
      if constexpr (HAD) {
#pragma unroll
        for (int i = 0; i < NW; ++i) {
          xk[mt][i] ^= sm[i]; xv[mt][i] ^= sm[i];
          if constexpr (F32) { lk[mt][i] ^= sm[i]; lv[mt][i] ^= sm[i]; }
        }
      }
      if constexpr (!F32) {  // |x|^2 of the 16 rows: Gram MMA of the fp16 operands with themselves
        float gk[4] = {0.f, 0.f, 0.f, 0.f}, gv[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
        for (int kb = 0; kb < NK; ++kb) {
          const uint32_t a0 = xk[mt][2 * kb], a1 = xv[mt][2 * kb], a2 = xk[mt][2 * kb + 1], a3 = xv[mt][2 * kb + 1];
          mma_16816(gk, a0, a1, a2, a3, a0, a2);
          mma_16816(gv, a0, a1, a2, a3, a1, a3);
        }
        n2k = __shfl_sync(kFull, (g & 1) ? gk[1] : gk[0], gsrc);
        n2v = __shfl_sync(kFull, (g & 1) ? gv[3] : gv[2], gsrc);
      }
      nk2[mt] = n2k;
      nv2[mt] = n2v;
      // rsqrtf (1-ulp MUFU approximation): u only has to land on the right side of boundaries
      // that are not within ~1e-6 of it; the stored scale below is computed exactly.
      mk[mt] = n2k > 0.f ? grid_scale<KB, SEARCH>() / (gain * pwk) * rsqrtf(n2k) : 0.f;
      mv[mt] = n2v > 0.f ? grid_scale<VB, SEARCH>() / (gain * pwv) * rsqrtf(n2v) : 0.f;
    }

    uint32_t wk[MT][NUK], wv[MT][NUV];
    float ck[MT], cv[MT];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      ck[mt] = 0.f; cv[mt] = 0.f;
#pragma unroll
      for (int i = 0; i < NUK; ++i) wk[mt][i] = 0u;
#pragma unroll
      for (int i = 0; i < NUV; ++i) wv[mt][i] = 0u;
    }
    // One output value: quantize and pack (q = position in the lane's quarter).
    auto emit = [&](int mt, int q, float yk0, float yk1, float yv0, float yv1) {
      if constexpr (KB != kF16Bits) {
        put<KB>(wk[mt], q, search4<KB, GRID>(yk0 * mk[mt], tabK, ck[mt]));
        put<KB>(wk[mt], q + 1, search4<KB, GRID>(yk1 * mk[mt], tabK, ck[mt]));
      }
      if constexpr (VB != kF16Bits) {
        put<VB>(wv[mt], q, search4<VB, GRID>(yv0 * mv[mt], tabV, cv[mt]));
        put<VB>(wv[mt], q + 1, search4<VB, GRID>(yv1 * mv[mt], tabV, cv[mt]));
      }
    };

    if constexpr (HAD) {
      static_assert(MT == 1, "Hadamard path: one m-tile per iteration");
      float z[NK][2][4];
#pragma unroll
      for (int kb = 0; kb < NK; ++kb) {
#pragma unroll
        for (int nt = 0; nt < 2; ++nt) {
          z[kb][nt][0] = z[kb][nt][1] = z[kb][nt][2] = z[kb][nt][3] = 0.f;
          mma_16816(z[kb][nt], xk[0][2 * kb], xv[0][2 * kb], xk[0][2 * kb + 1], xv[0][2 * kb + 1], hb[nt][0], hb[nt][1]);
          if constexpr (F32)
            mma_16816(z[kb][nt], lk[0][2 * kb], lv[0][2 * kb], lk[0][2 * kb + 1], lv[0][2 * kb + 1], hb[nt][0], hb[nt][1]);
        }
      }
#pragma unroll
      for (int hs = 1; hs < NK; hs <<= 1) {  // H over the k-step bits, fp32 butterflies
#pragma unroll
        for (int kb = 0; kb < NK; ++kb) {
          if (kb & hs) continue;
#pragma unroll
          for (int nt = 0; nt < 2; ++nt) {
#pragma unroll
            for (int r = 0; r < 4; ++r) {
              const float p = z[kb][nt][r], q = z[kb + hs][nt][r];
              z[kb][nt][r] = p + q;
              z[kb + hs][nt][r] = p - q;
            }
          }
        }
      }
      if constexpr (SEARCH) {
        // u = z * m in place, then m = the chosen pre-scale: emit quantizes u * alpha, the very
        // products the search scored (alpha = 1 for sides without search).
#pragma unroll
        for (int kb = 0; kb < NK; ++kb)
#pragma unroll
          for (int nt = 0; nt < 2; ++nt) {
            z[kb][nt][0] *= mk[0]; z[kb][nt][1] *= mk[0];
            z[kb][nt][2] *= mv[0]; z[kb][nt][3] *= mv[0];
          }
        float ak = 1.f, av = 1.f;
        if constexpr (Grid<KB>::kSearch) ak = search_alpha<KB, GRID, NK, 0>(z, tabK);
        if constexpr (Grid<VB>::kSearch) av = search_alpha<VB, GRID, NK, 2>(z, tabV);
        mk[0] = ak;
        mv[0] = av;
      }
#pragma unroll
      for (int kb = 0; kb < NK; ++kb)
#pragma unroll
        for (int nt = 0; nt < 2; ++nt) emit(0, 4 * kb + 2 * nt, z[kb][nt][0], z[kb][nt][1], z[kb][nt][2], z[kb][nt][3]);
    } else {
      const uint4* frag = reinterpret_cast<const uint4*>(smem);
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        float acc[MT][4];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) acc[mt][0] = acc[mt][1] = acc[mt][2] = acc[mt][3] = 0.f;
#pragma unroll
        for (int kb = 0; kb < NK; ++kb) {
          const uint4 f = frag[(kb * NT + nt) * 32 + lane];  // {P hi b0, b1, P lo b0, b1}
#pragma unroll
          for (int mt = 0; mt < MT; ++mt) {
            const uint32_t a0 = xk[mt][2 * kb], a1 = xv[mt][2 * kb], a2 = xk[mt][2 * kb + 1], a3 = xv[mt][2 * kb + 1];
            mma_16816(acc[mt], a0, a1, a2, a3, f.x, f.y);
            mma_16816(acc[mt], a0, a1, a2, a3, f.z, f.w);
            if constexpr (F32)
              mma_16816(acc[mt], lk[mt][2 * kb], lv[mt][2 * kb], lk[mt][2 * kb + 1], lv[mt][2 * kb + 1], f.x, f.y);
          }
        }
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) emit(mt, 2 * nt, acc[mt][0], acc[mt][1], acc[mt][2], acc[mt][3]);
      }
    }

    // Scales and packed rows. A zero vector encodes to index 0 and scale 0 (codec.h).
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      if constexpr (KB != kF16Bits) {
        const float c2 = quad_sum(ck[mt]);
        const bool zero = !(nk2[mt] > 0.f);
#pragma unroll
        for (int i = 0; i < NUK; ++i) wk[mt][i] = zero ? 0u : wk[mt][i];
        store_chunk<D, KB>(ktile[mt] + static_cast<size_t>(row[mt]) * (D * KB / 8), t, wk[mt], store[mt]);
        if (t == 0 && store[mt]) {
          const float scale = (!zero && c2 > 0.f) ? sqrtf(nk2[mt]) / sqrtf(c2) : 0.f;
          reinterpret_cast<uint16_t*>(ktile[mt] + tile_scales_offset(v.page_size, D, KB))[row[mt]] =
              __half_as_ushort(__float2half_rn(scale));
        }
      }
      if constexpr (VB != kF16Bits) {
        const float c2 = quad_sum(cv[mt]);
        const bool zero = !(nv2[mt] > 0.f);
#pragma unroll
        for (int i = 0; i < NUV; ++i) wv[mt][i] = zero ? 0u : wv[mt][i];
        store_chunk<D, VB>(vtile[mt] + static_cast<size_t>(row[mt]) * (D * VB / 8), t, wv[mt], store[mt]);
        if (t == 1 && store[mt]) {
          const float scale = (!zero && c2 > 0.f) ? sqrtf(nv2[mt]) / sqrtf(c2) : 0.f;
          reinterpret_cast<uint16_t*>(vtile[mt] + tile_scales_offset(v.page_size, D, VB))[row[mt]] =
              __half_as_ushort(__float2half_rn(scale));
        }
      }
    }
  }
}

// STAGE: issues the copies of the warp's first tile into its staging buffer (at kernel entry, so
// that they overlap the table set-up) and returns the slot id of lane's item in it.
template <int D, bool F32, uint32_t kStageOffset>
__device__ __forceinline__ int64_t stage_first(const QuantArgs& a, const uint8_t* smem) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int H = a.view.num_kv_heads;
  const long long total = static_cast<long long>(a.num_tokens) * H;
  const long long m0 = static_cast<long long>(blockIdx.x) * kTcWarps + warp;
  if (m0 * 8 >= total) return 0;
  stage_tile<D, F32>(detail::smem_addr(smem + kStageOffset + warp * TcStage<D, F32>::kWarpBytes), a, m0, total, lane);
  const long long item = m0 * 8 + (lane >> 2);
  return a.slots[fast_div(a.div_heads, static_cast<uint32_t>(item < total ? item : total - 1))];
}

template <int D, int KB, int VB, bool F32, bool HAD, int MT, bool STAGE, bool SEARCH = false>
__global__ void __launch_bounds__(kTcWarps * 32, 2) quantize_tc_kernel(const QuantArgs a) {
  extern __shared__ __align__(16) uint8_t smem[];
  using L = TcLayout<D, KB, VB, HAD, STAGE, F32, SEARCH>;
  __shared__ __align__(16) uint8_t tabs[L::kTabBytes > 0 ? L::kTabBytes : 16];
  int64_t slot0 = 0;
  if constexpr (STAGE) slot0 = stage_first<D, F32, L::kStage>(a, smem);
  constexpr int Q = D / 4, NW = D / 8;
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const PagedKVView& v = a.view;
  bool ok = true;
  if constexpr (KB != kF16Bits) ok &= build_table<KB, SEARCH && Grid<KB>::kSearch>(tabs + L::kTabK, a.bnd[0], v.k.centroids);
  if constexpr (VB != kF16Bits) ok &= build_table<VB, SEARCH && Grid<VB>::kSearch>(tabs + L::kTabV, a.bnd[1], v.v.centroids);
  uint32_t sm[NW];
  uint32_t hb[2][2];
  if constexpr (HAD) {
    // Lane's sign words: bit 15 / 31 flips coordinate t*Q + 2i / 2i + 1.
#pragma unroll
    for (int i = 0; i < NW; ++i) {
      const float s0 = v.hadamard_signs[t * Q + 2 * i], s1 = v.hadamard_signs[t * Q + 2 * i + 1];
      sm[i] = (s0 < 0.f ? 0x8000u : 0u) | (s1 < 0.f ? 0x80000000u : 0u);
    }
    // H16 fragments: column g = output (t' = g >> 1, hi' = nt, e' = g & 1); rows 2t + e (hi 0)
    // and 2t + 8 + e (hi 1) = input (t, hi, e). Entry (-1)^popc(out & in).
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) {
      const int tp = g >> 1, ep = g & 1;
#pragma unroll
      for (int hi = 0; hi < 2; ++hi) {
        uint32_t w = 0;
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int par = (__popc(tp & t) + (nt & hi) + (ep & e)) & 1;
          w |= (par ? 0xBC00u : 0x3C00u) << (16 * e);
        }
        hb[nt][hi] = w;
      }
    }
  } else {
#pragma unroll
    for (int i = 0; i < NW; ++i) sm[i] = 0u;
    hb[0][0] = hb[0][1] = hb[1][0] = hb[1][1] = 0u;
    // B fragments of (16 P)^T, permuted: k-step kb, n-tile nt, lane (gl, tl): column gl = output
    // i = (gl >> 1) * Q + 2 nt + (gl & 1); rows = inputs tl * Q + 4 kb + {0, 1 | 2, 3}.
    constexpr int NK = D / 16, NT = D / 8;
    uint4* frag = reinterpret_cast<uint4*>(smem);
    for (int idx = threadIdx.x; idx < NK * NT * 32; idx += blockDim.x) {
      const int ln = idx & 31, kn = idx >> 5, kb = kn / NT, nt = kn - kb * NT;
      const int gl = ln >> 2, tl = ln & 3;
      const int i = (gl >> 1) * Q + 2 * nt + (gl & 1);
      const float* pr = v.rotation + static_cast<size_t>(i) * D + tl * Q + 4 * kb;
      uint32_t hw[2], lw[2];
#pragma unroll
      for (int k = 0; k < 2; ++k) {
        const float p0 = pr[2 * k] * 16.f, p1 = pr[2 * k + 1] * 16.f;
        hw[k] = pack_half2(p0, p1);
        const float2 hf = __half22float2(*reinterpret_cast<const __half2*>(&hw[k]));
        lw[k] = pack_half2(p0 - hf.x, p1 - hf.y);
      }
      frag[idx] = make_uint4(hw[0], hw[1], lw[0], lw[1]);
    }
  }
  const bool grid_ok = __syncthreads_and(ok) != 0;
  if (grid_ok) {
    tc_loop<D, KB, VB, F32, HAD, MT, true, STAGE, SEARCH>(a, smem, tabs, sm, hb, slot0);
  } else {
    tc_loop<D, KB, VB, F32, HAD, MT, false, STAGE, SEARCH>(a, smem, tabs, sm, hb, slot0);
  }
}

template <int D, int KB, int VB, bool F32, bool HAD, int MT, bool STAGE, bool SEARCH = false>
Status launch_tc(const QuantArgs& a, cudaStream_t stream) {
  auto* kernel = &quantize_tc_kernel<D, KB, VB, F32, HAD, MT, STAGE, SEARCH>;
  constexpr int smem = TcLayout<D, KB, VB, HAD, STAGE, F32, SEARCH>::kBytes;
  // Host-side attribute (not a stream operation): safe during graph capture.
  TQKV_CUDA_RETURN_IF_ERROR(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  int dev = 0, sms = 132, per_sm = 1;
  TQKV_CUDA_RETURN_IF_ERROR(cudaGetDevice(&dev));
  TQKV_CUDA_RETURN_IF_ERROR(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  TQKV_CUDA_RETURN_IF_ERROR(detail::cached_blocks_per_sm(reinterpret_cast<const void*>(kernel), kTcWarps * 32, smem, &per_sm));
  const long long items = static_cast<long long>(a.num_tokens) * a.view.num_kv_heads;
  const long long blocks = (items + 8LL * MT * kTcWarps - 1) / (8LL * MT * kTcWarps);
  const int grid = static_cast<int>(std::min<long long>(blocks, static_cast<long long>(std::max(per_sm, 1)) * sms));
  QuantArgs b = a;
  b.div_heads = make_fast_div(static_cast<uint32_t>(a.view.num_kv_heads));
  b.div_page = make_fast_div(static_cast<uint32_t>(a.view.page_size));
  kernel<<<grid, kTcWarps * 32, smem, stream>>>(b);
  TQKV_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return Status::ok();
}

// The format pairs built: the decode kernel's pairs plus (8, 16) (an fp16 side next to a
// quantized one). Anything else: *launched = false.
// Scale search (view.scale_search): the Hadamard path with staged inputs searches its 2-4-bit
// sides (SEARCH instantiations of the pairs with such a side); the dense path and variant 0 launch
// nothing (the caller's generic kernel searches). Pairs without a 2-4-bit side (8/8, 8/16) have
// nothing to search and take the plain kernel.
template <int D, bool HAD>
Status dispatch_tc(const QuantArgs& a, cudaStream_t stream, bool* launched) {
  *launched = false;
  const int kb = a.view.k.bits, vb = a.view.v.bits;
  const bool f32 = a.in_type == DType::kF32;
  const bool stage = quantize_tc_variant() != 0;  // quantize_tc.cuh: 1 (staged inputs) by default
  const bool search = a.view.scale_search != 0 && (scale_search_applies(true, true, kb) || scale_search_applies(true, true, vb));
  if (search) {
    if constexpr (HAD) {
      if (!stage) return Status::ok();
#define TQKV_TC_SEARCH_PAIR(KB, VB)                                                                \
  if (kb == KB && vb == VB) {                                                                      \
    *launched = true;                                                                              \
    return f32 ? launch_tc<D, KB, VB, true, HAD, 1, true, true>(a, stream)                         \
               : launch_tc<D, KB, VB, false, HAD, 1, true, true>(a, stream);                       \
  }
      TQKV_TC_SEARCH_PAIR(4, 4)
      TQKV_TC_SEARCH_PAIR(3, 3)
      TQKV_TC_SEARCH_PAIR(8, 4)
      TQKV_TC_SEARCH_PAIR(2, 2)
      TQKV_TC_SEARCH_PAIR(4, 3)
#undef TQKV_TC_SEARCH_PAIR
    }
    return Status::ok();
  }
#define TQKV_TC_PAIR(KB, VB)                                                                        \
  if (kb == KB && vb == VB) {                                                                       \
    *launched = true;                                                                               \
    if (f32)                                                                                        \
      return stage ? launch_tc<D, KB, VB, true, HAD, 1, true>(a, stream)                            \
                   : launch_tc<D, KB, VB, true, HAD, 1, false>(a, stream);                          \
    return stage ? launch_tc<D, KB, VB, false, HAD, 1, true>(a, stream)                             \
                 : launch_tc<D, KB, VB, false, HAD, 1, false>(a, stream);                           \
  }
  TQKV_TC_PAIR(4, 4)
  TQKV_TC_PAIR(3, 3)
  TQKV_TC_PAIR(8, 4)
  TQKV_TC_PAIR(8, 8)
  TQKV_TC_PAIR(2, 2)
  TQKV_TC_PAIR(4, 3)
  TQKV_TC_PAIR(8, 16)
#undef TQKV_TC_PAIR
  return Status::ok();
}

}  // namespace tqkv::cuda::tc
