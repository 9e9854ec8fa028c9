// attention_decode: query rotation pre-kernel, split-KV decode kernel (decode_*.cu), and the
// merge kernel that combines the splits and rotates the output back. Plan and checks on the host.
// The checks, workspace layout and kernel chain are shared with attention_prefill (prefill_api.cu)
// through attention_internal.h.
#include <atomic>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "cuda/attention_internal.h"
#include "cuda/cuda_check.h"
#include "cuda/decode_launch.cuh"
#include "cuda/split_merge.cuh"
#include "tqkv/cuda_attention.h"

namespace tqkv::cuda {
namespace detail {
bool fused_merge_enabled() {
  static const bool on = [] {
    const char* e = std::getenv("TQKV_CUDA_DECODE_MERGE");
    return !(e != nullptr && std::string(e) == "kernel");
  }();
  return on;
}
#ifdef TQKV_DECODE_PROBE
unsigned long long* g_decode_probe = nullptr;
#endif
}  // namespace detail
namespace {

using detail::DecodeArgs;
using detail::check_view;
using detail::workspace_layout;

__device__ __forceinline__ float load_elem(const void* p, DType t, size_t i) {
  return t == DType::kF32 ? static_cast<const float*>(p)[i]
                          : __half2float(static_cast<const __half*>(p)[i]);
}

// q_rot[s][h] = scale * P q[s][h] (rotate only when K is TurboQuant). Grid: num_seqs * num_q_heads.
// P = H diag(signs) / sqrt(d) through the fast transform when `signs` is set; else row i of the
// dense P is one warp's coalesced dot product.
__global__ void rotate_query_kernel(const void* q, DType q_type, const float* rotation, const float* signs,
                                    int d, float scale, float* q_rot) {
  extern __shared__ float xq[];
  cudaTriggerProgrammaticLaunchCompletion();  // let the decode kernel start its prologue now
  const size_t row = blockIdx.x;
  const bool hadamard = rotation && signs;
  for (int i = threadIdx.x; i < d; i += blockDim.x)
    xq[i] = load_elem(q, q_type, row * d + i) * (hadamard ? signs[i] : 1.f);
  __syncthreads();
  if (!rotation) {
    for (int i = threadIdx.x; i < d; i += blockDim.x) q_rot[row * d + i] = scale * xq[i];
    return;
  }
  if (hadamard) {
    detail::hadamard_rows_block(xq, 1, d);
    const float f = scale * rsqrtf(static_cast<float>(d));
    for (int i = threadIdx.x; i < d; i += blockDim.x) q_rot[row * d + i] = f * xq[i];
    return;
  }
  // Dense P (head sizes 80, 96): one output coordinate per thread, its row of P read as 16-byte
  // loads that are all in flight together (P stays in L1 across the rows of the grid). A warp
  // per coordinate with a shuffle reduction was a chain of d dependent L2 round trips per block.
  if ((reinterpret_cast<uintptr_t>(rotation) & 15) == 0) {
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
      const float4* pr = reinterpret_cast<const float4*>(rotation + static_cast<size_t>(i) * d);
      float y0 = 0.f, y1 = 0.f;
#pragma unroll 8
      for (int j = 0; j < d / 4; ++j) {
        const float4 p = __ldg(pr + j);
        y0 = fmaf(p.x, xq[4 * j], y0);
        y1 = fmaf(p.y, xq[4 * j + 1], y1);
        y0 = fmaf(p.z, xq[4 * j + 2], y0);
        y1 = fmaf(p.w, xq[4 * j + 3], y1);
      }
      q_rot[row * d + i] = scale * (y0 + y1);
    }
    return;
  }
  for (int i = threadIdx.x; i < d; i += blockDim.x) {  // unaligned P: scalar loads
    const float* pr = rotation + static_cast<size_t>(i) * d;
    float y = 0.f;
#pragma unroll 8
    for (int j = 0; j < d; ++j) y = fmaf(__ldg(pr + j), xq[j], y);
    q_rot[row * d + i] = scale * y;
  }
}

// Recent tokens (PagedKVView::recent_tokens > 0), decode: page_end[s] = min(len, recent_from(s)),
// the length the split kernels see (their pages stop where the ring starts; the merge adds the
// ring's positions from the true length). Launched before the chain's first kernel, which then
// starts only after it (the first kernel takes no programmatic-dependent attribute).
__global__ void ring_page_end_kernel(const PagedKVView view, int32_t* page_end) {
  for (int s = blockIdx.x * blockDim.x + threadIdx.x; s < view.num_seqs; s += gridDim.x * blockDim.x)
    page_end[s] = static_cast<int32_t>(min(static_cast<int64_t>(view.seq_lens[s]), view.recent_from(s)));
}

// Attention sinks as the merge sees them (docs/formats.md, "Attention sinks"): the fp16 sink
// tiles of PagedKVView, in each side's space, and what it takes to find a row's sequence, length
// and KV head. tokens == 0: no sinks.
struct MergeSinks {
  const __half* k = nullptr;
  const __half* v = nullptr;
  const int32_t* slot = nullptr;   // [sequences] sink slot
  int tokens = 0;                  // sink_tokens (<= page size)
  size_t tile_halves = 0;          // tile_bytes(tokens, d, 16) / 2
  int num_kv_heads = 0, group = 1, num_q_heads = 1, window = 0;
  float softcap = 0.f;
  const float* q_rot = nullptr;    // [rows][d]: scale * P q (K's space), as the split kernel read it
  const int32_t* row_seq = nullptr;  // prefill: row -> sequence, row -> visible length
  const int32_t* row_len = nullptr;
  const int32_t* seq_lens = nullptr;  // [sequences] (decode: row = sequence)
  // Recent tokens (PagedKVView::recent_tokens; 0 = none): the ring tiles (fp16, each side's space),
  // same slots as the sinks; the ring's reach is the sequence's (seq_lens), not the row's.
  const __half* rk = nullptr;
  const __half* rv = nullptr;
  int recent = 0;
  size_t ring_halves = 0;            // tile_bytes(recent, d, 16) / 2
};

// out[s][h] = P^T (sum_k w_k o_k) with w_k = 2^(lse_k - lse) over the splits; zeros when every
// split is empty. Grid: num_seqs * num_q_heads. P^T = diag(signs) H / sqrt(d) for Hadamard.
// With sinks, the row's sink positions [max(0, len - window), min(sink_tokens, len)) are one more
// split computed here from the sink tiles (the split kernels skip positions < sink_tokens):
// scores q_rot . k_j (soft-capped, log2 domain), weights 2^(x_j - m), accumulator sum p_j v_j.
__global__ void merge_splits_kernel(const float* part_o, const float* part_lse, int num_splits,
                                    size_t split_stride_rows, int d, const float* rotation,
                                    const float* signs, void* out, DType out_type, const MergeSinks sk) {
  // Dynamic: [d] merged output, [num_splits] split weights, then (sinks) the V sink rows, fp16.
  extern __shared__ float y[];
  float* wts = y + d;
  __shared__ float sink_x[detail::kPage + kMaxRecentTokens];  // sink, then recent scores (log2 domain)
  cudaGridDependencySynchronize();  // programmatic dependent of the decode kernel
  const size_t row = blockIdx.x;
  // Split weights once per row (not once per coordinate): w_k = 2^(lse_k - max) / sum. The loads
  // are issued first, so the sink loads below overlap them.
  float mx = -INFINITY;
  for (int k = threadIdx.x; k < num_splits; k += blockDim.x) mx = fmaxf(mx, part_lse[k * split_stride_rows + row]);
  // ---- the sink split: scores sink_x[s_lo, s_hi), m, 1 / l, log2-sum-exp2 sink_lse ----
  float sink_lse = -INFINITY, sink_inv_l = 0.f;
  int s_lo = 0, s_hi = 0;
  __half* svs = reinterpret_cast<__half*>(wts + ((num_splits + 3) & ~3));  // 16-byte aligned (d % 8 == 0)
  int ring_n = 0;  // recent positions of the row (their scores and weights at sink_x[kPage ..])
  if (sk.tokens > 0 || sk.recent > 0) {
    const int r = static_cast<int>(row / sk.num_q_heads), h = static_cast<int>(row % sk.num_q_heads);
    const int pseq = sk.row_seq ? sk.row_seq[r] : r;
    const int len = sk.row_len ? sk.row_len[r] : sk.seq_lens[r];
    s_lo = sk.window > 0 ? max(0, len - sk.window) : 0;
    s_hi = min(sk.tokens, len);
    const size_t slot_head = static_cast<size_t>(sk.slot[pseq]) * sk.num_kv_heads + h / sk.group;
    const float* qr = sk.q_rot + row * d;
    const int wp = threadIdx.x >> 5, ln = threadIdx.x & 31, nwp = (blockDim.x + 31) >> 5;
    if (sk.tokens > 0) {
      const size_t tile = slot_head * sk.tile_halves;
      // V rows to shared memory (16-byte loads, in flight together with the score loads below).
      const uint4* vg = reinterpret_cast<const uint4*>(sk.v + tile);
      uint4* vsm = reinterpret_cast<uint4*>(svs);
      for (int i = s_lo * d / 8 + static_cast<int>(threadIdx.x); i < s_hi * d / 8; i += blockDim.x) vsm[i] = vg[i];
      const __half* kt = sk.k + tile;
      for (int j = s_lo + wp; j < s_hi; j += nwp) {  // one warp per sink position
        const float x = detail::sink_score(qr, kt + static_cast<size_t>(j) * d, d, sk.softcap);
        if (ln == 0) sink_x[j] = x;
      }
    }
    if (sk.recent > 0) {  // the ring's positions [max(recent_from, s_lo), len)
      const int seq_len = sk.seq_lens[pseq];
      const int lo = max(max(seq_len - sk.recent, sk.tokens), s_lo);
      ring_n = max(0, len - lo);
      // Their K and V rows to shared memory in position order, every 16-byte load in flight at once
      // (one warp per position reading global memory was a chain of dependent loads per thread:
      // ~30 us per call at batch 64).
      const size_t tile = slot_head * sk.ring_halves;
      const uint4* kg = reinterpret_cast<const uint4*>(sk.rk + tile);
      const uint4* vg = reinterpret_cast<const uint4*>(sk.rv + tile);
      __half* rks = svs + static_cast<size_t>(sk.tokens) * d;
      __half* rvs = rks + static_cast<size_t>(sk.recent) * d;
      // Thread t copies column t % per_row of rows t / per_row, + rows_per_pass, ... (no division
      // or modulo per element: this kernel is issue-bound).
      const int per_row = d / 8, rows_per_pass = static_cast<int>(blockDim.x) / per_row;
      const int c = static_cast<int>(threadIdx.x) % per_row, lo_row = lo % sk.recent;
      if (static_cast<int>(threadIdx.x) < rows_per_pass * per_row)
        for (int e = static_cast<int>(threadIdx.x) / per_row; e < ring_n; e += rows_per_pass) {
          int r = lo_row + e;  // (lo + e) % recent, e < recent
          if (r >= sk.recent) r -= sk.recent;
          reinterpret_cast<uint4*>(rks)[e * per_row + c] = kg[static_cast<size_t>(r) * per_row + c];
          reinterpret_cast<uint4*>(rvs)[e * per_row + c] = vg[static_cast<size_t>(r) * per_row + c];
        }
    }
    __syncthreads();  // sink scores, sink V rows and the ring rows in shared memory
    for (int e = wp; e < ring_n; e += nwp) {  // one warp per recent position, from shared memory
      const float x = detail::sink_score(qr, svs + static_cast<size_t>(sk.tokens + e) * d, d, sk.softcap);
      if (ln == 0) sink_x[detail::kPage + e] = x;
    }
    __syncthreads();  // recent scores
    // The sink split's softmax (sink positions [s_lo, s_hi), then the ring's ring_n) by warp 0, a lane
    // per position: the scores become weights 2^(x - m) (computed once per position, not once per
    // coordinate as sink_output does), and lse, m, 1 / l go to shared memory.
    __shared__ float sstat[3];
    if (wp == 0) {
      const int ns = max(0, s_hi - s_lo), nt = ns + ring_n;
      auto at = [&](int t) { return t < ns ? s_lo + t : detail::kPage + t - ns; };
      float m = -INFINITY;
      for (int t = ln; t < nt; t += 32) m = fmaxf(m, sink_x[at(t)]);
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
      float l = 0.f;
      for (int t = ln; t < nt; t += 32) {
        const float w = exp2f(sink_x[at(t)] - m);
        sink_x[at(t)] = w;
        l += w;
      }
      l = detail::warp_sum(l);
      if (ln == 0) {
        sstat[0] = nt > 0 ? m + log2f(l) : -INFINITY;
        sstat[1] = nt > 0 ? m : 0.f;
        sstat[2] = nt > 0 ? 1.f / l : 0.f;
      }
    }
    __syncthreads();  // weights and statistics
    sink_lse = sstat[0];
    sink_inv_l = sstat[2];  // (sstat[1], m, is already in the weights)
  }
  __shared__ float red[32];
  mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 16));
  mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 8));
  mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 4));
  mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
  mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nw = (blockDim.x + 31) >> 5;
  if (lane == 0) red[warp] = mx;
  __syncthreads();
  mx = sink_lse;
  for (int w = 0; w < nw; ++w) mx = fmaxf(mx, red[w]);
  float den = 0.f;
  for (int k = threadIdx.x; k < num_splits; k += blockDim.x) {
    const float w = mx == -INFINITY ? 0.f : exp2f(part_lse[k * split_stride_rows + row] - mx);
    wts[k] = w;
    den += w;
  }
  den = detail::warp_sum(den);
  __syncthreads();  // everyone has read red[] (max) and written wts[]
  if (lane == 0) red[warp] = den;
  __syncthreads();
  const float w_sink = mx == -INFINITY ? 0.f : exp2f(sink_lse - mx);  // 0 without sinks
  den = w_sink;
  for (int w = 0; w < nw; ++w) den += red[w];
  const float inv_den = den > 0.f ? 1.f / den : 0.f;
  for (int i = threadIdx.x; i < d; i += blockDim.x) {
    float num = 0.f;
    if (den > 0.f) {
#pragma unroll 4
      for (int k = 0; k < num_splits; ++k) num = fmaf(wts[k], part_o[(k * split_stride_rows + row) * d + i], num);
      if (w_sink > 0.f) {  // sink_output's sum, same order, from the weights and the staged rows
        float so = 0.f;
        for (int j = s_lo; j < s_hi; ++j) so = fmaf(sink_x[j], __half2float(svs[static_cast<size_t>(j) * d + i]), so);
        const __half* rv = svs + (static_cast<size_t>(sk.tokens) + sk.recent) * d + i;  // the ring's V rows
        for (int e = 0; e < ring_n; ++e) so = fmaf(sink_x[detail::kPage + e], __half2float(rv[static_cast<size_t>(e) * d]), so);
        num = fmaf(w_sink * sink_inv_l, so, num);
      }
    }
    y[i] = num * inv_den;
  }
  __syncthreads();
  if (rotation && signs) detail::hadamard_rows_block(y, 1, d);
  for (int i = threadIdx.x; i < d; i += blockDim.x) {
    const float x = detail::rotate_back(y, i, d, rotation, signs);
    if (out_type == DType::kF32) {
      static_cast<float*>(out)[row * d + i] = x;
    } else {
      static_cast<__half*>(out)[row * d + i] = __float2half_rn(x);
    }
  }
}

