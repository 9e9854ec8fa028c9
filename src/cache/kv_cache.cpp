// KVCache: page pools per layer group, page tables, append / write / fork / free, views.
#include "tqkv/kv_cache.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>

#include <unistd.h>

#include "tqkv/fp16.h"

namespace tqkv {

namespace {
int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
std::string num(int64_t v) { return std::to_string(v); }
}  // namespace

CapacityReport capacity_for(int64_t budget_bytes, int32_t num_layers, int32_t num_kv_heads,
                            int32_t head_dim, int32_t page_size, int32_t k_bits, int32_t v_bits) {
  CapacityReport r;
  r.k_bits = k_bits;
  r.v_bits = v_bits;
  const int64_t page_bytes = static_cast<int64_t>(num_layers) * num_kv_heads *
                             (tile_bytes(page_size, head_dim, k_bits) + tile_bytes(page_size, head_dim, v_bits));
  r.bytes_per_token = static_cast<double>(page_bytes) / page_size;
  r.tokens = page_bytes > 0 ? budget_bytes / page_bytes * page_size : 0;
  return r;
}

Result<std::unique_ptr<KVCache>> KVCache::create(const KVCacheConfig& config) {
  KVCacheConfig c = config;
  if (c.num_layers <= 0) return invalid_argument("num_layers must be positive");
  if (c.num_kv_heads <= 0) return invalid_argument("num_kv_heads must be positive");
  if (!is_valid_head_dim(c.head_dim))
    return invalid_argument("head_dim must be a multiple of 8 in [64, 256] (got " + num(c.head_dim) + ")");
  if (c.page_size <= 0 || c.page_size > 1024 || c.page_size % 2 != 0)
    return invalid_argument("page_size must be even and in [2, 1024] (got " + num(c.page_size) + ")");
  if (c.max_seqs <= 0 || c.max_seq_len <= 0) return invalid_argument("max_seqs and max_seq_len must be positive");
  if (c.layers.empty()) c.layers.assign(c.num_layers, c.default_policy);
  if (static_cast<int32_t>(c.layers.size()) != c.num_layers)
    return invalid_argument("layers has " + num(static_cast<int64_t>(c.layers.size())) + " policies for " +
                            num(c.num_layers) + " layers");
  for (const LayerPolicy& p : c.layers) {
    if (!is_valid_kv_bits(p.k_bits) || !is_valid_kv_bits(p.v_bits))
      return invalid_argument("k_bits/v_bits must be 2, 3, 4, 8 or 16 (got k" + num(p.k_bits) + "v" +
                              num(p.v_bits) + ")");
    if (p.window < 0) return invalid_argument("window must be >= 0");
  }
  if (c.sink_tokens < 0 || c.sink_tokens > c.page_size)
    return invalid_argument("sink_tokens must be in [0, page_size] (got " + num(c.sink_tokens) + ")");
  if (c.recent_tokens < 0 || c.recent_tokens > 1024)
    return invalid_argument("recent_tokens must be in [0, 1024] (got " + num(c.recent_tokens) + ")");

  std::unique_ptr<KVCache> kv(new KVCache(c));
  kv->layers_.resize(c.num_layers);
  kv->layer_group_.resize(c.num_layers);
  kv->lens_.assign(c.max_seqs, -1);
  // Groups by window; the full-attention group (window 0) first when present.
  for (int32_t l = 0; l < c.num_layers; ++l) {
    const int32_t w = c.layers[l].window;
    int32_t g = 0;
    while (g < kv->num_groups() && kv->groups_[g].window != w) ++g;
    if (g == kv->num_groups()) kv->groups_.push_back(Group{.window = w});
    kv->groups_[g].layers.push_back(l);
  }
  std::stable_sort(kv->groups_.begin(), kv->groups_.end(),
                   [](const Group& a, const Group& b) { return (a.window == 0) > (b.window == 0); });

  const RotationKind rot = default_rotation(c.head_dim);
  int64_t budget_left = c.budget_bytes;
  for (int32_t gi = 0; gi < kv->num_groups(); ++gi) {
    Group& g = kv->groups_[gi];
    for (int32_t l : g.layers) {
      LayerStore& ls = kv->layers_[l];
      kv->layer_group_[l] = gi;
      ls.group = gi;
      ls.k_tile = tile_bytes(c.page_size, c.head_dim, c.layers[l].k_bits);
      ls.v_tile = tile_bytes(c.page_size, c.head_dim, c.layers[l].v_bits);
      g.page_bytes += c.num_kv_heads * (ls.k_tile + ls.v_tile);
      // Sinks where they change something: full attention, at least one side compressed.
      // The recent ring likewise.
      const bool exact_copies = g.window == 0 && (c.layers[l].k_bits != kF16Bits || c.layers[l].v_bits != kF16Bits);
      ls.sinks = c.sink_tokens > 0 && exact_copies;
      if (ls.sinks) {
        ls.sink_tile = tile_bytes(c.sink_tokens, c.head_dim, kF16Bits);
        budget_left -= 2ll * c.max_seqs * c.num_kv_heads * ls.sink_tile;
      }
      if (c.recent_tokens > 0 && exact_copies) {
        ls.recent_tile = tile_bytes(c.recent_tokens, c.head_dim, kF16Bits);
        budget_left -= 2ll * c.max_seqs * c.num_kv_heads * ls.recent_tile;
      }
      for (int side = 0; side < 2; ++side) {
        const int32_t bits = side == 0 ? c.layers[l].k_bits : c.layers[l].v_bits;
        if (bits == kF16Bits) continue;
        CodecConfig codec_cfg{c.head_dim, bits, rot, c.seed};
        codec_cfg.scale_search = c.scale_search;
        auto codec = TurboQuantCodec::create(codec_cfg);
        if (!codec.is_ok()) return codec.status();
        (side == 0 ? ls.k_codec : ls.v_codec) = std::make_unique<TurboQuantCodec>(std::move(codec).value());
      }
    }
    if (g.window > 0) {
      // Window pages plus the partly filled one, plus one for a copy-on-write, per sequence.
      const int64_t per_seq = std::min<int64_t>(ceil_div(g.window, c.page_size) + 2,
                                                ceil_div(c.max_seq_len, c.page_size));
      g.num_pages = static_cast<int32_t>(per_seq * c.max_seqs);
      budget_left -= g.num_pages * g.page_bytes;
    }
  }
  if (budget_left < 0)
    return invalid_argument("budget of " + num(c.budget_bytes) +
                            " bytes does not hold the sliding-window pages, attention sinks and recent rings");
  int64_t total_bytes = 0;
  for (const LayerStore& ls : kv->layers_) total_bytes += 2ll * c.max_seqs * c.num_kv_heads * (ls.sink_tile + ls.recent_tile);
  for (Group& g : kv->groups_) {
    if (g.window == 0) g.num_pages = static_cast<int32_t>(std::min<int64_t>(budget_left / g.page_bytes, 1ll << 30));
    if (g.num_pages <= 0)
      return invalid_argument("budget of " + num(c.budget_bytes) + " bytes holds no page (" + num(g.page_bytes) +
                              " bytes each)");
    total_bytes += g.num_pages * g.page_bytes;
  }
  // A budget past physical memory would be committed page by page and end in the OOM killer (or
  // take minutes to zero); say so up front instead.
  const int64_t phys = static_cast<int64_t>(sysconf(_SC_PHYS_PAGES)) * sysconf(_SC_PAGESIZE);
  if (phys > 0 && total_bytes > phys)
    return resource_exhausted("budget of " + num(c.budget_bytes) + " bytes needs " + num(total_bytes) +
                              " bytes of pages, more than this machine's " + num(phys) + " bytes of memory");
  for (Group& g : kv->groups_) {
    g.refcount.assign(g.num_pages, 0);
    g.free_list.resize(g.num_pages);
    for (int32_t i = 0; i < g.num_pages; ++i) g.free_list[i] = g.num_pages - 1 - i;  // pop 0 first
    if (c.shuffle_seed != 0) {
      std::mt19937_64 rng(c.shuffle_seed + static_cast<uint64_t>(g.window));
      std::shuffle(g.free_list.begin(), g.free_list.end(), rng);
    }
    g.seqs.resize(c.max_seqs);
    for (int32_t l : g.layers) {
      LayerStore& ls = kv->layers_[l];
      ls.k_pages.assign(static_cast<size_t>(g.num_pages) * c.num_kv_heads * ls.k_tile, 0);
      ls.v_pages.assign(static_cast<size_t>(g.num_pages) * c.num_kv_heads * ls.v_tile, 0);
      ls.sink_k.assign(static_cast<size_t>(c.max_seqs) * c.num_kv_heads * ls.sink_tile, 0);
      ls.sink_v.assign(static_cast<size_t>(c.max_seqs) * c.num_kv_heads * ls.sink_tile, 0);
      ls.recent_k.assign(static_cast<size_t>(c.max_seqs) * c.num_kv_heads * ls.recent_tile, 0);
      ls.recent_v.assign(static_cast<size_t>(c.max_seqs) * c.num_kv_heads * ls.recent_tile, 0);
    }
  }
  return kv;
}

Status KVCache::check_seq(int32_t seq) const {
  if (seq < 0 || seq >= cfg_.max_seqs || lens_[seq] < 0)
    return out_of_range("no live sequence " + num(seq));
  return Status::ok();
}
bool KVCache::is_live(int32_t seq) const { return check_seq(seq).is_ok(); }

Result<int32_t> KVCache::seq_len(int32_t seq) const {
  TQKV_RETURN_IF_ERROR(check_seq(seq));
  return lens_[seq];
}

Result<int32_t> KVCache::add_sequence() {
  for (int32_t s = 0; s < cfg_.max_seqs; ++s) {
    if (lens_[s] >= 0) continue;
    lens_[s] = 0;
    for (Group& g : groups_) g.seqs[s] = SeqPages{};
    return s;
  }
  return resource_exhausted("all " + num(cfg_.max_seqs) + " sequence slots are in use");
}

void KVCache::release_page(Group& g, int32_t page) {
  if (--g.refcount[page] == 0) g.free_list.push_back(page);
}

Status KVCache::free_sequence(int32_t seq) {
  TQKV_RETURN_IF_ERROR(check_seq(seq));
  for (Group& g : groups_) {
    for (int32_t p : g.seqs[seq].pages) release_page(g, p);
    g.seqs[seq] = SeqPages{};
  }
  lens_[seq] = -1;
  return Status::ok();
}

Result<int32_t> KVCache::fork(int32_t seq) {
  TQKV_RETURN_IF_ERROR(check_seq(seq));
  TQKV_ASSIGN_OR_RETURN(int32_t child, add_sequence());
  lens_[child] = lens_[seq];
  for (Group& g : groups_) {
    g.seqs[child] = g.seqs[seq];
    for (int32_t p : g.seqs[child].pages) ++g.refcount[p];
  }
  for (LayerStore& ls : layers_) {
    const int64_t b = cfg_.num_kv_heads * ls.sink_tile, r = cfg_.num_kv_heads * ls.recent_tile;
    if (b > 0) {
      std::memcpy(ls.sink_k.data() + child * b, ls.sink_k.data() + seq * b, b);
      std::memcpy(ls.sink_v.data() + child * b, ls.sink_v.data() + seq * b, b);
    }
    if (r > 0) {
      std::memcpy(ls.recent_k.data() + child * r, ls.recent_k.data() + seq * r, r);
      std::memcpy(ls.recent_v.data() + child * r, ls.recent_v.data() + seq * r, r);
    }
  }
  return child;
}

void KVCache::copy_page(Group& g, int32_t from, int32_t to) {
  for (int32_t l : g.layers) {
    LayerStore& ls = layers_[l];
    const int64_t kb = cfg_.num_kv_heads * ls.k_tile, vb = cfg_.num_kv_heads * ls.v_tile;
    std::memcpy(ls.k_pages.data() + to * kb, ls.k_pages.data() + from * kb, kb);
    std::memcpy(ls.v_pages.data() + to * vb, ls.v_pages.data() + from * vb, vb);
  }
}

void KVCache::zero_page(Group& g, int32_t page) {
  for (int32_t l : g.layers) {
    LayerStore& ls = layers_[l];
    const int64_t kb = cfg_.num_kv_heads * ls.k_tile, vb = cfg_.num_kv_heads * ls.v_tile;
    std::memset(ls.k_pages.data() + page * kb, 0, kb);
    std::memset(ls.v_pages.data() + page * vb, 0, vb);
  }
}

struct KVCache::Plan {
  int32_t new_first = 0;  // logical first page after eviction
  bool cow = false;       // copy the shared, partly filled last page
  int32_t fresh = 0;      // new pages at the end
};

Status KVCache::append(int32_t seq, int32_t n) {
  TQKV_RETURN_IF_ERROR(check_seq(seq));
  if (n < 0) return invalid_argument("append of a negative token count");
  const int64_t len = lens_[seq];
  if (len + n > cfg_.max_seq_len)
    return out_of_range("sequence " + num(seq) + " would grow to " + num(len + n) + " tokens, past max_seq_len " +
                        num(cfg_.max_seq_len));
  const int32_t ps = cfg_.page_size;
  std::vector<Plan> plans(groups_.size());
  for (size_t gi = 0; gi < groups_.size(); ++gi) {
    Group& g = groups_[gi];
    const SeqPages& sp = g.seqs[seq];
    Plan& pl = plans[gi];
    pl.new_first = sp.first_page;
    int32_t freed = 0;
    if (g.window > 0 && n > 0) {
      // The first new query sits at `len` and needs keys from len - window + 1 on.
      const int64_t keep_from = std::max<int64_t>(0, len - g.window + 1);
      pl.new_first = std::max<int32_t>(sp.first_page, static_cast<int32_t>(keep_from / ps));
      for (int32_t lp = sp.first_page; lp < pl.new_first; ++lp)
        if (g.refcount[sp.pages[lp - sp.first_page]] == 1) ++freed;
    }
    if (n > 0 && len % ps != 0) {
      const int32_t last = sp.pages[len / ps - sp.first_page];
      pl.cow = g.refcount[last] > 1;
    }
    pl.fresh = static_cast<int32_t>(ceil_div(len + n, ps) - ceil_div(len, ps));
    const int64_t need = pl.fresh + (pl.cow ? 1 : 0);
    if (need > static_cast<int64_t>(g.free_list.size()) + freed)
      return resource_exhausted("KV page pool" + std::string(g.window ? " (sliding-window group)" : "") +
                                " exhausted: sequence " + num(seq) + " needs " + num(need) + " pages, " +
                                num(static_cast<int64_t>(g.free_list.size()) + freed) + " free");
  }
  // Every check passed: commit.
  for (size_t gi = 0; gi < groups_.size(); ++gi) {
    Group& g = groups_[gi];
    SeqPages& sp = g.seqs[seq];
    const Plan& pl = plans[gi];
    const int32_t evict = pl.new_first - sp.first_page;
    for (int32_t i = 0; i < evict; ++i) release_page(g, sp.pages[i]);
    sp.pages.erase(sp.pages.begin(), sp.pages.begin() + evict);
    sp.first_page = pl.new_first;
    if (pl.cow) {
      int32_t& slot = sp.pages[len / ps - sp.first_page];
      const int32_t fresh_page = g.free_list.back();
      g.free_list.pop_back();
      g.refcount[fresh_page] = 1;
      copy_page(g, slot, fresh_page);
      release_page(g, slot);
      slot = fresh_page;
    }
    for (int32_t i = 0; i < pl.fresh; ++i) {
      const int32_t p = g.free_list.back();
      g.free_list.pop_back();
      g.refcount[p] = 1;
      zero_page(g, p);
      sp.pages.push_back(p);
    }
  }
  lens_[seq] = static_cast<int32_t>(len + n);
  return Status::ok();
}

Status KVCache::write(int32_t layer, int32_t seq, int32_t first_pos, int32_t n, const float* k, const float* v) {
  if (layer < 0 || layer >= cfg_.num_layers) return out_of_range("no layer " + num(layer));
  TQKV_RETURN_IF_ERROR(check_seq(seq));
  if (n < 0 || first_pos < 0 || static_cast<int64_t>(first_pos) + n > lens_[seq])
    return out_of_range("write of positions [" + num(first_pos) + ", " + num(static_cast<int64_t>(first_pos) + n) +
                        ") past sequence length " + num(lens_[seq]) + " (append first)");
  if (n == 0) return Status::ok();
  if (k == nullptr || v == nullptr) return invalid_argument("null k or v");
  LayerStore& ls = layers_[layer];
  Group& g = groups_[ls.group];
  const SeqPages& sp = g.seqs[seq];
  const int32_t ps = cfg_.page_size, H = cfg_.num_kv_heads, d = cfg_.head_dim;
  // Check every destination before writing anything.
  for (int32_t lp = first_pos / ps; lp <= (first_pos + n - 1) / ps; ++lp) {
    if (lp < sp.first_page) return out_of_range("position " + num(static_cast<int64_t>(lp) * ps) + " was evicted");
    if (g.refcount[sp.pages[lp - sp.first_page]] != 1)
      return invalid_argument("write into a page shared with another sequence (positions must be freshly appended)");
  }
  // Encode both sides first (a NaN in V must not leave K half written), then scatter.
  const int64_t vecs = static_cast<int64_t>(n) * H;
  std::vector<uint8_t> idx[2];
  std::vector<uint16_t> sc[2];
  for (int side = 0; side < 2; ++side) {
    const float* x = side == 0 ? k : v;
    const TurboQuantCodec* codec = side == 0 ? ls.k_codec.get() : ls.v_codec.get();
    if (codec == nullptr) {
      for (int64_t i = 0; i < vecs * d; ++i)
        if (!std::isfinite(x[i])) return invalid_argument("non-finite value in K/V input");
      continue;
    }
    idx[side].resize(static_cast<size_t>(vecs * codec->index_bytes()));
    sc[side].resize(static_cast<size_t>(vecs));
    TQKV_RETURN_IF_ERROR(codec->encode(x, vecs, idx[side].data(), sc[side].data()));
  }
  for (int side = 0; side < 2; ++side) {
    const float* x = side == 0 ? k : v;
    const TurboQuantCodec* codec = side == 0 ? ls.k_codec.get() : ls.v_codec.get();
    uint8_t* base = side == 0 ? ls.k_pages.data() : ls.v_pages.data();
    const int64_t tb = side == 0 ? ls.k_tile : ls.v_tile;
    const int64_t ib = codec ? codec->index_bytes() : 0;
    const int64_t so = codec ? tile_scales_offset(ps, d, codec->bits()) : 0;
    for (int32_t t = 0; t < n; ++t) {
      const int32_t pos = first_pos + t;
      const int32_t page = sp.pages[pos / ps - sp.first_page];
      const int32_t row = pos % ps;
      for (int32_t h = 0; h < H; ++h) {
        uint8_t* tile = base + (static_cast<int64_t>(page) * H + h) * tb;
        const int64_t vi = static_cast<int64_t>(t) * H + h;
        if (codec == nullptr) {
          uint16_t* dst = reinterpret_cast<uint16_t*>(tile) + static_cast<int64_t>(row) * d;
          for (int32_t j = 0; j < d; ++j) dst[j] = float_to_fp16(x[vi * d + j]);
        } else {
          std::memcpy(tile + row * ib, idx[side].data() + vi * ib, ib);
          std::memcpy(tile + so + 2 * row, &sc[side][vi], 2);
        }
      }
    }
  }
  // Exact copies, fp16 in the side's own space (rotated when the side is TurboQuant): positions
  // < sink_tokens into this sequence's sink tile (row = position), and positions among the last
  // recent_tokens of the sequence into its recent ring (row = position % recent_tokens; an older
  // position's row is only reused once that position has left the window).
  const auto copy_exact = [&](std::vector<uint8_t>& kt, std::vector<uint8_t>& vt, int64_t tile, int32_t p0, int32_t p1,
                              int32_t rows) {
    std::vector<float> y(d);
    for (int side = 0; side < 2; ++side) {
      const float* x = side == 0 ? k : v;
      const TurboQuantCodec* codec = side == 0 ? ls.k_codec.get() : ls.v_codec.get();
      uint8_t* base = (side == 0 ? kt.data() : vt.data()) + seq * H * tile;
      for (int32_t pos = p0; pos < p1; ++pos)
        for (int32_t h = 0; h < H; ++h) {
          const float* xv = x + (static_cast<int64_t>(pos - first_pos) * H + h) * d;
          if (codec != nullptr) codec->rotate(xv, y.data());
          const float* src = codec != nullptr ? y.data() : xv;
          uint16_t* dst = reinterpret_cast<uint16_t*>(base + h * tile) + static_cast<int64_t>(pos % rows) * d;
          for (int32_t j = 0; j < d; ++j) dst[j] = float_to_fp16(src[j]);
        }
    }
  };
  if (ls.sinks && first_pos < cfg_.sink_tokens)
    copy_exact(ls.sink_k, ls.sink_v, ls.sink_tile, first_pos, std::min(first_pos + n, cfg_.sink_tokens), cfg_.sink_tokens);
  if (ls.recent_tile > 0)
    copy_exact(ls.recent_k, ls.recent_v, ls.recent_tile, std::max(first_pos, lens_[seq] - cfg_.recent_tokens), first_pos + n,
               cfg_.recent_tokens);
  return Status::ok();
}

Status KVCache::append_and_write(int32_t seq, int32_t n, const float* k, const float* v) {
  if (cfg_.num_layers != 1) return invalid_argument("append_and_write is for one-layer caches");
  TQKV_ASSIGN_OR_RETURN(const int32_t len, seq_len(seq));
  TQKV_RETURN_IF_ERROR(append(seq, n));
  const Status st = write(0, seq, len, n, k, v);
  if (!st.is_ok()) {
    // Undo the reservation so the sequence is as before (its pages beyond len were fresh).
    Group& g = groups_[0];
    SeqPages& sp = g.seqs[seq];
    const int32_t keep = static_cast<int32_t>(ceil_div(len, cfg_.page_size)) - sp.first_page;
    while (static_cast<int32_t>(sp.pages.size()) > std::max(keep, 0)) {
      release_page(g, sp.pages.back());
      sp.pages.pop_back();
    }
    lens_[seq] = len;
  }
  return st;
}

Result<PagedKVView> KVCache::view(int32_t layer, std::span<const int32_t> seq_ids, KVViewWorkspace* ws) {
  if (layer < 0 || layer >= cfg_.num_layers) return out_of_range("no layer " + num(layer));
  for (int32_t s : seq_ids) TQKV_RETURN_IF_ERROR(check_seq(s));
  LayerStore& ls = layers_[layer];
  const Group& g = groups_[ls.group];
  if (ws == nullptr) ws = &ls.ws;
  const int32_t ns = static_cast<int32_t>(seq_ids.size());
  int32_t maxp = 1;
  for (int32_t s : seq_ids) maxp = std::max(maxp, static_cast<int32_t>(g.seqs[s].pages.size()));
  ws->page_table.assign(static_cast<size_t>(ns) * maxp, 0);
  ws->seq_lens.resize(ns);
  ws->first_page.resize(ns);
  ws->sink_slot.assign(seq_ids.begin(), seq_ids.end());
  for (int32_t i = 0; i < ns; ++i) {
    const SeqPages& sp = g.seqs[seq_ids[i]];
    std::copy(sp.pages.begin(), sp.pages.end(), ws->page_table.begin() + static_cast<int64_t>(i) * maxp);
    ws->seq_lens[i] = lens_[seq_ids[i]];
    ws->first_page[i] = sp.first_page;
  }
  const LayerPolicy& pol = cfg_.layers[layer];
  PagedKVView v;
  v.k = KVSideView{ls.k_pages.data(), pol.k_bits, ls.k_tile, ls.k_codec ? ls.k_codec->codebook().centroids() : nullptr};
  v.v = KVSideView{ls.v_pages.data(), pol.v_bits, ls.v_tile, ls.v_codec ? ls.v_codec->codebook().centroids() : nullptr};
  v.num_kv_heads = cfg_.num_kv_heads;
  v.head_dim = cfg_.head_dim;
  v.page_size = cfg_.page_size;
  v.num_seqs = ns;
  v.page_table = ws->page_table.data();
  v.max_pages_per_seq = maxp;
  v.seq_lens = ws->seq_lens.data();
  v.first_page = ws->first_page.data();
  const TurboQuantCodec* any = ls.k_codec ? ls.k_codec.get() : ls.v_codec.get();
  if (any != nullptr) {
    v.rotation = any->rotation().matrix();
    v.hadamard_signs = any->rotation().signs();
  }
  if (ls.sinks) {
    v.sink_tokens = cfg_.sink_tokens;
    v.sink_k = ls.sink_k.data();
    v.sink_v = ls.sink_v.data();
    v.sink_slot = ws->sink_slot.data();
  }
  if (ls.recent_tile > 0) {
    v.recent_tokens = cfg_.recent_tokens;
    v.recent_k = ls.recent_k.data();
    v.recent_v = ls.recent_v.data();
    v.sink_slot = ws->sink_slot.data();
  }
  return v;
}

Result<std::vector<int32_t>> KVCache::pages_of(int32_t group, int32_t seq) const {
  TQKV_RETURN_IF_ERROR(check_seq(seq));
  if (group < 0 || group >= num_groups()) return out_of_range("no group " + num(group));
  return groups_[group].seqs[seq].pages;
}
Result<int32_t> KVCache::first_page_of(int32_t group, int32_t seq) const {
  TQKV_RETURN_IF_ERROR(check_seq(seq));
  if (group < 0 || group >= num_groups()) return out_of_range("no group " + num(group));
  return groups_[group].seqs[seq].first_page;
}

int64_t KVCache::token_capacity() const {
  return static_cast<int64_t>(groups_[0].num_pages) * cfg_.page_size;
}
int64_t KVCache::sink_bytes() const {
  int64_t b = 0;
  for (const LayerStore& ls : layers_)
    b += static_cast<int64_t>(ls.sink_k.size() + ls.sink_v.size() + ls.recent_k.size() + ls.recent_v.size());
  return b;
}
int64_t KVCache::bytes_allocated() const {
  int64_t b = sink_bytes();
  for (const Group& g : groups_) b += g.num_pages * g.page_bytes;
  return b;
}

Status parse_kv_format(const std::string& s, int32_t* k_bits, int32_t* v_bits) {
  int k = 0, v = 0;
  char tail = 0;
  if (s == "f16") {
    k = v = kF16Bits;
  } else if (std::sscanf(s.c_str(), "k%dv%d%c", &k, &v, &tail) != 2) {
    return invalid_argument("KV format must be f16 or kXvY with X, Y in 2, 3, 4, 8, 16 (got '" + s + "')");
  }
  if (!is_valid_kv_bits(k) || !is_valid_kv_bits(v))
    return invalid_argument("KV format bits must be 2, 3, 4, 8 or 16 (got '" + s + "')");
  *k_bits = k;
  *v_bits = v;
  return Status::ok();
}

std::string kv_format_name(int32_t k_bits, int32_t v_bits) {
  if (k_bits == kF16Bits && v_bits == kF16Bits) return "f16";
  return "k" + std::to_string(k_bits) + "v" + std::to_string(v_bits);
}

}  // namespace tqkv
