// The paged KV cache: fixed-size pages from a pool sized by a byte budget, a page table per
// sequence, quantize-on-write, fork with copy-on-write, sliding-window eviction. The byte layout
// of the pages is include/tqkv/kv_layout.h; attention kernels see the cache only through the
// PagedKVView that view() builds.
//
// Layer groups. Layers are grouped by their attention window (0 = full attention). Each group has
// its own page pool and its own page table per sequence: a sliding-window group keeps only about
// window/page_size pages per sequence, so sharing one page table with the full-attention layers
// would either waste memory or over-state capacity. A page id of a group names the same token
// range in every layer of that group; each layer has its own K and V arrays
// [num_pages][num_kv_heads][tile_bytes] (layers of one group may use different bit widths).
//
// Budget split: each sliding group gets exactly the pages max_seqs sequences can hold at once
// (ceil(window / page_size) + 1 each, plus one per sequence for copy-on-write); the rest of the
// budget goes to the full-attention group, whose pages bound how many tokens fit.
//
// Use:  add_sequence() -> id;  per step: append(id, n) reserves room in every group (all or
// nothing), then write(layer, id, first_pos, n, k, v) for every layer quantizes the new tokens
// into place; view(layer, ids) describes those sequences to an attention kernel.
//
// Threads: not thread-safe; one owner drives it. write() for different layers may run in
// parallel (they touch disjoint arrays) once append() has returned.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "tqkv/codec.h"
#include "tqkv/kv_layout.h"
#include "tqkv/status.h"

namespace tqkv {

// How one layer stores K and V.
struct LayerPolicy {
  int32_t k_bits = 4;   // 2, 3, 4, 8 (TurboQuant) or 16 (fp16)
  int32_t v_bits = 4;
  int32_t window = 0;   // sliding window in tokens (a query at p sees keys > p - window); 0 = full
};

struct KVCacheConfig {
  int32_t num_layers = 1;
  int32_t num_kv_heads = 8;
  int32_t head_dim = 128;
  int32_t page_size = kDefaultPageSize;
  int32_t max_seqs = 16;          // sequence slots
  int32_t max_seq_len = 32768;    // append past this fails with kOutOfRange
  int64_t budget_bytes = 1ll << 30;  // bytes for all K/V pages of all layers
  std::vector<LayerPolicy> layers;   // [num_layers]; empty = every layer gets `default_policy`
  LayerPolicy default_policy;
  uint64_t seed = kDefaultRotationSeed;  // rotation seed, shared by every layer and both sides
  // Non-zero: hand out free pages in a random order (tests and benchmarks place pages at random).
  uint64_t shuffle_seed = 0;
  // Attention sinks: the first sink_tokens positions of every sequence are also kept in fp16 in
  // each full-attention layer that compresses a side (PagedKVView::sink_tokens; docs/formats.md).
  // In [0, page_size]; 0 = off. Their bytes come out of budget_bytes.
  int32_t sink_tokens = 0;
  // Recent tokens: the last recent_tokens positions of every sequence are also kept in fp16, in a
  // ring per sequence, in the same layers as the sinks (PagedKVView::recent_tokens; docs/formats.md).
  // In [0, 1024]; 0 = off. Their bytes come out of budget_bytes.
  int32_t recent_tokens = 0;
  // CodecConfig::scale_search for every compressed side (an encoder choice: same bytes layout).
  bool scale_search = false;
};

// Tokens that fit in `budget_bytes` for one layer shape and format (full attention, whole pages,
// padding included), and the bytes one token costs across all layers.
struct CapacityReport {
  int32_t k_bits = 16, v_bits = 16;
  double bytes_per_token = 0;   // all layers, both sides, all KV heads
  int64_t tokens = 0;           // whole pages that fit, times page_size
};
CapacityReport capacity_for(int64_t budget_bytes, int32_t num_layers, int32_t num_kv_heads,
                            int32_t head_dim, int32_t page_size, int32_t k_bits, int32_t v_bits);

// Caller-owned page-table arrays for a view (lets several views live at once without copying).
struct KVViewWorkspace {
  std::vector<int32_t> page_table, seq_lens, first_page, sink_slot;
};

class KVCache {
 public:
  static Result<std::unique_ptr<KVCache>> create(const KVCacheConfig& config);

  const KVCacheConfig& config() const { return cfg_; }
  const LayerPolicy& policy(int32_t layer) const { return cfg_.layers[layer]; }

  // Sequences. Ids are slots in [0, max_seqs).
  Result<int32_t> add_sequence();
  Status free_sequence(int32_t seq);
  // New sequence sharing every page of `seq` (refcounted); the first write into a shared,
  // partially filled page copies it (in every layer of its group) first.
  Result<int32_t> fork(int32_t seq);
  Result<int32_t> seq_len(int32_t seq) const;
  bool is_live(int32_t seq) const;

