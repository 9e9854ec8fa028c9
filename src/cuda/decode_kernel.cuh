// Fused split-KV decode attention over paged KV tiles (TurboQuant or fp16), on tensor cores.
//
// Grid: x = split (a contiguous share of one sequence's pages), y = kv_head * head_chunks +
// chunk (up to 8 query heads of the GQA group), z = sequence. Block: W warps (16 for TurboQuant
// sides at head_dim <= 128, so one lookup table serves many warps); warp w takes the CTA's pages
// w, w + W, ... and streams them through its own cp.async ring of S (K tile + V tile) slots in
// shared memory, so each K/V page is read from DRAM once for all the query heads of its group.
//
// Per page (16 tokens) and warp, everything in the ROTATED space (y = P x):
//   S^T[16 tok x 8 heads] = K[16 x D] * Q^T[D x 8]       D/16 mma.m16n8k16, K dequantized on the
//                                                        fly through the lane's lookup table
//   online softmax per head column (log2 domain), token scales folded into scores / probabilities
//   O^T[D x 8 heads] += V^T[D x 16 tok] * P^T[16 x 8]     D/16 mma; V^T read as token pairs
//                                                        (kv_fetch.cuh), P^T by movmatrix
// The warps' states are merged in shared memory and the CTA writes its normalised partial
// output and log-sum-exp (base 2) to the workspace; merge_splits_kernel (decode_api.cu) combines
// the splits and rotates the output back (x = P^T y).
#pragma once

#include <cuda_fp16.h>

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "cuda/device_utils.cuh"
#include "cuda/kv_fetch.cuh"
#include "cuda/decode_fused_merge.cuh"
#include "cuda/hadamard.cuh"
#include "cuda/page_stream.cuh"
#include "cuda/decode_probe.cuh"
#include "cuda/decode_config.cuh"
#include "tqkv/kv_layout.h"

