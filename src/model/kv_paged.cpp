// The model's KV backend over the paged cache (include/tqkv/kv_cache.h) and the fused CPU
// attention (include/tqkv/attention.h): one sequence, pages sized for the requested context.
// Per-layer policy: the chosen format, f16 for KvOptions::f16_layers, and an f16 sliding window
// for Gemma's sliding layers (the cache evicts pages that fall out of the window).
#include <algorithm>
#include <cstring>
#include <memory>
#include <vector>

#include "model/kv_backends.h"
#include "tqkv/attention.h"
#include "tqkv/fp16.h"
#include "tqkv/kv_cache.h"

namespace tqkv {

namespace {

// The cache configuration for `slots` sequences of opt.max_tokens each (budget_bytes = 0), or for
// `slots` sequences sharing the full-attention pages a byte budget buys (budget_bytes > 0).
Result<KVCacheConfig> cache_config(const ModelConfig& cfg, const KvOptions& opt, int slots, int64_t budget_bytes) {
    KVCacheConfig cc;
    cc.num_layers = cfg.n_layer;
    cc.num_kv_heads = cfg.n_head_kv;
    cc.head_dim = cfg.head_dim;
    cc.page_size = kDefaultPageSize;
    cc.max_seq_len = static_cast<int32_t>(opt.max_tokens);
    const int64_t ps = cc.page_size;
    const int64_t full_pages = (opt.max_tokens + ps - 1) / ps + 2;
    // The cache gives a sliding group ceil(window/page)+2 pages per sequence slot, enough for
    // decode; a prefill chunk of Model::kMaxChunk tokens needs its window plus the chunk. We use one
    // sequence, and ask for as many slots as make the sliding pool large enough for that.
    cc.max_seqs = slots;
    int64_t slide_pages = 0;
    if (cfg.sliding_window > 0) {
      const int64_t w = cfg.sliding_window;
      const int64_t need = (w - 1 + Model::kMaxChunk + ps - 1) / ps + 2;
      const int64_t per_slot = (w + ps - 1) / ps + 2;
      cc.max_seqs = slots * static_cast<int32_t>((need + per_slot - 1) / per_slot);
      slide_pages = cc.max_seqs * per_slot;
    }
    int64_t budget = 0;
    for (int l = 0; l < cfg.n_layer; ++l) {
      LayerPolicy p;
      p.k_bits = opt.format.k_bits;
      p.v_bits = opt.format.v_bits;
      const bool sliding = cfg.is_sliding(l) && cfg.sliding_window > 0;
      bool f16 = sliding;
      for (int fl : opt.f16_layers) f16 |= (fl >= 0 ? fl : cfg.n_layer + fl) == l;
      for (int kl : opt.k8_layers)
        if (p.k_bits < 8 && (kl >= 0 ? kl : cfg.n_layer + kl) == l) p.k_bits = 8;
      if (f16) p.k_bits = p.v_bits = kF16Bits;
      if (sliding) p.window = cfg.sliding_window;
      cc.layers.push_back(p);
      // Sliding groups take exactly what they need; the rest of the budget sizes the full group.
      const int64_t pages = sliding ? slide_pages : full_pages * slots;
      budget += pages * cfg.n_head_kv *
                (tile_bytes(cc.page_size, cfg.head_dim, p.k_bits) + tile_bytes(cc.page_size, cfg.head_dim, p.v_bits));
      if (!sliding && (p.k_bits != kF16Bits || p.v_bits != kF16Bits))  // attention-sink tiles, recent rings
        budget += 2ll * cc.max_seqs * cfg.n_head_kv *
                  (tile_bytes(opt.sink_tokens, cfg.head_dim, kF16Bits) + tile_bytes(opt.recent_tokens, cfg.head_dim, kF16Bits));
    }
    cc.sink_tokens = opt.sink_tokens;
    cc.recent_tokens = opt.recent_tokens;
    cc.scale_search = opt.scale_search;
    cc.budget_bytes = budget_bytes > 0 ? budget_bytes : budget;
    return cc;
}

}  // namespace

// (in namespace tqkv, not anonymous: KvPool, include/tqkv/model.h, holds pointers to it)
class PagedKv final : public KvBackend {
 public:
  static Result<std::unique_ptr<PagedKv>> create(const ModelConfig& cfg, const KvOptions& opt,
                                                 std::shared_ptr<KVCache> cache) {
    std::unique_ptr<PagedKv> kv(new PagedKv());
    kv->cfg_ = cfg;
    kv->opt_ = opt;
    kv->cache_ = std::move(cache);
    TQKV_ASSIGN_OR_RETURN(kv->seq_, kv->cache_->add_sequence());
    return kv;
  }

