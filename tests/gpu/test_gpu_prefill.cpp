// The GPU runtime's prefill through the tiled prefill kernel (cuda::attention_prefill) against the
// previous path (every chunk token through attention_decode as its own sequence:
// GpuPrefillPath::kDecode, TQKV_GPU_PREFILL=decode) and against the CPU runtime. Skipped (with a
// message) without a GPU.
//
// Models: tiny random-weight GGUFs (tests/common/synthetic_gguf.h): a llama-shaped one (GQA 4:2,
// head size 64) and a gemma3-shaped one (7 layers: 6 with sliding window 20, whose f16 ring the
// runtime keeps, and layer 5 global, the one k4v4 compresses; head size 128, GQA 4:1). The prompt is prefilled in chunks of 32 (several chunks; Gemma's sliding ring of
// ceil((20 + 32) / 16) + 2 = 6 pages wraps), logits of every prompt row are compared, then a few
// decode steps.
//
// Tolerances (every compared row of logits):
//   f16 cache:  tiled vs decode path relative L2 <= 1e-2 (both GPU, same pages up to the fp16
//               rounding of earlier layers; the tiled kernel multiplies fp16 Q and P on tensor
//               cores), tiled vs CPU <= 2e-2 and the same top-1 unless the CPU's best two logits
//               are within 0.1 (test_gpu_model.cpp's bound).
//   k4v4 cache: a coordinate of K or V within rounding of a codebook boundary may quantize to the
//               neighbouring centroid on one side and not on the other, so the check is relative to
//               the compression's own effect d_q = ||cpu_k4v4 - cpu_f16||: sqrt(sum ||a - b||^2 /
//               sum d_q^2) <= 0.75 for tiled vs CPU and for tiled vs decode path (independent
//               quantization noise would give about sqrt(2)); per row ||a - b|| <= max(0.1 ||b||,
//               1.5 d_q).
// prefill_batch: three sequences of 37, 70 and 5 tokens through chunks of 32 that mix sequences
// (a sequence split across chunks, several sequences per chunk), then one decode step of the
// three at batch 3: each sequence's last-row logits against prefill() of that sequence alone,
// f16 relative L2 <= 1e-2, on both paths.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "../common/synthetic_gguf.h"
#include "tqkv/gpu_model.h"
#include "tqkv/model.h"

