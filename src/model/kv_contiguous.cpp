// A KV backend with one contiguous array per layer and side (no pages): fp32 (the reference for
// tests), fp16, or TurboQuant-compressed (indices + fp16 scale per token and head, the codec of
// include/tqkv/codec.h). Attention on compressed sides works in the rotated space: the query is
// rotated once per head, scores read centroids through the indices, V is accumulated rotated and
// rotated back once (shared/TURBOQUANT.md, "Attention in the rotated space").
//
// Sliding-window layers keep fp16 in a ring buffer of window + Model::kMaxChunk tokens, so they
// hold (and are charged for) only their window.
#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <optional>
#include <vector>

#include "model/kv_backends.h"
#include "tqkv/codec.h"
#include "tqkv/fp16.h"

namespace tqkv {

namespace {

// One side (K or V) of one layer. Token t (ring slot t % capacity) of kv head h starts at
// (slot * n_kv + h) * stride within the format's array.
struct Side {
  int bits = 16;   // 32 = fp32, 16 = fp16, else TurboQuant bits
  int64_t capacity = 0;
  std::vector<float> f32;        // [cap][n_kv][D]
  std::vector<uint16_t> f16;     // [cap][n_kv][D]
  std::vector<uint8_t> idx;      // [cap][n_kv][index_bytes]
  std::vector<uint16_t> scale;   // [cap][n_kv]
  std::optional<TurboQuantCodec> codec;
};

class ContiguousKv final : public KvBackend {
 public:
  static Result<std::unique_ptr<KvBackend>> create(const ModelConfig& cfg, const KvOptions& opt) {
    std::unique_ptr<ContiguousKv> kv(new ContiguousKv());
    kv->cfg_ = cfg;
    kv->opt_ = opt;
    const int D = cfg.head_dim, H = cfg.n_head_kv;
    kv->layers_.resize(static_cast<size_t>(cfg.n_layer));
    for (int l = 0; l < cfg.n_layer; ++l) {
      auto& pair = kv->layers_[l];
      const bool sliding = cfg.is_sliding(l) && cfg.sliding_window > 0;
      const int64_t cap = sliding ? std::min<int64_t>(opt.max_tokens, cfg.sliding_window + Model::kMaxChunk)
                                  : opt.max_tokens;
      for (int s = 0; s < 2; ++s) {
        Side& side = s == 0 ? pair.k : pair.v;
        int bits = s == 0 ? opt.format.k_bits : opt.format.v_bits;
        bool keep_f16 = sliding;  // sliding layers keep an uncompressed window
        for (int fl : opt.f16_layers) keep_f16 |= (fl >= 0 ? fl : cfg.n_layer + fl) == l;
        for (int kl : opt.k8_layers)
          if (s == 0 && bits < 8 && (kl >= 0 ? kl : cfg.n_layer + kl) == l) bits = 8;
        if (opt.dense_fp32) bits = 32;
        else if (keep_f16) bits = 16;
        side.bits = bits;
        side.capacity = cap;
        const size_t n = static_cast<size_t>(cap) * H;
        if (bits == 32) {
          side.f32.assign(n * D, 0.0f);
        } else if (bits == 16) {
          side.f16.assign(n * D, 0);
        } else {
          CodecConfig cc;
          cc.head_dim = D;
          cc.bits = bits;
          cc.rotation = default_rotation(D);
          cc.scale_search = opt.scale_search;
          TQKV_ASSIGN_OR_RETURN(TurboQuantCodec codec, TurboQuantCodec::create(cc));
          side.codec.emplace(std::move(codec));
          side.idx.assign(n * static_cast<size_t>(index_bytes(D, bits)), 0);
          side.scale.assign(n, 0);
        }
      }
    }
    return std::unique_ptr<KvBackend>(std::move(kv));
  }

