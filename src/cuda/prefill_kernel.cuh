// Tiled prefill attention over paged KV tiles (TurboQuant or fp16), on tensor cores: each K/V
// page is read and dequantized ONCE per tile of query columns, not once per query row.
//
// Columns: a sequence's new query rows times the GQA group, flattened as f = row * group + head
// (row within the sequence's chunk, head within the group). A tile is NC = 8 * NT consecutive
// columns of one sequence (NT n-tiles of the mma; NC * D ~ 4096, e.g. 32 columns = 8 query rows x
// 4 heads at head size 128), so a tile covers one or more query rows and shares their KV head.
//
// Grid: x = tile (prefill_tiles_kernel's table, in prefill_api.cu; surplus entries exit), y = KV
// head, z = split (a contiguous share of the tile's visible pages). Block: W warps; warp w takes
// the CTA's pages w, w + W, ... through its own cp.async ring (as the decode kernel), so each
// page is fetched and dequantized by one warp for all NC columns:
//   S^T[16 tok x NC] = K[16 x D] * Q^T[D x NC]   per k-step: one dequantized K fragment (through the
//                                                 lookup table of kv_fetch.cuh), NT mma.m16n8k16
//   online softmax per column, column masks: column of row length L sees [max(first, L - window), L)
//   O^T[D x NC] += V^T[D x 16] * P^T[16 x NC]     per m-step: one dequantized V fragment, NT mma
// Q^T fragments live in shared memory in fragment order (one 8-byte load per lane and mma,
// conflict-free). The warps' states are merged through shared memory and the CTA writes the
// normalised partial output and log2-sum-exp2 of each column in the decode kernel's workspace
// layout ([split][row][q head]), so merge_splits_kernel (decode_api.cu) merges and un-rotates.
#pragma once

#include <cuda_fp16.h>

#include <cmath>
#include <cstdint>

#include "cuda/decode_kernel.cuh"
#include "cuda/device_utils.cuh"
#include "cuda/kv_fetch.cuh"
#include "cuda/page_stream.cuh"
#include "tqkv/kv_layout.h"

