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

#include "cuda/device_utils.cuh"
#include "cuda/kv_fetch.cuh"
#include "tqkv/kv_layout.h"

namespace tqkv::cuda::detail {

// Shared memory of the fused merge, in floats, after the warp-merge rows: [8][D] res_o, [8]
// res_lse (read by the other CTAs of the cluster), then this CTA's own [8][D] y, [8][kPage] sink
// scores and [8][4] sink statistics.
template <int D>
struct FusedMergeSmem {
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

// Whole CTA. `res` = this CTA's FusedMergeSmem area (res_o and res_lse written); every CTA of the
// cluster must call it (it synchronises the cluster twice). Decode only: row = sequence.
template <int D, typename Args>
__device__ void fused_merge(const Args& args, float* res, int seq, int kv_head, int head0, int nheads) {
  namespace cg = cooperative_groups;
  using L = FusedMergeSmem<D>;
  cg::cluster_group cluster = cg::this_cluster();
  const int S = static_cast<int>(cluster.num_blocks());
  const int rank = static_cast<int>(cluster.block_rank());
  const PagedKVView& view = args.view;
  const int nmine = nheads > rank ? (nheads - rank + S - 1) / S : 0;  // heads rank, rank + S, ...
  float* y = res + L::kY;
  float* sink_x = res + L::kSinkX;
  float* sink_stat = res + L::kSinkStat;  // per local head: lse, m, 1 / l, unused
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nw = blockDim.x >> 5;

  // ---- the sink split of this rank's heads (local data only: may run before the cluster sync) ----
  __syncthreads();  // q_rot rows this CTA rotated itself (fused query rotation) are written
  const int len = view.seq_lens[seq];
  int s_lo = 0, s_hi = 0;
  const __half* sk = nullptr;
  const __half* sv = nullptr;
  if (view.sink_tokens > 0) {
    s_lo = args.window > 0 ? max(0, len - args.window) : 0;
    s_hi = min(view.sink_tokens, len);
    const size_t tile_halves = static_cast<size_t>(tile_bytes(view.sink_tokens, D, kF16Bits) / 2);
    const size_t tile = (static_cast<size_t>(view.sink_slot[seq]) * view.num_kv_heads + kv_head) * tile_halves;
    sk = reinterpret_cast<const __half*>(view.sink_k) + tile;
    sv = reinterpret_cast<const __half*>(view.sink_v) + tile;
    const int np = s_hi - s_lo;
    for (int pr = warp; pr < nmine * np; pr += nw) {  // one warp per (head, sink position)
      const int hl = pr / np, j = s_lo + pr % np;
      const float* qr = args.q_rot + (static_cast<size_t>(seq) * args.num_q_heads + head0 + rank + hl * S) * D;
      float dot = 0.f;
      for (int i = lane; i < D; i += 32) dot = fmaf(qr[i], __half2float(sk[static_cast<size_t>(j) * D + i]), dot);
      dot = warp_sum(dot);
      if (args.softcap > 0.f) dot = args.softcap * tanhf(dot / args.softcap);
      if (lane == 0) sink_x[hl * kPage + j] = dot * 1.4426950408889634f;
    }
  }
  cluster.sync();  // every CTA's res_o / res_lse written (and this CTA's sink scores)
  if (threadIdx.x < nmine) {
    const int hl = threadIdx.x;
    float m = -INFINITY, l = 0.f, lse = -INFINITY, inv_l = 0.f;
    for (int j = s_lo; j < s_hi; ++j) m = fmaxf(m, sink_x[hl * kPage + j]);
    for (int j = s_lo; j < s_hi; ++j) l += exp2f(sink_x[hl * kPage + j] - m);
    if (s_hi > s_lo) {
      lse = m + log2f(l);
      inv_l = 1.f / l;
    }
    sink_stat[4 * hl] = lse;
    sink_stat[4 * hl + 1] = m;
    sink_stat[4 * hl + 2] = inv_l;
  }
  __syncthreads();

  // ---- y = (sum_r w_r o_r + w_sink o_sink) / (sum_r w_r + w_sink), w = 2^(lse - max) ----
  for (int idx = threadIdx.x; idx < nmine * D; idx += blockDim.x) {
    const int hl = idx / D, c = idx - hl * D, h = rank + hl * S;
    const float sink_lse = sink_stat[4 * hl];
    float mx = sink_lse;
    for (int r = 0; r < S; ++r) mx = fmaxf(mx, cluster.map_shared_rank(res, r)[L::kResLse + h]);
    float num = 0.f, den = 0.f;
    if (mx != -INFINITY) {
      for (int r = 0; r < S; ++r) {
        const float* rr = cluster.map_shared_rank(res, r);
        const float w = exp2f(rr[L::kResLse + h] - mx);
        den += w;
        num = fmaf(w, rr[L::kResO + h * D + c], num);
      }
      const float w_sink = exp2f(sink_lse - mx);  // 0 without sinks
      den += w_sink;
      if (w_sink > 0.f) {
        const float sm = sink_stat[4 * hl + 1];
        float o = 0.f;
        for (int j = s_lo; j < s_hi; ++j)
          o = fmaf(exp2f(sink_x[hl * kPage + j] - sm), __half2float(sv[static_cast<size_t>(j) * D + c]), o);
        num = fmaf(w_sink * sink_stat[4 * hl + 2], o, num);
      }
    }
    y[hl * D + c] = num * (den > 0.f ? 1.f / den : 0.f);
  }
  cluster.sync();  // the other CTAs' shared memory is not read after this: they may exit

  // ---- back to the model's space: x = P^T y ----
  const float* rot = args.out_rotation;
  const bool hadamard = rot && args.out_signs;
  if (hadamard) {  // fast Walsh-Hadamard transform of each head's row, then signs / sqrt(D)
    for (int hs = 1; hs < D; hs <<= 1) {
      for (int p = threadIdx.x; p < nmine * D / 2; p += blockDim.x) {
        const int hl = p / (D / 2), q = p - hl * (D / 2);
        const int i = hl * D + (q / hs) * 2 * hs + (q % hs);
        const float a = y[i], b = y[i + hs];
        y[i] = a + b;
        y[i + hs] = a - b;
      }
      __syncthreads();
    }
  }
  const float inv_sqrt_d = rsqrtf(static_cast<float>(D));
  for (int idx = threadIdx.x; idx < nmine * D; idx += blockDim.x) {
    const int hl = idx / D, i = idx - hl * D, h = rank + hl * S;
    float x;
    if (hadamard) {
      x = y[idx] * args.out_signs[i] * inv_sqrt_d;
    } else if (rot) {  // dense P: x_i = sum_j P[j][i] y_j (column i: coalesced across threads)
      x = 0.f;
      const float* yh = y + hl * D;
#pragma unroll 16
      for (int j = 0; j < D; ++j) x = fmaf(rot[static_cast<size_t>(j) * D + i], yh[j], x);
    } else {
      x = y[idx];
    }
    const size_t o = (static_cast<size_t>(seq) * args.num_q_heads + head0 + h) * D + i;
    if (args.out_f32) static_cast<float*>(args.out)[o] = x;
    else static_cast<__half*>(args.out)[o] = __float2half_rn(x);
  }
}

}  // namespace tqkv::cuda::detail