  Status attend(const LayerAttention& la, int64_t pos0, int n, const float* q, const float* k,
                const float* v, float* out) override {
    if (la.layer < 0 || la.layer >= cfg_.n_layer) return out_of_range("attend: bad layer");
    if (la.layer == 0) {
      if (pos0 != tokens_) return invalid_argument("attend: pos0 must equal tokens held");
      if (pos0 + n > opt_.max_tokens)
        return out_of_range("KV cache full: " + std::to_string(pos0 + n) + " tokens > context " +
                            std::to_string(opt_.max_tokens) + " (raise --ctx)");
      // Reserve the new positions in every layer group once per step.
      const Status st = cache_->append(seq_, n);
      if (st.code() == StatusCode::kResourceExhausted)
        return resource_exhausted("KV page pool exhausted: no pages for " + std::to_string(n) + " more tokens (" +
                                  st.message() + ")");
      TQKV_RETURN_IF_ERROR(st);
      tokens_ = pos0 + n;
    }
    TQKV_RETURN_IF_ERROR(cache_->write(la.layer, seq_, static_cast<int32_t>(pos0), n, k, v));
    const int32_t ids[1] = {seq_};
    TQKV_ASSIGN_OR_RETURN(PagedKVView view, cache_->view(la.layer, ids));
    AttentionParams p{cfg_.n_head, la.scale, la.softcap, la.window};
    if (n == 1) return attention_decode_cpu(view, p, q, out);
    const int32_t q_lens[1] = {n};
    return attention_prefill_cpu(view, p, q_lens, q, out);
  }

  Status reset() override {
    TQKV_RETURN_IF_ERROR(cache_->free_sequence(seq_));
    TQKV_ASSIGN_OR_RETURN(seq_, cache_->add_sequence());
    tokens_ = 0;
    return Status::ok();
  }
  int64_t tokens() const override { return tokens_; }