namespace tqkv::cuda::detail {

// One tile of columns: sequence `seq` (-1: surplus grid entry), its first query row `row0`
// (global row index), the tile's first flattened column `f0` and the sequence's column count.
struct PrefillTile {
  int32_t seq, row0, f0, fcount;
};

struct PrefillExtra {
  const PrefillTile* tiles;  // [gridDim.x]
};

constexpr int prefill_ntiles(int d) { return d <= 64 ? 6 : d <= 80 ? 6 : d <= 96 ? 5 : d <= 128 ? 4 : 2; }

struct PrefillShape {
  int warps, stages, nt, lut_bytes, q_bytes, ring_bytes, merge_bytes, smem_bytes;
};
constexpr PrefillShape prefill_shape(int d, int kb, int vb) {
  const int nt = prefill_ntiles(d), nc = 8 * nt;
  const int stage = static_cast<int>(tile_bytes(kPage, d, kb) + tile_bytes(kPage, d, vb));
  const int lut = lut_bytes_of(kb, vb);
  const int q = nc * d * 2;
  int warps = 8, stages = 3;
  for (;;) {
    const int ring = warps * stages * stage, merge = warps * (2 * nc + nc * d) * 4;
    if (lut + kScratchBytes + q + (ring > merge ? ring : merge) <= kSmemBudget || warps == 1) break;
    if (stages > 2) --stages; else warps /= 2;
  }
  const int ring = warps * stages * stage, merge = warps * (2 * nc + nc * d) * 4;
  return {warps, stages, nt, lut, q, ring, merge, lut + kScratchBytes + q + (ring > merge ? ring : merge)};
}

template <int D, int KB, int VB>
struct PrefillConfig {
  static constexpr PrefillShape kShape = prefill_shape(D, KB, VB);
  static constexpr int kWarps = kShape.warps;
  static constexpr int kStages = kShape.stages;
  static constexpr int kNT = kShape.nt;
  static constexpr int kNC = 8 * kNT;
  static constexpr int kTileK = static_cast<int>(tile_bytes(kPage, D, KB));
  static constexpr int kTileV = static_cast<int>(tile_bytes(kPage, D, VB));
  static constexpr int kStageBytes = kTileK + kTileV;
  static constexpr int kLut = kShape.lut_bytes;
  static constexpr int kQBytes = kShape.q_bytes;
  static constexpr int kSmem = kShape.smem_bytes;
  static_assert(kSmem <= 227 * 1024, "prefill kernel shared memory over the sm_90 limit");
  static_assert((kLut + kScratchBytes + kQBytes) % 16 == 0, "ring must stay 16-byte aligned");
};

template <int D, int KB, int VB>
__global__ void __launch_bounds__(PrefillConfig<D, KB, VB>::kWarps * 32, 1)
    prefill_tile_kernel(const DecodeArgs args, const PrefillExtra ex) {
  using Cfg = PrefillConfig<D, KB, VB>;
  constexpr int W = Cfg::kWarps;
  constexpr int NT = Cfg::kNT;
  constexpr int NC = Cfg::kNC;
  constexpr int kSteps = D / 16;
  constexpr float kLog2e = 1.4426950408889634f;
  using KChunk = Chunk<KB, D / 4, low_bit(D * KB / 4)>;
  using VChunk = Chunk<VB, D / 8, low_bit(D * VB / 8)>;

  extern __shared__ __align__(16) uint8_t smem[];
  uint8_t* lut = smem;
  float* scratch = reinterpret_cast<float*>(smem + Cfg::kLut);
  uint2* qs = reinterpret_cast<uint2*>(smem + Cfg::kLut + kScratchBytes);  // [NT][kSteps][32 lanes]
  uint8_t* ring = smem + Cfg::kLut + kScratchBytes + Cfg::kQBytes;
  __shared__ int col_len[NC];  // row length of each column (0: invalid column)
  __shared__ int col_lo[NC];   // first visible position of each column

  const PagedKVView& view = args.view;
  const PrefillTile tile = ex.tiles[blockIdx.x];
  if (tile.seq < 0) return;  // surplus grid entry: no columns
  const int kv_head = blockIdx.y;
  const int split = blockIdx.z;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int group = args.group;
  const int pseq = args.row_seq[tile.row0];  // every row of a tile belongs to the same sequence
  const int first_page = view.first_page ? view.first_page[pseq] : 0;
  const int lo_first = max(first_page * kPage, view.sink_tokens);  // sinks: merge_splits_kernel reads them

  // Column visibility. Rows of a tile are consecutive, so the page range is [min lo, max len).
  for (int c = threadIdx.x; c < NC; c += blockDim.x) {
    const int f = tile.f0 + c;
    int len = 0, lo = 0;
    if (f < tile.fcount) {
      len = args.row_len[tile.row0 + f / group];
      lo = lo_first;
      if (args.window > 0) lo = max(lo, len - args.window);
    }
    col_len[c] = len;
    col_lo[c] = lo;
  }
  __syncthreads();
  int max_len = 0, min_lo = 1 << 30, min_len = 1 << 30, max_lo = 0;
  for (int c = 0; c < NC; ++c) {
    const int len = col_len[c], lo = col_lo[c];
    if (tile.f0 + c >= tile.fcount) continue;
    min_len = min(min_len, len);
    max_lo = max(max_lo, lo);
    if (len > lo) {
      max_len = max(max_len, len);
      min_lo = min(min_lo, lo);
    }
  }
  const int pg_lo = max_len > 0 ? min_lo / kPage : 0;
  const int pg_hi = (max_len + kPage - 1) / kPage;
  const int n_pages = max(0, pg_hi - pg_lo);
  const int per_split = (n_pages + args.num_splits - 1) / args.num_splits;
  const int cta_begin = pg_lo + split * per_split;
  const int cta_n = max(0, min(per_split, pg_hi - cta_begin));

  const size_t rows = static_cast<size_t>(view.num_seqs);
  auto out_row = [&](int c) {  // index of (split, row, q head) of column c in part_lse
    const int f = tile.f0 + c;
    return (static_cast<size_t>(split) * rows + tile.row0 + f / group) * args.num_q_heads + kv_head * group + f % group;
  };
  if (cta_n == 0) {  // nothing visible in this split: empty partials
    cudaGridDependencySynchronize();
    for (int i = threadIdx.x; i < NC * D; i += blockDim.x) {
      const int c = i / D;
      if (tile.f0 + c < tile.fcount) args.part_o[out_row(c) * D + i % D] = 0.f;
    }
    for (int c = threadIdx.x; c < NC; c += blockDim.x)
      if (tile.f0 + c < tile.fcount) args.part_lse[out_row(c)] = -INFINITY;
    return;
  }

  // ---- start streaming this warp's first pages ----
  const int n_mine = cta_n > warp ? (cta_n - warp + W - 1) / W : 0;
  const int32_t* page_row = view.page_table + static_cast<size_t>(pseq) * view.max_pages_per_seq - first_page;
  uint8_t* my_ring = ring + warp * Cfg::kStages * Cfg::kStageBytes;
  const size_t k_stride = static_cast<size_t>(view.num_kv_heads) * Cfg::kTileK;
  const size_t v_stride = static_cast<size_t>(view.num_kv_heads) * Cfg::kTileV;
  const uint8_t* k_base = view.k.pages + static_cast<size_t>(kv_head) * Cfg::kTileK + lane * 16;
  const uint8_t* v_base = view.v.pages + static_cast<size_t>(kv_head) * Cfg::kTileV + lane * 16;
  PageStream<Cfg::kTileK, Cfg::kTileV, Cfg::kStages> pages{page_row, cta_begin + warp, W, n_mine, k_base, v_base,
                                                          k_stride, v_stride, my_ring + lane * 16, lane};
  static_assert(decltype(pages)::kStageBytes == Cfg::kStageBytes, "ring slots: one K tile and one V tile");
  pages.start();

  if constexpr (KB != 16) build_lut<KB>(lut, 0, view.k.centroids, scratch);
  if constexpr (VB != 16) build_lut<VB>(lut, 1, view.v.centroids, scratch + 256);

  // The query-rotation kernel must have finished before q_rot is read.
  cudaGridDependencySynchronize();
  // Q^T fragments in fragment order: entry (nt, kk, lane) = coordinates c..c+3 of column nt*8+g,
  // c = t*D/4 + 4*kk (the K chunk's pair order); zeros for invalid columns.
  for (int i = threadIdx.x; i < NT * kSteps * 32; i += blockDim.x) {
    const int l = i & 31, kk = (i >> 5) % kSteps, nt = (i >> 5) / kSteps;
    const int c = nt * 8 + (l >> 2), coord = (l & 3) * (D / 4) + 4 * kk;
    const int f = tile.f0 + c;
    float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
    if (f < tile.fcount) {
      const size_t qrow = static_cast<size_t>(tile.row0 + f / group) * args.num_q_heads + kv_head * group + f % group;
      v = *reinterpret_cast<const float4*>(args.q_rot + qrow * D + coord);
    }
    qs[i] = make_uint2(pack_half2(v.x, v.y), pack_half2(v.z, v.w));
  }
  __syncthreads();  // tables and Q ready
  const uint32_t lane4k = 4u * lane, lane4v = 4u * lane + 128u;

  // This lane's columns nt*8 + 2t + h (h = 0, 1) see positions [lo, len) with
  // lo = max(first page, len - window).
  int my_len[NT][2];
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
#pragma unroll
    for (int h = 0; h < 2; ++h) my_len[nt][h] = col_len[nt * 8 + 2 * t + h];

  // O^T fragments: acc[mt][nt][0..1] = coordinate g*D/8 + 2mt, columns nt*8 + 2t, +1;
  //                acc[mt][nt][2..3] = coordinate g*D/8 + 2mt + 1.
  float acc[kSteps][NT][4];
#pragma unroll
  for (int i = 0; i < kSteps; ++i)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) acc[i][nt][0] = acc[i][nt][1] = acc[i][nt][2] = acc[i][nt][3] = 0.f;
  float m_run[NT][2], l_run[NT][2];
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
    m_run[nt][0] = m_run[nt][1] = -INFINITY;
    l_run[nt][0] = l_run[nt][1] = 0.f;
  }

  int read_slot = 0;
  for (int i = 0; i < n_mine; ++i) {
    cp_async_wait<Cfg::kStages - 2>();
    __syncwarp();
    const uint8_t* ktile = my_ring + read_slot * Cfg::kStageBytes;
    read_slot = read_slot + 1 == Cfg::kStages ? 0 : read_slot + 1;
    const uint8_t* vtile = ktile + Cfg::kTileK;
    const int pos0 = (cta_begin + warp + i * W) * kPage;
    // Every column sees every token of the page (warp-uniform): no masks.
    const bool full = pos0 >= max_lo && pos0 + kPage <= min_len;

    // ---- scores S^T = K Q^T: one K fragment per k-step feeds NT mma ----
    float s[NT][4];
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
    if constexpr (KB == 16) {
      const uint8_t* k0 = ktile + (g * D + t * (D / 4)) * 2;
      const uint8_t* k1 = k0 + 8 * D * 2;
#pragma unroll
      for (int kk = 0; kk < kSteps; ++kk) {
        const uint2 x0 = *reinterpret_cast<const uint2*>(k0 + 8 * kk);
        const uint2 x1 = *reinterpret_cast<const uint2*>(k1 + 8 * kk);
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
          const uint2 b = qs[(nt * kSteps + kk) * 32 + lane];
          mma_16816(s[nt], x0.x, x1.x, x0.y, x1.y, b.x, b.y);
        }
      }
    } else {
      KChunk r0, r1;
      r0.load(ktile, (g * D + t * (D / 4)) * KB);
      r1.load(ktile, ((g + 8) * D + t * (D / 4)) * KB);
#pragma unroll
      for (int kk = 0; kk < kSteps; ++kk) {
        const uint32_t a0 = k_pair<KB>(r0, 2 * kk, lut, lane4k), a1 = k_pair<KB>(r1, 2 * kk, lut, lane4k);
        const uint32_t a2 = k_pair<KB>(r0, 2 * kk + 1, lut, lane4k), a3 = k_pair<KB>(r1, 2 * kk + 1, lut, lane4k);
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
          const uint2 b = qs[(nt * kSteps + kk) * 32 + lane];
          mma_16816(s[nt], a0, a1, a2, a3, b.x, b.y);
        }
      }
    }
    const float ks0 = token_scale<D, KB>(ktile, g), ks1 = token_scale<D, KB>(ktile, g + 8);
    const int p0 = pos0 + g, p1 = pos0 + g + 8;

    // ---- online softmax per column ----
    uint32_t pb0[NT], pb1[NT];
    bool rescale = false;
    float alpha[NT][2];
    const float vs0 = p0 >= min_lo && p0 < max_len ? token_scale<D, VB>(vtile, g) : 0.f;
    const float vs1 = p1 >= min_lo && p1 < max_len ? token_scale<D, VB>(vtile, g + 8) : 0.f;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      float x[4] = {s[nt][0] * ks0, s[nt][1] * ks0, s[nt][2] * ks1, s[nt][3] * ks1};
      if (args.softcap > 0.f) {
#pragma unroll
        for (int e = 0; e < 4; ++e) x[e] = args.softcap * tanhf(x[e] / args.softcap);
      }
