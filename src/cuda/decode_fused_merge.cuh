// The decode kernel's fused merge (decode_kernel.cuh, DecodeArgs::out set): the num_splits CTAs
// of one (sequence, head chunk) run as one thread-block cluster and combine their partial results
// through distributed shared memory, add the attention-sink split and rotate the output back,
// instead of writing partials to the workspace for merge_splits_kernel (decode_api.cu). This
// takes the merge kernel (its launch, its wait for the whole decode grid, the workspace round
// trip) off every decode call; the arithmetic is the merge kernel's, in the same order.
//
// Each CTA has written its normalised partial output res_o[h][c] and its log2-sum-exp2
// res_lse[h] (-inf: nothing visible) for its nheads query heads into its own shared memory.
// Rank r of the cluster then finishes heads r, r + S, ... (S = cluster size = num_splits).
#pragma once

#include <cooperative_groups.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <utility>

#include "cuda/decode_probe.cuh"
#include "cuda/device_utils.cuh"
#include "cuda/kv_fetch.cuh"
#include "cuda/split_merge.cuh"
#include "tqkv/kv_layout.h"

namespace tqkv::cuda::detail {

// Shared memory of the fused merge, in floats, after the warp-merge rows: [8][D] res_o, [8]
// res_lse (read by the other CTAs of the cluster), then this CTA's own [8][D] y, [8][kPage] sink
// scores and [8][4] sink statistics (lse, max, 1 / sum, unused).
template <int D>
struct FusedMergeSmem {
  static constexpr int kMaxSplits = 8;  // the portable cluster size (decode_launch.cuh: kMaxFusedSplits)
  static constexpr int kResO = 0;
  static constexpr int kResLse = 8 * D;
  static constexpr int kY = kResLse + 8;
  static constexpr int kSinkX = kY + 8 * D;
  static constexpr int kSinkStat = kSinkX + 8 * kPage;
  static constexpr int kFloats = kSinkStat + 8 * 4;
};
// FusedMergeSmem<d>::kFloats * 4, for a head size known only at run time (decode_shape).
constexpr int fused_merge_bytes(int d) { return (16 * d + 8 + 8 * kPage + 32) * 4; }
static_assert(FusedMergeSmem<64>::kFloats * 4 == fused_merge_bytes(64) &&
                  FusedMergeSmem<256>::kFloats * 4 == fused_merge_bytes(256),
              "the fused merge's area: FusedMergeSmem and fused_merge_bytes disagree");

// Whole CTA of kWarps warps; kVRotated: V is quantized (rotated), so the output is rotated back.
// `res` = this CTA's FusedMergeSmem area (res_o and res_lse written); `scratch` = shared memory
// free after the CTA's first barrier here (the warp-merge rows), at least
// (kWarps * 32 / D) * 8 * D floats. Every CTA of the cluster must call it (it passes the cluster's
// barrier twice). Decode only: row = sequence.
template <int D, int kWarps, bool kVRotated, typename Args>
__device__ void fused_merge(const Args& args, float* res, float* scratch, int seq, int kv_head, int head0, int nheads) {
  namespace cg = cooperative_groups;
  using L = FusedMergeSmem<D>;
  cg::cluster_group cluster = cg::this_cluster();
  const int S = static_cast<int>(cluster.num_blocks());
  const int rank = static_cast<int>(cluster.block_rank());
  const PagedKVView& view = args.view;
  const int nmine = nheads > rank ? (nheads - rank + S - 1) / S : 0;  // heads rank, rank + S, ...
  float* y = res + L::kY;
  float* sink_x = res + L::kSinkX;
  float* sink_stat = res + L::kSinkStat;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nw = blockDim.x >> 5;
  // The Hadamard signs of the rotation back, loaded now: they arrive while the cluster merges.
  constexpr bool kPow2 = (D & (D - 1)) == 0;
  constexpr int E = kPow2 ? D / 32 : 1;
  const bool hadamard = kPow2 && args.out_rotation && args.out_signs;
  float sg[E] = {};
  if (hadamard) {
#pragma unroll
    for (int e = 0; e < E; ++e) sg[e] = __ldg(args.out_signs + lane * E + e);
  }
  // A dense P (head sizes 80, 96): thread t computes the slice [kLen sl, kLen (sl + 1)) of the sums
  // x_i = sum_j P[j][i] y_j for coordinate i = t % D, sl = t / D, for every head of this rank; its
  // kLen entries of column i are loaded now, so that their latency passes under the cluster's
  // barrier instead of a chain of dependent L2 round trips after it (run V2: the fused merge took
  // 4.6 us at head size 96 against 2.0 at 128, where the rotation is a transform in registers).
  constexpr int kThreads = kWarps * 32;
  constexpr bool kDense = !kPow2 && kVRotated;
  constexpr int kSlices = kDense ? (kThreads / D > 0 ? kThreads / D : 1) : 1;
  constexpr int kLen = kDense ? (D + kSlices - 1) / kSlices : 1;
  const bool dense = kDense && args.out_rotation != nullptr;
  const int col = static_cast<int>(threadIdx.x) % D, sl = static_cast<int>(threadIdx.x) / D;
  float pcol[kLen];
  if (dense && sl < kSlices) {  // (dense is a compile-time false where kDense is)
#pragma unroll
    for (int jj = 0; jj < kLen; ++jj) {
      const int j = sl * kLen + jj;
      pcol[jj] = j < D ? __ldg(args.out_rotation + static_cast<size_t>(j) * D + col) : 0.f;
    }
  }

  __syncthreads();  // q_rot rows this CTA rotated itself (fused query rotation) are written
  // Arrive now (this CTA's res_o / res_lse are written), wait only before reading the others':
  // the sink scores below run while the cluster's barrier completes.
  auto arrived = cluster.barrier_arrive();

  // ---- the sink split of this rank's heads (local data only) ----
  const bool sinks = view.sink_tokens > 0;
  int s_lo = 0, s_hi = 0;
  const __half* sv = nullptr;
  if (sinks) {
    const int len = view.seq_lens[seq];
    s_lo = args.window > 0 ? max(0, len - args.window) : 0;
    s_hi = min(view.sink_tokens, len);
    const size_t tile_halves = static_cast<size_t>(tile_bytes(view.sink_tokens, D, kF16Bits) / 2);
    const size_t tile = (static_cast<size_t>(view.sink_slot[seq]) * view.num_kv_heads + kv_head) * tile_halves;
    const __half* sk = reinterpret_cast<const __half*>(view.sink_k) + tile;
    sv = reinterpret_cast<const __half*>(view.sink_v) + tile;
    const int np = s_hi - s_lo;
    for (int pr = warp; pr < nmine * np; pr += nw) {  // one warp per (head, sink position)
      const int hl = pr / np, j = s_lo + pr % np;
      const float* qr = args.q_rot + (static_cast<size_t>(seq) * args.num_q_heads + head0 + rank + hl * S) * D;
      const float x = sink_score(qr, sk + static_cast<size_t>(j) * D, D, args.softcap);
      if (lane == 0) sink_x[hl * kPage + j] = x;
    }
    __syncthreads();
    if (threadIdx.x < nmine) {
      const int hl = threadIdx.x;
      const SinkStats st = sink_stats(sink_x + hl * kPage, s_lo, s_hi);
      sink_stat[4 * hl] = st.lse;
      sink_stat[4 * hl + 1] = st.m;
      sink_stat[4 * hl + 2] = st.inv_l;
    }
    __syncthreads();
  }
  // The cluster's partials as seen from here (distributed shared memory), mapped once.
  const float* part[L::kMaxSplits];
#pragma unroll
  for (int r = 0; r < L::kMaxSplits; ++r) {
    part[r] = res;
    if (r < S) part[r] = cluster.map_shared_rank(res, r);
  }
  cluster.barrier_wait(std::move(arrived));  // every CTA's res_o / res_lse written
  TQKV_PROBE(kProbeClusterIn, threadIdx.x == 0);

  // ---- y = (sum_r w_r o_r + w_sink o_sink) / (sum_r w_r + w_sink), w = 2^(lse - max) ----
  // (the weights are recomputed per coordinate: a pass per head first would put one more
  // round trip and barrier on the critical path)
  for (int idx = threadIdx.x; idx < nmine * D; idx += blockDim.x) {
    const int hl = idx / D, c = idx - hl * D, h = rank + hl * S;
    const float sink_lse = sinks ? sink_stat[4 * hl] : -INFINITY;
    float mx = sink_lse;
#pragma unroll
    for (int r = 0; r < L::kMaxSplits; ++r)
      if (r < S) mx = fmaxf(mx, part[r][L::kResLse + h]);
    float num = 0.f, den = 0.f;
    if (mx != -INFINITY) {
#pragma unroll
      for (int r = 0; r < L::kMaxSplits; ++r) {
        if (r < S) {
          const float w = exp2f(part[r][L::kResLse + h] - mx);
          den += w;
          num = fmaf(w, part[r][L::kResO + h * D + c], num);
        }
      }
      const float w_sink = exp2f(sink_lse - mx);  // 0 without sinks
      den += w_sink;
      if (w_sink > 0.f) {
        const float o = sink_output(sink_x + hl * kPage, sink_stat[4 * hl + 1], sv, D, c, s_lo, s_hi);
        num = fmaf(w_sink * sink_stat[4 * hl + 2], o, num);
      }
    }
    y[hl * D + c] = num * (den > 0.f ? 1.f / den : 0.f);
  }
  // Done with the other CTAs' shared memory: arrive, and wait only before exiting (a CTA must not
  // leave while another may still read its partials), after the rotation back below.
  arrived = cluster.barrier_arrive();
  __syncthreads();  // this CTA's y rows complete
  TQKV_PROBE(kProbeMerged, threadIdx.x == 0);

  // ---- back to the model's space: x = P^T y ----
  auto store = [&](int h, int i, float x) {
    const size_t o = (static_cast<size_t>(seq) * args.num_q_heads + head0 + h) * D + i;
    if (args.out_f32) static_cast<float*>(args.out)[o] = x;
    else static_cast<__half*>(args.out)[o] = __float2half_rn(x);
  };
  if (hadamard) {  // one warp per head, in registers
    if constexpr (kPow2) {
      const float inv_sqrt_d = rsqrtf(static_cast<float>(D));
      for (int hl = warp; hl < nmine; hl += nw) {
        float x[E];
#pragma unroll
        for (int e = 0; e < E; ++e) x[e] = y[hl * D + lane * E + e];
        hadamard_in_lanes<E, 32>(x, lane);
#pragma unroll
        for (int e = 0; e < E; ++e) store(rank + hl * S, lane * E + e, x[e] * sg[e] * inv_sqrt_d);
      }
    }
  } else if (dense) {  // slices of the column products in registers, then their sum in slice order
    if (sl < kSlices) {
      for (int hl = 0; hl < nmine; ++hl) {
        float x = 0.f;
#pragma unroll
        for (int jj = 0; jj < kLen; ++jj) {
          const int j = sl * kLen + jj;
          if (j < D) x = fmaf(pcol[jj], y[hl * D + j], x);
        }
        scratch[(sl * 8 + hl) * D + col] = x;
      }
    }
    __syncthreads();
    for (int idx = threadIdx.x; idx < nmine * D; idx += blockDim.x) {
      const int hl = idx / D, i = idx - hl * D;
      float x = 0.f;
#pragma unroll
      for (int k = 0; k < kSlices; ++k) x += scratch[(k * 8 + hl) * D + i];
      store(rank + hl * S, i, x);
    }
  } else {  // no rotation (fp16 V), or a dense P at a power-of-two head size (column products)
    for (int idx = threadIdx.x; idx < nmine * D; idx += blockDim.x) {
      const int hl = idx / D, i = idx - hl * D;
      store(rank + hl * S, i, rotate_back(y + hl * D, i, D, args.out_rotation, nullptr));
    }
  }
  cluster.barrier_wait(std::move(arrived));
}

}  // namespace tqkv::cuda::detail
