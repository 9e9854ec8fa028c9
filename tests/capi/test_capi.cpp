// The C API against the C++ API it wraps: the same calls on the same inputs give bit-identical
// attention outputs; fork, prefill and every error path come back as codes with messages.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <tuple>
#include <vector>

#include "tqkv/attention.h"
#include "tqkv/kv_cache.h"
#include "tqkv/tqkv_c.h"

namespace {

constexpr int kLayers = 2, kKvHeads = 2, kQHeads = 4, kDim = 96;

std::vector<float> random_floats(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> g;
  std::vector<float> x(n);
  for (float& f : x) f = g(rng);
  return x;
}

tqkv_cache_config c_config(int k_bits, int v_bits) {
  tqkv_cache_config c;
  tqkv_cache_config_init(&c);
  c.num_layers = kLayers;
  c.num_kv_heads = kKvHeads;
  c.head_dim = kDim;
  c.max_seqs = 4;
  c.max_seq_len = 512;
  c.budget_bytes = 4 << 20;
  c.default_policy = {k_bits, v_bits, 0};
  return c;
}

tqkv::KVCacheConfig cpp_config(const tqkv_cache_config& c) {
  tqkv::KVCacheConfig k;
  k.num_layers = c.num_layers;
  k.num_kv_heads = c.num_kv_heads;
  k.head_dim = c.head_dim;
  k.page_size = c.page_size;
  k.max_seqs = c.max_seqs;
  k.max_seq_len = c.max_seq_len;
  k.budget_bytes = c.budget_bytes;
  k.default_policy = {c.default_policy.k_bits, c.default_policy.v_bits, c.default_policy.window};
  k.seed = c.seed;
  k.sink_tokens = c.sink_tokens;
  return k;
}

TEST(CApi, ConfigDefaultsMatchTheCppDefaults) {
  tqkv_cache_config c;
  std::memset(&c, 0xff, sizeof c);
  tqkv_cache_config_init(&c);
  const tqkv::KVCacheConfig d;
  EXPECT_EQ(c.head_dim, d.head_dim);
  EXPECT_EQ(c.page_size, d.page_size);
  EXPECT_EQ(c.budget_bytes, d.budget_bytes);
  EXPECT_EQ(c.default_policy.k_bits, d.default_policy.k_bits);
  EXPECT_EQ(c.seed, d.seed);
  EXPECT_EQ(c.sink_tokens, d.sink_tokens);
  EXPECT_EQ(c.layers, nullptr);
}

// Same writes through both APIs, then decode and prefill: outputs must be bit-identical.
// With attention sinks (sink_tokens 4) as well as without.
TEST(CApi, DecodeAndPrefillBitIdenticalToCppApi) {
  for (auto [kb, vb, sinks] : {std::tuple{4, 4, 0}, std::tuple{3, 2, 0}, std::tuple{16, 16, 0}, std::tuple{8, 4, 0},
                               std::tuple{4, 4, 4}, std::tuple{3, 2, 4}}) {
    SCOPED_TRACE(testing::Message() << "k" << kb << "v" << vb << " sinks " << sinks);
    tqkv_cache_config cc = c_config(kb, vb);
    cc.sink_tokens = sinks;
    tqkv_cache* c = nullptr;
    ASSERT_EQ(tqkv_cache_create(&cc, &c), TQKV_OK) << tqkv_last_error();
    auto made = tqkv::KVCache::create(cpp_config(cc));
    ASSERT_TRUE(made.is_ok()) << made.status().to_string();
    tqkv::KVCache& cpp = *made.value();

    const int lens[2] = {37, 130};
    int32_t ids[2];
    for (int s = 0; s < 2; ++s) {
      ASSERT_EQ(tqkv_cache_add_sequence(c, &ids[s]), TQKV_OK);
      ASSERT_EQ(cpp.add_sequence().value(), ids[s]);
      ASSERT_EQ(tqkv_cache_append(c, ids[s], lens[s]), TQKV_OK);
      ASSERT_TRUE(cpp.append(ids[s], lens[s]).is_ok());
      for (int l = 0; l < kLayers; ++l) {
        const auto k = random_floats(size_t(lens[s]) * kKvHeads * kDim, 100 + 10 * s + l);
        const auto v = random_floats(size_t(lens[s]) * kKvHeads * kDim, 200 + 10 * s + l);
        ASSERT_EQ(tqkv_cache_write(c, l, ids[s], 0, lens[s], k.data(), v.data()), TQKV_OK) << tqkv_last_error();
        ASSERT_TRUE(cpp.write(l, ids[s], 0, lens[s], k.data(), v.data()).is_ok());
      }
    }
    EXPECT_EQ(tqkv_cache_bytes_allocated(c), cpp.bytes_allocated());
    EXPECT_EQ(tqkv_cache_token_capacity(c), cpp.token_capacity());

    const tqkv_attention_params p{kQHeads, 1.f / std::sqrt(float(kDim)), 0.f, 0};
    const tqkv::AttentionParams pp{kQHeads, p.scale};
    const auto q = random_floats(2 * kQHeads * kDim, 7);
    std::vector<float> out_c(q.size()), out_cpp(q.size()), out_ref(q.size());
    for (int l = 0; l < kLayers; ++l) {
      ASSERT_EQ(tqkv_attention_decode(c, l, ids, 2, &p, q.data(), out_c.data()), TQKV_OK) << tqkv_last_error();
      auto view = cpp.view(l, ids);
      ASSERT_TRUE(view.is_ok());
      ASSERT_TRUE(tqkv::attention_decode_cpu(view.value(), pp, q.data(), out_cpp.data()).is_ok());
      ASSERT_TRUE(tqkv::attention_decode_reference(view.value(), pp, q.data(), out_ref.data()).is_ok());
      EXPECT_EQ(0, std::memcmp(out_c.data(), out_cpp.data(), out_c.size() * sizeof(float))) << "layer " << l;
      double num = 0, den = 0;
      for (size_t i = 0; i < out_c.size(); ++i) {
        num += std::pow(double(out_c[i]) - out_ref[i], 2);
        den += std::pow(double(out_ref[i]), 2);
      }
      EXPECT_LT(std::sqrt(num / den), 1e-5) << "fused vs reference, layer " << l;
    }

    // Prefill of the last 5 and 9 positions.
    const int32_t q_lens[2] = {5, 9};
    const auto qp = random_floats(14 * kQHeads * kDim, 8);
    std::vector<float> pc(qp.size()), pcpp(qp.size());
    ASSERT_EQ(tqkv_attention_prefill(c, 1, ids, 2, q_lens, &p, qp.data(), pc.data()), TQKV_OK) << tqkv_last_error();
    auto view = cpp.view(1, ids);
    ASSERT_TRUE(tqkv::attention_prefill_cpu(view.value(), pp, q_lens, qp.data(), pcpp.data()).is_ok());
    EXPECT_EQ(0, std::memcmp(pc.data(), pcpp.data(), pc.size() * sizeof(float)));
    tqkv_cache_destroy(c);
  }
}

TEST(CApi, ForkSharesPagesAndDivergesOnWrite) {
  const tqkv_cache_config cc = c_config(4, 4);
  tqkv_cache* c = nullptr;
  ASSERT_EQ(tqkv_cache_create(&cc, &c), TQKV_OK);
  int32_t a = -1, b = -1, len = 0;
  ASSERT_EQ(tqkv_cache_add_sequence(c, &a), TQKV_OK);
  ASSERT_EQ(tqkv_cache_append(c, a, 20), TQKV_OK);
  const auto kv = random_floats(20 * kKvHeads * kDim, 3);
  for (int l = 0; l < kLayers; ++l) ASSERT_EQ(tqkv_cache_write(c, l, a, 0, 20, kv.data(), kv.data()), TQKV_OK);
  ASSERT_EQ(tqkv_cache_fork(c, a, &b), TQKV_OK) << tqkv_last_error();
  ASSERT_NE(a, b);
  ASSERT_EQ(tqkv_cache_seq_len(c, b, &len), TQKV_OK);
  EXPECT_EQ(len, 20);
  const tqkv_attention_params p{kQHeads, 0.1f, 0.f, 0};
  const auto q = random_floats(kQHeads * kDim, 4);
  std::vector<float> oa(q.size()), ob(q.size());
  ASSERT_EQ(tqkv_attention_decode(c, 0, &a, 1, &p, q.data(), oa.data()), TQKV_OK);
  ASSERT_EQ(tqkv_attention_decode(c, 0, &b, 1, &p, q.data(), ob.data()), TQKV_OK);
  EXPECT_EQ(oa, ob);
  // The child grows with different tokens; the parent's answer must not change.
  ASSERT_EQ(tqkv_cache_append(c, b, 3), TQKV_OK);
  const auto more = random_floats(3 * kKvHeads * kDim, 5);
  for (int l = 0; l < kLayers; ++l) ASSERT_EQ(tqkv_cache_write(c, l, b, 20, 3, more.data(), more.data()), TQKV_OK);
  std::vector<float> oa2(q.size()), ob2(q.size());
  ASSERT_EQ(tqkv_attention_decode(c, 0, &a, 1, &p, q.data(), oa2.data()), TQKV_OK);
  ASSERT_EQ(tqkv_attention_decode(c, 0, &b, 1, &p, q.data(), ob2.data()), TQKV_OK);
  EXPECT_EQ(oa, oa2);
  EXPECT_NE(ob, ob2);
  ASSERT_EQ(tqkv_cache_free_sequence(c, b), TQKV_OK);
  EXPECT_EQ(tqkv_cache_free_sequence(c, b), TQKV_OUT_OF_RANGE);
  tqkv_cache_destroy(c);
}

TEST(CApi, ErrorsAreCodesWithMessagesAndLoseNothing) {
  tqkv_cache_config cc = c_config(4, 4);
  cc.budget_bytes = 64 << 10;  // a few pages only
  tqkv_cache* c = nullptr;
  ASSERT_EQ(tqkv_cache_create(&cc, &c), TQKV_OK) << tqkv_last_error();
  int32_t a = -1, b = -1;
  ASSERT_EQ(tqkv_cache_add_sequence(c, &a), TQKV_OK);
  ASSERT_EQ(tqkv_cache_append(c, a, 16), TQKV_OK);
  ASSERT_EQ(tqkv_cache_add_sequence(c, &b), TQKV_OK);
  // Exhaust the pool with b: a keeps its length.
  tqkv_status st = TQKV_OK;
  for (int i = 0; i < 1000 && st == TQKV_OK; ++i) st = tqkv_cache_append(c, b, 16);
  EXPECT_EQ(st, TQKV_RESOURCE_EXHAUSTED);
  EXPECT_NE(std::strstr(tqkv_last_error(), "exhausted"), nullptr) << tqkv_last_error();
  int32_t len = 0;
  ASSERT_EQ(tqkv_cache_seq_len(c, a, &len), TQKV_OK);
  EXPECT_EQ(len, 16);

  EXPECT_EQ(tqkv_cache_append(c, 99, 1), TQKV_OUT_OF_RANGE);
  EXPECT_EQ(tqkv_cache_append(c, a, 100000), TQKV_OUT_OF_RANGE);
  EXPECT_EQ(tqkv_cache_seq_len(c, a, nullptr), TQKV_INVALID_ARGUMENT);
  EXPECT_NE(std::strstr(tqkv_last_error(), "NULL"), nullptr);
  EXPECT_EQ(tqkv_cache_write(c, -1, a, 0, 1, nullptr, nullptr), TQKV_INVALID_ARGUMENT);
  std::vector<float> kv(kKvHeads * kDim, 1.f);
  EXPECT_EQ(tqkv_cache_write(c, 5, a, 0, 1, kv.data(), kv.data()), TQKV_OUT_OF_RANGE);
  const tqkv_attention_params bad_heads{3, 0.1f, 0.f, 0};  // not a multiple of 2 KV heads
  std::vector<float> q(3 * kDim), out(3 * kDim);
  EXPECT_EQ(tqkv_attention_decode(c, 0, &a, 1, &bad_heads, q.data(), out.data()), TQKV_INVALID_ARGUMENT);
  EXPECT_EQ(tqkv_attention_decode(c, 0, &a, 0, &bad_heads, q.data(), out.data()), TQKV_INVALID_ARGUMENT);
  int32_t kb = 0, vb = 0;
  EXPECT_EQ(tqkv_parse_kv_format("k4v9", &kb, &vb), TQKV_INVALID_ARGUMENT);
  EXPECT_EQ(tqkv_parse_kv_format(nullptr, &kb, &vb), TQKV_INVALID_ARGUMENT);
  ASSERT_EQ(tqkv_parse_kv_format("k4v3", &kb, &vb), TQKV_OK);
  EXPECT_EQ(kb, 4);
  EXPECT_EQ(vb, 3);
  ASSERT_EQ(tqkv_cache_seq_len(c, a, &len), TQKV_OK);
  EXPECT_EQ(len, 16);
  tqkv_cache_destroy(c);
  tqkv_cache_destroy(nullptr);

  tqkv_cache_config huge = c_config(4, 4);
  huge.budget_bytes = int64_t(1) << 62;  // far past this machine's memory: an error, not a crash
  tqkv_cache* h = nullptr;
  EXPECT_NE(tqkv_cache_create(&huge, &h), TQKV_OK);
  EXPECT_EQ(h, nullptr);
  EXPECT_GT(std::strlen(tqkv_last_error()), 0u);
}

}  // namespace