  // Bytes of the pages the sequence holds now (whole pages: padding of a partly filled page
  // included), over every layer, K and V.
  int64_t bytes_in_use() const override {
    int64_t total = 0;
    for (int l = 0; l < cfg_.n_layer; ++l) {
      auto pages = cache_->pages_of(cache_->group_of_layer(l), seq_);
      if (!pages.is_ok()) continue;
      const LayerPolicy& p = cache_->policy(l);
      total += static_cast<int64_t>(pages->size()) * cfg_.n_head_kv *
               (tile_bytes(kDefaultPageSize, cfg_.head_dim, p.k_bits) + tile_bytes(kDefaultPageSize, cfg_.head_dim, p.v_bits));
    }
    return total + cache_->sink_bytes() / cache_->config().max_seqs;  // this sequence's sink tiles and recent rings
  }
  // An f16 paged cache holding the same tokens: whole pages, every layer (sliding layers their window).
  int64_t f16_bytes_for(int64_t n_tokens) const override {
    const int64_t ps = kDefaultPageSize, tile = tile_bytes(kDefaultPageSize, cfg_.head_dim, kF16Bits);
    int64_t total = 0;
    for (int l = 0; l < cfg_.n_layer; ++l) {
      const bool sliding = cfg_.is_sliding(l) && cfg_.sliding_window > 0;
      int64_t pages = (n_tokens + ps - 1) / ps;
      if (sliding) pages = std::min(pages, (cfg_.sliding_window + ps - 1) / ps + 1);
      total += pages * cfg_.n_head_kv * 2 * tile;
    }
    return total;
  }
  // Decodes the cache's own bytes (pages of this sequence) with the layer's codec.
  Status read_back(int layer, int64_t pos0, int n, float* k, float* v) const override {
    if (layer < 0 || layer >= cfg_.n_layer) return out_of_range("read_back: bad layer");
    if (pos0 < 0 || pos0 + n > tokens_) return out_of_range("read_back: positions not held");
    const int32_t ids[1] = {seq_};
    KVViewWorkspace ws;
    TQKV_ASSIGN_OR_RETURN(PagedKVView view, cache_->view(layer, ids, &ws));
    const int H = cfg_.n_head_kv, D = cfg_.head_dim, ps = view.page_size;
    for (int side = 0; side < 2; ++side) {
      const KVSideView& sv = side == 0 ? view.k : view.v;
      const TurboQuantCodec* codec = side == 0 ? cache_->k_codec(layer) : cache_->v_codec(layer);
      float* dst = side == 0 ? k : v;
      for (int t = 0; t < n; ++t) {
        const int64_t pos = pos0 + t;
        const int64_t lp = pos / ps - view.first_page[0];
        if (lp < 0) return out_of_range("read_back: position evicted");
        const int32_t page = view.page_table[lp];
        const int32_t row = static_cast<int32_t>(pos % ps);
        for (int h = 0; h < H; ++h) {
          const uint8_t* tile = sv.pages + (static_cast<int64_t>(page) * H + h) * sv.tile_bytes;
          float* o = dst + (static_cast<int64_t>(t) * H + h) * D;
          // Attention sink or recent token: fp16, rotated when the side is TurboQuant.
          if (const uint16_t* x = view.exact_row(side == 0, 0, h, pos)) {
            std::vector<float> y(D);
            for (int j = 0; j < D; ++j) y[j] = fp16_to_float(x[j]);
            if (codec != nullptr) codec->unrotate(y.data(), o);
            else std::copy(y.begin(), y.end(), o);
          } else if (codec == nullptr) {
            const uint16_t* x = reinterpret_cast<const uint16_t*>(tile) + static_cast<int64_t>(row) * D;
            for (int j = 0; j < D; ++j) o[j] = fp16_to_float(x[j]);
          } else {
            const int64_t ib = codec->index_bytes();
            uint16_t sc;
            std::memcpy(&sc, tile + tile_scales_offset(ps, D, codec->bits()) + 2 * row, 2);
            codec->decode(tile + row * ib, &sc, 1, o, CodePath::kReference);
          }
        }
      }
    }
    return Status::ok();
  }

  std::string describe() const override {
    std::string s = kv_format_name(opt_.format) + " paged (16-token pages)";
    int sliding = 0, f16 = 0, k8 = 0;
    for (int l = 0; l < cfg_.n_layer; ++l) {
      const bool sl = cfg_.is_sliding(l) && cfg_.sliding_window > 0;
      sliding += sl ? 1 : 0;
      f16 += !sl && cache_->policy(l).k_bits == kF16Bits && opt_.format.k_bits != kF16Bits ? 1 : 0;
      k8 += !sl && cache_->policy(l).k_bits == 8 && opt_.format.k_bits < 8 ? 1 : 0;
    }
    if (sliding > 0) s += ", " + std::to_string(sliding) + " sliding-window layers in f16";
    if (f16 > 0) s += ", " + std::to_string(f16) + " layers kept in f16";
    if (k8 > 0) s += ", " + std::to_string(k8) + " layers with 8-bit keys";
    if (opt_.scale_search && opt_.format.k_bits + opt_.format.v_bits < 2 * kF16Bits) s += ", scale search";
    if (opt_.sink_tokens > 0 && opt_.format.k_bits + opt_.format.v_bits < 2 * kF16Bits)
      s += ", first " + std::to_string(opt_.sink_tokens) + " tokens kept in f16 (attention sinks)";
    if (opt_.recent_tokens > 0 && opt_.format.k_bits + opt_.format.v_bits < 2 * kF16Bits)
      s += ", last " + std::to_string(opt_.recent_tokens) + " tokens kept in f16 (recent tokens)";
    return s;
  }

