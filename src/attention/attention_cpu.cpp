// Fused CPU attention driver: rotates the queries, splits the work into (query row, KV head,
// key chunk) items for OpenMP, runs the chunk loop (fused_chunk.inc), merges the split-K partial
// softmax states and rotates the outputs back.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "attention/attention_internal.h"
#include "core/cpu_features.h"
#include "tqkv/attention.h"
#include "tqkv/codec.h"

namespace tqkv {

namespace {

using attn_detail::WorkItem;

// Keys per split-K chunk: enough items to keep every thread busy (4 per thread), but chunks of at
// least 256 tokens so the merge stays cheap. Always whole pages.
int64_t chunk_tokens(int64_t items_unsplit, int64_t max_range, int32_t ps) {
  const int64_t threads = omp_get_max_threads();
  const int64_t want = std::max<int64_t>(1, (4 * threads + items_unsplit - 1) / std::max<int64_t>(items_unsplit, 1));
  int64_t c = (max_range + want - 1) / want;
  c = std::max<int64_t>(c, 256);
  return (c + ps - 1) / ps * ps;
}

// rows: query row -> (sequence, position). q_lens null = decode.
Status run_fused(const PagedKVView& kv, const AttentionParams& p, const int32_t* q_lens, const float* q, float* out) {
  TQKV_RETURN_IF_ERROR(validate_attention_args(kv, p));
  TQKV_RETURN_IF_ERROR(attn_detail::check_seqs(kv, p, q_lens));
  const int32_t H = kv.num_kv_heads, d = kv.head_dim, HQ = p.num_q_heads, G = HQ / H, ps = kv.page_size;
  struct Row {
    int32_t s;
    int64_t pos, lo;
  };
  std::vector<Row> rows;
  for (int32_t s = 0; s < kv.num_seqs; ++s) {
    const int64_t len = kv.seq_lens[s], ql = q_lens ? q_lens[s] : 1;
    for (int64_t i = 0; i < ql; ++i) {
      const int64_t pos = len - ql + i;
      rows.push_back({s, pos, p.window > 0 ? std::max<int64_t>(0, pos - p.window + 1) : 0});
    }
  }
  const int64_t nrows = static_cast<int64_t>(rows.size());
  if (nrows == 0) return Status::ok();
  int64_t max_range = 1;
  for (const Row& r : rows) max_range = std::max(max_range, r.pos + 1 - r.lo);
  const int64_t chunk = chunk_tokens(nrows * H, max_range, ps);

  // Items grouped by (row, kv head); item_begin[row * H + h] indexes the first.
  std::vector<WorkItem> items;
  std::vector<int64_t> item_begin(nrows * H + 1);
  for (int64_t r = 0; r < nrows; ++r)
    for (int32_t h = 0; h < H; ++h) {
      item_begin[r * H + h] = static_cast<int64_t>(items.size());
      const Row& row = rows[r];
      // Attention sinks: positions below sink_tokens come from the sink tiles, one item.
      int64_t from = row.lo;
      if (from < kv.sink_tokens) {
        const int64_t t1 = std::min<int64_t>(kv.sink_tokens, row.pos + 1);
        items.push_back({row.s, h, r, row.pos, from, t1, true});
        from = t1;
      }
      // Recent tokens: positions from recent_from(s) come from the ring, as one or (where the run
      // wraps around the ring) two items in ring positions.
      const int64_t rf = std::max(from, kv.recent_from(row.s));
      const int64_t end = std::min(rf, row.pos + 1);
      // Chunk boundaries on multiples of `chunk` so chunks stay page-aligned.
      for (int64_t t0 = from; t0 < end;) {
        const int64_t t1 = std::min<int64_t>((t0 / chunk + 1) * chunk, end);
        items.push_back({row.s, h, r, row.pos, t0, t1, false});
        t0 = t1;
      }
      if (rf <= row.pos) {
        const int64_t W = kv.recent_tokens, a = rf % W, b = a + (row.pos + 1 - rf);
        items.push_back({row.s, h, r, row.pos, a, std::min(b, W), false, true});
        if (b > W) items.push_back({row.s, h, r, row.pos, 0, b - W, false, true});
      }
    }
  item_begin[nrows * H] = static_cast<int64_t>(items.size());

  // Queries in K's space: rotated once per (row, head) when K is TurboQuant.
  const bool rot_k = kv.k.bits != kF16Bits, rot_v = kv.v.bits != kF16Bits;
  std::vector<float> qr;
  const float* qk = q;
  if (rot_k) {
    qr.resize(static_cast<size_t>(nrows) * HQ * d);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < nrows * HQ; ++i) rotate_forward_raw(kv.rotation, kv.hadamard_signs, d, q + i * d, qr.data() + i * d);
    qk = qr.data();
  }

