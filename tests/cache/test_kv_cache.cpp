// KVCache bookkeeping: errors leave every other sequence intact, atomic append across layer
// groups, capacity, quantize-on-write bytes, format parsing. (Attention through the cache is in
// tests/attention/test_attention_cache.cpp.)
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <vector>

#include "tqkv/fp16.h"
#include "tqkv/kv_cache.h"

namespace tqkv {
namespace {

std::vector<float> tokens(int64_t n, int32_t H, int32_t d, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<float> x(static_cast<size_t>(n * H * d));
  for (auto& v : x) v = nd(rng);
  return x;
}

KVCacheConfig small_config(int32_t pages, int32_t k_bits = 4, int32_t v_bits = 4) {
  KVCacheConfig c;
  c.num_kv_heads = 2;
  c.head_dim = 64;
  c.max_seqs = 4;
  c.max_seq_len = 100;
  c.default_policy = {k_bits, v_bits, 0};
  c.budget_bytes = static_cast<int64_t>(pages) * 2 * (tile_bytes(16, 64, k_bits) + tile_bytes(16, 64, v_bits));
  c.shuffle_seed = 7;
  return c;
}

// Everything observable about a sequence: length, pages, and the bytes of its K/V tiles.
struct Snapshot {
  int32_t len;
  std::vector<int32_t> pages;
  std::vector<uint8_t> bytes;
  bool operator==(const Snapshot&) const = default;
};
Snapshot snapshot(KVCache& kv, int32_t seq) {
  Snapshot s{*kv.seq_len(seq), *kv.pages_of(0, seq), {}};
  const int32_t ids[] = {seq};
  const PagedKVView v = *kv.view(0, ids);
  for (int32_t p : s.pages)
    for (int32_t h = 0; h < v.num_kv_heads; ++h) {
      s.bytes.insert(s.bytes.end(), v.k_tile(p, h), v.k_tile(p, h) + v.k.tile_bytes);
      s.bytes.insert(s.bytes.end(), v.v_tile(p, h), v.v_tile(p, h) + v.v.tile_bytes);
    }
  return s;
}

TEST(KVCache, ErrorsLeaveOtherSequencesIntact) {
  auto r = KVCache::create(small_config(6));
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  KVCache& kv = **r;
  const auto x = tokens(40, 2, 64, 1);
  const int32_t a = *kv.add_sequence(), b = *kv.add_sequence();
  ASSERT_TRUE(kv.append_and_write(a, 33, x.data(), x.data()).is_ok());  // 3 pages
  ASSERT_TRUE(kv.append_and_write(b, 20, x.data(), x.data()).is_ok());  // 2 pages
  const Snapshot sa = snapshot(kv, a), sb = snapshot(kv, b);
  const int32_t free0 = kv.free_pages(0);
  ASSERT_EQ(free0, 1);

  // Pool exhausted: 20 + 30 = 50 tokens need 4 pages; b holds 2 and 1 is free.
  EXPECT_EQ(kv.append(b, 30).code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(kv.append_and_write(b, 30, x.data(), x.data()).code(), StatusCode::kResourceExhausted);
  // Past max_seq_len (100).
  EXPECT_EQ(kv.append(a, 68).code(), StatusCode::kOutOfRange);
  // Bad ids.
  EXPECT_EQ(kv.append(3, 1).code(), StatusCode::kOutOfRange);
  EXPECT_EQ(kv.append(-1, 1).code(), StatusCode::kOutOfRange);
  EXPECT_EQ(kv.free_sequence(9).code(), StatusCode::kOutOfRange);
  EXPECT_EQ(kv.fork(2).status().code(), StatusCode::kOutOfRange);
  const int32_t bad_ids[] = {a, 2};
  EXPECT_EQ(kv.view(0, bad_ids).status().code(), StatusCode::kOutOfRange);
  // Write outside what was appended, and a NaN input (nothing written, reservation undone).
  EXPECT_EQ(kv.write(0, a, 30, 5, x.data(), x.data()).code(), StatusCode::kOutOfRange);
  std::vector<float> nan = x;
  nan[5] = NAN;
  EXPECT_FALSE(kv.append_and_write(b, 4, nan.data(), x.data()).is_ok());
  EXPECT_EQ(*kv.seq_len(b), 20);
  EXPECT_FALSE(kv.append_and_write(b, 4, x.data(), nan.data()).is_ok());
  // Slots exhausted.
  const int32_t c = *kv.add_sequence(), d = *kv.add_sequence();
  EXPECT_EQ(kv.add_sequence().status().code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(kv.fork(a).status().code(), StatusCode::kResourceExhausted);
  ASSERT_TRUE(kv.free_sequence(c).is_ok());
  ASSERT_TRUE(kv.free_sequence(d).is_ok());
  EXPECT_EQ(kv.append(c, 1).code(), StatusCode::kOutOfRange);  // freed id is dead

  EXPECT_EQ(snapshot(kv, a), sa);
  EXPECT_EQ(snapshot(kv, b), sb);
  EXPECT_EQ(kv.free_pages(0), free0);
  // And the cache still works: b takes the last page (33 tokens = 3 pages).
  EXPECT_TRUE(kv.append_and_write(b, 13, x.data(), x.data()).is_ok());
  EXPECT_EQ(kv.free_pages(0), 0);
  EXPECT_EQ(snapshot(kv, a), sa);
}

TEST(KVCache, AppendIsAtomicAcrossLayerGroups) {
  KVCacheConfig c = small_config(0);
  c.num_layers = 2;
  c.layers = {{4, 4, 0}, {16, 16, 32}};  // full-attention group + sliding group
  const int64_t full_page = 2 * (tile_bytes(16, 64, 4) * 2);
  const int64_t slide_page = 2 * (tile_bytes(16, 64, 16) * 2);
  const int32_t slide_pages = c.max_seqs * (2 + 2);
  c.budget_bytes = slide_pages * slide_page + 3 * full_page + full_page / 2;
  auto r = KVCache::create(c);
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  KVCache& kv = **r;
  ASSERT_EQ(kv.num_groups(), 2);
  EXPECT_EQ(kv.group_window(kv.group_of_layer(1)), 32);
  EXPECT_EQ(kv.total_pages(0), 3);  // honest: whole pages of the full group only
  EXPECT_EQ(kv.token_capacity(), 48);
  EXPECT_LE(kv.bytes_allocated(), c.budget_bytes);
  const int32_t a = *kv.add_sequence();
  ASSERT_TRUE(kv.append(a, 40).is_ok());
  const int32_t s_free = kv.free_pages(1);
  EXPECT_EQ(kv.append(a, 9).code(), StatusCode::kResourceExhausted);  // full group has 0 left
  EXPECT_EQ(*kv.seq_len(a), 40);
  EXPECT_EQ(kv.free_pages(1), s_free);  // the sliding group was not touched either
  EXPECT_EQ(*kv.first_page_of(1, a), 0);
  ASSERT_TRUE(kv.append(a, 8).is_ok());  // fits in the partly filled page
  EXPECT_EQ(*kv.first_page_of(1, a), 0);  // keys from 40 - 32 + 1 = 9 on: page 0 still needed
  EXPECT_EQ(kv.pages_of(1, a)->size(), 3u);
}

TEST(KVCache, QuantizeOnWriteStoresCodecBytes) {
  // The tile bytes equal what the codec produces for the same vectors, at the right row.
  KVCacheConfig c = small_config(4, 3, 16);
  auto r = KVCache::create(c);
  ASSERT_TRUE(r.is_ok());
  KVCache& kv = **r;
  const int32_t a = *kv.add_sequence();
  const auto k = tokens(21, 2, 64, 3), v = tokens(21, 2, 64, 4);
  ASSERT_TRUE(kv.append_and_write(a, 21, k.data(), v.data()).is_ok());
  const TurboQuantCodec* codec = kv.k_codec(0);
  ASSERT_NE(codec, nullptr);
  EXPECT_EQ(kv.v_codec(0), nullptr);
  const int32_t ids[] = {a};
  const PagedKVView view = *kv.view(0, ids);
  const int64_t ib = codec->index_bytes();
  for (int32_t t = 0; t < 21; t += 5)
    for (int32_t h = 0; h < 2; ++h) {
      std::vector<uint8_t> idx(ib);
      uint16_t sc = 0;
      ASSERT_TRUE(codec->encode(k.data() + (t * 2 + h) * 64, 1, idx.data(), &sc).is_ok());
      const uint8_t* tile = view.k_tile(view.page_table[t / 16], h);
      EXPECT_EQ(std::memcmp(tile + (t % 16) * ib, idx.data(), ib), 0);
      uint16_t got;
      std::memcpy(&got, tile + tile_scales_offset(16, 64, 3) + 2 * (t % 16), 2);
      EXPECT_EQ(got, sc);
      const uint16_t* vt = reinterpret_cast<const uint16_t*>(view.v_tile(view.page_table[t / 16], h)) + (t % 16) * 64;
      for (int j = 0; j < 64; ++j) EXPECT_EQ(vt[j], float_to_fp16(v[(t * 2 + h) * 64 + j]));
    }
  EXPECT_NE(view.rotation, nullptr);
  EXPECT_EQ(view.k.centroids, codec->codebook().centroids());
}

TEST(KVCache, CapacityK4V4AtHeadSize128) {
  const int64_t budget = 8ll << 30;
  const CapacityReport f16 = capacity_for(budget, 32, 8, 128, 16, 16, 16);
  const CapacityReport k4 = capacity_for(budget, 32, 8, 128, 16, 4, 4);
  // Plain arithmetic: f16 = 32 layers * 8 heads * 2 sides * 256 bytes; k4 tile = 16*(64+2) = 1056.
  EXPECT_DOUBLE_EQ(f16.bytes_per_token, 32.0 * 8 * 2 * 256);
  EXPECT_DOUBLE_EQ(k4.bytes_per_token, 32.0 * 8 * 2 * 1056 / 16);
  EXPECT_GE(static_cast<double>(k4.tokens) / f16.tokens, 3.8);
  // The cache itself agrees with the report.
  KVCacheConfig c;
  c.num_layers = 2;
  c.num_kv_heads = 8;
  c.head_dim = 128;
  c.budget_bytes = 64ll << 20;
  for (int32_t bits : {16, 4}) {
    c.default_policy = {bits, bits, 0};
    auto r = KVCache::create(c);
    ASSERT_TRUE(r.is_ok());
    EXPECT_EQ((*r)->token_capacity(), capacity_for(c.budget_bytes, 2, 8, 128, 16, bits, bits).tokens);
  }
}

TEST(KVCache, RejectsBadConfigs) {
  KVCacheConfig c = small_config(4);
  c.default_policy.k_bits = 5;
  EXPECT_EQ(KVCache::create(c).status().code(), StatusCode::kInvalidArgument);
  c = small_config(4);
  c.head_dim = 100;
  EXPECT_EQ(KVCache::create(c).status().code(), StatusCode::kInvalidArgument);
  c = small_config(0);
  EXPECT_EQ(KVCache::create(c).status().code(), StatusCode::kInvalidArgument);
  c = small_config(4);
  c.num_layers = 2;
  c.layers = {{4, 4, 0}};
  EXPECT_EQ(KVCache::create(c).status().code(), StatusCode::kInvalidArgument);
}

TEST(KVFormat, ParseAndName) {
  int32_t k = 0, v = 0;
  ASSERT_TRUE(parse_kv_format("f16", &k, &v).is_ok());
  EXPECT_EQ(k, 16);
  EXPECT_EQ(v, 16);
  ASSERT_TRUE(parse_kv_format("k8v4", &k, &v).is_ok());
  EXPECT_EQ(k, 8);
  EXPECT_EQ(v, 4);
  ASSERT_TRUE(parse_kv_format("k16v3", &k, &v).is_ok());
  EXPECT_EQ(kv_format_name(k, v), "k16v3");
  EXPECT_EQ(kv_format_name(16, 16), "f16");
  for (const char* bad : {"k5v4", "k4", "k4v4x", "f32", "", "v4k4"})
    EXPECT_FALSE(parse_kv_format(bad, &k, &v).is_ok()) << bad;
}

}  // namespace
}  // namespace tqkv
