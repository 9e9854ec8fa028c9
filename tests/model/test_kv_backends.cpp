// The KV backends' compressed attention against dense fp32 attention over the codec's own
// decoded vectors: isolates the attention arithmetic (rotated-space scores and values) from
// quantization error. Tolerance 1e-4 + 1e-4 * |ref| per output element (both fp32).
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "tqkv/codec.h"
#include "tqkv/model.h"

namespace {

void check(int head_dim, int k_bits, int v_bits, int window, bool paged) {
  tqkv::ModelConfig c;
  c.n_layer = 1;
  c.n_head = 4;
  c.n_head_kv = 2;
  c.head_dim = head_dim;
  c.sliding_window = 0;
  c.layer_sliding = {0};
  const int T = 150, HQ = c.n_head, H = c.n_head_kv, D = head_dim;
  std::mt19937 rng(3);
  std::normal_distribution<float> nd;
  std::vector<float> q(T * HQ * D), k(T * H * D), v(T * H * D);
  for (float& x : q) x = nd(rng);
  for (float& x : k) x = nd(rng) * 0.5f;
  for (float& x : v) x = nd(rng);
  // Decoded copies, as the codec reconstructs them.
  auto decoded = [&](const std::vector<float>& x, int bits) {
    tqkv::CodecConfig cc;
    cc.head_dim = D;
    cc.bits = bits;
    cc.rotation = tqkv::default_rotation(D);
    auto codec = tqkv::TurboQuantCodec::create(cc);
    EXPECT_TRUE(codec.is_ok());
    const int64_t n = static_cast<int64_t>(x.size()) / D;
    std::vector<uint8_t> idx(n * tqkv::index_bytes(D, bits), 0);
    std::vector<uint16_t> sc(n);
    EXPECT_TRUE(codec->encode(x.data(), n, idx.data(), sc.data()).is_ok());
    std::vector<float> out(x.size());
    codec->decode(idx.data(), sc.data(), n, out.data());
    return out;
  };
  const std::vector<float> kd = decoded(k, k_bits), vd = decoded(v, v_bits);
  tqkv::KvOptions a, b;
  a.format = {k_bits, v_bits};
  a.max_tokens = T;
  a.paged = paged;
  b.dense_fp32 = true;
  b.max_tokens = T;
  auto kva = tqkv::make_kv_backend(c, a);
  auto kvb = tqkv::make_kv_backend(c, b);
  ASSERT_TRUE(kva.is_ok()) << kva.status().to_string();
  ASSERT_TRUE(kvb.is_ok());
  tqkv::LayerAttention la;
  la.scale = 1.0f / std::sqrt(static_cast<float>(D));
  la.window = window;
  std::vector<float> oa(q.size(), NAN), ob(q.size(), NAN);
  // Prefill 100 tokens in chunks of 50, then decode the rest one by one.
  for (int p = 0; p < T;) {
    const int n = p < 100 ? 50 : 1;
    ASSERT_TRUE((*kva)->attend(la, p, n, &q[p * HQ * D], &k[p * H * D], &v[p * H * D], &oa[p * HQ * D]).is_ok());
    ASSERT_TRUE((*kvb)->attend(la, p, n, &q[p * HQ * D], &kd[p * H * D], &vd[p * H * D], &ob[p * HQ * D]).is_ok());
    p += n;
  }
  int bad = 0;
  for (size_t i = 0; i < oa.size(); ++i)
    if (!(std::fabs(oa[i] - ob[i]) <= 1e-4 + 1e-4 * std::fabs(ob[i]))) ++bad;
  EXPECT_EQ(bad, 0) << "head_dim " << D << " k" << k_bits << "v" << v_bits << " window " << window
                    << (paged ? " paged" : " contiguous");
}

TEST(KvBackends, CompressedAttentionMatchesDecodedVectors) {
  for (bool paged : {false, true})
    for (int hd : {64, 96, 256})
      for (auto [kb, vb] : {std::pair{4, 4}, {8, 4}, {3, 3}, {2, 2}}) check(hd, kb, vb, 0, paged);
}

TEST(KvBackends, RejectsBadArguments) {
  tqkv::ModelConfig c;
  c.n_layer = 1;
  c.n_head = c.n_head_kv = 1;
  c.head_dim = 64;
  c.layer_sliding = {0};
  tqkv::KvOptions o;
  o.max_tokens = 4;
  auto kv = tqkv::make_kv_backend(c, o);
  ASSERT_TRUE(kv.is_ok());
  std::vector<float> x(5 * 64, 0.5f), out(5 * 64);
  tqkv::LayerAttention la;
  EXPECT_EQ((*kv)->attend(la, 0, 5, x.data(), x.data(), x.data(), out.data()).code(), tqkv::StatusCode::kOutOfRange);
  la.layer = 3;
  EXPECT_FALSE((*kv)->attend(la, 0, 1, x.data(), x.data(), x.data(), out.data()).is_ok());
  EXPECT_FALSE(tqkv::parse_kv_format("k5v4").is_ok());
  EXPECT_FALSE(tqkv::parse_kv_format("q4").is_ok());
  EXPECT_EQ(tqkv::parse_kv_format("k4v3")->v_bits, 3);
}

}  // namespace
