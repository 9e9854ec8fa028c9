// Helpers for the attention tests: build a one-layer cache full of random tokens, compare outputs.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "tqkv/attention.h"
#include "tqkv/kv_cache.h"

namespace tqkv::test {

// Tokens [n][H][d], entries N(mean_shift, 1): non-zero, with a per-head shift so softmax is not flat.
inline std::vector<float> random_tokens(std::mt19937_64& rng, int64_t n, int32_t H, int32_t d, float shift = 0.3f) {
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<float> x(static_cast<size_t>(n * H * d));
  for (auto& v : x) v = nd(rng) + shift;
  return x;
}

struct TestCache {
  std::unique_ptr<KVCache> cache;
  std::vector<int32_t> ids;
  std::vector<std::vector<float>> k, v;  // per sequence: [len][H][d] fp32 as written
};

// One layer, pages handed out in random order; one sequence per entry of `lens`.
inline TestCache make_cache(int32_t k_bits, int32_t v_bits, int32_t H, int32_t d, const std::vector<int32_t>& lens,
                            uint64_t seed, int32_t window = 0, int64_t extra_pages = 8, int32_t sink_tokens = 0,
                            int32_t recent_tokens = 0) {
  KVCacheConfig c;
  c.num_layers = 1;
  c.num_kv_heads = H;
  c.head_dim = d;
  c.max_seqs = static_cast<int32_t>(lens.size()) + 4;
  c.max_seq_len = 1 << 16;
  c.default_policy = {k_bits, v_bits, window};
  int64_t pages = extra_pages;
  for (int32_t L : lens) pages += (L + c.page_size - 1) / c.page_size;
  const int64_t page_bytes = static_cast<int64_t>(H) * (tile_bytes(c.page_size, d, k_bits) + tile_bytes(c.page_size, d, v_bits));
  c.budget_bytes = pages * page_bytes;
  c.sink_tokens = sink_tokens;
  if (sink_tokens > 0) c.budget_bytes += 2ll * c.max_seqs * H * tile_bytes(sink_tokens, d, kF16Bits);
  c.recent_tokens = recent_tokens;
  if (recent_tokens > 0) c.budget_bytes += 2ll * c.max_seqs * H * tile_bytes(recent_tokens, d, kF16Bits);
  c.shuffle_seed = seed | 1;
  auto r = KVCache::create(c);
  EXPECT_TRUE(r.is_ok()) << r.status().to_string();
  TestCache t;
  t.cache = std::move(r).value();
  std::mt19937_64 rng(seed);
  for (int32_t L : lens) {
    auto id = t.cache->add_sequence();
    EXPECT_TRUE(id.is_ok());
    t.ids.push_back(*id);
    t.k.push_back(random_tokens(rng, L, H, d));
    t.v.push_back(random_tokens(rng, L, H, d, -0.2f));
    // Append in uneven steps so pages fill across several writes.
    for (int32_t done = 0; done < L;) {
      const int32_t n = std::min<int32_t>(L - done, 1 + (done * 7 + 5) % 37);
      const Status st = t.cache->append_and_write(*id, n, t.k.back().data() + static_cast<int64_t>(done) * H * d,
                                                  t.v.back().data() + static_cast<int64_t>(done) * H * d);
      EXPECT_TRUE(st.is_ok()) << st.to_string();
      done += n;
    }
  }
  return t;
}

// Element-wise |got - want| <= atol + rtol * |want|; NaN fails. Returns violations.
inline int64_t count_violations(const std::vector<float>& got, const std::vector<float>& want, double atol, double rtol,
                                double* max_rel = nullptr) {
  int64_t bad = 0;
  double mr = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    const double e = std::fabs(static_cast<double>(got[i]) - want[i]);
    if (!(e <= atol + rtol * std::fabs(want[i]))) ++bad;  // NaN compares false
    mr = std::max(mr, e / (std::fabs(want[i]) + atol));
  }
  if (max_rel) *max_rel = mr;
  return bad;
}

inline double rms(const std::vector<float>& x) {
  double s = 0;
  for (float v : x) s += static_cast<double>(v) * v;
  return std::sqrt(s / std::max<size_t>(x.size(), 1));
}

// Plain fp64 softmax attention of one query head over keys/values given as fp32 rows.
inline std::vector<double> dense_attention(const float* q, const std::vector<std::vector<float>>& K,
                                           const std::vector<std::vector<float>>& V, double scale) {
  const size_t L = K.size(), d = K[0].size();
  std::vector<double> s(L), o(d, 0.0);
  double mx = -1e300, sum = 0;
  for (size_t i = 0; i < L; ++i) {
    double dot = 0;
    for (size_t j = 0; j < d; ++j) dot += static_cast<double>(q[j]) * K[i][j];
    mx = std::max(mx, s[i] = dot * scale);
  }
  for (size_t i = 0; i < L; ++i) sum += (s[i] = std::exp(s[i] - mx));
  for (size_t i = 0; i < L; ++i)
    for (size_t j = 0; j < d; ++j) o[j] += s[i] / sum * V[i][j];
  return o;
}

}  // namespace tqkv::test
