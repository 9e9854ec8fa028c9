// Attention through the cache's life cycle: causal prefill, fork + copy-on-write, sliding-window
// eviction. Same tolerance as test_attention_vs_reference.cpp unless stated.
#include <gtest/gtest.h>

#include "attn_test_util.h"

namespace tqkv::test {
namespace {

constexpr double kRtol = 1e-4;
constexpr double kAtolRms = 2e-5;

TEST(AttentionPrefill, CausalChunksAgainstReferenceAndDecode) {
  struct Case {
    int32_t k, v, d, gqa;
  };
  for (const Case& c : {Case{16, 16, 64, 1}, Case{4, 4, 128, 4}, Case{4, 3, 96, 8}, Case{2, 16, 80, 4},
                        Case{3, 3, 256, 1}}) {
    SCOPED_TRACE("k" + std::to_string(c.k) + "v" + std::to_string(c.v) + " d=" + std::to_string(c.d));
    const int32_t H = 2, HQ = H * c.gqa;
    const std::vector<int32_t> lens = {17, 133, 6, 300};
    const std::vector<int32_t> q_lens = {17, 33, 1, 40};  // first: no cached prefix
    TestCache t = make_cache(c.k, c.v, H, c.d, lens, 21);
    auto view = t.cache->view(0, t.ids);
    ASSERT_TRUE(view.is_ok());
    int64_t total_q = 0;
    for (int32_t n : q_lens) total_q += n;
    std::mt19937_64 rng(22);
    const std::vector<float> q = random_tokens(rng, total_q, HQ, c.d, 0.1f);
    std::vector<float> ref(q.size()), got(q.size(), NAN);
    for (const AttentionParams& p : {AttentionParams{HQ, 0.1f}, AttentionParams{HQ, 0.2f, 4.f, 20}}) {
      ASSERT_TRUE(attention_prefill_reference(*view, p, q_lens.data(), q.data(), ref.data()).is_ok());
      ASSERT_TRUE(attention_prefill_cpu(*view, p, q_lens.data(), q.data(), got.data()).is_ok());
      EXPECT_EQ(count_violations(got, ref, kAtolRms * rms(ref), kRtol), 0);
      // Causality, independently: query i of sequence s equals a decode over the first pos+1 tokens.
      int64_t row = 0;
      for (size_t s = 0; s < lens.size(); ++s) {
        for (int32_t i = 0; i < q_lens[s]; i += 7) {
          PagedKVView one = *view;
          const int32_t len = lens[s] - q_lens[s] + i + 1;
          one.num_seqs = 1;
          one.page_table = view->page_table + s * view->max_pages_per_seq;
          one.seq_lens = &len;
          one.first_page = view->first_page + s;
          std::vector<float> dec(static_cast<size_t>(HQ) * c.d);
          ASSERT_TRUE(attention_decode_reference(one, p, q.data() + (row + i) * HQ * c.d, dec.data()).is_ok());
          const std::vector<float> pre(ref.begin() + (row + i) * HQ * c.d, ref.begin() + (row + i + 1) * HQ * c.d);
          EXPECT_EQ(count_violations(pre, dec, 1e-6 * rms(dec), 1e-6), 0) << "seq " << s << " query " << i;
        }
        row += q_lens[s];
      }
    }
  }
}

TEST(CacheAttention, ForkCopyOnWriteKeepsBothSequencesRight) {
  const int32_t H = 2, d = 64, HQ = 4;
  const AttentionParams p{HQ, 0.125f};
  TestCache t = make_cache(4, 4, H, d, {20}, 31, 0, 16);  // page 0 full, page 1 holds 4 tokens
  KVCache& kv = *t.cache;
  const int32_t a = t.ids[0];
  std::mt19937_64 rng(32);
  const std::vector<float> q = random_tokens(rng, 1, HQ, d, 0.f);
  auto out_of = [&](int32_t seq) {
    std::vector<float> o(HQ * d, NAN);
    const int32_t ids[] = {seq};
    auto v = kv.view(0, ids);
    EXPECT_TRUE(v.is_ok());
    EXPECT_TRUE(attention_decode_cpu(*v, p, q.data(), o.data()).is_ok());
    return o;
  };
  const std::vector<float> a_before = out_of(a);
  auto b = kv.fork(a);
  ASSERT_TRUE(b.is_ok());
  auto pa = kv.pages_of(0, a), pb = kv.pages_of(0, *b);
  ASSERT_EQ(*pa, *pb);
  for (int32_t pg : *pa) EXPECT_EQ(kv.refcount(0, pg), 2);
  const int32_t free_before = kv.free_pages(0);
  // B grows by 3 tokens: its partly filled page is copied, the full page stays shared.
  const std::vector<float> nk = random_tokens(rng, 3, H, d), nv = random_tokens(rng, 3, H, d);
  ASSERT_TRUE(kv.append_and_write(*b, 3, nk.data(), nv.data()).is_ok());
  pb = kv.pages_of(0, *b);
  EXPECT_EQ((*pb)[0], (*pa)[0]);
  EXPECT_NE((*pb)[1], (*pa)[1]);
  EXPECT_EQ(kv.refcount(0, (*pa)[0]), 2);
  EXPECT_EQ(kv.refcount(0, (*pa)[1]), 1);
  EXPECT_EQ(kv.free_pages(0), free_before - 1);
  EXPECT_EQ(out_of(a), a_before);  // A untouched, bit for bit
  // B equals a fresh sequence holding A's 20 tokens followed by B's 3.
  std::vector<float> k23 = t.k[0], v23 = t.v[0];
  k23.insert(k23.end(), nk.begin(), nk.end());
  v23.insert(v23.end(), nv.begin(), nv.end());
  auto c = kv.add_sequence();
  ASSERT_TRUE(c.is_ok());
  ASSERT_TRUE(kv.append_and_write(*c, 23, k23.data(), v23.data()).is_ok());
  EXPECT_EQ(out_of(*b), out_of(*c));
  // A grows too: now its own copy of page 1 is private again (refcount 1), no copy needed.
  ASSERT_TRUE(kv.append_and_write(a, 1, nk.data(), nv.data()).is_ok());
  EXPECT_EQ((*kv.pages_of(0, a))[1], (*pa)[1]);
  ASSERT_TRUE(kv.free_sequence(a).is_ok());
  EXPECT_EQ(kv.refcount(0, (*pa)[0]), 1);
  ASSERT_TRUE(kv.free_sequence(*b).is_ok());
  ASSERT_TRUE(kv.free_sequence(*c).is_ok());
  EXPECT_EQ(kv.free_pages(0), kv.total_pages(0));
}

TEST(CacheAttention, SlidingWindowEvictsAndMatchesFullCache) {
  const int32_t H = 2, d = 64, HQ = 8, W = 40, L = 300;
  for (int32_t bits : {16, 4}) {
    SCOPED_TRACE(bits);
    TestCache full = make_cache(bits, bits, H, d, {0}, 41, 0, (L + 15) / 16);
    TestCache slide = make_cache(bits, bits, H, d, {0}, 42, W, 64);  // sliding pools are sized per slot
    std::mt19937_64 rng(43);
    const std::vector<float> k = random_tokens(rng, L, H, d), v = random_tokens(rng, L, H, d);
    const AttentionParams p{HQ, 0.125f, 0.f, W};
    const int32_t ps = slide.cache->config().page_size;
    for (int32_t len = 1; len <= L; ++len) {
      const int64_t off = static_cast<int64_t>(len - 1) * H * d;
      ASSERT_TRUE(full.cache->append_and_write(full.ids[0], 1, k.data() + off, v.data() + off).is_ok());
      ASSERT_TRUE(slide.cache->append_and_write(slide.ids[0], 1, k.data() + off, v.data() + off).is_ok());
      auto pages = slide.cache->pages_of(0, slide.ids[0]);
      auto first = slide.cache->first_page_of(0, slide.ids[0]);
      // Held: the pages of keys (len - 1 - W, len - 1], at most ceil(W / ps) + 1.
      EXPECT_LE(static_cast<int32_t>(pages->size()), (W + ps - 1) / ps + 1);
      EXPECT_EQ(*first, std::max(0, len - W) / ps);
      EXPECT_EQ(slide.cache->free_pages(0) + static_cast<int32_t>(pages->size()), slide.cache->total_pages(0));
      if (len % 37 != 0 && len != L) continue;
      std::vector<float> q = random_tokens(rng, 1, HQ, d, 0.f), a(HQ * d), b(HQ * d), r(HQ * d);
      auto vf = full.cache->view(0, full.ids);
      auto vs = slide.cache->view(0, slide.ids);
      ASSERT_TRUE(attention_decode_cpu(*vf, p, q.data(), a.data()).is_ok());
      ASSERT_TRUE(attention_decode_cpu(*vs, p, q.data(), b.data()).is_ok());
      ASSERT_TRUE(attention_decode_reference(*vs, p, q.data(), r.data()).is_ok());
      EXPECT_EQ(count_violations(b, a, 1e-6 * rms(a), 1e-6), 0) << "len " << len;
      EXPECT_EQ(count_violations(b, r, kAtolRms * rms(r), kRtol), 0) << "len " << len;
      if (len > W + ps) {  // full attention over evicted keys is an error, not garbage
        const AttentionParams no_window{HQ, 0.125f};
        EXPECT_EQ(attention_decode_cpu(*vs, no_window, q.data(), b.data()).code(), StatusCode::kOutOfRange);
      }
    }
  }
}

}  // namespace
}  // namespace tqkv::test