  const int64_t nitems = static_cast<int64_t>(items.size());
  const int64_t stride = static_cast<int64_t>(G) * (d + 2);  // m[G], l[G], acc[G][d] per item
  std::vector<float> part(static_cast<size_t>(nitems * stride));
  // Sink tiles hold each side in that side's space (rotated when TurboQuant): the fp16 path over
  // them lines up with the rotated queries and the rotated V accumulator of the other items.
  const PagedKVView sink_view = kv.sink_tokens > 0 ? kv.sinks() : kv;
  const PagedKVView recent_view = kv.recent_tokens > 0 ? kv.recent() : kv;
  const attn_detail::ChunkFn fn = cpu_has_avx512bw_kernels() ? &attn_detail::process_chunk_avx512
                                  : cpu_has_avx2_fma_f16c()   ? &attn_detail::process_chunk_avx2
                                                              : &attn_detail::process_chunk_scalar;
#pragma omp parallel
  {
    std::vector<float> scratch(static_cast<size_t>(attn_detail::scratch_floats(std::max(ps, kv.recent_tokens), d, G)));
#pragma omp for schedule(dynamic, 1)
    for (int64_t i = 0; i < nitems; ++i) {
      const WorkItem& w = items[i];
      float* st = part.data() + i * stride;
      fn(w.sink ? sink_view : w.recent ? recent_view : kv, p, w, qk + (w.row * HQ + static_cast<int64_t>(w.h) * G) * d, st, st + G, st + 2 * G, scratch.data());
    }
  }

  // Merge chunks, normalise, rotate V's space back.
#pragma omp parallel
  {
    std::vector<float> tmp(d);
#pragma omp for schedule(static)
    for (int64_t rh = 0; rh < nrows * H; ++rh) {
      const int64_t r = rh / H;
      const int32_t h = static_cast<int32_t>(rh % H);
      for (int32_t g = 0; g < G; ++g) {
        float M = -INFINITY;
        for (int64_t i = item_begin[rh]; i < item_begin[rh + 1]; ++i) M = std::max(M, part[i * stride + g]);
        std::fill(tmp.begin(), tmp.end(), 0.f);
        float L = 0.f;
        for (int64_t i = item_begin[rh]; i < item_begin[rh + 1]; ++i) {
          const float* st = part.data() + i * stride;
          const float f = std::exp(st[g] - M);
          L += st[G + g] * f;
          const float* a = st + 2 * G + static_cast<int64_t>(g) * d;
          for (int32_t j = 0; j < d; ++j) tmp[j] += a[j] * f;
        }
        for (int32_t j = 0; j < d; ++j) tmp[j] /= L;
        float* o = out + (r * HQ + static_cast<int64_t>(h) * G + g) * d;
        if (rot_v)
          rotate_inverse_raw(kv.rotation, kv.hadamard_signs, d, tmp.data(), o);
        else
          std::copy(tmp.begin(), tmp.end(), o);
      }
    }
  }
  return Status::ok();
}

}  // namespace

Status attention_decode_cpu(const PagedKVView& kv, const AttentionParams& p, const float* q, float* out) {
  return run_fused(kv, p, nullptr, q, out);
}

Status attention_prefill_cpu(const PagedKVView& kv, const AttentionParams& p, const int32_t* q_lens, const float* q,
                             float* out) {
  if (q_lens == nullptr) return invalid_argument("q_lens is required for prefill");
  return run_fused(kv, p, q_lens, q, out);
}

}  // namespace tqkv