  Status attend(const LayerAttention& la, int64_t pos0, int n, const float* q, const float* k,
                const float* v, float* out) override {
    if (la.layer < 0 || la.layer >= cfg_.n_layer) return out_of_range("attend: bad layer");
    if (la.layer == 0 && pos0 != tokens_) return invalid_argument("attend: pos0 must equal tokens held");
    if (pos0 + n > opt_.max_tokens)
      return out_of_range("KV cache full: " + std::to_string(pos0 + n) + " tokens > context " +
                          std::to_string(opt_.max_tokens) + " (raise --ctx)");
    auto& L = layers_[la.layer];
    TQKV_RETURN_IF_ERROR(write(L.k, pos0, n, k));
    TQKV_RETURN_IF_ERROR(write(L.v, pos0, n, v));
    if (la.layer == cfg_.n_layer - 1) tokens_ = pos0 + n;
    compute(L.k, L.v, la, pos0, n, q, out);
    return Status::ok();
  }

  Status reset() override {
    tokens_ = 0;
    return Status::ok();
  }
  int64_t tokens() const override { return tokens_; }

  int64_t bytes_in_use() const override {
    int64_t total = 0;
    for (int l = 0; l < cfg_.n_layer; ++l) {
      const bool sliding = cfg_.is_sliding(l) && cfg_.sliding_window > 0;
      const int64_t held = sliding ? std::min<int64_t>(tokens_, cfg_.sliding_window) : tokens_;
      total += held * (side_bytes_per_token(layers_[l].k) + side_bytes_per_token(layers_[l].v));
    }
    return total;
  }
  int64_t f16_bytes_for(int64_t n_tokens) const override {
    return n_tokens * cfg_.n_layer * 2 * static_cast<int64_t>(cfg_.kv_dim()) * 2;
  }
  std::string describe() const override {
    std::string s = opt_.dense_fp32 ? "fp32 reference" : kv_format_name(opt_.format);
    s += " contiguous";
    int sliding = 0, f16 = 0;
    for (int l = 0; l < cfg_.n_layer; ++l) {
      sliding += cfg_.is_sliding(l) ? 1 : 0;
      f16 += !cfg_.is_sliding(l) && layers_[l].k.bits == 16 && opt_.format.k_bits != 16 ? 1 : 0;
    }
    if (sliding > 0) s += ", " + std::to_string(sliding) + " sliding layers in f16";
    if (f16 > 0) s += ", " + std::to_string(f16) + " layers kept in f16";
    return s;
  }

 private:
  struct LayerSides {
    Side k, v;
  };

  int64_t side_bytes_per_token(const Side& s) const {
    const int64_t H = cfg_.n_head_kv, D = cfg_.head_dim;
    if (s.bits == 32) return H * D * 4;
    if (s.bits == 16) return H * D * 2;
    return H * (index_bytes(cfg_.head_dim, s.bits) + 2);
  }

  Status write(Side& s, int64_t pos0, int n, const float* x) {
    const int H = cfg_.n_head_kv, D = cfg_.head_dim;
    for (int i = 0; i < n; ++i) {
      const int64_t slot = (pos0 + i) % s.capacity;
      const float* src = x + static_cast<int64_t>(i) * H * D;
      if (s.bits == 32) {
        std::copy(src, src + H * D, s.f32.data() + slot * H * D);
      } else if (s.bits == 16) {
        for (int j = 0; j < H * D; ++j) s.f16[slot * H * D + j] = float_to_fp16(src[j]);
      } else {
        const int64_t ib = index_bytes(D, s.bits);
        uint8_t* dst = s.idx.data() + slot * H * ib;
        std::fill(dst, dst + H * ib, 0);
        TQKV_RETURN_IF_ERROR(s.codec->encode(src, H, dst, s.scale.data() + slot * H));
      }
    }
    return Status::ok();
  }

