// Fused CPU attention against the fp64 dequantize-everything reference: every KV format, head
// sizes {64, 80, 96, 128, 256}, GQA ratios {1, 4, 8}, lengths {1, 3, 17, 129, 1000, 5000}, pages
// at random places in the pool.
//
// Tolerance: the fused path is the same math in fp32 (rotated-space dot products, online softmax,
// split-K merge), so per element |fused - ref| <= 2e-5 * rms(ref) + 1e-4 * |ref|, zero violations.
#include <gtest/gtest.h>

#include "attn_test_util.h"

namespace tqkv::test {
namespace {

constexpr double kRtol = 1e-4;
constexpr double kAtolRms = 2e-5;

struct Format {
  int32_t k, v;
};
const Format kFormats[] = {{16, 16}, {8, 8}, {8, 4}, {4, 4}, {4, 3}, {3, 3}, {2, 2}, {16, 4}, {4, 16}};
const int32_t kHeadDims[] = {64, 80, 96, 128, 256};
const int32_t kGqa[] = {1, 4, 8};

void check_decode(const Format& f, int32_t d, int32_t gqa, const std::vector<int32_t>& lens, uint64_t seed,
                  AttentionParams p, int32_t H = 2) {
  SCOPED_TRACE("k" + std::to_string(f.k) + "v" + std::to_string(f.v) + " d=" + std::to_string(d) +
               " gqa=" + std::to_string(gqa));
  TestCache t = make_cache(f.k, f.v, H, d, lens, seed);
  auto view = t.cache->view(0, t.ids);
  ASSERT_TRUE(view.is_ok()) << view.status().to_string();
  p.num_q_heads = H * gqa;
  std::mt19937_64 rng(seed + 17);
  const std::vector<float> q = random_tokens(rng, static_cast<int64_t>(lens.size()), p.num_q_heads, d, 0.1f);
  std::vector<float> ref(q.size()), got(q.size(), NAN);
  ASSERT_TRUE(attention_decode_reference(*view, p, q.data(), ref.data()).is_ok());
  const Status st = attention_decode_cpu(*view, p, q.data(), got.data());
  ASSERT_TRUE(st.is_ok()) << st.to_string();
  double max_rel = 0;
  EXPECT_EQ(count_violations(got, ref, kAtolRms * rms(ref), kRtol, &max_rel), 0) << "max rel " << max_rel;
  EXPECT_GT(rms(ref), 1e-3);  // outputs are not trivially zero
}

TEST(AttentionDecode, EveryFormatHeadSizeAndGqaAgainstReference) {
  const std::vector<int32_t> lens = {1, 3, 17, 129, 1000};
  uint64_t seed = 1;
  for (size_t fi = 0; fi < std::size(kFormats); ++fi)
    for (size_t di = 0; di < std::size(kHeadDims); ++di) {
      AttentionParams p{0, 1.f / std::sqrt(static_cast<float>(kHeadDims[di]))};
      check_decode(kFormats[fi], kHeadDims[di], kGqa[(fi + di) % 3], lens, seed++, p);
    }
}

// Head sizes that are multiples of 8 but not of 16 (valid: kv_layout.h): a 4-bit row is then an
// odd number of 8-coordinate groups, so vector loops that step by 16 coordinates need a tail.
TEST(AttentionDecode, HeadSizesNotMultiplesOf16) {
  uint64_t seed = 300;
  for (const int32_t d : {72, 88, 136}) {
    for (const Format& f : {Format{4, 4}, Format{8, 8}, Format{4, 3}, Format{2, 2}, Format{16, 4}}) {
      AttentionParams p{0, 1.f / std::sqrt(static_cast<float>(d))};
      check_decode(f, d, 4, {1, 17, 129, 301}, seed++, p);
    }
  }
}

TEST(AttentionDecode, LongContext5000EveryFormat) {
  // One head size per format (covering all five), GQA rotating; split-K is exercised.
  const int32_t dims[] = {256, 128, 64, 80, 96, 128, 256, 64, 96};
  for (size_t fi = 0; fi < std::size(kFormats); ++fi) {
    const int32_t d = dims[fi];
    AttentionParams p{0, 1.f / std::sqrt(static_cast<float>(d))};
    check_decode(kFormats[fi], d, kGqa[fi % 3], {5000, 2}, 100 + fi, p, 1);
  }
}

TEST(AttentionDecode, SoftcapCustomScaleAndWindow) {
  for (const Format& f : {Format{16, 16}, Format{4, 4}, Format{8, 3}, Format{2, 16}}) {
    check_decode(f, 128, 4, {1000, 129, 3}, 7, AttentionParams{0, 0.37f, 5.f, 0});     // softcap, scale
    check_decode(f, 64, 1, {1000, 129, 3}, 8, AttentionParams{0, 0.1f, 0.f, 50});      // window
    check_decode(f, 128, 8, {1000, 40, 17}, 9, AttentionParams{0, 0.2f, 2.5f, 33});    // all three
  }
}

TEST(AttentionDecode, SoftcapChangesTheResult) {
  // Guards against a softcap that is silently ignored: a strong cap must move the output.
  TestCache t = make_cache(4, 4, 1, 64, {300}, 3);
  auto view = t.cache->view(0, t.ids);
  ASSERT_TRUE(view.is_ok());
  std::mt19937_64 rng(5);
  std::vector<float> q = random_tokens(rng, 1, 1, 64, 0.f);
  std::vector<float> a(64), b(64);
  ASSERT_TRUE(attention_decode_cpu(*view, AttentionParams{1, 1.f}, q.data(), a.data()).is_ok());
  ASSERT_TRUE(attention_decode_cpu(*view, AttentionParams{1, 1.f, 1.f}, q.data(), b.data()).is_ok());
  double diff = 0;
  for (int i = 0; i < 64; ++i) diff = std::max(diff, std::fabs(static_cast<double>(a[i]) - b[i]));
  EXPECT_GT(diff, 1e-3);
}

TEST(AttentionDecode, F16ReferenceMatchesPlainFp32Attention) {
  // The reference itself, checked against attention on the original fp32 inputs: only fp16
  // rounding of K and V separates them (|err| <= 2e-3 * rms + 2e-3 * |x|).
  const int32_t H = 2, d = 80, HQ = 4, L = 200;
  TestCache t = make_cache(16, 16, H, d, {L}, 11);
  auto view = t.cache->view(0, t.ids);
  ASSERT_TRUE(view.is_ok());
  std::mt19937_64 rng(12);
  const std::vector<float> q = random_tokens(rng, 1, HQ, d, 0.f);
  const float scale = 0.11f;
  std::vector<float> ref(HQ * d), want(HQ * d);
  ASSERT_TRUE(attention_decode_reference(*view, AttentionParams{HQ, scale}, q.data(), ref.data()).is_ok());
  for (int32_t hq = 0; hq < HQ; ++hq) {
    const int32_t h = hq / (HQ / H);
    std::vector<double> s(L);
    double mx = -1e300, sum = 0;
    for (int32_t i = 0; i < L; ++i) {
      double dot = 0;
      for (int32_t j = 0; j < d; ++j) dot += q[hq * d + j] * static_cast<double>(t.k[0][(i * H + h) * d + j]);
      s[i] = dot * scale;
      mx = std::max(mx, s[i]);
    }
    for (int32_t i = 0; i < L; ++i) sum += (s[i] = std::exp(s[i] - mx));
    for (int32_t j = 0; j < d; ++j) {
      double a = 0;
      for (int32_t i = 0; i < L; ++i) a += s[i] * t.v[0][(i * H + h) * d + j];
      want[hq * d + j] = static_cast<float>(a / sum);
    }
  }
  EXPECT_EQ(count_violations(ref, want, 2e-3 * rms(want), 2e-3), 0);
}

TEST(AttentionDecode, RejectsBadArguments) {
  TestCache t = make_cache(4, 4, 2, 64, {10}, 1);
  auto view = t.cache->view(0, t.ids);
  ASSERT_TRUE(view.is_ok());
  std::vector<float> q(3 * 64), o(3 * 64);
  EXPECT_EQ(attention_decode_cpu(*view, AttentionParams{3, 1.f}, q.data(), o.data()).code(),
            StatusCode::kInvalidArgument);  // 3 % 2 != 0
  EXPECT_EQ(attention_decode_reference(*view, AttentionParams{2, NAN}, q.data(), o.data()).code(),
            StatusCode::kInvalidArgument);
  PagedKVView bad = *view;
  bad.k.bits = 5;
  EXPECT_EQ(attention_decode_cpu(bad, AttentionParams{2, 1.f}, q.data(), o.data()).code(),
            StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace tqkv::test