namespace tqkv::cuda::detail {

// The kernel (v3; docs/benchmarks.md has its history, and commit f67be94 still holds v1, v2 and
// the bulk-copy variant, which were selectable until then):
// - tables of <= 4-bit sides joined by shuffles from centroids each lane loads at entry; the warp
//   merge through padded rows (no bank conflicts); an online softmax that skips the max reduction
//   (and the rescale) when no score of the page exceeds the running max, which is most pages once
//   the max has settled;
// - log2(e) folded into the two K token scales and the soft-cap constant (the soft-cap divides by
//   a reciprocal computed once); pages entirely inside [lo_pos, len) take a copy of the page body
//   without the visibility tests and selects (one warp vote per page); the V lookups address the V
//   half of the table by an immediate offset; V nibble joins by one bit select each; K rows
//   addressed as lane * chunk; at head size 96 the 4-bit sides load each row's chunk as two aligned
//   runs (SplitChunk, kv_fetch.cuh); at head sizes 128 and 256 with 4-bit V the V tile is swizzled
//   in shared memory so its row loads are free of bank conflicts;
// - with DecodeArgs::out, the fused merge (decode_fused_merge.cuh).
// MODE 5 (the default for decode; TQKV_CUDA_DECODE_KERNEL=fusedq or unset): the kernel rotates
//   its own queries (DecodeArgs::q_in; launched without rotate_query_kernel): the fast transform
//   by shuffles at power-of-two head sizes (one warp per query row), the dense P at 80 and 96
//   (DecodeArgs::q_dense; pieces of 16 outputs dealt to all warps), none for fp16 K; rows
//   exchanged through each warp's free ring slot.
// MODE 6 (TQKV_CUDA_DECODE_KERNEL=v3, prefill rows, and a dense P at a power-of-two head size):
//   the queries come rotated from rotate_query_kernel (decode_api.cu), a programmatic-dependent
//   launch.
template <int D, int KB, int VB, int MODE>
__global__ void __launch_bounds__(DecodeConfig<D, KB, VB>::kWarps * 32, 1)
    decode_split_kernel(const DecodeArgs args) {
  static_assert(MODE == 5 || MODE == 6, "built kernels: v3 (6) and v3 rotating its own queries (5)");
  constexpr bool FUSEDQ = MODE == 5;
  // Head size 96, 4-bit side: the chunk as two aligned runs (SplitChunk).
  constexpr bool kKRuns = D == 96 && KB == 4;
  constexpr bool kVRuns = D == 96 && VB == 4;
  // Head sizes 128 and 256, 4-bit V (rows of 64 / 128 bytes): the V tile's 16-byte chunks
  // XOR-swizzled inside each 128-byte line, chunk j of line L at j ^ 2 ((b >> S) & 3) with
  // S = log2(2 x row bytes) (d128: the line's own index, L & 3; d256: the row pair's, (L >> 1) & 3),
  // so the row loads of the lanes (rows 2t, 2t + 1, ...: all rows 2t start in bank 0) hit
  // different banks instead of 4-way conflicts. The tile's scales (line 8 / 16) stay in place.
  constexpr bool kVSwz = (D == 128 || D == 256) && VB == 4;
  constexpr int kVSwzShift = D == 256 ? 8 : 7;
  auto vswz = [](int b) {
    return kVSwz ? (b & ~0x70) | ((((b >> 4) & 7) ^ (((b >> kVSwzShift) & 3) << 1)) << 4) : b;
  };
  // Merge rows: coordinate c of head h at h * kSx + c + c / (D / 8) (one pad word per lane
  // group g), so one store instruction of the 32 lanes hits 32 different banks.
  constexpr int kSx = D + 12;
  constexpr int kPadDiv = D / 8;
  using Cfg = DecodeConfig<D, KB, VB>;
  constexpr int W = Cfg::kWarps;
  constexpr int kSteps = D / 16;
  constexpr float kLog2e = 1.4426950408889634f;
  using KChunk = std::conditional_t<kKRuns, SplitChunk<KB, D / 4, 8, 4>, Chunk<KB, D / 4, low_bit(D * KB / 4)>>;
  using VChunk = std::conditional_t<kVRuns, SplitChunk<VB, D / 8, 4, 2>, Chunk<VB, D / 8, low_bit(D * VB / 8)>>;
  // Coordinate of element j of lane t's K chunk (the contraction order of the Q^T fragments).
  auto k_coord = [](int t_, int j) { return kKRuns ? (j < 16 ? 16 * t_ + j : 64 + 8 * t_ + (j - 16)) : t_ * (D / 4) + j; };

  extern __shared__ __align__(16) uint8_t smem[];
  uint8_t* lut = smem;  // interleaved K/V tables at the start: offsets fold into the LDS
  float* scratch = reinterpret_cast<float*>(smem + Cfg::kLut);
  uint8_t* ring = smem + Cfg::kLut + kScratchBytes + kMbarBytes;

  const PagedKVView& view = args.view;
  // Centroids of <= 4-bit sides straight into registers first (K: lanes 0-15, V: 16-31).
  constexpr bool kShflK = KB <= 4, kShflV = VB <= 4;
  float held_c = 0.f;
  if constexpr (kShflK || kShflV) {
    const int l = threadIdx.x & 31;
    if (kShflK && l < 16 && l < (1 << KB)) held_c = __ldg(view.k.centroids + l);
    if (kShflV && l >= 16 && l - 16 < (1 << VB)) held_c = __ldg(view.v.centroids + (l - 16));
  }
  const int split = blockIdx.x;
  const int kv_head = blockIdx.y / args.head_chunks;
  const int chunk = blockIdx.y % args.head_chunks;
  const int seq = blockIdx.z;
  const int head0 = kv_head * args.group + chunk * 8;  // first query head of this CTA
  const int nheads = min(8, args.group - chunk * 8);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  TQKV_PROBE(kProbeEntry, threadIdx.x == 0);
  // Decode: the sequence's page-table row into L2 at once. The page ids are read only when the
  // sequence length has arrived (a dependent load), and the copies of the first pages wait on
  // them: two DRAM round trips in a row before the first copy, now one plus an L2 hit. (Its own
  // effect was not measured: run V5 took it together with the fp16 query preload; run V8's
  // attempt to take the id read off that path altogether gained nothing.)
  if (!args.row_seq && static_cast<int>(threadIdx.x) * 32 < view.max_pages_per_seq + 32) {
    const int i = min(static_cast<int>(threadIdx.x) * 32, view.max_pages_per_seq - 1);
    prefetch_l2(view.page_table + static_cast<size_t>(seq) * view.max_pages_per_seq + i);
  }

  // Token range that is visible: [lo_pos, len).
  const int pseq = args.row_seq ? args.row_seq[seq] : seq;  // sequence whose pages this row reads
  const int len = args.row_len ? args.row_len[seq] : view.seq_lens[seq];
  const int first_page = view.first_page ? view.first_page[pseq] : 0;
  int lo_pos = max(first_page * kPage, view.sink_tokens);  // sinks: merge_splits_kernel reads them
  if (args.window > 0) lo_pos = max(lo_pos, len - args.window);
  const int pg_lo = lo_pos / kPage;
  const int pg_hi = (len + kPage - 1) / kPage;
  const int n_pages = max(0, pg_hi - pg_lo);
  const int per_split = (n_pages + args.num_splits - 1) / args.num_splits;
  const int cta_begin = pg_lo + split * per_split;
  const int cta_n = max(0, min(per_split, pg_hi - cta_begin));

  const size_t part_row = (static_cast<size_t>(split) * view.num_seqs + seq) * args.num_q_heads;
  // FUSEDQ: rotates query row r (head head0 + r) into dst (shared, may be null) and, in split 0,
  // into the workspace q_rot that the merge kernel's sink split reads. Whole warp.
  // The CTA that writes row r to the workspace q_rot for the sinks: split 0 for merge_splits_kernel;
  // with the fused merge the rank that merges head r (it reads the row itself, after barriers).
  auto writes_q = [&](int r) { return args.out ? r % args.num_splits == split : split == 0; };
  auto qload_at = [&](int r, int i) {
    const size_t qoff = ((static_cast<size_t>(seq) * args.num_q_heads) + head0 + r) * D;
    return args.q_f32 ? static_cast<const float*>(args.q_in)[qoff + i]
                      : __half2float(static_cast<const __half*>(args.q_in)[qoff + i]);
  };
  // FUSEDQ: warp w's row w (a CTA has <= 8 rows and, at every TurboQuant format, >= 8 warps), loaded
  // here at entry. A load issued after the first pages' copies waits behind them: every SM starts
  // with tens of KB in flight, and the DRAM queue takes microseconds to drain (run V4's timeline at
  // 8 x 8K: the fp16 kernel's rows were rotated 5.9 us after entry, the query load being the wait;
  // k4v4 gained 0.8 us of set-up from loading them first).
  // Hadamard: signs * q at coordinates lane * kQE + e; fp16 K (no rotation): q at lane + 32 e.
  constexpr bool kPow2D = (D & (D - 1)) == 0;
  constexpr int kQE = kPow2D ? D / 32 : (D + 31) / 32;
  float q_pre[kQE];
  const bool q_had = FUSEDQ && kPow2D && args.q_signs != nullptr;
  // Dense rotation (head sizes 80 and 96): rotate_dense below, with its own preload.
  const bool q_dense = FUSEDQ && !kPow2D && args.q_dense != nullptr;
  const bool q_preloaded = FUSEDQ && warp < nheads && (q_had || args.q_signs == nullptr) && !q_dense;
  if (q_preloaded) {
#pragma unroll
    for (int e = 0; e < kQE; ++e) {
      if (q_had) {
        q_pre[e] = qload_at(warp, lane * kQE + e) * __ldg(args.q_signs + lane * kQE + e);
      } else {
        const int i = lane + 32 * e;
        q_pre[e] = i < D ? qload_at(warp, i) : 0.f;
      }
    }
  }
  // FUSEDQ, dense P (head sizes 80 and 96): y = q_scale * P q for the CTA's nheads rows, by all
  // warps: the nheads x (D / 16) pieces of 16 outputs are dealt round-robin, warp w taking pieces
  // w, w + W, ...; the query rows of a warp's pieces are loaded at entry (here). Lane l holds q at
  // coordinates l + 32 e and adds up its terms of the piece's 16 outputs (each load of P a
  // coalesced part of one row of P; the piece's 16 x kQE loads are independent: one L2 round trip),
  // the two half-warps' sums are added and a butterfly reduce-scatter (reduce_scatter_step) leaves
  // output 16 c + (l & 15) on lanes l and l ^ 16. With one warp per row the pieces were serial
  // round trips (run W12: d96 batch-8 calls 2-5% slower than the separate rotation kernel).
  constexpr int kPieces = D / 16;
  constexpr int kMyPieces = (8 * kPieces + W - 1) / W;
  float dq[q_dense_possible<D>() ? kMyPieces : 1][kQE];
  if constexpr (q_dense_possible<D>()) {
    if (q_dense) {
#pragma unroll
      for (int m = 0; m < kMyPieces; ++m) {
        const int r = (warp + W * m) / kPieces;
#pragma unroll
        for (int e = 0; e < kQE; ++e) {
          const int j = lane + 32 * e;
          dq[m][e] = (r < nheads && j < D) ? qload_at(r, j) : 0.f;
        }
      }
    }
  }
  // dst_of(r): where row r goes in shared memory (null: nowhere); row r also goes to the workspace
  // q_rot where writes_q(r) (the sink merge reads it).
  auto rotate_dense = [&](auto dst_of) {
    if constexpr (q_dense_possible<D>()) {
      static_assert(D % 16 == 0 && kQE <= 3, "whole pieces of 16 outputs; q in <= 3 registers per lane");
#pragma unroll
      for (int m = 0; m < kMyPieces; ++m) {
        const int it = warp + W * m, r = it / kPieces, i0 = 16 * (it % kPieces);
        if (r >= nheads) break;  // (warp-uniform)
        float v[16];
#pragma unroll
        for (int k = 0; k < 16; ++k) {
          float a = 0.f;
#pragma unroll
          for (int e = 0; e < kQE; ++e) {
            const int j = lane + 32 * e;
            if (j < D) a = fmaf(__ldg(args.q_dense + (i0 + k) * D + j), dq[m][e], a);
          }
          v[k] = a;
        }
#pragma unroll
        for (int k = 0; k < 16; ++k) v[k] += __shfl_xor_sync(0xffffffffu, v[k], 16);
        reduce_scatter_step<8>(v, lane);
        reduce_scatter_step<4>(v, lane);
        reduce_scatter_step<2>(v, lane);
        reduce_scatter_step<1>(v, lane);
        if (lane < 16) {
          const int i = i0 + lane;
          const float y = args.q_scale * v[0];
          float* dst = dst_of(r);
          if (dst) dst[i] = y;
          if (writes_q(r)) {
            const size_t qoff = ((static_cast<size_t>(seq) * args.num_q_heads) + head0 + r) * D;
            const_cast<float*>(args.q_rot)[qoff + i] = y;
          }
        }
      }
    }
  };
  auto rotate_row = [&](int r, float* dst) {
    const size_t qoff = ((static_cast<size_t>(seq) * args.num_q_heads) + head0 + r) * D;
    float* gdst = writes_q(r) ? const_cast<float*>(args.q_rot) + qoff : nullptr;  // for the sink merge
    auto qload = [&](int i) { return qload_at(r, i); };
    if constexpr ((D & (D - 1)) == 0) {
      if (args.q_signs) {  // x = signs * q, then H x (butterflies over the bits of the index) * scale / sqrt(D)
        constexpr int E = kQE;
        float x[E];
        if (q_had && q_preloaded && r == warp) {
#pragma unroll
          for (int e = 0; e < E; ++e) x[e] = q_pre[e];
        } else {
#pragma unroll
          for (int e = 0; e < E; ++e) x[e] = qload(lane * E + e) * __ldg(args.q_signs + lane * E + e);
        }
        hadamard_in_lanes<E, 32>(x, lane);
        const float f = args.q_scale * rsqrtf(static_cast<float>(D));
#pragma unroll
        for (int e = 0; e < E; ++e) {
          if (dst) dst[lane * E + e] = f * x[e];
          if (gdst) gdst[lane * E + e] = f * x[e];
        }
        return;
      }
    }
    if (q_preloaded && r == warp) {  // fp16 K: no rotation
#pragma unroll
      for (int e = 0; e < kQE; ++e) {
        const int i = lane + 32 * e;
        if (i < D) {
          if (dst) dst[i] = args.q_scale * q_pre[e];
          if (gdst) gdst[i] = args.q_scale * q_pre[e];
        }
      }
      return;
    }
    for (int i = lane; i < D; i += 32) {
      const float v = args.q_scale * qload(i);
      if (dst) dst[i] = v;
      if (gdst) gdst[i] = v;
    }
  };
  TQKV_PROBE_CTA_INFO(cta_n);
  if (cta_n == 0) {  // nothing visible in this split: an empty partial
    cudaGridDependencySynchronize();  // the previous call's merge must not see these writes early
    if constexpr (FUSEDQ) {
      if (q_dense) {
        rotate_dense([](int) -> float* { return nullptr; });
      } else {
        for (int r = warp; r < nheads; r += W)
          if (writes_q(r)) rotate_row(r, nullptr);
      }
    }
    if (args.out) {  // fused merge: an empty partial in this CTA's shared memory
      float* res = reinterpret_cast<float*>(ring) + W * (16 + 8 * kSx);
      for (int i = threadIdx.x; i < nheads * D; i += blockDim.x) res[FusedMergeSmem<D>::kResO + i] = 0.f;
      if (threadIdx.x < nheads) res[FusedMergeSmem<D>::kResLse + threadIdx.x] = -INFINITY;
      fused_merge<D, W, VB != 16>(args, res, reinterpret_cast<float*>(ring), seq, kv_head, head0, nheads);
      TQKV_PROBE(kProbeEnd, threadIdx.x == 0);
      return;
    }
    for (int i = threadIdx.x; i < nheads * D; i += blockDim.x) {
      args.part_o[(part_row + head0 + i / D) * D + i % D] = 0.f;
    }
    if (threadIdx.x < nheads) args.part_lse[part_row + head0 + threadIdx.x] = -INFINITY;
    TQKV_PROBE(kProbeEnd, threadIdx.x == 0);
    return;
  }

  // ---- start streaming this warp's first pages before anything else ----
  const int n_mine = cta_n > warp ? (cta_n - warp + W - 1) / W : 0;
  const int32_t* page_row = view.page_table + static_cast<size_t>(pseq) * view.max_pages_per_seq - first_page;
  uint8_t* my_ring = ring + warp * Cfg::kStages * Cfg::kStageBytes;
  // Per-lane bases: the page offset is one 64-bit multiply, the 512-byte steps are immediates.
  const size_t k_stride = static_cast<size_t>(view.num_kv_heads) * Cfg::kTileK;
  const size_t v_stride = static_cast<size_t>(view.num_kv_heads) * Cfg::kTileV;
  const uint8_t* k_base = view.k.pages + static_cast<size_t>(kv_head) * Cfg::kTileK + lane * 16;
  const uint8_t* v_base = view.v.pages + static_cast<size_t>(kv_head) * Cfg::kTileV + lane * 16;
  // (kVSwz) the lane's V chunk, swizzled: the shift for copy offset o depends on o only through
  // (o >> kVSwzShift) & 3, i.e. on o % 1024 at d = 256 (o is a multiple of 512), not at all at 128.
  const int vdelta = vswz(lane * 16) - lane * 16;
  const int vdelta512 = vswz(512 + lane * 16) - (512 + lane * 16);
  PageStream<Cfg::kTileK, Cfg::kTileV, Cfg::kStages> pages{page_row, cta_begin + warp, W, n_mine, k_base, v_base,
                                                          k_stride, v_stride, my_ring + lane * 16, lane, vdelta, vdelta512};
  static_assert(decltype(pages)::kStageBytes == Cfg::kStageBytes, "ring slots: one K tile and one V tile");
  pages.start();
  TQKV_PROBE(kProbeStarted, threadIdx.x == 0);

  if constexpr (kShflK) build_lut_shfl<KB>(lut, 0, held_c, 0);
  else if constexpr (KB != 16) build_lut<KB>(lut, 0, view.k.centroids, scratch);
  if constexpr (kShflV) build_lut_shfl<VB>(lut, 1, held_c, 16);
  else if constexpr (VB != 16) build_lut<VB>(lut, 1, view.v.centroids, scratch + 256);

  TQKV_PROBE(kProbeTables, threadIdx.x == 0);
  // Launched as a programmatic dependent of the query-rotation kernel: wait for q_rot here,
  // after the page prefetch and the tables have been started.
  cudaGridDependencySynchronize();
  // Q^T fragments: b0 = coords c, c+1 and b1 = c+2, c+3 with c = t*D/4 + 4*kk, head g.
  uint32_t qf[kSteps][2];
  const bool valid = g < nheads;
  const float* qrow;
  if constexpr (FUSEDQ) {
    // Row r (query head head0 + r) of this CTA: rotated by warp r % W into float slot r / W of
    // that warp's last ring slot (no page is issued there before the loop; a slot holds
    // >= 8 / W rows: stage bytes >= 8 D + 64 >= (8 / W) * 4 D for W >= 4).
    auto qslot = [&](int r) {
      return reinterpret_cast<float*>(ring + ((r % W) * Cfg::kStages + Cfg::kStages - 1) * Cfg::kStageBytes) + (r / W) * D;
    };
    if (q_dense) {
      rotate_dense(qslot);
    } else {
      for (int r = warp; r < nheads; r += W) rotate_row(r, qslot(r));
    }
    TQKV_PROBE(kProbeRotated, threadIdx.x == 0);
    TQKV_PROBE(kProbeLastWarpTables, threadIdx.x == blockDim.x - 32);
    __syncthreads();  // tables and rotated rows ready
    qrow = qslot(valid ? g : 0);
    // (the __syncthreads below: no warp issues into its last slot before every warp has read it)
  } else {
    qrow = args.q_rot + ((static_cast<size_t>(seq) * args.num_q_heads) + head0 + (valid ? g : 0)) * D;
  }
#pragma unroll
  for (int kk = 0; kk < kSteps; ++kk) {
    const int c = k_coord(t, 4 * kk);  // 4 consecutive coordinates
    float4 v = valid ? *reinterpret_cast<const float4*>(qrow + c) : make_float4(0.f, 0.f, 0.f, 0.f);
    qf[kk][0] = pack_half2(v.x, v.y);
    qf[kk][1] = pack_half2(v.z, v.w);
  }
  __syncthreads();  // tables ready
  TQKV_PROBE(kProbeReady, threadIdx.x == 0);
  // The V half of the table by an immediate offset on the table base (VPairs), so lane4v = lane4k.
  // 4 * lane passes through a register move the compiler cannot see into: knowing its value, it
  // rebuilt it as (tid << 2) & 0x7c inside every 2/3-bit table offset, so the field's mask and
  // this OR took two LOP3 instead of one (one instruction more per K and per V pair).
  uint32_t lane4k;
  asm("mov.b32 %0, %1;" : "=r"(lane4k) : "r"(4u * static_cast<uint32_t>(lane)));
  const uint32_t lane4v = lane4k;
  // Soft-cap in the domain of the scores (log2 domain, c' = c log2(e)), by its reciprocal.
  const float cap = args.softcap * kLog2e;
  const float inv_cap = args.softcap > 0.f ? 1.f / cap : 0.f;

  // O^T fragments: acc[mt][0..1] = coordinate g*D/8 + 2mt, heads 2t, 2t+1;
  //                acc[mt][2..3] = coordinate g*D/8 + 2mt + 1, heads 2t, 2t+1.
  float acc[kSteps][4];
#pragma unroll
  for (int i = 0; i < kSteps; ++i) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;
  float m_run[2] = {-INFINITY, -INFINITY};  // per head column 2t, 2t+1 (uniform over g)
  float l_run[2] = {0.f, 0.f};              // this lane's share of the denominators
  float m_use[2] = {0.f, 0.f};              // m_run, or 0 while it is -inf (exp2 reference)

  int read_slot = 0;  // = i % kStages
  for (int i = 0; i < n_mine; ++i) {
    cp_async_wait<Cfg::kStages - 2>();
    __syncwarp();
    TQKV_PROBE(kProbeFirstPage, i == 0 && threadIdx.x == 0);
    const uint8_t* ktile = my_ring + read_slot * Cfg::kStageBytes;
    read_slot = read_slot + 1 == Cfg::kStages ? 0 : read_slot + 1;
    const uint8_t* vtile = ktile + Cfg::kTileK;
    const int pos0 = (cta_begin + warp + i * W) * kPage;
    // One page; FULL: every token of the page is visible (no tests, no selects).
    auto page = [&](auto full_c) {
    constexpr bool FULL = decltype(full_c)::value;
    auto visible = [&](int r) { return FULL || (pos0 + r >= lo_pos && pos0 + r < len); };
    const bool ok0 = visible(g), ok1 = visible(g + 8);

    // ---- scores S^T = K Q^T (two accumulators halve the dependent mma chain) ----
    float s[4];
    {
      KChunk r0, r1;
      if constexpr (kKRuns) {  // runs [16t, 16t + 16) and [64 + 8t, 64 + 8t + 8) of rows g, g + 8
        constexpr int row = D * KB / 8;
        r0.load(ktile, g * row + 8 * t, g * row + 32 + 4 * t);
        r1.load(ktile, (g + 8) * row + 8 * t, (g + 8) * row + 32 + 4 * t);
      } else {  // (g * D + t * D / 4) * KB = lane * D * KB / 4: one multiply
        r0.load(ktile, lane * (D * KB / 4));
        r1.load(ktile, lane * (D * KB / 4) + 8 * D * KB);
      }
      float se[4] = {0.f, 0.f, 0.f, 0.f}, so[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
      for (int kk = 0; kk < kSteps; ++kk) {
        const uint32_t a0 = k_pair<KB>(r0, 2 * kk, lut, lane4k), a1 = k_pair<KB>(r1, 2 * kk, lut, lane4k);
        const uint32_t a2 = k_pair<KB>(r0, 2 * kk + 1, lut, lane4k), a3 = k_pair<KB>(r1, 2 * kk + 1, lut, lane4k);
        if (kk & 1) mma_16816(so, a0, a1, a2, a3, qf[kk][0], qf[kk][1]);
        else mma_16816(se, a0, a1, a2, a3, qf[kk][0], qf[kk][1]);
      }
#pragma unroll
      for (int e = 0; e < 4; ++e) s[e] = se[e] + so[e];
    }
    // (log2(e) folded into the two K token scales instead of the four scores)
    const float ks0 = token_scale<D, KB>(ktile, g) * kLog2e;
    const float ks1 = token_scale<D, KB>(ktile, g + 8) * kLog2e;
    float x[4] = {s[0] * ks0, s[1] * ks0, s[2] * ks1, s[3] * ks1};
    if (args.softcap > 0.f) {
#pragma unroll
      for (int e = 0; e < 4; ++e) x[e] = cap * tanhf(x[e] * inv_cap);
    }
    if constexpr (!FULL) {
      x[0] = ok0 ? x[0] : -INFINITY;
      x[1] = ok0 ? x[1] : -INFINITY;
      x[2] = ok1 ? x[2] : -INFINITY;
      x[3] = ok1 ? x[3] : -INFINITY;
    }

    // ---- online softmax per head column ----
    float p[4];
    bool slow = true;
    {  // no score above the running max anywhere in the warp: no max reduction
      const bool grow = fmaxf(x[0], x[2]) > m_run[0] || fmaxf(x[1], x[3]) > m_run[1];
      slow = __any_sync(0xffffffffu, grow);
      if (!slow) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          p[h] = fast_exp2(x[h] - m_use[h]);
          p[h + 2] = fast_exp2(x[h + 2] - m_use[h]);
          l_run[h] += p[h] + p[h + 2];
        }
      }
    }
    if (slow) {
      float alpha[2];
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const float mp = warp_max_over_g(fmaxf(x[h], x[h + 2]));
        const float m_new = fmaxf(m_run[h], mp);
        if (m_new == -INFINITY) {  // nothing visible yet in this column
          alpha[h] = 1.f;
          p[h] = p[h + 2] = 0.f;
        } else {
          alpha[h] = fast_exp2(m_run[h] - m_new);
          p[h] = fast_exp2(x[h] - m_new);
          p[h + 2] = fast_exp2(x[h + 2] - m_new);
        }
        m_run[h] = m_new;
        m_use[h] = m_new == -INFINITY ? 0.f : m_new;
        l_run[h] = l_run[h] * alpha[h] + p[h] + p[h + 2];
      }
      // Rescale only when some column's running max moved (rare once the max has settled).
      if (__any_sync(0xffffffffu, alpha[0] != 1.f || alpha[1] != 1.f)) {
#pragma unroll
        for (int mt = 0; mt < kSteps; ++mt) {
          acc[mt][0] *= alpha[0];
          acc[mt][1] *= alpha[1];
          acc[mt][2] *= alpha[0];
          acc[mt][3] *= alpha[1];
        }
      }
    }

    // ---- O^T += V^T P^T; V's token scales folded into the probabilities ----
    const float vs0 = ok0 ? token_scale<D, VB>(vtile, g) : 0.f;  // (FULL: ok0 = ok1 = true)
    const float vs1 = ok1 ? token_scale<D, VB>(vtile, g + 8) : 0.f;
    const uint32_t pb0 = transpose8x8(pack_half2(p[0] * vs0, p[1] * vs0));
    const uint32_t pb1 = transpose8x8(pack_half2(p[2] * vs1, p[3] * vs1));
    {
      VChunk v0, v1, v8, v9;  // token rows 2t, 2t+1, 2t+8, 2t+9; coordinates [g*D/8, (g+1)*D/8)
      if constexpr (kVRuns) {  // runs [8g, 8g + 8) and [64 + 4g, 64 + 4g + 4) of each row
        constexpr int row = D * VB / 8;
        v0.load(vtile, (2 * t) * row + 4 * g, (2 * t) * row + 32 + 2 * g);
        v1.load(vtile, (2 * t + 1) * row + 4 * g, (2 * t + 1) * row + 32 + 2 * g);
        v8.load(vtile, (2 * t + 8) * row + 4 * g, (2 * t + 8) * row + 32 + 2 * g);
        v9.load(vtile, (2 * t + 9) * row + 4 * g, (2 * t + 9) * row + 32 + 2 * g);
      } else if constexpr (kVSwz && D == 256) {  // rows of 128 bytes, chunk g at byte 16g, swizzled
        // (loop-invariant offsets: t and g are fixed per lane)
        constexpr int row = D * VB / 8;
        const int b0 = 2 * t * row + 16 * g;
        v0.load(vtile, vswz(b0) * 8);
        v1.load(vtile, vswz(b0 + row) * 8);
        v8.load(vtile, vswz(b0 + 8 * row) * 8);
        v9.load(vtile, vswz(b0 + 9 * row) * 8);
      } else if constexpr (kVSwz) {  // d = 128: rows of 64 bytes, chunk g at byte 8g, swizzled:
        // vswz(128 t + 8 g) = 128 t + (8 g ^ 32 t); row 2t + 1 is chunk ^ 4, rows + 8 are + 512
        const int vo = 128 * t + ((8 * g) ^ (32 * t));
        v0.load(vtile, vo * 8);
        v1.load(vtile, (vo ^ 64) * 8);
        v8.load(vtile, (vo + 512) * 8);
        v9.load(vtile, ((vo ^ 64) + 512) * 8);
      } else {
        const int cb = g * (D / 8);
        v0.load(vtile, ((2 * t) * D + cb) * VB);
        v1.load(vtile, ((2 * t + 1) * D + cb) * VB);
        v8.load(vtile, ((2 * t + 8) * D + cb) * VB);
        v9.load(vtile, ((2 * t + 9) * D + cb) * VB);
      }
      uint32_t mlo = 0xffffffffu, mhi = 0xffffffffu;
      if constexpr (VB == 16 && !FULL) {  // unwritten fp16 slots may hold NaN, and 0 * NaN would leak
        mlo = (visible(2 * t) ? 0x0000ffffu : 0u) | (visible(2 * t + 1) ? 0xffff0000u : 0u);
        mhi = (visible(2 * t + 8) ? 0x0000ffffu : 0u) | (visible(2 * t + 9) ? 0xffff0000u : 0u);
      }
      VPairs<VB, VChunk, 128, true> lo, hi;
      lo.init(v0, v1);
      hi.init(v8, v9);
#pragma unroll
      for (int mt = 0; mt < kSteps; ++mt) {
        const uint32_t a0 = lo.get(2 * mt, lut, lane4v) & mlo;
        const uint32_t a1 = lo.get(2 * mt + 1, lut, lane4v) & mlo;
        const uint32_t a2 = hi.get(2 * mt, lut, lane4v) & mhi;
        const uint32_t a3 = hi.get(2 * mt + 1, lut, lane4v) & mhi;
        mma_16816(acc[mt], a0, a1, a2, a3, pb0, pb1);
      }
    }
    };  // page
    // (a vote: the compiler then knows the branch is warp-uniform and keeps the table base in a
    // uniform register inside both copies)
    if (__all_sync(0xffffffffu, pos0 >= lo_pos && pos0 + kPage <= len)) page(std::true_type{});
    else page(std::false_type{});
    __syncwarp();
    if (i + Cfg::kStages - 1 < n_mine) pages.issue(i + Cfg::kStages - 1);
    cp_async_commit();
  }
  cp_async_wait<0>();
  TQKV_PROBE(kProbeWarpEnd + warp, lane == 0);

  // ---- merge the warps (shared memory reused: all tiles are consumed) ----
  l_run[0] = warp_sum_over_g(l_run[0]);
  l_run[1] = warp_sum_over_g(l_run[1]);
  __syncthreads();
  TQKV_PROBE(kProbeLoopsDone, threadIdx.x == 0);
  float* mrg = reinterpret_cast<float*>(ring);
  // Where coordinate c sits in a merge row: lane group g's D/8 coordinates (in its chunk's order)
  // at g * (D / 8 + 1) (one pad word per group).
  auto merge_slot = [](int c) {
    if constexpr (kVRuns) return c < 64 ? (c >> 3) * 13 + (c & 7) : ((c - 64) >> 2) * 13 + 8 + ((c - 64) & 3);
    else return c + c / kPadDiv;
  };
  float* res = mrg + W * (16 + 8 * kSx);  // the fused merge's area (after every warp's rows)
  float* wm = mrg + warp * (16 + 8 * kSx);  // m[8], l[8], O[8][kSx] (padded rows)
  if (g == 0) {
    wm[2 * t] = m_run[0]; wm[2 * t + 1] = m_run[1];
    wm[8 + 2 * t] = l_run[0]; wm[8 + 2 * t + 1] = l_run[1];
  }
  float* wo = wm + 16;
  if (2 * t < nheads) {  // the columns of absent heads (nheads < 8) are never read
#pragma unroll
    for (int mt = 0; mt < kSteps; ++mt) {
      const int ca = g * (D / 8) + 2 * mt + g;  // (+ c / (D / 8) = g: the pad word)
      wo[(2 * t) * kSx + ca] = acc[mt][0];
      wo[(2 * t + 1) * kSx + ca] = acc[mt][1];
      wo[(2 * t) * kSx + ca + 1] = acc[mt][2];
      wo[(2 * t + 1) * kSx + ca + 1] = acc[mt][3];
    }
  }
  __syncthreads();
  TQKV_PROBE(kProbeRowsStored, threadIdx.x == 0);
  for (int idx = threadIdx.x; idx < nheads * D; idx += blockDim.x) {
    const int h = idx / D, c = idx % D;
    // (weights recomputed per coordinate: once per head first adds a shared-memory round trip and a
    // barrier to the critical path; run U2 had that form among its changes, and calls of 256 tokens
    // were 0.3 us slower)
    float mx = -INFINITY;
#pragma unroll
    for (int w = 0; w < W; ++w) mx = fmaxf(mx, mrg[w * (16 + 8 * kSx) + h]);
    float num = 0.f, den = 0.f;
    if (mx != -INFINITY) {
#pragma unroll
      for (int w = 0; w < W; ++w) {
        const float* b = mrg + w * (16 + 8 * kSx);
        const float f = exp2f(b[h] - mx);  // empty warps: exp2(-inf) = 0
        num += f * b[16 + h * kSx + merge_slot(c)];
        den += f * b[8 + h];
      }
    }
    const float o = den > 0.f ? num / den : 0.f, lse = den > 0.f ? mx + log2f(den) : -INFINITY;
    if (args.out) {  // fused merge: this CTA's partial stays in its shared memory
      res[FusedMergeSmem<D>::kResO + h * D + c] = o;
      if (c == 0) res[FusedMergeSmem<D>::kResLse + h] = lse;
    } else {
      args.part_o[(part_row + head0 + h) * D + c] = o;
      if (c == 0) args.part_lse[part_row + head0 + h] = lse;
    }
  }
  TQKV_PROBE(kProbeWarpMerge, threadIdx.x == 0);
  if (args.out) fused_merge<D, W, VB != 16>(args, res, mrg, seq, kv_head, head0, nheads);
  TQKV_PROBE(kProbeEnd, threadIdx.x == 0);
}

}  // namespace tqkv::cuda::detail
