// Attention sinks (PagedKVView::sink_tokens, docs/formats.md): the first positions of each
// sequence are read from fp16 sink tiles instead of the compressed pages.
//  - the fused CPU decode and prefill paths against the fp64 reference, with sinks, for every kind
//    of side (TurboQuant or fp16) and several head sizes and lengths (same tolerance as
//    test_attention_vs_reference.cpp: 2e-5 * rms + 1e-4 relative, zero violations);
//  - the reference itself against plain fp64 attention over the original vectors for positions
//    below sink_tokens and the codec's own round trip for the rest (fp16 rounding: 2e-3);
//  - a window that hides the sinks gives exactly the sink-free result; fork copies the sinks.
#include <gtest/gtest.h>

#include <cstring>

#include "attn_test_util.h"

namespace tqkv::test {
namespace {

struct Case {
  int32_t k, v, d, sinks;
};

TEST(AttentionSinks, FusedDecodeAndPrefillMatchReference) {
  const Case cases[] = {{4, 4, 128, 4}, {3, 3, 96, 4}, {8, 4, 64, 16}, {16, 4, 80, 2}, {4, 16, 128, 4},
                        {2, 2, 256, 8}, {4, 4, 64, 1}};
  const std::vector<int32_t> lens = {1, 3, 4, 5, 17, 300};
  uint64_t seed = 500;
  for (const Case& c : cases) {
    SCOPED_TRACE("k" + std::to_string(c.k) + "v" + std::to_string(c.v) + " d=" + std::to_string(c.d) +
                 " sinks=" + std::to_string(c.sinks));
    const int32_t H = 2, G = 4, HQ = H * G;
    TestCache t = make_cache(c.k, c.v, H, c.d, lens, seed++, 0, 8, c.sinks);
    auto view = t.cache->view(0, t.ids);
    ASSERT_TRUE(view.is_ok()) << view.status().to_string();
    ASSERT_EQ(view->sink_tokens, c.sinks);
    const AttentionParams p{HQ, 1.f / std::sqrt(static_cast<float>(c.d))};
    std::mt19937_64 rng(seed);
    // Decode.
    const std::vector<float> q = random_tokens(rng, static_cast<int64_t>(lens.size()), HQ, c.d, 0.1f);
    std::vector<float> ref(q.size()), got(q.size(), NAN);
    ASSERT_TRUE(attention_decode_reference(*view, p, q.data(), ref.data()).is_ok());
    ASSERT_TRUE(attention_decode_cpu(*view, p, q.data(), got.data()).is_ok());
    double mr = 0;
    EXPECT_EQ(count_violations(got, ref, 2e-5 * rms(ref), 1e-4, &mr), 0) << "decode, max rel " << mr;
    // Prefill: the last min(len, 6) positions of every sequence as queries (rows inside the sinks too).
    std::vector<int32_t> ql;
    int64_t total = 0;
    for (int32_t L : lens) total += ql.emplace_back(std::min(L, 6));
    const std::vector<float> qp = random_tokens(rng, total, HQ, c.d, 0.1f);
    std::vector<float> pref(qp.size()), pgot(qp.size(), NAN);
    ASSERT_TRUE(attention_prefill_reference(*view, p, ql.data(), qp.data(), pref.data()).is_ok());
    ASSERT_TRUE(attention_prefill_cpu(*view, p, ql.data(), qp.data(), pgot.data()).is_ok());
    EXPECT_EQ(count_violations(pgot, pref, 2e-5 * rms(pref), 1e-4, &mr), 0) << "prefill, max rel " << mr;
  }
}

TEST(AttentionSinks, ReferenceUsesExactFirstTokensAndCodecRoundTripForTheRest) {
  const int32_t H = 1, G = 2, d = 128, L = 40, S = 4;
  TestCache t = make_cache(4, 4, H, d, {L}, 77, 0, 8, S);
  auto view = t.cache->view(0, t.ids);
  ASSERT_TRUE(view.is_ok());
  std::mt19937_64 rng(78);
  const std::vector<float> q = random_tokens(rng, 1, G, d, 0.f);
  const float scale = 0.3f;  // sharp enough that the first tokens' error shows
  std::vector<float> got(G * d), nosink(G * d);
  ASSERT_TRUE(attention_decode_reference(*view, AttentionParams{G, scale}, q.data(), got.data()).is_ok());
  PagedKVView plain = *view;
  plain.sink_tokens = 0;
  ASSERT_TRUE(attention_decode_reference(plain, AttentionParams{G, scale}, q.data(), nosink.data()).is_ok());
  // Expected keys/values: originals below S, the codec's round trip from S on.
  const TurboQuantCodec* kc = t.cache->k_codec(0);
  const TurboQuantCodec* vc = t.cache->v_codec(0);
  ASSERT_NE(kc, nullptr);
  ASSERT_NE(vc, nullptr);
  std::vector<std::vector<float>> K(L, std::vector<float>(d)), V(L, std::vector<float>(d));
  std::vector<uint8_t> idx(kc->index_bytes());
  uint16_t sc = 0;
  for (int32_t i = 0; i < L; ++i) {
    const float* k = t.k[0].data() + static_cast<int64_t>(i) * d;
    const float* v = t.v[0].data() + static_cast<int64_t>(i) * d;
    if (i < S) {
      std::copy(k, k + d, K[i].begin());
      std::copy(v, v + d, V[i].begin());
    } else {
      ASSERT_TRUE(kc->encode(k, 1, idx.data(), &sc).is_ok());
      kc->decode(idx.data(), &sc, 1, K[i].data(), CodePath::kReference);
      ASSERT_TRUE(vc->encode(v, 1, idx.data(), &sc).is_ok());
      vc->decode(idx.data(), &sc, 1, V[i].data(), CodePath::kReference);
    }
  }
  std::vector<float> want(G * d);
  for (int32_t g = 0; g < G; ++g) {
    const std::vector<double> o = dense_attention(q.data() + g * d, K, V, scale);
    for (int32_t j = 0; j < d; ++j) want[g * d + j] = static_cast<float>(o[j]);
  }
  double mr = 0;
  EXPECT_EQ(count_violations(got, want, 2e-3 * rms(want), 2e-3, &mr), 0) << "max rel " << mr;
  // Without the sinks the first tokens are quantized too: clearly further from `want`.
  double e_sink = 0, e_plain = 0;
  for (int32_t i = 0; i < G * d; ++i) {
    e_sink += std::pow(static_cast<double>(got[i]) - want[i], 2);
    e_plain += std::pow(static_cast<double>(nosink[i]) - want[i], 2);
  }
  EXPECT_GT(e_plain, 20 * e_sink);
}

TEST(AttentionSinks, WindowPastTheSinksGivesTheSinkFreeResult) {
  const int32_t H = 2, G = 2, d = 64, S = 4;
  TestCache t = make_cache(4, 3, H, d, {100, 120}, 91, 0, 8, S);
  auto view = t.cache->view(0, t.ids);
  ASSERT_TRUE(view.is_ok());
  PagedKVView plain = *view;
  plain.sink_tokens = 0;
  std::mt19937_64 rng(92);
  const std::vector<float> q = random_tokens(rng, 2, H * G, d, 0.1f);
  const AttentionParams p{H * G, 0.125f, 0.f, 50};  // queries at 99 / 119 see > 49 / 69: no sink
  std::vector<float> a(q.size()), b(q.size()), c(q.size());
  ASSERT_TRUE(attention_decode_cpu(*view, p, q.data(), a.data()).is_ok());
  ASSERT_TRUE(attention_decode_cpu(plain, p, q.data(), b.data()).is_ok());
  EXPECT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * sizeof(float)));
  // Without the window the sinks do change the result.
  ASSERT_TRUE(attention_decode_cpu(*view, AttentionParams{H * G, 0.125f}, q.data(), a.data()).is_ok());
  ASSERT_TRUE(attention_decode_cpu(plain, AttentionParams{H * G, 0.125f}, q.data(), c.data()).is_ok());
  EXPECT_NE(0, std::memcmp(a.data(), c.data(), a.size() * sizeof(float)));
}