// Dynamic shared memory beyond the default 48 KB (a ring of 64 recent tokens at head size 256
// stages 64 KB) must be allowed per kernel; done once for the largest size asked so far, before
// the first launch that needs it (eager: a shape's first call is never inside a graph capture).
Status allow_merge_smem(size_t bytes) {
  static std::atomic<size_t> allowed{48 * 1024};
  if (bytes <= allowed.load()) return Status::ok();
  TQKV_CUDA_RETURN_IF_ERROR(
      cudaFuncSetAttribute(merge_splits_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
  size_t cur = allowed.load();
  while (bytes > cur && !allowed.compare_exchange_weak(cur, bytes)) {
  }
  return Status::ok();
}

}  // namespace
namespace detail {

size_t align_up(size_t x) { return (x + 255) / 256 * 256; }

WorkspaceLayout workspace_layout(int num_seqs, int num_q_heads, int head_dim, int num_splits) {
  WorkspaceLayout w;
  const size_t rows = static_cast<size_t>(num_seqs) * num_q_heads;
  w.q_rot = 0;
  w.part_o = align_up(rows * head_dim * 4);
  w.part_lse = w.part_o + align_up(rows * num_splits * head_dim * 4);
  w.page_end = w.part_lse + align_up(rows * num_splits * 4);
  w.total = w.page_end + align_up(static_cast<size_t>(num_seqs) * 4);
  return w;
}

Status check_view(const PagedKVView& view, const DecodeParams& p) {
  if (view.page_size != detail::kPage)
    return unsupported("CUDA decode is built for page_size 16 (got " + std::to_string(view.page_size) + ")");
  const int d = view.head_dim;
  if (d != 64 && d != 80 && d != 96 && d != 128 && d != 256)
    return unsupported("CUDA decode supports head_dim 64, 80, 96, 128, 256 (got " + std::to_string(d) + ")");
  if (view.num_kv_heads <= 0 || p.num_q_heads <= 0 || p.num_q_heads % view.num_kv_heads != 0)
    return invalid_argument("num_q_heads must be a positive multiple of num_kv_heads");
  if (p.num_q_heads / view.num_kv_heads > 64) return unsupported("GQA group larger than 64");
  if (view.num_seqs <= 0 || view.num_seqs > 65535) return invalid_argument("num_seqs must be in [1, 65535]");
  if (!view.page_table || !view.seq_lens || !view.k.pages || !view.v.pages)
    return invalid_argument("view has null page_table, seq_lens or pages");
  if (view.max_pages_per_seq <= 0) return invalid_argument("max_pages_per_seq must be positive");
  // Attention sinks (docs/formats.md): the split kernels skip positions < sink_tokens, the merge
  // reads them from the sink tiles.
  if (view.sink_tokens < 0 || view.sink_tokens > view.page_size)
    return invalid_argument("sink_tokens must be in [0, page_size] (got " + std::to_string(view.sink_tokens) + ")");
  // Recent tokens (docs/formats.md): the split kernels stop at each sequence's recent_from, the
  // merge reads the ring, whose scores it holds in an array of kMaxRecentTokens.
  if (view.recent_tokens < 0 || view.recent_tokens > kMaxRecentTokens)
    return unsupported("the CUDA kernels take recent_tokens in [0, " + std::to_string(kMaxRecentTokens) + "] (got " +
                       std::to_string(view.recent_tokens) + ")");
  if (view.recent_tokens > 0 && (!view.recent_k || !view.recent_v || !view.sink_slot))
    return invalid_argument("recent tokens without ring tiles or slots");
  // The split kernels see the ring's start as the row length, so a window would start from there.
  if (view.recent_tokens > 0 && p.window > 0)
    return unsupported("recent tokens with a sliding window (the caches keep rings in full-attention layers only)");
  if (view.recent_tokens > 0 && ((reinterpret_cast<uintptr_t>(view.recent_k) | reinterpret_cast<uintptr_t>(view.recent_v)) & 15))
    return invalid_argument("ring tiles must be 16-byte aligned");
  if (view.sink_tokens > 0 && (!view.sink_k || !view.sink_v || !view.sink_slot))
    return invalid_argument("attention sinks without sink tiles or sink slots");
  if (view.sink_tokens > 0 && ((reinterpret_cast<uintptr_t>(view.sink_k) | reinterpret_cast<uintptr_t>(view.sink_v)) & 15))
    return invalid_argument("sink tiles must be 16-byte aligned");
  for (const KVSideView* side : {&view.k, &view.v}) {
    if (!is_valid_kv_bits(side->bits)) return invalid_argument("bits must be 2, 3, 4, 8 or 16");
    if (side->tile_bytes != tile_bytes(view.page_size, d, side->bits))
      return invalid_argument("tile_bytes does not match kv_layout.h");
    if (side->bits != kF16Bits && !side->centroids) return invalid_argument("TurboQuant side without centroids");
  }
  // The (k, v) bit pairs that decode_*.cu instantiate; checked here so nothing is launched for
  // a combination without a kernel.
  static constexpr int kBuilt[][2] = {{16, 16}, {8, 8}, {4, 4}, {3, 3}, {2, 2}, {8, 4}, {4, 3}};
  bool built = false;
  for (const auto& kv : kBuilt) built |= kv[0] == view.k.bits && kv[1] == view.v.bits;
  if (!built)
    return unsupported("no CUDA decode kernel for k bits " + std::to_string(view.k.bits) + ", v bits " +
                       std::to_string(view.v.bits) + " (built: 16/16, 8/8, 4/4, 3/3, 2/2, 8/4, 4/3)");
  if ((view.k.bits != kF16Bits || view.v.bits != kF16Bits) && !view.rotation)
    return invalid_argument("TurboQuant side without a rotation matrix");
  if (!(p.scale > 0.f)) return invalid_argument("scale must be positive");
  if (p.softcap < 0.f || p.window < 0 || p.num_splits < 0) return invalid_argument("negative softcap, window or num_splits");
  if (p.num_splits > 4096) return invalid_argument("num_splits above 4096");
  return Status::ok();
}

}  // namespace detail
namespace {

// Finds the decode_*.cu file that holds (d, kb, vb) and launches (or queries occupancy).
Status dispatch_decode(int d, int kb, int vb, const DecodeArgs* args, cudaStream_t stream, int* occupancy) {
  for (auto* fn : {&detail::decode_split_f16, &detail::decode_split_b8, &detail::decode_split_b4,
                   &detail::decode_split_b3, &detail::decode_split_b2}) {
    Status s = fn(d, kb, vb, args, stream, occupancy);
    if (s.code() != StatusCode::kUnsupported) return s;
  }
  return unsupported("no CUDA decode kernel for head_dim " + std::to_string(d) + ", k bits " +
                     std::to_string(kb) + ", v bits " + std::to_string(vb));
}

}  // namespace

Result<DecodePlan> plan_decode(const PagedKVView& view, const DecodeParams& params, int sm_count) {
  TQKV_RETURN_IF_ERROR(check_view(view, params));
  DecodePlan plan;
  const int group = params.num_q_heads / view.num_kv_heads;
  plan.head_chunks = (group + 7) / 8;
  if (params.num_splits > 0) {
    plan.num_splits = params.num_splits;
  } else {
    // Choose the split count s that minimises waves(s) * (1/s + set-up), i.e. the time of the
    // slowest SM when every CTA of a sequence gets 1/s of its pages (ties: fewer splits). At
    // least 2 pages per warp per split.
    int occ = 0;
    if (!dispatch_decode(view.head_dim, view.k.bits, view.v.bits, nullptr, nullptr, &occ).is_ok() || occ < 1)
      occ = 1;  // no device to ask (plan on a machine without a GPU): assume one CTA per SM
    const long long slots = static_cast<long long>(std::max(1, sm_count)) * occ;
    const long long units = static_cast<long long>(view.num_seqs) * view.num_kv_heads * plan.head_chunks;
    const int warps = detail::decode_shape(view.head_dim, view.k.bits, view.v.bits).warps;
    const int cap = std::max(1, std::min(256, view.max_pages_per_seq / (2 * warps)));
    // Each CTA also pays a fixed set-up (tables, pipeline fill, merge) worth about 4 pages per warp.
    const double setup = 4.0 * warps / std::max(1, view.max_pages_per_seq);
    double best = 1e300;
    for (int sp = 1; sp <= cap; ++sp) {
      const double waves = static_cast<double>((units * sp + slots - 1) / slots);
      const double cost = waves * (1.0 / sp + setup);
      if (cost < best * 0.97) { best = cost; plan.num_splits = sp; }
    }
  }
  plan.workspace_bytes =
      workspace_layout(view.num_seqs, params.num_q_heads, view.head_dim, plan.num_splits).total;
  return plan;
}

namespace detail {

// The three kernels of one call (query rotation, split-KV kernel, merge + un-rotation), chained
// with programmatic dependent launch. `view` has been checked; `ws` is 256-byte aligned and holds
// the layout of workspace_layout(view.num_seqs, ...).
Status launch_chain(const PagedKVView& view, const DecodeParams& params, const DecodePlan& plan, const void* q,
                    DType q_type, void* out, DType out_type, uint8_t* ws, const int32_t* row_seq,
                    const int32_t* row_len, cudaStream_t stream, MiddleKernel middle, const void* middle_ctx) {
  const int group = params.num_q_heads / view.num_kv_heads;
  const int d = view.head_dim;
  const WorkspaceLayout wl = workspace_layout(view.num_seqs, params.num_q_heads, d, plan.num_splits);
  DecodeArgs args;
  args.view = view;
  args.q_rot = reinterpret_cast<float*>(ws + wl.q_rot);
  args.part_o = reinterpret_cast<float*>(ws + wl.part_o);
  args.part_lse = reinterpret_cast<float*>(ws + wl.part_lse);
  args.num_q_heads = params.num_q_heads;
  args.group = group;
  args.head_chunks = plan.head_chunks;
  args.num_splits = plan.num_splits;
  args.softcap = params.softcap;
  args.window = params.window;
  args.row_seq = row_seq;
  args.row_len = row_len;
  // Recent ring: the split kernels take each row's page end as its length (prefill: written by
  // prefill_rows_kernel; decode: by ring_page_end_kernel here), the merge the true length.
  if (view.recent_tokens > 0) {
    auto* page_end = reinterpret_cast<int32_t*>(ws + wl.page_end);
    if (!row_seq) {
      ring_page_end_kernel<<<(view.num_seqs + 127) / 128, 128, 0, stream>>>(view, page_end);
      TQKV_CUDA_RETURN_IF_ERROR(cudaGetLastError());
    }
    args.row_len = page_end;
  }
#ifdef TQKV_DECODE_PROBE
  args.probe = detail::g_decode_probe;
#endif

  const int rows = view.num_seqs * params.num_q_heads;
  const int threads = 128;
  const float* k_rot = view.k.bits == kF16Bits ? nullptr : view.rotation;
  const float* v_rot = view.v.bits == kF16Bits ? nullptr : view.rotation;
  // The fast transform needs a power-of-two head size (kv_layout.h: signs are set only then).
  const float* signs = (view.hadamard_signs && (d & (d - 1)) == 0) ? view.hadamard_signs : nullptr;
  // The default (MODE 5): the decode kernel rotates its own queries (decode only): by the fast
  // transform, by the dense P (head sizes 80 and 96), or not at all (fp16 K).
  if (!middle && !row_seq && detail::decode_mode_selected() == 5 && (!k_rot || signs || d == 80 || d == 96)) {
    args.q_in = q;
    args.q_f32 = q_type == DType::kF32 ? 1 : 0;
    args.q_signs = k_rot ? signs : nullptr;
    args.q_dense = k_rot && !signs ? k_rot : nullptr;
    args.q_scale = params.scale;
  } else {
    rotate_query_kernel<<<rows, threads, d * sizeof(float), stream>>>(q, q_type, k_rot, signs, d, params.scale,
                                                                       const_cast<float*>(args.q_rot));
    TQKV_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  }

  const int kb = view.k.bits, vb = view.v.bits;
  // Fused merge (decode_fused_merge.cuh): decode calls with at most 8 splits
  // (one cluster each) finish inside the decode kernel; the rest take merge_splits_kernel. fp16
  // pages only with one split: the fp16 kernel (4 warps, several CTAs per SM) ran 6-40% slower in
  // clusters of 3-6 CTAs (docs/benchmarks.md, "Fused merge"), and 1-5% faster with one split.
  const bool tq = kb != kF16Bits || vb != kF16Bits;
  // With a recent ring the merge kernel adds its positions: the fused merge has no ring code (inlined
  // there, it changed the register allocation of the decode kernel's page loop: k3v3 1-2.5%
  // slower with no ring at all, in a same-call A/B).
  if (!middle && !row_seq && plan.num_splits <= kMaxFusedSplits && (tq || plan.num_splits == 1) &&
      view.recent_tokens == 0 && fused_merge_enabled()) {
    args.out = out;
    args.out_f32 = out_type == DType::kF32 ? 1 : 0;
    args.out_rotation = v_rot;
    args.out_signs = signs;
    return dispatch_decode(d, kb, vb, &args, stream, nullptr);
  }
  const Status st = middle ? middle(args, middle_ctx, stream) : dispatch_decode(d, kb, vb, &args, stream, nullptr);
  TQKV_RETURN_IF_ERROR(st);

  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(rows);
  cfg.blockDim = dim3(threads);
  // y[d], split weights (padded to 4), then fp16 rows: the sinks' V, the recent ring's K and V.
  cfg.dynamicSmemBytes = (d + ((plan.num_splits + 3) & ~3)) * sizeof(float) +
                         (static_cast<size_t>(view.sink_tokens) + 2 * static_cast<size_t>(view.recent_tokens)) * d * 2;
  TQKV_RETURN_IF_ERROR(allow_merge_smem(cfg.dynamicSmemBytes));
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  MergeSinks sk;
  if (view.sink_tokens > 0 || view.recent_tokens > 0) {
    sk.k = reinterpret_cast<const __half*>(view.sink_k);
    sk.v = reinterpret_cast<const __half*>(view.sink_v);
    sk.slot = view.sink_slot;
    sk.tokens = view.sink_tokens;
    sk.tile_halves = static_cast<size_t>(tile_bytes(view.sink_tokens, d, kF16Bits) / 2);
    sk.rk = reinterpret_cast<const __half*>(view.recent_k);
    sk.rv = reinterpret_cast<const __half*>(view.recent_v);
    sk.recent = view.recent_tokens;
    sk.ring_halves = static_cast<size_t>(tile_bytes(view.recent_tokens, d, kF16Bits) / 2);
    sk.num_kv_heads = view.num_kv_heads;
    sk.group = group;
    sk.num_q_heads = params.num_q_heads;
    sk.window = params.window;
    sk.softcap = params.softcap;
    sk.q_rot = args.q_rot;
    sk.row_seq = row_seq;
    sk.row_len = row_len;
    sk.seq_lens = view.seq_lens;
  }
  TQKV_CUDA_RETURN_IF_ERROR(cudaLaunchKernelEx(&cfg, merge_splits_kernel, static_cast<const float*>(args.part_o),
                                               static_cast<const float*>(args.part_lse), plan.num_splits,
                                               static_cast<size_t>(rows), d, v_rot, signs, out, out_type, sk));
  TQKV_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return Status::ok();
}

Status check_call(const PagedKVView& view, const DecodeParams& params, const DecodePlan& plan, const void* q,
                  void* out, void* workspace, size_t workspace_bytes, size_t extra_bytes) {
  TQKV_RETURN_IF_ERROR(check_view(view, params));
  if (!q || !out || !workspace) return invalid_argument("null q, out or workspace");
  const int group = params.num_q_heads / view.num_kv_heads;
  if (plan.num_splits <= 0 || plan.num_splits > 4096 || plan.head_chunks != (group + 7) / 8)
    return invalid_argument("plan does not match the view (call plan_decode / plan_prefill)");
  const WorkspaceLayout wl = workspace_layout(view.num_seqs, params.num_q_heads, view.head_dim, plan.num_splits);
  if (reinterpret_cast<uintptr_t>(workspace) % 256 != 0)
    return invalid_argument("workspace must be 256-byte aligned (cudaMalloc memory is)");
  if (workspace_bytes < wl.total + extra_bytes)
    return invalid_argument("workspace too small: need " + std::to_string(wl.total + extra_bytes) + " bytes");
  return Status::ok();
}

}  // namespace detail

Status attention_decode(const PagedKVView& view, const DecodeParams& params, const DecodePlan& plan,
                        const void* q, DType q_type, void* out, DType out_type, void* workspace,
                        size_t workspace_bytes, cudaStream_t stream) {
  TQKV_RETURN_IF_ERROR(detail::check_call(view, params, plan, q, out, workspace, workspace_bytes, 0));
  return detail::launch_chain(view, params, plan, q, q_type, out, out_type, static_cast<uint8_t*>(workspace), nullptr,
                              nullptr, stream);
}

}  // namespace tqkv::cuda
