// The per-row encoding pieces of the tensor-core quantize-on-write (quantize_tc_impl.cuh): the
// grid tables that turn a coordinate into its codebook index in a few instructions, the index
// search, bit packing and row stores of one lane's quarter of a row, and the scale search.
#pragma once

#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "codec/scale_search.h"
#include "cuda/device_utils.cuh"
#include "cuda/quantize_internal.h"
#include "tqkv/kv_layout.h"

namespace tqkv::cuda::tc {

using detail::mma_16816;
using detail::pack_half2;

constexpr int kTcWarps = 8;
constexpr unsigned kFull = 0xffffffffu;

// Grid table of one side: Bt[L] (boundaries * grid scale, +inf last), C2[L] (squared centroids),
// T[kCells] (4 * boundaries below the cell), and with the scale search C[L] (the centroids, signed)
// after T. Cell counts leave >= 3x margin over the smallest boundary gap of the Lloyd-Max
// codebooks for head sizes 64 - 128.
template <int BITS>
struct Grid {
  static constexpr bool kQuant = BITS != kF16Bits;
  static constexpr int kLevels = kQuant ? (1 << BITS) : 0;
  static constexpr int kCells = BITS == 2 ? 128 : BITS == 3 ? 256 : BITS == 4 ? 512 : BITS == 8 ? 4096 : 0;
  using Cell = std::conditional_t<BITS == 8, uint16_t, uint8_t>;
  static constexpr int kBytes = kQuant ? 8 * kLevels + kCells * static_cast<int>(sizeof(Cell)) : 0;
  // Scale search (2-4 bits; search_alpha below, docs/formats.md "Scale search").
  static constexpr bool kSearch = scale_search_applies(true, true, BITS);
  static constexpr int kCOff = kBytes;  // C[L] (search tables only)
  static constexpr int kSearchBytes = kBytes + (kSearch ? 4 * kLevels : 0);
  // The searched sides' grid scale: u * alpha (alpha <= 1.25) stays inside the grid (|u * alpha| <=
  // kCells / 2 - 2 plus rounding); 2.4x instead of 3x margin over the smallest boundary gap (and
  // the CTA's table check falls back to the binary search where a cell would hold two boundaries).
  static constexpr float kSearchScale = static_cast<float>((kCells / 2 - 2) * 4 / 5);
  static constexpr float kScale = static_cast<float>(kCells / 2 - 2);  // u = t * kScale, |t| <= 1
};

// The grid scale of a side: kScale, or kSearchScale for the sides the scale search searches.
template <int BITS, bool SEARCH>
__host__ __device__ constexpr float grid_scale() {
  if constexpr (SEARCH && Grid<BITS>::kSearch) return Grid<BITS>::kSearchScale;
  else return Grid<BITS>::kScale;
}

// Builds one side's table (all threads of the CTA; WITH_C: C[L] too, and the search grid scale);
// returns this thread's part of the check.
template <int BITS, bool WITH_C = false>
__device__ bool build_table(uint8_t* base, const float* bnd, const float* cent) {
  using G = Grid<BITS>;
  constexpr float kS = grid_scale<BITS, WITH_C>();
  constexpr int L = G::kLevels, NC = G::kCells;
  float* Bt = reinterpret_cast<float*>(base);
  float* C2 = Bt + L;
  auto* T = reinterpret_cast<typename G::Cell*>(C2 + L);
  for (int i = threadIdx.x; i < L; i += blockDim.x) {
    Bt[i] = i + 1 < L ? bnd[i] * kS : INFINITY;
    const float c = cent[i];
    C2[i] = c * c;
    if constexpr (WITH_C) reinterpret_cast<float*>(base + G::kCOff)[i] = c;
  }
  __syncthreads();
  bool ok = true;
  for (int i = threadIdx.x; i + 2 < L; i += blockDim.x) ok &= Bt[i] < Bt[i + 1];  // ascending (NaN fails)
  for (int c = threadIdx.x; c < NC; c += blockDim.x) {
    // Cell c holds the u with rint(u) = c - NC/2: the closed interval [lo, hi].
    const float lo = static_cast<float>(c - NC / 2) - 0.5f, hi = static_cast<float>(c - NC / 2) + 0.5f;
    int below = 0, upto = 0;
#pragma unroll
    for (int st = L / 2; st >= 1; st >>= 1) {
      if (Bt[below + st - 1] < lo) below += st;
      if (Bt[upto + st - 1] <= hi) upto += st;
    }
    ok &= upto - below <= 1;
    T[c] = static_cast<typename G::Cell>(4 * below);
  }
  return ok;
}

// 4 * (number of boundaries strictly below t) for u = t * kScale.
template <int BITS, bool GRID>
__device__ __forceinline__ uint32_t index4(float u, const uint8_t* tab) {
  using G = Grid<BITS>;
  constexpr int L = G::kLevels;
  const float* Bt = reinterpret_cast<const float*>(tab);
  const char* btc = reinterpret_cast<const char*>(tab);
  uint32_t i4;
  if constexpr (GRID) {
    const auto* T = reinterpret_cast<const typename G::Cell*>(tab + 8 * L);
    constexpr float kMagic = 12582912.0f + G::kCells / 2;  // 1.5 * 2^23: rint(u) in the low bits
    const uint32_t cell = __float_as_uint(__fadd_rn(u, kMagic)) & (G::kCells - 1);
    i4 = T[cell];
    const float b = *reinterpret_cast<const float*>(btc + i4);
    if (u > b) i4 += 4;
  } else {
    uint32_t i = 0;
#pragma unroll
    for (int st = L / 2; st >= 1; st >>= 1) i += u > Bt[i + st - 1] ? st : 0;
    i4 = 4 * i;
  }
  return i4;
}

// index4, and adds c[idx]^2 to c2.
template <int BITS, bool GRID>
__device__ __forceinline__ uint32_t search4(float u, const uint8_t* tab, float& c2) {
  constexpr int L = Grid<BITS>::kLevels;
  const uint32_t i4 = index4<BITS, GRID>(u, tab);
  c2 += *reinterpret_cast<const float*>(reinterpret_cast<const char*>(tab) + 4 * L + i4);
  return i4;
}

// Puts index i4 / 4 at bit position q * BITS of the word array (q a compile-time constant
// after unrolling).
template <int BITS, int NW>
__device__ __forceinline__ void put(uint32_t (&w)[NW], int q, uint32_t i4) {
  const int bit = q * BITS, wi = bit >> 5, sh = bit & 31;
  // Fields are disjoint and start zeroed: add (one IMAD with the shift) instead of shift + OR.
  w[wi] += sh >= 2 ? (i4 << ((sh - 2) & 31)) : (i4 >> ((2 - sh) & 31));
  if (sh + BITS > 32) w[wi + 1] += i4 >> ((34 - sh) & 31);
}

// Stores lane t's quarter of a packed row (bits [t*CB, (t+1)*CB)). Every lane must call it (the
// unaligned case exchanges the word shared with the next lane).
template <int D, int BITS, int NU>
__device__ __forceinline__ void store_chunk(uint8_t* row, int t, const uint32_t (&w)[NU], bool st) {
  constexpr int CB = D / 4 * BITS, RB = D * BITS / 8;
  if constexpr (CB % 32 == 0) {
    if (!st) return;
    uint8_t* p = row + t * (CB / 8);
    if constexpr (CB % 128 == 0 && RB % 16 == 0) {
#pragma unroll
      for (int i = 0; i < CB / 128; ++i)
        reinterpret_cast<uint4*>(p)[i] = make_uint4(w[4 * i], w[4 * i + 1], w[4 * i + 2], w[4 * i + 3]);
    } else if constexpr (CB % 64 == 0 && RB % 8 == 0) {
#pragma unroll
      for (int i = 0; i < CB / 64; ++i) reinterpret_cast<uint2*>(p)[i] = make_uint2(w[2 * i], w[2 * i + 1]);
    } else {
#pragma unroll
      for (int i = 0; i < CB / 32; ++i) reinterpret_cast<uint32_t*>(p)[i] = w[i];
    }
  } else {
    static_assert(RB % 4 == 0, "rows must be word aligned");
    constexpr int NV = (CB + 62) / 32;
    const int bit0 = t * CB, w0 = bit0 >> 5, s = bit0 & 31;
    uint32_t v[NV];
#pragma unroll
    for (int i = 0; i < NV; ++i) {
      const uint32_t lo = (i >= 1 && i - 1 < NU) ? w[i >= 1 ? i - 1 : 0] : 0u;
      const uint32_t hi = i < NU ? w[i < NU ? i : 0] : 0u;
      v[i] = __funnelshift_l(lo, hi, s);
    }
    const uint32_t nxt = __shfl_down_sync(kFull, v[0], 1);
    const int bitn = (t + 1) * CB, li = (bitn >> 5) - w0;
    if (t < 3 && (bitn & 31) != 0) {
#pragma unroll
      for (int i = 0; i < NV; ++i)
        if (i == li) v[i] |= nxt;
    }
    if (!st) return;
    uint32_t* p = reinterpret_cast<uint32_t*>(row);
#pragma unroll
    for (int i = 0; i < NV; ++i) {
      const int k = w0 + i;
      if ((i > 0 || s == 0) && 32 * k < bitn) p[k] = v[i];
    }
  }
}

// fp16 row quarter (Q halves) of an fp16 side.
template <int D>
__device__ __forceinline__ void store_f16_chunk(uint8_t* tile, int row, int t, const uint32_t* h) {
  uint4* p = reinterpret_cast<uint4*>(tile + (static_cast<size_t>(row) * D + t * (D / 4)) * 2);
#pragma unroll
  for (int i = 0; i < D / 32; ++i) p[i] = make_uint4(h[4 * i], h[4 * i + 1], h[4 * i + 2], h[4 * i + 3]);
}

__device__ __forceinline__ uint32_t fast_div(FastDiv f, uint32_t n) { return (__umulhi(n, f.m) + n) >> f.s; }

__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(kFull, v, 1);
  v += __shfl_xor_sync(kFull, v, 2);
  return v;
}

