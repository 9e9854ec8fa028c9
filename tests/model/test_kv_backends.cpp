// The KV backends' compressed attention against dense fp32 attention over the codec's own
// decoded vectors: isolates the attention arithmetic (rotated-space scores and values) from
// quantization error. Tolerance 1e-4 + 1e-4 * |ref| per output element (both fp32).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "tqkv/codec.h"
#include "tqkv/fp16.h"
#include "tqkv/kv_layout.h"
#include "tqkv/model.h"
#include "model/kv_backends.h"

namespace {

// center: 0 none, 1 keys, 2 keys and values (KvOptions::center_*). The expected cache contents
// are then decode(x - mu) + mu with mu the mean of the first write (50 tokens), per KV head.
// smooth: KvOptions::smooth_keys; the expected keys are then s * decode((k - mu) / s) + mu with s
// the smoothing factors of the first write (computed here from its definition in model.h).
void check(int head_dim, int k_bits, int v_bits, int window, bool paged, int center = 0, bool smooth = false) {
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
    if (bits == 16) {  // the f16 side: rounding only
      std::vector<float> out(x.size());
      for (size_t i = 0; i < x.size(); ++i) out[i] = tqkv::fp16_to_float(tqkv::float_to_fp16(x[i]));
      return out;
    }
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
  // mu over the first write (tokens 0..49), per KV head and channel; zero when not centered.
  auto mean50 = [&](const std::vector<float>& x, bool on) {
    std::vector<float> mu(H * D, 0.0f);
    if (!on) return mu;
    for (int i = 0; i < H * D; ++i) {
      double acc = 0;
      for (int t = 0; t < 50; ++t) acc += x[t * H * D + i];
      mu[i] = static_cast<float>(acc / 50);
    }
    return mu;
  };
  const std::vector<float> mk = mean50(k, center >= 1 && k_bits != 16), mv = mean50(v, center >= 2 && v_bits != 16);
  auto shifted = [&](std::vector<float> x, const std::vector<float>& mu, float sign) {
    for (size_t i = 0; i < x.size(); ++i) x[i] += sign * mu[i % (H * D)];
    return x;
  };
  // Smoothing factors: s = sqrt(rms_k / rms_q) per KV head and channel over the first write (keys
  // after centering; the G query heads of a KV head pooled), geometric mean 1, clamped to [1/64, 64].
  std::vector<float> sf(H * D, 1.0f);
  if (smooth && k_bits != 16) {
    const std::vector<float> kc = shifted(k, mk, -1);
    const int G = HQ / H;
    for (int h = 0; h < H; ++h) {
      std::vector<double> f(D);
      double lg = 0;
      for (int j = 0; j < D; ++j) {
        double ek = 0, eq = 0;
        for (int t = 0; t < 50; ++t) {
          ek += double(kc[(t * H + h) * D + j]) * kc[(t * H + h) * D + j];
          for (int g = 0; g < G; ++g) eq += double(q[(t * HQ + h * G + g) * D + j]) * q[(t * HQ + h * G + g) * D + j];
        }
        f[j] = std::sqrt((std::sqrt(ek / 50) + 1e-6) / (std::sqrt(eq / (50.0 * G)) + 1e-6));
        lg += std::log(f[j]);
      }
      for (int j = 0; j < D; ++j) sf[h * D + j] = float(std::clamp(f[j] / std::exp(lg / D), 1.0 / 64, 64.0));
    }
  }
  auto scaled = [&](std::vector<float> x, bool divide) {
    for (size_t i = 0; i < x.size(); ++i) x[i] = divide ? x[i] / sf[i % (H * D)] : x[i] * sf[i % (H * D)];
    return x;
  };
  const std::vector<float> kd = shifted(scaled(decoded(scaled(shifted(k, mk, -1), true), k_bits), false), mk, 1);
  const std::vector<float> vd = shifted(decoded(shifted(v, mv, -1), v_bits), mv, 1);
  tqkv::KvOptions a, b;
  a.center_keys = center >= 1;
  a.center_values = center >= 2;
  a.smooth_keys = smooth;
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
                    << (paged ? " paged" : " contiguous") << " center " << center << " smooth " << smooth;
  // What the paged cache holds, read back, is the decoded vectors (the per-layer diagnostics use it).
  if (paged && window == 0) {
    std::vector<float> kr(k.size()), vr(v.size());
    ASSERT_TRUE((*kva)->read_back(0, 0, T, kr.data(), vr.data()).is_ok());
    int bad_rb = 0;
    for (size_t i = 0; i < kr.size(); ++i) {
      if (!(std::fabs(kr[i] - kd[i]) <= 1e-5 + 1e-5 * std::fabs(kd[i]))) ++bad_rb;
      if (!(std::fabs(vr[i] - vd[i]) <= 1e-5 + 1e-5 * std::fabs(vd[i]))) ++bad_rb;
    }
    EXPECT_EQ(bad_rb, 0) << "read_back, head_dim " << D << " k" << k_bits << "v" << v_bits << " center " << center
                         << " smooth " << smooth;
  }
}

// Centering is exact: attention over the centered cache equals dense attention over the decoded
// centered vectors with mu added back (keys: the softmax ignores the per-query shift; values: mu
// comes back through the output).
TEST(KvBackends, CenteredAttentionMatchesDecodedVectors) {
  for (bool paged : {false, true})
    for (int hd : {64, 256})
      for (auto [kb, vb] : {std::pair{4, 4}, {3, 3}, {4, 16}})
        for (int center : {1, 2}) check(hd, kb, vb, 0, paged, center);
  check(64, 4, 4, 32, true, 2);
}

// One attend() of all T tokens of q, k, v ([T][heads][head_dim]) through a fresh backend with
// options `o`, and the relative squared error of an output against a reference output.
std::vector<float> attend_once(const tqkv::ModelConfig& c, tqkv::KvOptions o, int T, const std::vector<float>& q,
                               const std::vector<float>& k, const std::vector<float>& v) {
  o.max_tokens = T;
  tqkv::LayerAttention la;
  la.scale = 0.125f;
  auto kv = tqkv::make_kv_backend(c, o);
  EXPECT_TRUE(kv.is_ok());
  std::vector<float> out(q.size());
  EXPECT_TRUE((*kv)->attend(la, 0, T, q.data(), k.data(), v.data(), out.data()).is_ok());
  return out;
}
double rel_err2(const std::vector<float>& o, const std::vector<float>& ref) {
  double e = 0, n = 0;
  for (size_t i = 0; i < o.size(); ++i) e += (o[i] - ref[i]) * (o[i] - ref[i]), n += ref[i] * ref[i];
  return e / n;
}

// Key smoothing is exact: attention with smoothed keys (k / s quantized, queries times s) equals
// dense attention over s * decode(k / s), with and without centering, paged and contiguous,
// grouped-query heads (the factors are per KV head), a window, a soft-cap-free 3-bit case.
TEST(KvBackends, SmoothedKeysMatchDecodedVectors) {
  for (bool paged : {false, true})
    for (int hd : {64, 256})
      for (auto [kb, vb] : {std::pair{4, 4}, {3, 3}, {4, 16}})
        for (int center : {0, 1}) check(hd, kb, vb, 0, paged, center, true);
  check(64, 4, 4, 32, true, 1, true);
}

// Smoothing lowers the error where keys carry outlier channels the queries barely use (real keys
// after RoPE look like this): at 4 bits the output error with smoothing is below the error without,
// and at 8 bits both stay close to fp32 (the transform itself loses nothing).
TEST(KvBackends, SmoothingCutsTheErrorOfOutlierKeyChannels) {
  tqkv::ModelConfig c;
  c.n_layer = 1;
  c.n_head = 4;
  c.n_head_kv = 2;
  c.head_dim = 64;
  c.layer_sliding = {0};
  const int T = 64, HQ = 4, H = 2, D = 64;
  std::mt19937 rng(11);
  std::normal_distribution<float> nd;
  std::vector<float> q(T * HQ * D), k(T * H * D), v(T * H * D);
  // Keys: 8 channels per head 8x larger than the rest; queries: those channels 8x smaller.
  for (int t = 0; t < T; ++t)
    for (int i = 0; i < H * D; ++i) k[t * H * D + i] = nd(rng) * ((i % D) % 8 == 5 ? 8.0f : 1.0f);
  for (int t = 0; t < T; ++t)
    for (int i = 0; i < HQ * D; ++i) q[t * HQ * D + i] = nd(rng) * ((i % D) % 8 == 5 ? 0.125f : 1.0f) * 0.5f;
  for (float& x : v) x = nd(rng);
  auto run = [&](bool dense, bool smooth, int bits) {
    tqkv::KvOptions o;
    o.dense_fp32 = dense;
    o.smooth_keys = smooth;
    o.format = {bits, bits};
    return attend_once(c, o, T, q, k, v);
  };
  const auto ref = run(true, false, 16);
  auto rel = [&](const std::vector<float>& o) { return rel_err2(o, ref); };
  EXPECT_LT(rel(run(false, true, 8)), 1e-4);
  const double plain4 = rel(run(false, false, 4)), smooth4 = rel(run(false, true, 4));
  EXPECT_LT(smooth4, 0.5 * plain4) << "4-bit output error: smoothed " << smooth4 << ", plain " << plain4;
}

// Centering does not change attention beyond quantization: with 8-bit keys and values the
// centered and plain caches give nearly the same output, and both stay close to fp32.
TEST(KvBackends, CenteringKeepsTheAttentionOutput) {
  tqkv::ModelConfig c;
  c.n_layer = 1;
  c.n_head = 2;
  c.n_head_kv = 1;
  c.head_dim = 64;
  c.layer_sliding = {0};
  const int T = 64, D = 64;
  std::mt19937 rng(5);
  std::normal_distribution<float> nd;
  std::vector<float> q(T * 2 * D), k(T * D), v(T * D);
  for (float& x : q) x = nd(rng);
  // Keys with a large common offset (what real keys look like: most of their energy in the mean).
  for (int t = 0; t < T; ++t)
    for (int j = 0; j < D; ++j) k[t * D + j] = 0.3f * nd(rng) + (j % 3 == 0 ? 2.0f : -0.5f);
  for (float& x : v) x = nd(rng);
  auto run = [&](bool dense, bool center, int bits) {
    tqkv::KvOptions o;
    o.dense_fp32 = dense;
    o.center_keys = o.center_values = center;
    o.format = {bits, bits};
    return attend_once(c, o, T, q, k, v);
  };
  const auto ref = run(true, false, 16);
  auto rel = [&](const std::vector<float>& o) { return rel_err2(o, ref); };
  EXPECT_LT(rel(run(false, true, 8)), 1e-4);
  EXPECT_LT(rel(run(false, false, 8)), 1e-4);
  // At 4 bits centering the offset keys cuts the output error (the codec's error scales with |k|).
  EXPECT_LT(rel(run(false, true, 4)), rel(run(false, false, 4)));
}

// q4_0 round trip (the q4_0h emulation): the element of largest magnitude is exact (it defines
// the scale, up to its fp16 rounding) and every element is within half a step (or clamped to the
// last level, which is one step wide on the other side).
TEST(KvBackends, Q4_0RoundTrip) {
  std::mt19937 rng(9);
  std::normal_distribution<float> nd;
  for (int trial = 0; trial < 200; ++trial) {
    float x[32], y[32];
    for (float& e : x) e = nd(rng) * (trial % 7 + 1);
    tqkv::q4_0_round_trip(x, y);
    float amax = 0;
    int im = 0;
    for (int j = 0; j < 32; ++j)
      if (std::fabs(x[j]) > amax) amax = std::fabs(x[j]), im = j;
    const float d = amax / 8;
    EXPECT_NEAR(y[im], x[im], 1e-3f * amax);
    for (int j = 0; j < 32; ++j) {
      const float bound = std::fabs(x[j]) > 7.5f * d ? d : 0.5f * d;  // +8 steps do not exist: clamped to 7
      EXPECT_LE(std::fabs(y[j] - x[j]), bound + 1e-3f * amax) << j;
    }
  }
  float z[32] = {}, w[32];
  tqkv::q4_0_round_trip(z, w);
  for (float e : w) EXPECT_EQ(e, 0.0f);
}

TEST(KvBackends, CompressedAttentionMatchesDecodedVectors) {
  for (bool paged : {false, true})
    for (int hd : {64, 96, 256})
      for (auto [kb, vb] : {std::pair{4, 4}, {8, 4}, {3, 3}, {2, 2}}) check(hd, kb, vb, 0, paged);
}

// KvOptions::k8_layers: the named layer's keys take 8 bits (its tiles grow by exactly that), the
// other layers and the values keep the format.
TEST(KvBackends, K8LayersRaiseOneLayersKeyBits) {
  tqkv::ModelConfig c;
  c.n_layer = 3;
  c.n_head = 2;
  c.n_head_kv = 1;
  c.head_dim = 64;
  c.layer_sliding = {0, 0, 0};
  const int T = 32;
  std::vector<float> x(T * 2 * 64, 0.25f), out(x.size());
  for (size_t i = 0; i < x.size(); ++i) x[i] = std::sin(0.1f * static_cast<float>(i));
  auto bytes = [&](std::vector<int> k8) {
    tqkv::KvOptions o;
    o.max_tokens = T;
    o.format = {4, 4};
    o.k8_layers = k8;
    auto kv = tqkv::make_kv_backend(c, o);
    EXPECT_TRUE(kv.is_ok());
    tqkv::LayerAttention la;
    la.scale = 0.125f;
    for (int l = 0; l < 3; ++l) {
      la.layer = l;
      EXPECT_TRUE((*kv)->attend(la, 0, T, x.data(), x.data(), x.data(), out.data()).is_ok());
    }
    return (*kv)->bytes_in_use();
  };
  const int64_t pages = T / tqkv::kDefaultPageSize;
  const int64_t grow = pages * (tqkv::tile_bytes(tqkv::kDefaultPageSize, 64, 8) - tqkv::tile_bytes(tqkv::kDefaultPageSize, 64, 4));
  EXPECT_EQ(bytes({-1}) - bytes({}), grow);
  EXPECT_EQ(bytes({0, 2}) - bytes({}), 2 * grow);
}

// One layer, one KV head of 64, two query heads; T tokens of N(0, 1) queries and K = V written in
// the given split points; returns what the backend holds (read_back) as {k, v}.
struct OneHeadWrite {
  tqkv::ModelConfig c;
  int T;
  std::vector<float> q, kv;
  OneHeadWrite(int tokens, uint32_t seed) : T(tokens), q(tokens * 2 * 64), kv(tokens * 64) {
    c.n_layer = 1;
    c.n_head = 2;
    c.n_head_kv = 1;
    c.head_dim = 64;
    c.layer_sliding = {0};
    std::mt19937 rng(seed);
    std::normal_distribution<float> nd;
    for (float& e : q) e = nd(rng);
    for (float& e : kv) e = nd(rng);
  }
  std::pair<std::vector<float>, std::vector<float>> held(const tqkv::KvOptions& o, std::vector<int> splits = {}) const {
    constexpr int D = 64;
    auto b = tqkv::make_kv_backend(c, o);
    EXPECT_TRUE(b.is_ok());
    if (!b.is_ok()) return {};
    tqkv::LayerAttention la;
    la.scale = 0.125f;
    std::vector<float> out(q.size());
    splits.push_back(T);
    int t0 = 0;
    for (int t1 : splits) {
      EXPECT_TRUE((*b)->attend(la, t0, t1 - t0, q.data() + t0 * 2 * D, kv.data() + t0 * D, kv.data() + t0 * D,
                               out.data()).is_ok());
      t0 = t1;
    }
    std::vector<float> k(T * D), v(T * D);
    EXPECT_TRUE((*b)->read_back(0, 0, T, k.data(), v.data()).is_ok());
    describe = (*b)->describe();
    return {k, v};
  }
  mutable std::string describe;
};

// The q4_0h emulation keeps the attention-sink positions exact, as the real cache keeps them in
// f16: with sink_tokens = 4, read_back returns positions 0-3 bit for bit (the f16 cache's own
// rounding aside) and rounds the later ones; without sinks position 0-3 are rounded too. Written
// in two calls (2 tokens, then 30) so the sink bound crosses a write.
TEST(KvBackends, EmulatedQ4_0KeepsSinkTokensExact) {
  const OneHeadWrite w(32, 5);
  constexpr int D = 64;
  auto max_err = [&](int sinks, int t0, int t1) {
    tqkv::KvOptions o;
    o.max_tokens = w.T;
    o.format = {16, 16};
    o.emulate = "q4_0h";
    o.center_keys = false;
    o.sink_tokens = sinks;
    const auto [k, v] = w.held(o, {2});
    float e = 0;
    for (int i = t0 * D; i < t1 * D; ++i) e = std::max({e, std::fabs(k[i] - w.kv[i]), std::fabs(v[i] - w.kv[i])});
    return e;
  };
  EXPECT_LT(max_err(4, 0, 4), 2e-3f);     // f16 rounding of values ~N(0, 1)
  EXPECT_GT(max_err(4, 4, w.T), 0.05f);   // q4_0: steps of amax / 8
  EXPECT_GT(max_err(0, 0, 4), 0.05f);     // no sinks: rounded like the rest
}

// KvOptions::scale_search reaches the codec of the paged cache: what the cache holds is closer to
// the written vectors than without it (4-bit, head size 64, where the codec test measures ~20%
// lower error), and it describes itself. (The contiguous backend has no read_back; its codec
// takes the same flag in kv_contiguous.cpp.)
TEST(KvBackends, ScaleSearchReachesTheCache) {
  const OneHeadWrite w(64, 8);
  auto err = [&](bool search) {
    tqkv::KvOptions o;
    o.max_tokens = w.T;
    o.format = {4, 4};
    o.scale_search = search;
    const auto [k, v] = w.held(o);
    EXPECT_EQ(w.describe.find("scale search") != std::string::npos, search) << w.describe;
    double e = 0;
    for (size_t i = 0; i < w.kv.size(); ++i) e += std::pow(k[i] - w.kv[i], 2) + std::pow(v[i] - w.kv[i], 2);
    return e;
  };
  EXPECT_LT(err(true), 0.9 * err(false));
}

// KvOptions::recent_tokens reaches the paged cache: read_back returns the last 16 of 40 positions
// exact (fp16 rounding only), after writes of 30, 1 and 9 tokens (the window crosses each), the
// earlier ones through the codec; without it all are rounded; describe() says so.
TEST(KvBackends, RecentTokensStayExact) {
  const OneHeadWrite w(40, 9);
  constexpr int D = 64;
  auto max_err = [&](int recent, int t0, int t1) {
    tqkv::KvOptions o;
    o.max_tokens = w.T;
    o.format = {4, 4};
    o.center_keys = false;
    o.recent_tokens = recent;
    const auto [k, v] = w.held(o, {30, 31});
    EXPECT_EQ(w.describe.find("recent tokens") != std::string::npos, recent > 0) << w.describe;
    float e = 0;
    for (int i = t0 * D; i < t1 * D; ++i) e = std::max({e, std::fabs(k[i] - w.kv[i]), std::fabs(v[i] - w.kv[i])});
    return e;
  };
  EXPECT_LT(max_err(16, 24, 40), 3e-3f);  // fp16 rounding of the rotated vector, rotated back
  EXPECT_GT(max_err(16, 0, 24), 0.05f);   // 4-bit codes
  EXPECT_GT(max_err(0, 24, 40), 0.05f);   // no ring: rounded like the rest
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