TEST(AttentionSinks, ForkCopiesTheSinksAndCacheChecksTheSetting) {
  const int32_t H = 2, d = 64, S = 4;
  TestCache t = make_cache(4, 4, H, d, {30}, 33, 0, 8, S);
  auto child = t.cache->fork(t.ids[0]);
  ASSERT_TRUE(child.is_ok());
  const int32_t both[2] = {t.ids[0], *child};
  auto view = t.cache->view(0, both);
  ASSERT_TRUE(view.is_ok());
  std::mt19937_64 rng(34);
  std::vector<float> q1 = random_tokens(rng, 1, H, d, 0.1f), q(2 * H * d);
  std::copy(q1.begin(), q1.end(), q.begin());
  std::copy(q1.begin(), q1.end(), q.begin() + H * d);
  std::vector<float> out(q.size());
  ASSERT_TRUE(attention_decode_cpu(*view, AttentionParams{H, 0.125f}, q.data(), out.data()).is_ok());
  EXPECT_EQ(0, std::memcmp(out.data(), out.data() + H * d, H * d * sizeof(float)));
  EXPECT_GT(rms(out), 1e-3);
  EXPECT_EQ(t.cache->sink_bytes(), 2ll * t.cache->config().max_seqs * H * tile_bytes(S, d, kF16Bits));
  // sink_tokens past the page size is refused.
  KVCacheConfig c = t.cache->config();
  c.sink_tokens = c.page_size + 1;
  EXPECT_EQ(KVCache::create(c).status().code(), StatusCode::kInvalidArgument);
  // f16 layers hold no sinks.
  c.sink_tokens = S;
  c.layers.assign(1, LayerPolicy{16, 16, 0});
  auto f16 = KVCache::create(c);
  ASSERT_TRUE(f16.is_ok());
  EXPECT_EQ((*f16)->sink_bytes(), 0);
}

}  // namespace
}  // namespace tqkv::test