#pragma unroll
      for (int e = 0; e < 4; ++e) x[e] *= kLog2e;
      if (!full) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int len = my_len[nt][h], lo = args.window > 0 ? max(lo_first, len - args.window) : lo_first;
          x[h] = p0 >= lo && p0 < len ? x[h] : -INFINITY;
          x[h + 2] = p1 >= lo && p1 < len ? x[h + 2] : -INFINITY;
        }
      }
      float p[4];
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const float mp = warp_max_over_g(fmaxf(x[h], x[h + 2]));
        const float m_new = fmaxf(m_run[nt][h], mp);
        if (m_new == -INFINITY) {
          alpha[nt][h] = 1.f;
          p[h] = p[h + 2] = 0.f;
        } else {
          alpha[nt][h] = fast_exp2(m_run[nt][h] - m_new);
          p[h] = fast_exp2(x[h] - m_new);
          p[h + 2] = fast_exp2(x[h + 2] - m_new);
        }
        m_run[nt][h] = m_new;
        l_run[nt][h] = l_run[nt][h] * alpha[nt][h] + p[h] + p[h + 2];
        rescale |= alpha[nt][h] != 1.f;
      }
      pb0[nt] = transpose8x8(pack_half2(p[0] * vs0, p[1] * vs0));
      pb1[nt] = transpose8x8(pack_half2(p[2] * vs1, p[3] * vs1));
    }
    if (__any_sync(0xffffffffu, rescale)) {
#pragma unroll
      for (int mt = 0; mt < kSteps; ++mt)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
          acc[mt][nt][0] *= alpha[nt][0];
          acc[mt][nt][1] *= alpha[nt][1];
          acc[mt][nt][2] *= alpha[nt][0];
          acc[mt][nt][3] *= alpha[nt][1];
        }
    }

    // ---- O^T += V^T P^T: one V fragment per m-step feeds NT mma ----
    if constexpr (VB == 16) {
      // Slots no column sees (unwritten past the longest row, or before every window) may hold
      // NaN, and 0 * NaN would leak.
      auto seen = [&](int r) { return pos0 + r >= min_lo && pos0 + r < max_len; };
      const uint32_t mlo = (seen(2 * t) ? 0x0000ffffu : 0u) | (seen(2 * t + 1) ? 0xffff0000u : 0u);
      const uint32_t mhi = (seen(2 * t + 8) ? 0x0000ffffu : 0u) | (seen(2 * t + 9) ? 0xffff0000u : 0u);
      const uint8_t* vr0 = vtile + ((2 * t) * D + g * (D / 8)) * 2;  // token rows 2t, 2t+1, 2t+8, 2t+9
      const uint8_t* vr1 = vr0 + D * 2;
      const uint8_t* vr8 = vr0 + 8 * D * 2;
      const uint8_t* vr9 = vr0 + 9 * D * 2;
#pragma unroll
      for (int mt = 0; mt < kSteps; ++mt) {
        const uint32_t x0 = *reinterpret_cast<const uint32_t*>(vr0 + 4 * mt);
        const uint32_t x1 = *reinterpret_cast<const uint32_t*>(vr1 + 4 * mt);
        const uint32_t x8 = *reinterpret_cast<const uint32_t*>(vr8 + 4 * mt);
        const uint32_t x9 = *reinterpret_cast<const uint32_t*>(vr9 + 4 * mt);
        const uint32_t a0 = __byte_perm(x0, x1, 0x5410) & mlo, a1 = __byte_perm(x0, x1, 0x7632) & mlo;
        const uint32_t a2 = __byte_perm(x8, x9, 0x5410) & mhi, a3 = __byte_perm(x8, x9, 0x7632) & mhi;
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) mma_16816(acc[mt][nt], a0, a1, a2, a3, pb0[nt], pb1[nt]);
      }
    } else {
      VChunk v0, v1, v8, v9;
      const int cb = g * (D / 8);
      v0.load(vtile, ((2 * t) * D + cb) * VB);
      v1.load(vtile, ((2 * t + 1) * D + cb) * VB);
      v8.load(vtile, ((2 * t + 8) * D + cb) * VB);
      v9.load(vtile, ((2 * t + 9) * D + cb) * VB);
      VPairs<VB, VChunk> lo, hi;
      lo.init(v0, v1);
      hi.init(v8, v9);
#pragma unroll
      for (int mt = 0; mt < kSteps; ++mt) {
        const uint32_t a0 = lo.get(2 * mt, lut, lane4v), a1 = lo.get(2 * mt + 1, lut, lane4v);
        const uint32_t a2 = hi.get(2 * mt, lut, lane4v), a3 = hi.get(2 * mt + 1, lut, lane4v);
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) mma_16816(acc[mt][nt], a0, a1, a2, a3, pb0[nt], pb1[nt]);
      }
    }
    __syncwarp();
    if (i + Cfg::kStages - 1 < n_mine) pages.issue(i + Cfg::kStages - 1);
    cp_async_commit();
  }
  cp_async_wait<0>();

  // ---- merge the warps (shared memory reused: all tiles are consumed) ----
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
    l_run[nt][0] = warp_sum_over_g(l_run[nt][0]);
    l_run[nt][1] = warp_sum_over_g(l_run[nt][1]);
  }
  __syncthreads();
  float* mrg = reinterpret_cast<float*>(ring);
  constexpr int kWarpFloats = 2 * NC + NC * D;  // m[NC], l[NC], O[NC][D]
  float* wm = mrg + warp * kWarpFloats;
  if (g == 0) {
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      wm[nt * 8 + 2 * t] = m_run[nt][0];
      wm[nt * 8 + 2 * t + 1] = m_run[nt][1];
      wm[NC + nt * 8 + 2 * t] = l_run[nt][0];
      wm[NC + nt * 8 + 2 * t + 1] = l_run[nt][1];
    }
  }
  float* wo = wm + 2 * NC;
