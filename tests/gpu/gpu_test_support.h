// Shared set-up of the GPU runtime tests (tests/gpu): the skip without a GPU, the synthetic models
// they use (tests/common/synthetic_gguf.h) loaded on both runtimes, random token ids, logits of
// every position from the CPU and from a GpuContext (a prefill then one decode step per token), and
// the row checks of GPU logits against the CPU's. Test-only, header-only; the tolerances stay with
// the tests that pass them (see each file's header comment).
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "../common/synthetic_gguf.h"
#include "tqkv/gpu_model.h"
#include "tqkv/model.h"

#define SKIP_WITHOUT_GPU()                                                  \
  do {                                                                      \
    auto _st = tqkv::gpu_available();                                       \
    if (!_st.is_ok()) GTEST_SKIP() << "no GPU: " << _st.to_string();        \
  } while (0)

namespace tqkv::testing {

// ---- the synthetic models the tests share -------------------------------------------------------
// Llama: GQA 4:2, head size 64 (Hadamard rotation), rope_freqs, Q8_0 matrices.
inline SyntheticSpec llama_spec() {
  SyntheticSpec s{"llama", 128, 2, 4, 2, 64, 192};
  s.rope_freqs = true;
  s.wtype = GgmlType::kQ8_0;
  return s;
}
// Qwen2: GQA 2:1, head size 64, Q/K/V biases, untied output.
inline SyntheticSpec qwen2_spec() {
  SyntheticSpec s{"qwen2", 128, 2, 2, 1, 64, 192};
  s.tied = false;
  return s;
}
// Phi-3: fused QKV, 2 heads of `head_dim` (96 or 80: not a power of two, dense rotation), untied.
inline SyntheticSpec phi3_spec(int head_dim) {
  SyntheticSpec s{"phi3", 2 * head_dim, 2, 2, 2, head_dim, 128};
  s.tied = false;
  return s;
}
// Gemma 2: 3 layers alternating sliding window 20 / global, attention and final soft-capping.
inline SyntheticSpec gemma2_spec() {
  SyntheticSpec s{"gemma2", 128, 3, 4, 2, 64, 192};
  s.window = 20;
  s.attn_softcap = 2.0f;
  s.final_softcap = 3.0f;
  return s;
}
// Gemma 3: 7 layers (6 with sliding window 20, layer 5 global), head size 128, GQA 4:1, Q8_0.
inline SyntheticSpec gemma3_spec() {
  SyntheticSpec s{"gemma3", 128, 7, 4, 1, 128, 192};
  s.window = 20;
  s.wtype = GgmlType::kQ8_0;
  return s;
}

// A synthetic model on both runtimes. The CPU model points at `g`, which points into `file`: load
// into the object where it stays (it cannot be moved).
struct SyntheticModels {
  std::vector<uint8_t> file;
  GgufFile g;
  std::unique_ptr<Model> cpu;
  std::unique_ptr<GpuModel> gpu;
  SyntheticModels() = default;
  SyntheticModels(SyntheticModels&&) = delete;
};

// gtest assertions: call through ASSERT_NO_FATAL_FAILURE.
inline void load_synthetic(const SyntheticSpec& s, uint64_t seed, SyntheticModels& m) {
  m.file = build_synthetic_gguf(s, seed);
  auto g = parse_gguf(m.file.data(), m.file.size());
  ASSERT_TRUE(g.is_ok()) << g.status().to_string();
  m.g = std::move(*g);
  auto model = Model::from_gguf(&m.g);
  ASSERT_TRUE(model.is_ok()) << model.status().to_string();
  m.cpu = std::move(*model);
  auto gm = GpuModel::from_gguf(m.g, m.cpu->config());
  ASSERT_TRUE(gm.is_ok()) << gm.status().to_string();
  m.gpu = std::move(*gm);
}

// ---- token ids ----------------------------------------------------------------------------------
inline std::vector<int32_t> random_tokens(int n, int vocab, uint32_t seed) {
  std::vector<int32_t> ids(static_cast<size_t>(n));
  std::mt19937 rng(seed);
  for (int32_t& id : ids) id = static_cast<int32_t>(rng() % vocab);
  return ids;
}

// lens[i] + 1 tokens for sequence i (a prompt of lens[i] and the token of one decode step), drawn
// in order from one generator.
inline std::vector<std::vector<int32_t>> random_sequences(const std::vector<int>& lens, int vocab, uint32_t seed) {
  std::vector<std::vector<int32_t>> ids(lens.size());
  std::mt19937 rng(seed);
  for (size_t i = 0; i < lens.size(); ++i) {
    ids[i].resize(static_cast<size_t>(lens[i]) + 1);
    for (int32_t& id : ids[i]) id = static_cast<int32_t>(rng() % vocab);
  }
  return ids;
}

// ---- logits of every position -------------------------------------------------------------------
// CPU (a KV backend made from `ko`, max_tokens = ids.size()): the first `pre` tokens in one forward
// (kAll), then one token at a time. *out: ids.size() rows of n_vocab. ASSERT_NO_FATAL_FAILURE.
inline void cpu_logits(Model& m, const std::vector<int32_t>& ids, int pre, KvOptions ko, std::vector<float>* out) {
  const int V = m.config().n_vocab, T = static_cast<int>(ids.size());
  out->assign(static_cast<size_t>(T) * V, NAN);
  ko.max_tokens = T;
  auto kv = make_kv_backend(m.config(), ko);
  ASSERT_TRUE(kv.is_ok()) << kv.status().to_string();
  ASSERT_TRUE(m.forward(ids.data(), pre, 0, **kv, out->data(), LogitsMode::kAll).is_ok());
  for (int t = pre; t < T; ++t)
    ASSERT_TRUE(m.forward(&ids[t], 1, t, **kv, out->data() + static_cast<size_t>(t) * V, LogitsMode::kLast).is_ok());
}

// GPU, the same rows: a context made from `o` (slot 0), prefill() of the first `pre` tokens (kAll, in
// chunks of o.max_chunk), then one decode step per token (CUDA graph replays from the second on).
// The context is handed back in *ctx_out when given. ASSERT_NO_FATAL_FAILURE.
inline void gpu_logits(const GpuModel& gm, const GpuContextOptions& o, const std::vector<int32_t>& ids, int pre,
                       std::vector<float>* out, std::unique_ptr<GpuContext>* ctx_out = nullptr) {
  const int V = gm.config().n_vocab, T = static_cast<int>(ids.size());
  auto ctx = GpuContext::create(gm, o);
  ASSERT_TRUE(ctx.is_ok()) << ctx.status().to_string();
  out->assign(static_cast<size_t>(T) * V, NAN);
  auto st = (*ctx)->prefill(0, ids.data(), pre, out->data(), LogitsMode::kAll);
  ASSERT_TRUE(st.is_ok()) << st.to_string();
  for (int t = pre; t < T; ++t) {
    st = (*ctx)->decode(&ids[t], 1, out->data() + static_cast<size_t>(t) * V, nullptr);
    ASSERT_TRUE(st.is_ok()) << st.to_string();
  }
  if (ctx_out) *ctx_out = std::move(*ctx);
}

// ---- row checks ---------------------------------------------------------------------------------
// ||a - b|| / ||b||; 1e30 where `a` holds a NaN or infinity.
inline double rel_l2(const float* a, const float* b, int V) {
  double num = 0, den = 0;
  for (int i = 0; i < V; ++i) {
    if (!std::isfinite(a[i])) return 1e30;
    num += (static_cast<double>(a[i]) - b[i]) * (static_cast<double>(a[i]) - b[i]);
    den += static_cast<double>(b[i]) * b[i];
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

// sum (a[i] - b[i])^2 in double, in index order.
inline double sum_sq_diff(const float* a, const float* b, size_t n) {
  double s = 0;
  for (size_t i = 0; i < n; ++i) s += (static_cast<double>(a[i]) - b[i]) * (static_cast<double>(a[i]) - b[i]);
  return s;
}

// Rows of GPU logits against the CPU's, one call per row, with the statistics the tests print.
struct RowCheck {
  double worst_rel = 0;
  int rows = 0, top1_mismatch = 0, near_ties = 0;
  double sum_err2 = 0, sum_q2 = 0;  // compressed formats: squared distances to the CPU and of the compression

  // f16 cache: relative L2 <= tol, no NaN, and the same top-1 wherever the CPU's best two logits
  // differ by more than 0.1 (closer ties are counted in near_ties).
  void add(const float* gpu, const float* cpu, int V, double tol, const std::string& what) {
    double num = 0, den = 0;
    int ag = 0, ac = 0;
    bool nan = false;
    for (int i = 0; i < V; ++i) {
      if (!std::isfinite(gpu[i])) nan = true;
      num += (static_cast<double>(gpu[i]) - cpu[i]) * (static_cast<double>(gpu[i]) - cpu[i]);
      den += static_cast<double>(cpu[i]) * cpu[i];
      if (gpu[i] > gpu[ag]) ag = i;
      if (cpu[i] > cpu[ac]) ac = i;
    }
    float second = -INFINITY;
    for (int i = 0; i < V; ++i)
      if (i != ac) second = std::max(second, cpu[i]);
    const double rel = std::sqrt(num / std::max(den, 1e-30));
    worst_rel = std::max(worst_rel, nan ? 1e30 : rel);
    ++rows;
    EXPECT_FALSE(nan) << what << ": NaN in the GPU logits";
    EXPECT_LE(rel, tol) << what << ": relative L2 error";
    if (ag != ac) {
      if (cpu[ac] - second > 0.1f) {
        ++top1_mismatch;
        ADD_FAILURE() << what << ": top-1 " << ag << " on the GPU, " << ac << " on the CPU (margin "
                      << cpu[ac] - second << ")";
      } else {
        ++near_ties;
      }
    }
  }

  // Compressed cache, `a` against `b`, relative to the compression's own effect on the CPU,
  // d_q = ||cpu_q - cpu_f16|| for the same row: per row ||a - b|| <= max(0.1 ||b||, 1.5 d_q), no
  // NaN; ratio() over all rows. Top-1 differences of a and b are counted in top1_mismatch.
  void add_ratio(const float* a, const float* b, const float* cpu_q, const float* cpu_f16, int V, const std::string& what) {
    double e2 = 0, q2 = 0, c2 = 0;
    bool nan = false;
    int ag = 0, ac = 0;
    for (int i = 0; i < V; ++i) {
      if (!std::isfinite(a[i])) nan = true;
      e2 += (static_cast<double>(a[i]) - b[i]) * (static_cast<double>(a[i]) - b[i]);
      q2 += (static_cast<double>(cpu_q[i]) - cpu_f16[i]) * (static_cast<double>(cpu_q[i]) - cpu_f16[i]);
      c2 += static_cast<double>(b[i]) * b[i];
      if (a[i] > a[ag]) ag = i;
      if (b[i] > b[ac]) ac = i;
    }
    EXPECT_FALSE(nan) << what << ": NaN in the GPU logits";
    EXPECT_LE(std::sqrt(e2), std::max(0.1 * std::sqrt(c2), 1.5 * std::sqrt(q2)))
        << what << ": " << std::sqrt(e2 / c2) << " apart (relative), compression moved the CPU by " << std::sqrt(q2 / c2);
    worst_rel = std::max(worst_rel, nan ? 1e30 : std::sqrt(e2 / std::max(c2, 1e-30)));
    sum_err2 += e2;
    sum_q2 += q2;
    top1_mismatch += ag != ac ? 1 : 0;
    ++rows;
  }
  // The GPU against the CPU with the same compressed format; `ref_f16` = the CPU's f16-cache row.
  void add_compressed(const float* gpu, const float* cpu, const float* ref_f16, int V, const std::string& what) {
    add_ratio(gpu, cpu, cpu, ref_f16, V, what);
  }
  // sqrt(sum ||a - b||^2 / sum d_q^2).
  double ratio() const { return std::sqrt(sum_err2 / std::max(sum_q2, 1e-30)); }
};

// ---- prefill_batch against one sequence at a time -----------------------------------------------
// Each sequence alone (slot 0 of a fresh context made from `o`): last-row logits of prefill() of
// its first lens[i] tokens, then one decode step of token lens[i]. Then one context with
// max_seqs = 3: prefill_batch of the three into slots 2, 0, 1 (another order than the calls), one
// decode step of all three. Each batched row against its alone row: relative L2 <= tol (messages:
// `what` + path name + " sequence i"); with check_seq_len also seq_len == lens[i] after
// prefill_batch. *worst: the largest relative L2; *path: the context's prefill path name.
inline void check_batch_vs_alone(const GpuModel& gm, GpuContextOptions o, const std::vector<std::vector<int32_t>>& ids,
                                 const std::vector<int>& lens, double tol, const std::string& what, bool check_seq_len,
                                 double* worst, std::string* path) {
  const int V = gm.config().n_vocab;
  std::vector<float> alone(static_cast<size_t>(3) * V), alone_next(static_cast<size_t>(3) * V);
  for (int i = 0; i < 3; ++i) {
    auto ctx = GpuContext::create(gm, o);
    ASSERT_TRUE(ctx.is_ok()) << ctx.status().to_string();
    ASSERT_TRUE((*ctx)->prefill(0, ids[i].data(), lens[i], alone.data() + static_cast<size_t>(i) * V,
                                LogitsMode::kLast).is_ok());
    ASSERT_TRUE((*ctx)->decode(&ids[i][lens[i]], 1, alone_next.data() + static_cast<size_t>(i) * V, nullptr).is_ok());
  }
  o.max_seqs = 3;
  auto ctx = GpuContext::create(gm, o);
  ASSERT_TRUE(ctx.is_ok()) << ctx.status().to_string();
  const int seqs[3] = {2, 0, 1};
  const int32_t* toks[3] = {ids[0].data(), ids[1].data(), ids[2].data()};
  std::vector<float> batch(static_cast<size_t>(3) * V, NAN), next(static_cast<size_t>(3) * V, NAN);
  auto st = (*ctx)->prefill_batch(seqs, toks, lens.data(), 3, batch.data());
  ASSERT_TRUE(st.is_ok()) << st.to_string();
  if (check_seq_len) {
    for (int i = 0; i < 3; ++i) EXPECT_EQ((*ctx)->seq_len(seqs[i]), lens[i]);
  }
  const int32_t step[3] = {ids[1][lens[1]], ids[2][lens[2]], ids[0][lens[0]]};  // slots 0, 1, 2
  ASSERT_TRUE((*ctx)->decode(step, 3, next.data(), nullptr).is_ok());
  *path = (*ctx)->prefill_path_name();
  *worst = 0;
  for (int i = 0; i < 3; ++i) {
    const std::string w = what + *path + " sequence " + std::to_string(i);
    const double r = rel_l2(batch.data() + static_cast<size_t>(i) * V, alone.data() + static_cast<size_t>(i) * V, V);
    const double rn = rel_l2(next.data() + static_cast<size_t>(seqs[i]) * V, alone_next.data() + static_cast<size_t>(i) * V, V);
    EXPECT_LE(r, tol) << w << ": batched prefill vs alone";
    EXPECT_LE(rn, tol) << w << ": decode after batched prefill vs alone";
    *worst = std::max({*worst, r, rn});
  }
}

}  // namespace tqkv::testing