namespace {

using tqkv::GgmlType;
using tqkv::GpuPrefillPath;

#define SKIP_WITHOUT_GPU()                                               \
  do {                                                                   \
    auto _st = tqkv::gpu_available();                                    \
    if (!_st.is_ok()) GTEST_SKIP() << "no GPU: " << _st.to_string();     \
  } while (0)

double rel_l2(const float* a, const float* b, int V) {
  double num = 0, den = 0;
  for (int i = 0; i < V; ++i) {
    if (!std::isfinite(a[i])) return 1e30;
    num += (static_cast<double>(a[i]) - b[i]) * (static_cast<double>(a[i]) - b[i]);
    den += static_cast<double>(b[i]) * b[i];
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

int top1(const float* x, int V) { return static_cast<int>(std::max_element(x, x + V) - x); }

// Compressed-format comparison of `a` against `b` relative to d_q (see the header).
struct RatioCheck {
  double e2 = 0, q2 = 0;
  void add(const float* a, const float* b, const float* cpu_q, const float* cpu_f16, int V, const std::string& what) {
    double e = 0, q = 0, c = 0;
    bool nan = false;
    for (int i = 0; i < V; ++i) {
      nan |= !std::isfinite(a[i]);
      e += (static_cast<double>(a[i]) - b[i]) * (static_cast<double>(a[i]) - b[i]);
      q += (static_cast<double>(cpu_q[i]) - cpu_f16[i]) * (static_cast<double>(cpu_q[i]) - cpu_f16[i]);
      c += static_cast<double>(b[i]) * b[i];
    }
    EXPECT_FALSE(nan) << what << ": NaN";
    EXPECT_LE(std::sqrt(e), std::max(0.1 * std::sqrt(c), 1.5 * std::sqrt(q))) << what;
    e2 += e;
    q2 += q;
  }
  double ratio() const { return std::sqrt(e2 / std::max(q2, 1e-30)); }
};

struct Loaded {
  std::vector<uint8_t> file;
  tqkv::GgufFile g;
  std::unique_ptr<tqkv::Model> model;
  std::unique_ptr<tqkv::GpuModel> gm;
};

void load(const tqkv::testing::SyntheticSpec& s, Loaded* L) {
  L->file = tqkv::testing::build_synthetic_gguf(s, 4321);
  auto g = tqkv::parse_gguf(L->file.data(), L->file.size());
  ASSERT_TRUE(g.is_ok()) << g.status().to_string();
  L->g = std::move(*g);
  auto model = tqkv::Model::from_gguf(&L->g);
  ASSERT_TRUE(model.is_ok()) << model.status().to_string();
  L->model = std::move(*model);
  auto gm = tqkv::GpuModel::from_gguf(L->g, L->model->config());
  ASSERT_TRUE(gm.is_ok()) << gm.status().to_string();
  L->gm = std::move(*gm);
}

// GPU logits of every row: prompt prefilled (kAll) in chunks of `chunk`, then decode steps.
void gpu_run(const tqkv::GpuModel& gm, tqkv::KvFormat fmt, GpuPrefillPath path, const std::vector<int32_t>& ids,
             int pre, int chunk, std::vector<float>* out, std::string* path_name) {
  const int V = gm.config().n_vocab, T = static_cast<int>(ids.size());
  tqkv::GpuContextOptions o;
  o.format = fmt;
  o.max_tokens = T;
  o.max_chunk = chunk;
  o.prefill_path = path;
  auto ctx = tqkv::GpuContext::create(gm, o);
  ASSERT_TRUE(ctx.is_ok()) << ctx.status().to_string();
  *path_name = (*ctx)->prefill_path_name();
  out->assign(static_cast<size_t>(T) * V, NAN);
  auto st = (*ctx)->prefill(0, ids.data(), pre, out->data(), tqkv::LogitsMode::kAll);
  ASSERT_TRUE(st.is_ok()) << st.to_string();
  for (int t = pre; t < T; ++t) {
    st = (*ctx)->decode(&ids[t], 1, out->data() + static_cast<size_t>(t) * V, nullptr);
    ASSERT_TRUE(st.is_ok()) << st.to_string();
  }
}

void check_paths(const tqkv::testing::SyntheticSpec& s, int n_tokens) {
  Loaded L;
  load(s, &L);
  if (::testing::Test::HasFatalFailure()) return;
  const tqkv::ModelConfig& c = L.model->config();
  const int V = c.n_vocab, T = n_tokens, pre = T - 4;
  std::vector<int32_t> ids(static_cast<size_t>(T));
  std::mt19937 rng(11);
  for (int32_t& id : ids) id = static_cast<int32_t>(rng() % V);
  std::vector<float> cpu_f16;
  for (const char* fs : {"f16", "k4v4"}) {
    auto fmt = tqkv::parse_kv_format(fs);
    ASSERT_TRUE(fmt.is_ok());
    tqkv::KvOptions ko;
    ko.format = *fmt;
    ko.max_tokens = T;
    auto kv = tqkv::make_kv_backend(c, ko);
    ASSERT_TRUE(kv.is_ok()) << kv.status().to_string();
    std::vector<float> cpu(static_cast<size_t>(T) * V);
    ASSERT_TRUE(L.model->forward(ids.data(), pre, 0, **kv, cpu.data(), tqkv::LogitsMode::kAll).is_ok());
    for (int t = pre; t < T; ++t)
      ASSERT_TRUE(L.model->forward(&ids[t], 1, t, **kv, cpu.data() + static_cast<size_t>(t) * V, tqkv::LogitsMode::kLast).is_ok());

    std::vector<float> tiled, dec;
    std::string name_t, name_d;
    gpu_run(*L.gm, *fmt, GpuPrefillPath::kTiled, ids, pre, 32, &tiled, &name_t);
    if (::testing::Test::HasFatalFailure()) return;
    gpu_run(*L.gm, *fmt, GpuPrefillPath::kDecode, ids, pre, 32, &dec, &name_d);
    if (::testing::Test::HasFatalFailure()) return;
    EXPECT_EQ(name_t, "tiled");
    EXPECT_EQ(name_d, "decode");

    const bool f16 = std::string(fs) == "f16";
    double worst_td = 0, worst_tc = 0;
    int top1_td = 0, ties = 0;
    RatioCheck vs_cpu, vs_dec;
    for (int t = 0; t < T; ++t) {
      const size_t off = static_cast<size_t>(t) * V;
      const float *a = tiled.data() + off, *d = dec.data() + off, *b = cpu.data() + off;
      const std::string what = s.arch + " " + fs + " row " + std::to_string(t) + (t < pre ? " (prefill)" : " (decode)");
      const double td = rel_l2(a, d, V), tc = rel_l2(a, b, V);
      worst_td = std::max(worst_td, td);
      worst_tc = std::max(worst_tc, tc);
      top1_td += top1(a, V) != top1(d, V) ? 1 : 0;
      if (f16) {
        EXPECT_LE(td, 1e-2) << what << ": tiled vs decode path";
        EXPECT_LE(tc, 2e-2) << what << ": tiled vs CPU";
        const int ac = top1(b, V);
        float second = -INFINITY;
        for (int i = 0; i < V; ++i)
          if (i != ac) second = std::max(second, b[i]);
        if (top1(a, V) != ac) {
          if (b[ac] - second > 0.1f) ADD_FAILURE() << what << ": top-1 differs from the CPU's (margin " << b[ac] - second << ")";
          else ++ties;
        }
      } else {
        vs_cpu.add(a, b, b, cpu_f16.data() + off, V, what + ": tiled vs CPU");
        vs_dec.add(a, d, b, cpu_f16.data() + off, V, what + ": tiled vs decode path");
      }
    }
    if (f16) {
      cpu_f16 = cpu;
      std::printf("[gpu prefill] %-6s f16 : %d rows, tiled vs decode path worst rel L2 %.3g (top-1 differs %d), tiled vs CPU "
                  "worst %.3g (near ties %d)\n", s.arch.c_str(), T, worst_td, top1_td, worst_tc, ties);
    } else {
      EXPECT_LE(vs_cpu.ratio(), 0.75) << s.arch << ": tiled k4v4 vs CPU k4v4";
      EXPECT_LE(vs_dec.ratio(), 0.75) << s.arch << ": tiled k4v4 vs decode-path k4v4";
      std::printf("[gpu prefill] %-6s k4v4: %d rows, |tiled - cpu| / |cpu k4v4 - cpu f16| = %.3f, |tiled - decode path| / "
                  "same = %.3f, worst rel L2 tiled vs decode path %.3g (top-1 differs %d)\n", s.arch.c_str(), T,
                  vs_cpu.ratio(), vs_dec.ratio(), worst_td, top1_td);
    }
  }
}

tqkv::testing::SyntheticSpec llama_spec() {
  tqkv::testing::SyntheticSpec s{"llama", 128, 2, 4, 2, 64, 192};
  s.rope_freqs = true;
  s.wtype = GgmlType::kQ8_0;
  return s;
}

tqkv::testing::SyntheticSpec gemma3_spec() {
  tqkv::testing::SyntheticSpec s{"gemma3", 128, 7, 4, 1, 128, 192};
  s.window = 20;
  s.wtype = GgmlType::kQ8_0;
  return s;
}

TEST(GpuPrefill, LlamaTiledMatchesDecodePathAndCpu) {
  SKIP_WITHOUT_GPU();
  check_paths(llama_spec(), 90);  // chunks of 32, 32, 22
}

TEST(GpuPrefill, Gemma3SlidingTiledMatchesDecodePathAndCpu) {
  SKIP_WITHOUT_GPU();
  check_paths(gemma3_spec(), 134);  // 130 prompt tokens: the 6-page sliding ring wraps
}

// Several sequences per chunk (q_lens of 2-3 sequences on the device) and a sequence split over
// chunks, against each sequence prefilled alone; then one decode step of all three.
TEST(GpuPrefill, BatchOfSequencesMatchesOneByOne) {
  SKIP_WITHOUT_GPU();
  for (const auto& spec : {llama_spec(), gemma3_spec()}) {
    Loaded L;
    load(spec, &L);
    if (::testing::Test::HasFatalFailure()) return;
    const int V = L.model->config().n_vocab;
    const std::vector<int> lens = {37, 70, 5};
    std::vector<std::vector<int32_t>> ids(3);
    std::mt19937 rng(3);
    for (int i = 0; i < 3; ++i) {
      ids[i].resize(static_cast<size_t>(lens[i]) + 1);
      for (int32_t& id : ids[i]) id = static_cast<int32_t>(rng() % V);
    }
    for (GpuPrefillPath path : {GpuPrefillPath::kTiled, GpuPrefillPath::kDecode}) {
      tqkv::GpuContextOptions o;
      o.format = {16, 16};
      o.max_tokens = 80;
      o.max_chunk = 32;
      o.max_seqs = 3;
      o.prefill_path = path;
      // One by one (prefill of one sequence), then one decode step each.
      std::vector<float> alone(static_cast<size_t>(3) * V), alone_next(static_cast<size_t>(3) * V);
      for (int i = 0; i < 3; ++i) {
        auto ctx = tqkv::GpuContext::create(*L.gm, o);
        ASSERT_TRUE(ctx.is_ok()) << ctx.status().to_string();
        ASSERT_TRUE((*ctx)->prefill(0, ids[i].data(), lens[i], alone.data() + static_cast<size_t>(i) * V,
                                    tqkv::LogitsMode::kLast).is_ok());
        ASSERT_TRUE((*ctx)->decode(&ids[i][lens[i]], 1, alone_next.data() + static_cast<size_t>(i) * V, nullptr).is_ok());
      }
      auto ctx = tqkv::GpuContext::create(*L.gm, o);
      ASSERT_TRUE(ctx.is_ok()) << ctx.status().to_string();
      // Slots in another order than the calls (sequence slot 2 first).
      const int seqs[3] = {2, 0, 1};
      const int32_t* toks[3] = {ids[0].data(), ids[1].data(), ids[2].data()};
      std::vector<float> batch(static_cast<size_t>(3) * V, NAN), next(static_cast<size_t>(3) * V, NAN);
      auto st = (*ctx)->prefill_batch(seqs, toks, lens.data(), 3, batch.data());
      ASSERT_TRUE(st.is_ok()) << st.to_string();
      for (int i = 0; i < 3; ++i) EXPECT_EQ((*ctx)->seq_len(seqs[i]), lens[i]);
      const int32_t step[3] = {ids[1][lens[1]], ids[2][lens[2]], ids[0][lens[0]]};  // slots 0, 1, 2
      ASSERT_TRUE((*ctx)->decode(step, 3, next.data(), nullptr).is_ok());
      double worst = 0;
      for (int i = 0; i < 3; ++i) {
        const std::string what = spec.arch + " " + (*ctx)->prefill_path_name() + " sequence " + std::to_string(i);
        const double r = rel_l2(batch.data() + static_cast<size_t>(i) * V, alone.data() + static_cast<size_t>(i) * V, V);
        const double rn = rel_l2(next.data() + static_cast<size_t>(seqs[i]) * V, alone_next.data() + static_cast<size_t>(i) * V, V);
        EXPECT_LE(r, 1e-2) << what << ": batched prefill vs alone";
        EXPECT_LE(rn, 1e-2) << what << ": decode after batched prefill vs alone";
        worst = std::max({worst, r, rn});
      }
      std::printf("[gpu prefill batch] %-6s %-6s: 3 sequences (37, 70, 5 tokens, chunks of 32) vs one by one, worst rel L2 %.3g\n",
                  spec.arch.c_str(), (*ctx)->prefill_path_name(), worst);
    }
  }
}

TEST(GpuPrefill, EnvironmentSelectsDecodePathAndBadBatchIsAnError) {
  SKIP_WITHOUT_GPU();
  Loaded L;
  load(llama_spec(), &L);
  if (::testing::Test::HasFatalFailure()) return;
  tqkv::GpuContextOptions o;
  o.max_tokens = 16;
  o.max_seqs = 2;
  const char* old = std::getenv("TQKV_GPU_PREFILL");
  const std::string saved = old ? old : "";
  setenv("TQKV_GPU_PREFILL", "decode", 1);
  auto cd = tqkv::GpuContext::create(*L.gm, o);
  setenv("TQKV_GPU_PREFILL", "tiled", 1);
  auto ct = tqkv::GpuContext::create(*L.gm, o);
  if (old) setenv("TQKV_GPU_PREFILL", saved.c_str(), 1);
  else unsetenv("TQKV_GPU_PREFILL");
  ASSERT_TRUE(cd.is_ok() && ct.is_ok());
  EXPECT_STREQ((*cd)->prefill_path_name(), "decode");
  EXPECT_STREQ((*ct)->prefill_path_name(), "tiled");

  const std::vector<int32_t> a = {1, 2, 3};
  const int32_t* toks[2] = {a.data(), a.data()};
  const int twice[2] = {1, 1}, ok[2] = {0, 1}, n[2] = {3, 3}, too_long[2] = {3, 17}, none[2] = {3, 0};
  auto& ctx = **ct;
  EXPECT_EQ(ctx.prefill_batch(twice, toks, n, 2, nullptr).code(), tqkv::StatusCode::kInvalidArgument);
  EXPECT_EQ(ctx.prefill_batch(ok, toks, too_long, 2, nullptr).code(), tqkv::StatusCode::kOutOfRange);
  EXPECT_EQ(ctx.prefill_batch(ok, toks, none, 2, nullptr).code(), tqkv::StatusCode::kInvalidArgument);
  const int bad_slot[2] = {0, 2};
  EXPECT_EQ(ctx.prefill_batch(bad_slot, toks, n, 2, nullptr).code(), tqkv::StatusCode::kOutOfRange);
  EXPECT_EQ(ctx.seq_len(0), 0);
  EXPECT_EQ(ctx.seq_len(1), 0);
  EXPECT_TRUE(ctx.prefill_batch(ok, toks, n, 2, nullptr).is_ok());
  EXPECT_EQ(ctx.seq_len(1), 3);
  o.center_keys = true;
  o.format = {4, 4};
  auto cc = tqkv::GpuContext::create(*L.gm, o);
  ASSERT_TRUE(cc.is_ok());
  EXPECT_EQ((*cc)->prefill_batch(ok, toks, n, 2, nullptr).code(), tqkv::StatusCode::kUnsupported);
}

}  // namespace