#pragma unroll
  for (int mt = 0; mt < kSteps; ++mt) {
    const int ca = g * (D / 8) + 2 * mt;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      const int c0 = nt * 8 + 2 * t;
      wo[c0 * D + ca] = acc[mt][nt][0];
      wo[(c0 + 1) * D + ca] = acc[mt][nt][1];
      wo[c0 * D + ca + 1] = acc[mt][nt][2];
      wo[(c0 + 1) * D + ca + 1] = acc[mt][nt][3];
    }
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < NC * D; idx += blockDim.x) {
    const int c = idx / D, k = idx % D;
    if (tile.f0 + c >= tile.fcount) continue;
    float mx = -INFINITY;
#pragma unroll
    for (int w = 0; w < W; ++w) mx = fmaxf(mx, mrg[w * kWarpFloats + c]);
    float num = 0.f, den = 0.f;
    if (mx != -INFINITY) {
#pragma unroll
      for (int w = 0; w < W; ++w) {
        const float* b = mrg + w * kWarpFloats;
        const float f = exp2f(b[c] - mx);  // empty warps: exp2(-inf) = 0
        num += f * b[2 * NC + c * D + k];
        den += f * b[NC + c];
      }
    }
    const size_t orow = out_row(c);
    args.part_o[orow * D + k] = den > 0.f ? num / den : 0.f;
    if (k == 0) args.part_lse[orow] = den > 0.f ? mx + log2f(den) : -INFINITY;
  }
}

}  // namespace tqkv::cuda::detail