 private:
  PagedKv() = default;
  ModelConfig cfg_;
  KvOptions opt_;
  std::shared_ptr<KVCache> cache_;
  int32_t seq_ = 0;
  int64_t tokens_ = 0;
};

Result<std::unique_ptr<KvBackend>> make_paged_kv(const ModelConfig& cfg, const KvOptions& opt) {
  TQKV_ASSIGN_OR_RETURN(KVCacheConfig cc, cache_config(cfg, opt, 1, 0));
  TQKV_ASSIGN_OR_RETURN(std::unique_ptr<KVCache> cache, KVCache::create(cc));
  TQKV_ASSIGN_OR_RETURN(auto kv, PagedKv::create(cfg, opt, std::shared_ptr<KVCache>(std::move(cache))));
  return std::unique_ptr<KvBackend>(std::move(kv));
}

Result<std::unique_ptr<KvPool>> KvPool::create(const ModelConfig& cfg, const KvOptions& opt, int slots,
                                               int64_t budget_bytes) {
  if (slots < 1 || slots > 4096) return invalid_argument("KV pool: slots must be in 1..4096");
  if (budget_bytes <= 0) return invalid_argument("KV pool: the byte budget must be positive");
  TQKV_RETURN_IF_ERROR(check_kv_options(cfg, opt));
  if (!opt.paged || opt.dense_fp32 || !is_valid_head_dim(cfg.head_dim) || !opt.emulate.empty())
    return unsupported("KV pool: needs the paged cache (head size 64..256, a multiple of 8; no emulation)");
  TQKV_ASSIGN_OR_RETURN(KVCacheConfig cc, cache_config(cfg, opt, slots, budget_bytes));
  TQKV_ASSIGN_OR_RETURN(std::unique_ptr<KVCache> cache, KVCache::create(cc));
  std::unique_ptr<KvPool> pool(new KvPool());
  pool->cache_ = std::shared_ptr<KVCache>(std::move(cache));
  pool->full_group_ = -1;
  for (int32_t gi = 0; gi < pool->cache_->num_groups(); ++gi)
    if (pool->cache_->group_window(gi) == 0) pool->full_group_ = gi;
  const bool transform = kv_transform_needed(opt);
  for (int i = 0; i < slots; ++i) {
    TQKV_ASSIGN_OR_RETURN(auto inner, PagedKv::create(cfg, opt, pool->cache_));
    pool->inner_.push_back(inner.get());
    std::unique_ptr<KvBackend> kv(std::move(inner));
    if (transform) {
      TQKV_ASSIGN_OR_RETURN(kv, wrap_kv_transform(cfg, opt, std::move(kv)));
    }
    pool->slots_.push_back(std::move(kv));
  }
  return pool;
}

KvPool::~KvPool() = default;

bool KvPool::fits(const int* slots, const int* n, int count) const {
  if (full_group_ < 0) return true;  // every layer sliding: their pages are reserved per sequence
  const int64_t ps = cache_->config().page_size;
  int64_t need = 0;
  for (int i = 0; i < count; ++i) {
    const int64_t len = inner_[slots[i]]->tokens();
    need += (len + n[i] + ps - 1) / ps - (len + ps - 1) / ps;
  }
  return need <= cache_->free_pages(full_group_);
}

int64_t KvPool::token_capacity() const { return cache_->token_capacity(); }
int KvPool::page_size() const { return static_cast<int>(cache_->config().page_size); }
int64_t KvPool::bytes() const { return cache_->bytes_allocated(); }

}  // namespace tqkv