// Scale search of one side of the Hadamard path (Grid<BITS>::kSearch; the table has C[L]): u holds
// the lane's quarter of the row, u = t * kSearchScale, in z[kb][nt][R0 + e] (R0 = 0: K, 2: V).
// For each pre-scale alpha of the CPU encoder (0.8f ... 1.25f, in order) the indices of u * alpha
// give J = (u . c)^2 / |c|^2 (quad sums: the row is spread over the 4 lanes of a quad, and the xor
// butterfly gives the 4 lanes bitwise identical sums); returns the first alpha with the largest J.
// This J is the CPU's times kSearchScale^2 (summed in another order), so the choice can only
// differ where two candidates agree to rounding.
template <int BITS, bool GRID, int NK, int R0>
__device__ __forceinline__ float search_alpha(const float (&z)[NK][2][4], const uint8_t* tab) {
  const char* cbase = reinterpret_cast<const char*>(tab) + Grid<BITS>::kCOff;
  float best = -1.f, alpha = 1.f;
#pragma unroll 1
  for (int ai = 0; ai < kScaleSearchSteps; ++ai) {
    const float al = scale_search_alpha(ai);
    float yc = 0.f, cc = 0.f;
#pragma unroll
    for (int kb = 0; kb < NK; ++kb)
#pragma unroll
      for (int nt = 0; nt < 2; ++nt)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const float u = z[kb][nt][R0 + e];
          const float c = *reinterpret_cast<const float*>(cbase + index4<BITS, GRID>(u * al, tab));
          yc = fmaf(u, c, yc);
          cc = fmaf(c, c, cc);
        }
    yc = quad_sum(yc);
    cc = quad_sum(cc);
    const float j = cc > 0.f ? yc * yc / cc : 0.f;
    if (j > best) best = j, alpha = al;
  }
  return alpha;
}

// Power of two that brings sqrt(n2) into [2^8, 2^10) (fp16 hi/lo split of fp32 inputs).
__device__ __forceinline__ float prescale(float n2) {
  const int e2 = static_cast<int>((__float_as_uint(n2) >> 23) & 0xff) - 127;
  const int e = min(max(8 - (e2 >> 1), -100), 100);
  return __uint_as_float(static_cast<uint32_t>(e + 127) << 23);
}

}  // namespace tqkv::cuda::tc