  void compute(const Side& ks, const Side& vs, const LayerAttention& la, int64_t pos0, int n,
               const float* q, float* out) const {
    const int HQ = cfg_.n_head, H = cfg_.n_head_kv, D = cfg_.head_dim, group = HQ / H;
    const int64_t total = static_cast<int64_t>(n) * HQ;
#pragma omp parallel
    {
      std::vector<float> scores, qr(D), acc(D), tmp(D);
#pragma omp for schedule(dynamic, 1)
      for (int64_t t = 0; t < total; ++t) {
        const int i = static_cast<int>(t / HQ), h = static_cast<int>(t % HQ), kh = h / group;
        const int64_t pos = pos0 + i;
        const int64_t first = la.window > 0 ? std::max<int64_t>(0, pos - la.window + 1) : 0;
        const int64_t len = pos - first + 1;
        scores.resize(static_cast<size_t>(len));
        const float* qh = q + (static_cast<int64_t>(i) * HQ + h) * D;
        const float* qk = qh;
        if (ks.codec) {
          ks.codec->rotate(qh, qr.data());
          qk = qr.data();
        }
        float mx = -std::numeric_limits<float>::infinity();
        for (int64_t j = 0; j < len; ++j) {
          const int64_t slot = (first + j) % ks.capacity;
          float s = dot_key(ks, slot, kh, qk) * la.scale;
          if (la.softcap > 0.0f) s = la.softcap * std::tanh(s / la.softcap);
          scores[j] = s;
          mx = std::max(mx, s);
        }
        double sum = 0.0;
        for (int64_t j = 0; j < len; ++j) {
          scores[j] = std::exp(scores[j] - mx);
          sum += scores[j];
        }
        const float inv = static_cast<float>(1.0 / sum);
        std::fill(acc.begin(), acc.end(), 0.0f);
        for (int64_t j = 0; j < len; ++j) {
          const int64_t slot = (first + j) % vs.capacity;
          add_value(vs, slot, kh, scores[j] * inv, acc.data());
        }
        float* o = out + (static_cast<int64_t>(i) * HQ + h) * D;
        if (vs.codec) vs.codec->unrotate(acc.data(), o);
        else std::copy(acc.begin(), acc.end(), o);
      }
    }
  }

  float dot_key(const Side& s, int64_t slot, int kh, const float* q) const {
    const int H = cfg_.n_head_kv, D = cfg_.head_dim;
    const int64_t e = slot * H + kh;
    float acc = 0.0f;
    if (s.bits == 32) {
      const float* k = s.f32.data() + e * D;
      for (int d = 0; d < D; ++d) acc += q[d] * k[d];
    } else if (s.bits == 16) {
      const uint16_t* k = s.f16.data() + e * D;
      for (int d = 0; d < D; ++d) acc += q[d] * fp16_to_float(k[d]);
    } else {
      const uint8_t* p = s.idx.data() + e * index_bytes(D, s.bits);
      const float* c = s.codec->codebook().centroids();
      for (int d = 0; d < D; ++d) acc += q[d] * c[unpack_index(p, s.bits, d)];
      acc *= fp16_to_float(s.scale[e]);
    }
    return acc;
  }

  void add_value(const Side& s, int64_t slot, int kh, float p, float* acc) const {
    const int H = cfg_.n_head_kv, D = cfg_.head_dim;
    const int64_t e = slot * H + kh;
    if (s.bits == 32) {
      const float* v = s.f32.data() + e * D;
      for (int d = 0; d < D; ++d) acc[d] += p * v[d];
    } else if (s.bits == 16) {
      const uint16_t* v = s.f16.data() + e * D;
      for (int d = 0; d < D; ++d) acc[d] += p * fp16_to_float(v[d]);
    } else {
      const uint8_t* ip = s.idx.data() + e * index_bytes(D, s.bits);
      const float* c = s.codec->codebook().centroids();
      const float ps = p * fp16_to_float(s.scale[e]);
      for (int d = 0; d < D; ++d) acc[d] += ps * c[unpack_index(ip, s.bits, d)];
    }
  }

  ContiguousKv() = default;
  ModelConfig cfg_;
  KvOptions opt_;
  std::vector<LayerSides> layers_;
  int64_t tokens_ = 0;
};

}  // namespace

Result<std::unique_ptr<KvBackend>> make_contiguous_kv(const ModelConfig& cfg, const KvOptions& opt) {
  return ContiguousKv::create(cfg, opt);
}

}  // namespace tqkv
