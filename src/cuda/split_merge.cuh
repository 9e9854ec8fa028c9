// The arithmetic that finishes a split-KV decode row, shared by the two places that do it:
// merge_splits_kernel (decode_api.cu; partials in the workspace) and the decode kernel's fused
// merge (decode_fused_merge.cuh; partials in the shared memory of a thread-block cluster).
//
// A row's splits are combined with the attention-sink split (the first sink_tokens positions,
// kept in fp16 tiles outside the pages: docs/formats.md) as
//   y = (sum_r w_r o_r + w_sink o_sink) / (sum_r w_r + w_sink),   w = 2^(lse - max),
// everything in the rotated space and in the log2 domain; then x = P^T y takes the output back to
// the model's space. The callers differ only in where the partials and the sink V rows live.
#pragma once

#include <cuda_fp16.h>

#include <cmath>

#include "cuda/device_utils.cuh"
#include "cuda/hadamard.cuh"

namespace tqkv::cuda::detail {

// Score of one sink position, log2 domain: q . k (q the rotated, scaled query row, k the fp16 key
// row; d each), soft-capped. Whole warp; every lane returns it.
__device__ __forceinline__ float sink_score(const float* q, const __half* k, int d, float softcap) {
  float dot = 0.f;
  for (int i = static_cast<int>(threadIdx.x & 31); i < d; i += 32) dot = fmaf(q[i], __half2float(k[i]), dot);
  dot = warp_sum(dot);
  if (softcap > 0.f) dot = softcap * tanhf(dot / softcap);
  return dot * 1.4426950408889634f;
}

// The sink split's softmax over its scores x[lo, hi): log2-sum-exp2 (-inf: nothing visible), max
// and 1 / sum. (m and inv_l are 0 when nothing is visible; never used then.) merge_splits_kernel
// (decode_api.cu) computes the same with the recent ring's scores added, one warp for the row.
struct SinkStats {
  float lse = -INFINITY, m = 0.f, inv_l = 0.f;
};
__device__ __forceinline__ SinkStats sink_stats(const float* x, int lo, int hi) {
  SinkStats s;
  if (hi <= lo) return s;
  float m = -INFINITY, l = 0.f;
  for (int j = lo; j < hi; ++j) m = fmaxf(m, x[j]);
  for (int j = lo; j < hi; ++j) l += exp2f(x[j] - m);
  s.lse = m + log2f(l);
  s.m = m;
  s.inv_l = 1.f / l;
  return s;
}

// Coordinate c of the sink split's output before normalisation: sum_j 2^(x_j - m) v[j][c] over the
// visible sink positions, v rows of d halves (global or shared memory).
__device__ __forceinline__ float sink_output(const float* x, float m, const __half* v, int d, int c, int lo, int hi) {
  float o = 0.f;
  for (int j = lo; j < hi; ++j) o = fmaf(exp2f(x[j] - m), __half2float(v[static_cast<size_t>(j) * d + c]), o);
  return o;
}

// Coordinate i of x = P^T y for one merged row y (d floats): with Hadamard signs, y must already
// hold H y (hadamard_rows_block) and x_i = (H y)_i signs_i / sqrt(d); with a dense P only, the
// column product x_i = sum_j P[j][i] y_j (column i: coalesced across the threads of a block);
// without a rotation (fp16 V), y itself.
__device__ __forceinline__ float rotate_back(const float* y, int i, int d, const float* rotation, const float* signs) {
  if (rotation && signs) return y[i] * signs[i] * rsqrtf(static_cast<float>(d));
  if (!rotation) return y[i];
  float x = 0.f;
#pragma unroll 16
  for (int j = 0; j < d; ++j) x = fmaf(rotation[static_cast<size_t>(j) * d + i], y[j], x);
  return x;
}

}  // namespace tqkv::cuda::detail
