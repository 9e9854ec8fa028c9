// Reference attention: dequantize to fp32, plain loops, fp64 accumulation. Also the argument
// checks shared by every CPU path.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "attention/attention_internal.h"
#include "tqkv/attention.h"
#include "tqkv/fp16.h"

namespace tqkv {

Status validate_attention_args(const PagedKVView& kv, const AttentionParams& p) {
  if (kv.num_kv_heads <= 0 || !is_valid_head_dim(kv.head_dim) || kv.page_size <= 0 || kv.num_seqs < 0)
    return invalid_argument("bad view shape (kv heads " + std::to_string(kv.num_kv_heads) + ", head_dim " +
                            std::to_string(kv.head_dim) + ", page_size " + std::to_string(kv.page_size) + ")");
  if (p.num_q_heads <= 0 || p.num_q_heads % kv.num_kv_heads != 0)
    return invalid_argument("num_q_heads (" + std::to_string(p.num_q_heads) + ") must be a positive multiple of " +
                            "num_kv_heads (" + std::to_string(kv.num_kv_heads) + ")");
  if (!std::isfinite(p.scale) || !std::isfinite(p.softcap) || p.softcap < 0 || p.window < 0)
    return invalid_argument("scale and softcap must be finite, softcap and window >= 0");
  for (const KVSideView* s : {&kv.k, &kv.v}) {
    if (!is_valid_kv_bits(s->bits)) return invalid_argument("bad bits " + std::to_string(s->bits));
    if (s->pages == nullptr) return invalid_argument("null pages");
    if (s->tile_bytes != tile_bytes(kv.page_size, kv.head_dim, s->bits)) return invalid_argument("tile_bytes mismatch");
    if (s->bits != kF16Bits && (s->centroids == nullptr || kv.rotation == nullptr))
      return invalid_argument("TurboQuant side without centroids or rotation");
  }
  if (kv.num_seqs > 0 && (kv.page_table == nullptr || kv.seq_lens == nullptr || kv.max_pages_per_seq <= 0))
    return invalid_argument("null page table or seq_lens");
  if (kv.sink_tokens < 0 || kv.sink_tokens > kv.page_size)
    return invalid_argument("sink_tokens must be in [0, page_size] (got " + std::to_string(kv.sink_tokens) + ")");
  if (kv.sink_tokens > 0 && (kv.sink_k == nullptr || kv.sink_v == nullptr || (kv.num_seqs > 0 && kv.sink_slot == nullptr)))
    return invalid_argument("attention sinks without sink tiles or slots");
  if (kv.recent_tokens < 0 || kv.recent_tokens > 1024)
    return invalid_argument("recent_tokens must be in [0, 1024] (got " + std::to_string(kv.recent_tokens) + ")");
  if (kv.recent_tokens > 0 && (kv.recent_k == nullptr || kv.recent_v == nullptr || (kv.num_seqs > 0 && kv.sink_slot == nullptr)))
    return invalid_argument("recent tokens without recent rings or slots");
  return Status::ok();
}

namespace attn_detail {

Status key_range(const PagedKVView& kv, const AttentionParams& p, int32_t s, int64_t pos, int64_t* lo) {
  const int64_t first = p.window > 0 ? std::max<int64_t>(0, pos - p.window + 1) : 0;
  const int64_t fp = kv.first_page ? kv.first_page[s] : 0;
  if (first < fp * kv.page_size)
    return out_of_range("sequence " + std::to_string(s) + ": keys from position " + std::to_string(first) +
                        " are needed but were evicted (window " + std::to_string(p.window) + ")");
  const int64_t held = fp + kv.max_pages_per_seq;
  if (pos >= held * kv.page_size) return out_of_range("sequence length past the page table");
  *lo = first;
  return Status::ok();
}

Status check_seqs(const PagedKVView& kv, const AttentionParams& p, const int32_t* q_lens) {
  for (int32_t s = 0; s < kv.num_seqs; ++s) {
    const int32_t len = kv.seq_lens[s];
    const int32_t ql = q_lens ? q_lens[s] : 1;
    if (ql < 0 || len < ql || (q_lens == nullptr && len < 1))
      return invalid_argument("sequence " + std::to_string(s) + ": length " + std::to_string(len) +
                              " cannot hold " + std::to_string(ql) + " queries");
    if (ql == 0) continue;
    int64_t lo = 0;
    TQKV_RETURN_IF_ERROR(key_range(kv, p, s, len - ql, &lo));
    TQKV_RETURN_IF_ERROR(key_range(kv, p, s, len - 1, &lo));
  }
  return Status::ok();
}

}  // namespace attn_detail

namespace {

// Dequantizes token `pos` of sequence s, KV head h, one side, to fp32 (plain loops, fp64 sums).
void dequant_token(const PagedKVView& kv, const KVSideView& side, int32_t s, int64_t pos, int32_t h, float* out) {
  const int32_t ps = kv.page_size, d = kv.head_dim;
  // Attention sink or recent token: fp16 in the side's space (rotated if TurboQuant).
  if (const uint16_t* x = kv.exact_row(&side == &kv.k, s, h, pos)) {
    if (side.bits == kF16Bits) {
      for (int32_t j = 0; j < d; ++j) out[j] = fp16_to_float(x[j]);
      return;
    }
    for (int32_t i = 0; i < d; ++i) {  // x = P^T y
      double acc = 0;
      for (int32_t j = 0; j < d; ++j)
        acc += static_cast<double>(kv.rotation[static_cast<int64_t>(j) * d + i]) * fp16_to_float(x[j]);
      out[i] = static_cast<float>(acc);
    }
    return;
  }
  const int64_t fp = kv.first_page ? kv.first_page[s] : 0;
  const int32_t page = kv.page_table[static_cast<int64_t>(s) * kv.max_pages_per_seq + pos / ps - fp];
  const uint8_t* tile = side.pages + (static_cast<int64_t>(page) * kv.num_kv_heads + h) * side.tile_bytes;
  const int32_t row = static_cast<int32_t>(pos % ps);
  if (side.bits == kF16Bits) {
    const uint16_t* x = reinterpret_cast<const uint16_t*>(tile) + static_cast<int64_t>(row) * d;
    for (int32_t j = 0; j < d; ++j) out[j] = fp16_to_float(x[j]);
    return;
  }
  const uint8_t* idx = tile + row * index_bytes(d, side.bits);
  uint16_t sc_bits;
  std::memcpy(&sc_bits, tile + tile_scales_offset(ps, d, side.bits) + 2 * row, 2);
  const double scale = fp16_to_float(sc_bits);
  std::vector<double> y(d);
  for (int32_t j = 0; j < d; ++j) y[j] = side.centroids[unpack_index(idx, side.bits, j)];
  for (int32_t i = 0; i < d; ++i) {  // x = scale * P^T y
    double acc = 0;
    for (int32_t j = 0; j < d; ++j) acc += static_cast<double>(kv.rotation[static_cast<int64_t>(j) * d + i]) * y[j];
    out[i] = static_cast<float>(scale * acc);
  }
}

}  // namespace

Status attention_prefill_reference(const PagedKVView& kv, const AttentionParams& p, const int32_t* q_lens,
                                   const float* q, float* out) {
  if (q_lens == nullptr) return invalid_argument("q_lens is required for prefill");
  TQKV_RETURN_IF_ERROR(validate_attention_args(kv, p));
  TQKV_RETURN_IF_ERROR(attn_detail::check_seqs(kv, p, q_lens));
  const int32_t H = kv.num_kv_heads, d = kv.head_dim, HQ = p.num_q_heads, G = HQ / H;
  int64_t row0 = 0;
  for (int32_t s = 0; s < kv.num_seqs; ++s) {
    const int64_t len = kv.seq_lens[s], ql = q_lens[s];
    if (ql == 0) continue;
    int64_t lo = 0;
    TQKV_RETURN_IF_ERROR(attn_detail::key_range(kv, p, s, len - ql, &lo));
    const int64_t nt = len - lo;
    std::vector<float> K(static_cast<size_t>(nt * H * d)), V(K.size());
    for (int64_t t = 0; t < nt; ++t)
      for (int32_t h = 0; h < H; ++h) {
        dequant_token(kv, kv.k, s, lo + t, h, &K[(t * H + h) * d]);
        dequant_token(kv, kv.v, s, lo + t, h, &V[(t * H + h) * d]);
      }
    std::vector<double> sc(static_cast<size_t>(nt)), acc(d);
    for (int64_t i = 0; i < ql; ++i) {
      const int64_t pos = len - ql + i;
      const int64_t first = p.window > 0 ? std::max<int64_t>(lo, pos - p.window + 1) : lo;
      for (int32_t hq = 0; hq < HQ; ++hq) {
        const int32_t h = hq / G;
        const float* qv = q + ((row0 + i) * HQ + hq) * d;
        double mx = -INFINITY;
        for (int64_t t = first; t <= pos; ++t) {
          const float* kv_ = &K[((t - lo) * H + h) * d];
          double dot = 0;
          for (int32_t j = 0; j < d; ++j) dot += static_cast<double>(qv[j]) * kv_[j];
          double x = dot * p.scale;
          if (p.softcap > 0) x = p.softcap * std::tanh(x / p.softcap);
          sc[t - lo] = x;
          mx = std::max(mx, x);
        }
        double sum = 0;
        std::fill(acc.begin(), acc.end(), 0.0);
        for (int64_t t = first; t <= pos; ++t) {
          const double w = std::exp(sc[t - lo] - mx);
          sum += w;
          const float* vv = &V[((t - lo) * H + h) * d];
          for (int32_t j = 0; j < d; ++j) acc[j] += w * vv[j];
        }
        float* o = out + ((row0 + i) * HQ + hq) * d;
        for (int32_t j = 0; j < d; ++j) o[j] = static_cast<float>(acc[j] / sum);
      }
    }
    row0 += ql;
  }
  return Status::ok();
}

Status attention_decode_reference(const PagedKVView& kv, const AttentionParams& p, const float* q, float* out) {
  if (kv.num_seqs < 0) return invalid_argument("negative num_seqs");
  const std::vector<int32_t> ones(kv.num_seqs, 1);  // decode = prefill of one query per sequence
  return attention_prefill_reference(kv, p, ones.data(), q, out);
}

int64_t attention_decode_bytes_read(const PagedKVView& kv, const AttentionParams& p) {
  int64_t pages = 0;
  for (int32_t s = 0; s < kv.num_seqs; ++s) {
    const int64_t pos = kv.seq_lens[s] - 1;
    const int64_t lo = p.window > 0 ? std::max<int64_t>(0, pos - p.window + 1) : 0;
    pages += pos / kv.page_size - lo / kv.page_size + 1;
  }
  return pages * kv.num_kv_heads * (kv.k.tile_bytes + kv.v.tile_bytes);
}

}  // namespace tqkv
