// Recent tokens (PagedKVView::recent_tokens, docs/formats.md): the last positions of each sequence
// are read from an fp16 ring instead of the compressed pages.
//  - the fused CPU decode and prefill paths against the fp64 reference, with the ring (and with
//    sinks beside it), for several kinds of side, head sizes, ring sizes (odd ones too, so runs
//    wrap anywhere) and lengths, after writes of uneven sizes (some longer than the ring);
//  - the reference itself against plain fp64 attention over the original vectors for the sink and
//    recent positions and the codec's round trip for the rest (fp16 rounding: 2e-3);
//  - one token at a time (decode): the ring follows the sequence;
//  - fork copies the ring; the cache checks the setting and counts the bytes.
#include <gtest/gtest.h>

#include <cstring>

#include "attn_test_util.h"

namespace tqkv::test {
namespace {

struct Case {
  int32_t k, v, d, sinks, recent;
};

TEST(AttentionRecent, FusedDecodeAndPrefillMatchReference) {
  const Case cases[] = {{4, 4, 128, 4, 32}, {3, 3, 96, 0, 16}, {8, 4, 64, 4, 7},  {16, 4, 80, 2, 5},
                        {4, 16, 128, 4, 32}, {2, 2, 256, 8, 48}, {4, 4, 64, 1, 1}, {4, 3, 64, 16, 100}};
  const std::vector<int32_t> lens = {1, 3, 5, 17, 40, 300};
  uint64_t seed = 900;
  for (const Case& c : cases) {
    SCOPED_TRACE("k" + std::to_string(c.k) + "v" + std::to_string(c.v) + " d=" + std::to_string(c.d) +
                 " sinks=" + std::to_string(c.sinks) + " recent=" + std::to_string(c.recent));
    const int32_t H = 2, G = 4, HQ = H * G;
    TestCache t = make_cache(c.k, c.v, H, c.d, lens, seed++, 0, 8, c.sinks, c.recent);
    auto view = t.cache->view(0, t.ids);
    ASSERT_TRUE(view.is_ok()) << view.status().to_string();
    ASSERT_EQ(view->recent_tokens, c.recent);
    const AttentionParams p{HQ, 1.f / std::sqrt(static_cast<float>(c.d))};
    std::mt19937_64 rng(seed);
    const std::vector<float> q = random_tokens(rng, static_cast<int64_t>(lens.size()), HQ, c.d, 0.1f);
    std::vector<float> ref(q.size()), got(q.size(), NAN);
    ASSERT_TRUE(attention_decode_reference(*view, p, q.data(), ref.data()).is_ok());
    ASSERT_TRUE(attention_decode_cpu(*view, p, q.data(), got.data()).is_ok());
    double mr = 0;
    EXPECT_EQ(count_violations(got, ref, 2e-5 * rms(ref), 1e-4, &mr), 0) << "decode, max rel " << mr;
    // Prefill: the last min(len, 40) positions as queries, so some rows lie before the ring.
    std::vector<int32_t> ql;
    int64_t total = 0;
    for (int32_t L : lens) total += ql.emplace_back(std::min(L, 40));
    const std::vector<float> qp = random_tokens(rng, total, HQ, c.d, 0.1f);
    std::vector<float> pref(qp.size()), pgot(qp.size(), NAN);
    ASSERT_TRUE(attention_prefill_reference(*view, p, ql.data(), qp.data(), pref.data()).is_ok());
    ASSERT_TRUE(attention_prefill_cpu(*view, p, ql.data(), qp.data(), pgot.data()).is_ok());
    EXPECT_EQ(count_violations(pgot, pref, 2e-5 * rms(pref), 1e-4, &mr), 0) << "prefill, max rel " << mr;
  }
}

// The exact positions are [0, S) and [L - W, L); the rest is the codec's round trip.
TEST(AttentionRecent, ReferenceUsesExactRecentTokensAndCodecRoundTripForTheRest) {
  const int32_t H = 1, G = 2, d = 128, L = 60, S = 4, W = 16;
  TestCache t = make_cache(4, 4, H, d, {L}, 177, 0, 8, S, W);
  auto view = t.cache->view(0, t.ids);
  ASSERT_TRUE(view.is_ok());
  std::mt19937_64 rng(178);
  // A query close to the last keys, so that the recent positions carry most of the weight.
  std::vector<float> q(G * d);
  for (int32_t g = 0; g < G; ++g)
    for (int32_t j = 0; j < d; ++j) q[g * d + j] = t.k[0][static_cast<int64_t>(L - 1 - g) * d + j];
  const float scale = 0.3f;
  std::vector<float> got(G * d), fused(G * d), norecent(G * d);
  ASSERT_TRUE(attention_decode_reference(*view, AttentionParams{G, scale}, q.data(), got.data()).is_ok());
  ASSERT_TRUE(attention_decode_cpu(*view, AttentionParams{G, scale}, q.data(), fused.data()).is_ok());
  PagedKVView plain = *view;
  plain.recent_tokens = 0;
  ASSERT_TRUE(attention_decode_reference(plain, AttentionParams{G, scale}, q.data(), norecent.data()).is_ok());
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
    if (i < S || i >= L - W) {
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
  EXPECT_EQ(count_violations(got, want, 2e-3 * rms(want), 2e-3, &mr), 0) << "reference, max rel " << mr;
  EXPECT_EQ(count_violations(fused, want, 2e-3 * rms(want), 2e-3, &mr), 0) << "fused, max rel " << mr;
  // Without the ring the last tokens are quantized too: clearly further from `want`.
  double e_recent = 0, e_plain = 0;
  for (int32_t i = 0; i < G * d; ++i) {
    e_recent += std::pow(static_cast<double>(got[i]) - want[i], 2);
    e_plain += std::pow(static_cast<double>(norecent[i]) - want[i], 2);
  }
  EXPECT_GT(e_plain, 20 * e_recent);
}

// Decode as a model runs it: one token appended and attended at a time; after every step the
// fused result matches the reference, whose exact positions move with the sequence.
TEST(AttentionRecent, OneTokenAtATimeFollowsTheSequence) {
  const int32_t H = 2, G = 2, d = 64, S = 4, W = 24, steps = 90;
  TestCache t = make_cache(4, 4, H, d, {0}, 55, 0, 16, S, W);
  std::mt19937_64 rng(56);
  const std::vector<float> k = random_tokens(rng, steps, H, d), v = random_tokens(rng, steps, H, d, -0.2f);
  for (int32_t i = 0; i < steps; ++i) {
    ASSERT_TRUE(t.cache->append_and_write(t.ids[0], 1, k.data() + static_cast<int64_t>(i) * H * d,
                                          v.data() + static_cast<int64_t>(i) * H * d)
                    .is_ok());
    auto view = t.cache->view(0, t.ids);
    ASSERT_TRUE(view.is_ok());
    const std::vector<float> q = random_tokens(rng, 1, H * G, d, 0.1f);
    std::vector<float> ref(q.size()), got(q.size(), NAN);
    ASSERT_TRUE(attention_decode_reference(*view, AttentionParams{H * G, 0.2f}, q.data(), ref.data()).is_ok());
    ASSERT_TRUE(attention_decode_cpu(*view, AttentionParams{H * G, 0.2f}, q.data(), got.data()).is_ok());
    double mr = 0;
    ASSERT_EQ(count_violations(got, ref, 2e-5 * rms(ref), 1e-4, &mr), 0) << "step " << i << ", max rel " << mr;
  }
}

TEST(AttentionRecent, ForkCopiesTheRingAndCacheChecksTheSetting) {
  const int32_t H = 2, d = 64, S = 4, W = 16;
  TestCache t = make_cache(4, 4, H, d, {30}, 133, 0, 8, S, W);
  auto child = t.cache->fork(t.ids[0]);
  ASSERT_TRUE(child.is_ok());
  const int32_t both[2] = {t.ids[0], *child};
  auto view = t.cache->view(0, both);
  ASSERT_TRUE(view.is_ok());
  std::mt19937_64 rng(134);
  std::vector<float> q1 = random_tokens(rng, 1, H, d, 0.1f), q(2 * H * d);
  std::copy(q1.begin(), q1.end(), q.begin());
  std::copy(q1.begin(), q1.end(), q.begin() + H * d);
  std::vector<float> out(q.size());
  ASSERT_TRUE(attention_decode_cpu(*view, AttentionParams{H, 0.125f}, q.data(), out.data()).is_ok());
  EXPECT_EQ(0, std::memcmp(out.data(), out.data() + H * d, H * d * sizeof(float)));
  EXPECT_GT(rms(out), 1e-3);
  // The ring's bytes are counted beside the sinks'.
  EXPECT_EQ(t.cache->sink_bytes(),
            2ll * t.cache->config().max_seqs * H * (tile_bytes(S, d, kF16Bits) + tile_bytes(W, d, kF16Bits)));
  KVCacheConfig c = t.cache->config();
  c.recent_tokens = 1025;
  EXPECT_EQ(KVCache::create(c).status().code(), StatusCode::kInvalidArgument);
  c.recent_tokens = -1;
  EXPECT_EQ(KVCache::create(c).status().code(), StatusCode::kInvalidArgument);
  // f16 layers and sliding-window layers hold no ring.
  c.recent_tokens = W;
  c.sink_tokens = 0;
  c.layers.assign(1, LayerPolicy{16, 16, 0});
  auto f16 = KVCache::create(c);
  ASSERT_TRUE(f16.is_ok());
  EXPECT_EQ((*f16)->sink_bytes(), 0);
  c.layers.assign(1, LayerPolicy{4, 4, 64});
  auto sliding = KVCache::create(c);
  ASSERT_TRUE(sliding.is_ok());
  EXPECT_EQ((*sliding)->sink_bytes(), 0);
}

}  // namespace
}  // namespace tqkv::test