  // Grows `seq` by n tokens in every group: evicts sliding-window pages no future query can see,
  // copies a shared last page, takes fresh pages. All or nothing: on kResourceExhausted or
  // kOutOfRange nothing changes. The new positions hold zeros until written.
  Status append(int32_t seq, int32_t n);
  // Quantizes tokens [first_pos, first_pos + n) of one layer into place.
  // k, v: [n][num_kv_heads][head_dim] fp32. The positions must be reserved (< seq_len), not
  // evicted, and on pages this sequence owns alone (true for whatever append just reserved).
  Status write(int32_t layer, int32_t seq, int32_t first_pos, int32_t n, const float* k, const float* v);
  // append + write for a one-layer cache (tests, benchmarks).
  Status append_and_write(int32_t seq, int32_t n, const float* k, const float* v);

  // A view of `seq_ids` (in that order) for one layer. Its arrays live in `ws`, or, when ws is
  // null, in a workspace the cache keeps per layer (valid until the next view() of that layer or
  // the next change to the cache). No allocation once the workspace has grown to size.
  Result<PagedKVView> view(int32_t layer, std::span<const int32_t> seq_ids, KVViewWorkspace* ws = nullptr);

  // Capacity and occupancy.
  int32_t num_groups() const { return static_cast<int32_t>(groups_.size()); }
  int32_t group_of_layer(int32_t layer) const { return layer_group_[layer]; }
  int32_t group_window(int32_t group) const { return groups_[group].window; }
  int32_t total_pages(int32_t group) const { return groups_[group].num_pages; }
  int32_t free_pages(int32_t group) const { return static_cast<int32_t>(groups_[group].free_list.size()); }
  // Bytes of the attention-sink tiles and recent rings, all layers (part of bytes_allocated()).
  int64_t sink_bytes() const;
  // Pages sequence `seq` currently holds in `group` (after eviction), for tests.
  Result<std::vector<int32_t>> pages_of(int32_t group, int32_t seq) const;
  Result<int32_t> first_page_of(int32_t group, int32_t seq) const;
  int32_t refcount(int32_t group, int32_t page) const { return groups_[group].refcount[page]; }
  // Tokens of full-attention context the pool holds for one sequence (the capacity figure).
  int64_t token_capacity() const;
  int64_t bytes_allocated() const;

  // Codecs of a layer's TurboQuant sides (null for fp16 sides).
  const TurboQuantCodec* k_codec(int32_t layer) const { return layers_[layer].k_codec.get(); }
  const TurboQuantCodec* v_codec(int32_t layer) const { return layers_[layer].v_codec.get(); }

 private:
  struct LayerStore {
    int32_t group = 0;
    int64_t k_tile = 0, v_tile = 0;
    std::vector<uint8_t> k_pages, v_pages;  // [num_pages][num_kv_heads][tile]
    bool sinks = false;                     // holds attention sinks (config sink_tokens > 0)
    int64_t sink_tile = 0;                  // tile_bytes(sink_tokens, head_dim, 16)
    std::vector<uint8_t> sink_k, sink_v;    // [max_seqs][num_kv_heads][sink_tile] fp16
    int64_t recent_tile = 0;                // tile_bytes(recent_tokens, head_dim, 16); 0 = no ring
    std::vector<uint8_t> recent_k, recent_v;  // [max_seqs][num_kv_heads][recent_tile] fp16
    std::unique_ptr<TurboQuantCodec> k_codec, v_codec;
    KVViewWorkspace ws;
  };
  struct SeqPages {
    int32_t first_page = 0;      // logical index of pages[0]
    std::vector<int32_t> pages;  // physical ids of logical pages first_page ..
  };
  struct Group {
    int32_t window = 0;
    int32_t num_pages = 0;
    int64_t page_bytes = 0;      // all layers of the group, both sides, all heads
    std::vector<int32_t> layers;
    std::vector<int32_t> refcount;   // [num_pages]
    std::vector<int32_t> free_list;  // popped from the back
    std::vector<SeqPages> seqs;      // [max_seqs]
  };
  struct Plan;  // what append() will do in one group, computed before anything changes

  explicit KVCache(KVCacheConfig cfg) : cfg_(std::move(cfg)) {}
  Status check_seq(int32_t seq) const;
  void release_page(Group& g, int32_t page);
  void copy_page(Group& g, int32_t from, int32_t to);
  void zero_page(Group& g, int32_t page);

  KVCacheConfig cfg_;
  std::vector<LayerStore> layers_;
  std::vector<int32_t> layer_group_;
  std::vector<Group> groups_;
  std::vector<int32_t> lens_;   // [max_seqs]; -1 = free slot
};

// "f16", "k8v4", "k4v4", ... <-> (k_bits, v_bits). "f16" means both sides 16.
Status parse_kv_format(const std::string& s, int32_t* k_bits, int32_t* v_bits);
std::string kv_format_name(int32_t k_bits, int32_t v_bits);

}  // namespace tqkv
