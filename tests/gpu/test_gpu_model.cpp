// The GPU model runtime against the CPU runtime. Skipped (with a message) without a GPU.
//
// 1. Synthetic: tiny random-weight models of all five architectures (written with the test GGUF
//    writer), run on the CPU runtime with an f16 paged cache and on the GPU with an f16 cache:
//    a chunked prefill (several GPU chunks; Gemma's sliding ring wraps) then decode steps (the
//    second one onwards replays a CUDA graph). Then k4v4 on both.
// 2. Real models, reduced: the first layers and 8192 vocabulary rows of SmolLM2-135M and
//    Gemma-3-270M, cut by tools/slice_gguf (the full files cannot travel to the GPU machine), with
//    CPU logits recorded from the same reduced files by `tqkv_slice_gguf logits` (fixture in
//    $TQKV_GPU_FIXTURES, default <source>/.device-gpu; skipped when absent).
//
// Tolerance, f16 KV cache (every compared row of logits): relative L2 error ||gpu - cpu|| / ||cpu||
// <= 2e-2 (the GPU keeps weights and GEMM inputs in fp16, the CPU in fp32; measured <= 2.5e-3),
// and the same top-1 token wherever the CPU's best two logits differ by more than 0.1 (closer ties
// are counted and printed, not failed). NaN fails.
// Compressed cache (k4v4): the GPU's K and V differ from the CPU's by fp16 rounding, so the few
// coordinates that sit within that rounding of a codebook boundary quantize to the neighbouring
// centroid, and the model amplifies this (a 4-bit cache moves these models' logits by 10-70%).
// So the check is relative to the compression's own effect d_q = ||cpu_k4v4 - cpu_f16||: over all
// rows, sqrt(sum ||gpu_k4v4 - cpu_k4v4||^2 / sum d_q^2) <= 0.75. Expected about 0.3 (K differs by
// ~1e-3 relative, so ~0.6% of coordinates flip to a neighbouring centroid, against the 4-bit
// quantization error of every coordinate); a GPU that quantized with another rotation or codebook
// (independent quantization noise) would land at about sqrt(2). Per row ||gpu - cpu|| <=
// max(0.1 ||cpu||, 1.5 d_q) (a bound on garbage). Top-1 differences are counted, not failed.
// Perplexity (synthetic Gemma 3): GPU f16 perplexity within 1% of the CPU's, k4v4 within 5%.
// Key centering (GpuContextOptions::center_keys against KvOptions::center_keys): the k4v4 ratio
// test above against the CPU's centered k4v4 for every synthetic model (Gemma 2 is soft-capped:
// not centered), on a Qwen2 with a large K bias also "closer to the CPU's centered than to its
// plain k4v4"; perplexity with centering within 5% of the CPU's and its KLD no higher than
// without. The reduced real models' fixtures are uncentered (tools/slice_gguf): compared so.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "gpu_test_support.h"

namespace {

using tqkv::GgmlType;
using namespace tqkv::testing;

// ---- synthetic models ---------------------------------------------------------------------------
struct Spec : tqkv::testing::SyntheticSpec {
  int n_tokens = 75;
  bool must_differ = false;  // centered test: GPU centered must be clearly closer to CPU centered than CPU plain
  // Centered test with key smoothing on both runtimes too (KvOptions / GpuContextOptions::smooth_keys).
  // Where the layers are soft-capped (not centered), smoothing is the only transform: when it moves
  // the CPU's logits by more than half the compression's effect, the GPU must also be closer to the
  // CPU's smoothed k4v4 than to its plain k4v4 (a GPU that did not smooth would not be).
  bool smooth = false;
  // The encoder's scale search on both runtimes (KvOptions / GpuContextOptions::scale_search). The
  // GPU must also be closer to the CPU's searched k4v4 than to the CPU's same run without the search
  // (a GPU that did not search would not be).
  bool search = false;
};

void check_synthetic(const Spec& s) {
  SyntheticModels m;
  ASSERT_NO_FATAL_FAILURE(load_synthetic(s, 4321, m));
  const int V = m.cpu->config().n_vocab, T = s.n_tokens, pre = T - 5;
  const std::vector<int32_t> ids = random_tokens(T, V, 7);
  std::vector<float> cpu_f16, cpu_q, gpu_q;
  for (const char* fs : {"f16", "k4v4"}) {
    auto fmt = tqkv::parse_kv_format(fs);
    ASSERT_TRUE(fmt.is_ok());
    tqkv::KvOptions ko;
    ko.format = *fmt;
    std::vector<float> cpu, gpu;
    ASSERT_NO_FATAL_FAILURE(cpu_logits(*m.cpu, ids, pre, ko, &cpu));

    tqkv::GpuContextOptions o;
    o.format = *fmt;
    o.max_tokens = T;
    o.max_chunk = 32;  // several GPU chunks in the prefill
    std::unique_ptr<tqkv::GpuContext> ctx;
    ASSERT_NO_FATAL_FAILURE(gpu_logits(*m.gpu, o, ids, pre, &gpu, &ctx));
    EXPECT_EQ(ctx->seq_len(0), T);
    RowCheck rc;
    const bool f16 = std::string(fs) == "f16";
    for (int t = 0; t < T; ++t) {
      const size_t off = static_cast<size_t>(t) * V;
      const std::string what = s.arch + " " + fs + " position " + std::to_string(t);
      if (f16) rc.add(gpu.data() + off, cpu.data() + off, V, 2e-2, what);
      else rc.add_compressed(gpu.data() + off, cpu.data() + off, cpu_f16.data() + off, V, what);
    }
    if (f16) {
      cpu_f16 = cpu;
      std::printf("[gpu synthetic] %-6s %-4s: %d rows, worst relative L2 %.3g, top-1 mismatches %d, near ties %d\n",
                  s.arch.c_str(), fs, rc.rows, rc.worst_rel, rc.top1_mismatch, rc.near_ties);
    } else {
      cpu_q = cpu;
      gpu_q = gpu;
      EXPECT_LE(rc.ratio(), 0.75) << s.arch << ": GPU k4v4 is not much closer to the CPU's k4v4 than compression moves it";
      std::printf("[gpu synthetic] %-6s %-4s: %d rows, worst relative L2 %.3g, |gpu-cpu| / |cpu k4v4 - cpu f16| = %.3f, "
                  "top-1 differences %d\n", s.arch.c_str(), fs, rc.rows, rc.worst_rel, rc.ratio(), rc.top1_mismatch);
    }
  }

  // k4v4 with key centering on both runtimes. The GPU's first prefill chunk is the CPU's first
  // write (Model::kMaxChunk tokens), so both subtract the same mu (up to the fp16 rounding of K):
  // the same ratio test against the CPU's centered k4v4. Where centering applies (no soft-capping)
  // and moves the keys a lot (`must_differ`: a large K bias), the GPU's centered logits must also
  // be closer to the CPU's centered ones than to the CPU's plain k4v4 (a GPU that did not center,
  // or used another mu, would not be).
  tqkv::KvOptions ko;
  ko.format = {4, 4};
  ko.center_keys = true;
  ko.smooth_keys = s.smooth;
  ko.scale_search = s.search;
  std::vector<float> cpu, gpu, cpu_ns;
  ASSERT_NO_FATAL_FAILURE(cpu_logits(*m.cpu, ids, pre, ko, &cpu));
  if (s.search) {
    ko.scale_search = false;
    ASSERT_NO_FATAL_FAILURE(cpu_logits(*m.cpu, ids, pre, ko, &cpu_ns));
  }
  tqkv::GpuContextOptions o;
  o.format = {4, 4};
  o.max_tokens = T;
  o.max_chunk = tqkv::Model::kMaxChunk;  // > 1 chunk still for T - 5 > 64
  o.center_keys = true;
  o.smooth_keys = s.smooth;
  o.scale_search = s.search;
  std::unique_ptr<tqkv::GpuContext> ctx;
  ASSERT_NO_FATAL_FAILURE(gpu_logits(*m.gpu, o, ids, pre, &gpu, &ctx));
  const bool centers = s.attn_softcap <= 0.0f;
  EXPECT_EQ(ctx->describe().find("keys centered") != std::string::npos, centers) << ctx->describe();
  EXPECT_EQ(ctx->describe().find("keys smoothed") != std::string::npos, s.smooth) << ctx->describe();
  RowCheck rc, rc_plain;
  for (int t = 0; t < T; ++t) {
    const size_t off = static_cast<size_t>(t) * V;
    rc.add_compressed(gpu.data() + off, cpu.data() + off, cpu_f16.data() + off, V, s.arch + " k4v4 centered position " + std::to_string(t));
  }
  rc_plain.sum_err2 = sum_sq_diff(gpu.data(), cpu_q.data(), gpu.size());
  rc_plain.sum_q2 = rc.sum_q2;
  const double move2 = sum_sq_diff(cpu.data(), cpu_q.data(), cpu.size());  // how far centering moved the CPU's logits
  EXPECT_LE(rc.ratio(), 0.75) << s.arch << ": GPU centered k4v4 is not much closer to the CPU's centered k4v4 than compression moves it";
  if (s.search) {
    const double e_ns = sum_sq_diff(gpu.data(), cpu_ns.data(), gpu.size());
    const double m_ns = sum_sq_diff(cpu.data(), cpu_ns.data(), cpu.size());
    const double r_ns = std::sqrt(e_ns / std::max(rc.sum_q2, 1e-30)), moved_ns = std::sqrt(m_ns / std::max(rc.sum_q2, 1e-30));
    std::printf("[gpu synthetic] %-6s scale search: |gpu - cpu searched| / |cpu k4v4 - cpu f16| = %.3f, |gpu - cpu not "
                "searched| / same = %.3f, the search moved the CPU by %.3f of that\n", s.arch.c_str(), rc.ratio(), r_ns, moved_ns);
    EXPECT_GT(moved_ns, 0.3) << "the search hardly moved the CPU's logits: the test could not tell";
    EXPECT_LT(rc.ratio(), 0.75 * r_ns) << s.arch << ": GPU searched k4v4 is not closer to the CPU's searched k4v4 than to "
                                       << "its k4v4 without the search";
  }
  const double moved = std::sqrt(move2 / std::max(rc.sum_q2, 1e-30));
  if (s.must_differ || (s.smooth && !centers && moved > 0.5)) {
    EXPECT_LT(rc.ratio(), 0.75 * rc_plain.ratio()) << s.arch << ": GPU centered/smoothed k4v4 is not closer to the CPU's "
                                                   << "centered/smoothed k4v4 than to its plain k4v4";
  }
  std::printf("[gpu synthetic] %-6s k4v4 centered%s: %d rows, worst relative L2 %.3g, |gpu-cpu centered| / |cpu k4v4 - cpu f16| = %.3f, "
              "|gpu centered - cpu plain k4v4| / same = %.3f, centering moved the CPU by %.3f of that, top-1 differences %d%s\n",
              s.arch.c_str(), s.smooth ? " + smoothed" : "", rc.rows, rc.worst_rel, rc.ratio(), rc_plain.ratio(), moved,
              rc.top1_mismatch, centers ? "" : " (soft-capped: not centered)");
}

TEST(GpuSynthetic, Llama) {
  SKIP_WITHOUT_GPU();
  Spec s{llama_spec()};
  check_synthetic(s);
}
TEST(GpuSynthetic, Qwen2) {
  SKIP_WITHOUT_GPU();
  Spec s{qwen2_spec()};
  s.wtype = GgmlType::kQ4_1;
  check_synthetic(s);
}
TEST(GpuSynthetic, Phi3) {
  SKIP_WITHOUT_GPU();
  Spec s{phi3_spec(96)};
  check_synthetic(s);
}
// Head size 80 (not a power of two: dense rotation; not a whole number of warps in the RoPE kernel).
TEST(GpuSynthetic, Phi3HeadDim80) {
  SKIP_WITHOUT_GPU();
  Spec s{phi3_spec(80)};
  check_synthetic(s);
}
TEST(GpuSynthetic, Gemma2) {
  SKIP_WITHOUT_GPU();
  Spec s{gemma2_spec()};
  check_synthetic(s);
}
TEST(GpuSynthetic, Gemma3) {
  SKIP_WITHOUT_GPU();
  Spec s{gemma3_spec()};
  s.n_tokens = 130;  // the sliding ring (ceil((20 + 32) / 16) + 2 = 6 pages = 96 tokens) wraps
  check_synthetic(s);
}

// Key smoothing on both runtimes (with centering on Llama; alone on the soft-capped Gemma 2; GQA 2
// and 4; Phi-3 at head size 96: dense rotation).
TEST(GpuSynthetic, LlamaSmoothedKeys) {
  SKIP_WITHOUT_GPU();
  Spec s{llama_spec()};
  s.smooth = true;
  check_synthetic(s);
}
TEST(GpuSynthetic, Gemma2SmoothedKeys) {
  SKIP_WITHOUT_GPU();
  Spec s{{"gemma2", 128, 3, 4, 1, 64, 192}};
  s.window = 20;
  s.attn_softcap = 2.0f;
  s.final_softcap = 3.0f;
  s.smooth = true;
  check_synthetic(s);
}
// The encoder's scale search on both runtimes (with centering and smoothing, the CLI's defaults):
// head size 64 (Hadamard) and 96 (dense rotation).
TEST(GpuSynthetic, LlamaScaleSearch) {
  SKIP_WITHOUT_GPU();
  Spec s{llama_spec()};
  s.smooth = true;
  s.search = true;
  check_synthetic(s);
}
TEST(GpuSynthetic, Phi3ScaleSearch) {
  SKIP_WITHOUT_GPU();
  Spec s{phi3_spec(96)};
  s.smooth = true;
  s.search = true;
  check_synthetic(s);
}
TEST(GpuSynthetic, Phi3SmoothedKeys) {
  SKIP_WITHOUT_GPU();
  Spec s{phi3_spec(96)};
  s.smooth = true;
  check_synthetic(s);
}

// Qwen2 with a large K bias (mean 1 per coordinate: a common key component, which centering removes).
TEST(GpuSynthetic, Qwen2KeyBiasCentered) {
  SKIP_WITHOUT_GPU();
  Spec s{qwen2_spec()};
  s.k_bias = 1.0f;
  s.must_differ = true;
  s.n_tokens = 100;
  check_synthetic(s);
}

// Key centering in gpu_evaluate_perplexity: against the CPU's centered perplexity, and the KLD to
// the f16 cache no higher than without centering (Qwen2 with a large K bias: clearly lower).
TEST(GpuSynthetic, PerplexityCenteredKeys) {
  SKIP_WITHOUT_GPU();
  Spec s{qwen2_spec()};
  s.k_bias = 1.0f;
  SyntheticModels m;
  ASSERT_NO_FATAL_FAILURE(load_synthetic(s, 4321, m));
  const std::vector<int32_t> ids = random_tokens(64 * 4 + 5, m.cpu->config().n_vocab, 5);
  tqkv::PerplexityOptions po;
  po.ctx = 64;
  po.format = {4, 4};
  po.center_keys = false;
  auto gpu_plain = tqkv::gpu_evaluate_perplexity(*m.gpu, ids, po, nullptr);
  ASSERT_TRUE(gpu_plain.is_ok()) << gpu_plain.status().to_string();
  auto cpu_plain = tqkv::evaluate_perplexity(*m.cpu, ids, po, nullptr);
  ASSERT_TRUE(cpu_plain.is_ok()) << cpu_plain.status().to_string();
  po.center_keys = true;
  auto cpu = tqkv::evaluate_perplexity(*m.cpu, ids, po, nullptr);
  ASSERT_TRUE(cpu.is_ok()) << cpu.status().to_string();
  auto gpu = tqkv::gpu_evaluate_perplexity(*m.gpu, ids, po, nullptr);
  ASSERT_TRUE(gpu.is_ok()) << gpu.status().to_string();
  ASSERT_TRUE(gpu->compared && gpu_plain->compared);
  EXPECT_NEAR(gpu->ppl, cpu->ppl, 5e-2 * cpu->ppl);
  EXPECT_LE(gpu->kld_mean, gpu_plain->kld_mean) << "centering raised the GPU's KLD";
  po.center_values = true;
  EXPECT_EQ(tqkv::gpu_evaluate_perplexity(*m.gpu, ids, po, nullptr).status().code(), tqkv::StatusCode::kUnsupported);
  std::printf("[gpu perplexity centered] k4v4 ppl %.4f (cpu %.4f), KLD %.5f (cpu %.5f); plain: ppl %.4f (cpu %.4f), "
              "KLD %.5f (cpu %.5f); f16 %.4f\n", gpu->ppl, cpu->ppl, gpu->kld_mean, cpu->kld_mean, gpu_plain->ppl,
              cpu_plain->ppl, gpu_plain->kld_mean, cpu_plain->kld_mean, gpu->f16_ppl);
}

// gpu_evaluate_perplexity against evaluate_perplexity (CPU) on the same model and tokens.
TEST(GpuSynthetic, PerplexityMatchesCpu) {
  SKIP_WITHOUT_GPU();
  Spec s{{"gemma3", 128, 7, 4, 1, 128, 192}};
  s.window = 20;
  SyntheticModels m;
  ASSERT_NO_FATAL_FAILURE(load_synthetic(s, 4321, m));
  const std::vector<int32_t> ids = random_tokens(64 * 3 + 5, m.cpu->config().n_vocab, 3);
  tqkv::PerplexityOptions po;
  po.ctx = 64;
  po.format = {4, 4};
  auto cpu = tqkv::evaluate_perplexity(*m.cpu, ids, po, nullptr);
  ASSERT_TRUE(cpu.is_ok()) << cpu.status().to_string();
  auto gpu = tqkv::gpu_evaluate_perplexity(*m.gpu, ids, po, nullptr);
  ASSERT_TRUE(gpu.is_ok()) << gpu.status().to_string();
  EXPECT_EQ(gpu->chunks, 3);
  EXPECT_EQ(gpu->scored, cpu->scored);
  ASSERT_TRUE(gpu->compared);
  EXPECT_NEAR(gpu->f16_ppl, cpu->f16_ppl, 1e-2 * cpu->f16_ppl);
  EXPECT_NEAR(gpu->ppl, cpu->ppl, 5e-2 * cpu->ppl);
  EXPECT_TRUE(std::isfinite(gpu->kld_mean) && gpu->kld_mean >= 0);
  std::printf("[gpu perplexity] f16 %.4f (cpu %.4f), k4v4 %.4f (cpu %.4f), KLD %.4f (cpu %.4f), top-1 %.3f (cpu %.3f)\n",
              gpu->f16_ppl, cpu->f16_ppl, gpu->ppl, cpu->ppl, gpu->kld_mean, cpu->kld_mean, gpu->top1_agreement,
              cpu->top1_agreement);
}

// Bad input is an error, not a crash.
TEST(GpuSynthetic, BadInputIsAnError) {
  SKIP_WITHOUT_GPU();
  Spec s{{"llama", 128, 1, 2, 1, 64, 192}};
  SyntheticModels m;
  ASSERT_NO_FATAL_FAILURE(load_synthetic(s, 4321, m));
  tqkv::GpuContextOptions o;
  o.max_tokens = 8;
  auto ctx = tqkv::GpuContext::create(*m.gpu, o);
  ASSERT_TRUE(ctx.is_ok());
  const int32_t bad = 1000000;
  EXPECT_FALSE((*ctx)->prefill(0, &bad, 1, nullptr, tqkv::LogitsMode::kLast).is_ok());
  std::vector<int32_t> many(9, 1);
  EXPECT_EQ((*ctx)->prefill(0, many.data(), 9, nullptr, tqkv::LogitsMode::kLast).code(), tqkv::StatusCode::kOutOfRange);
  EXPECT_FALSE((*ctx)->decode(many.data(), 2, nullptr, nullptr).is_ok());  // batch > max_seqs
}

// ---- reduced real models -------------------------------------------------------------------------
std::string fixture_dir() {
  if (const char* e = std::getenv("TQKV_GPU_FIXTURES")) return e;
  return std::string(TQKV_SOURCE_DIR) + "/.device-gpu";
}

// max_ratio: bound on sqrt(sum |gpu - cpu|^2 / sum |cpu k4v4 - cpu f16|^2) for compressed formats.
void check_real(const std::string& name, double max_ratio = 0.75) {
  const std::string dir = fixture_dir();
  const std::string gguf = dir + "/" + name + ".gguf";
  std::ifstream js(dir + "/" + name + ".json");
  std::ifstream bin(dir + "/" + name + ".f32", std::ios::binary);
  if (!js || !bin) GTEST_SKIP() << "no fixture for " << name << " in " << dir << " (scripts/device_runtime.sh prepare)";
  nlohmann::json j;
  js >> j;
  auto model = tqkv::Model::load(gguf);
  ASSERT_TRUE(model.is_ok()) << model.status().to_string();
  const tqkv::ModelConfig& c = (*model)->config();
  const int V = c.n_vocab, steps = j["steps"];
  ASSERT_EQ(V, j["n_vocab"].get<int>());
  auto gm = tqkv::GpuModel::from_gguf((*model)->gguf(), c);
  ASSERT_TRUE(gm.is_ok()) << gm.status().to_string();
  ASSERT_EQ(j["formats"][0].get<std::string>(), "f16") << "the fixture's first format must be f16";
  const size_t rows_per_format = j["prompts"].size() * static_cast<size_t>(steps + 1);
  std::vector<float> all(j["formats"].size() * rows_per_format * static_cast<size_t>(V));
  bin.read(reinterpret_cast<char*>(all.data()), static_cast<std::streamsize>(all.size() * 4));
  ASSERT_TRUE(bin.good()) << "fixture too short";
  std::vector<float> gpu(static_cast<size_t>(V));
  size_t row = 0;
  for (const auto& fs : j["formats"]) {
    const std::string f = fs.get<std::string>();
    auto fmt = tqkv::parse_kv_format(f);
    ASSERT_TRUE(fmt.is_ok());
    RowCheck rc;
    for (const auto& p : j["prompts"]) {
      const std::vector<int32_t> ids = p["ids"].get<std::vector<int32_t>>();
      const std::vector<int32_t> cont = p["continuation"].get<std::vector<int32_t>>();
      tqkv::GpuContextOptions o;
      o.format = *fmt;
      o.max_tokens = static_cast<int64_t>(ids.size()) + steps + 1;
      auto ctx = tqkv::GpuContext::create(**gm, o);
      ASSERT_TRUE(ctx.is_ok()) << ctx.status().to_string();
      auto st = (*ctx)->prefill(0, ids.data(), static_cast<int>(ids.size()), gpu.data(), tqkv::LogitsMode::kLast);
      ASSERT_TRUE(st.is_ok()) << st.to_string();
      for (int s = 0; s <= steps; ++s, ++row) {
        const float* cpu = all.data() + row * V;
        const float* ref_f16 = all.data() + (row % rows_per_format) * V;
        const std::string what = name + " " + f + " prompt " + std::to_string(ids.size()) + " step " + std::to_string(s);
        if (f == "f16") rc.add(gpu.data(), cpu, V, 2e-2, what);
        else rc.add_compressed(gpu.data(), cpu, ref_f16, V, what);
        if (s < steps) {
          st = (*ctx)->decode(&cont[s], 1, gpu.data(), nullptr);
          ASSERT_TRUE(st.is_ok()) << st.to_string();
        }
      }
    }
    if (f == "f16") {
      std::printf("[gpu real] %-12s %-4s: %d rows, worst relative L2 %.3g, top-1 mismatches %d, near ties %d\n",
                  name.c_str(), f.c_str(), rc.rows, rc.worst_rel, rc.top1_mismatch, rc.near_ties);
    } else {
      EXPECT_LE(rc.ratio(), max_ratio) << name << " " << f << ": GPU not much closer to the CPU than compression moves it";
      std::printf("[gpu real] %-12s %-4s: %d rows, worst relative L2 %.3g, |gpu-cpu| / |cpu %s - cpu f16| = %.3f, "
                  "top-1 differences %d\n", name.c_str(), f.c_str(), rc.rows, rc.worst_rel, f.c_str(), rc.ratio(), rc.top1_mismatch);
    }
  }
}

TEST(GpuRealModel, SmolLM2Reduced) {
  SKIP_WITHOUT_GPU();
  check_real("smollm2-4l");
}
TEST(GpuRealModel, Gemma3Reduced) {
  SKIP_WITHOUT_GPU();
  check_real("gemma3-6l");
}
// The whole SmolLM2-135M file, and Gemma-3-270M with all 18 layers (vocabulary cut to 8192 rows):
// too large for the runtime pack, they travel in parts (scripts/device_full_models.sh). The f16
// bound is the same as above. For k4v4 the bound is 1.0 instead of 0.75: an index that flips on
// fp16 rounding in an early layer changes every later layer's input, so at full depth (30 and 18
// layers) the GPU-vs-CPU difference grows towards the compression's own effect (first run
// 2026-11-29: SmolLM2 0.765, Gemma 3 0.484; 0.75 failed SmolLM2). Two independent quantizations
// (another rotation or codebook) sit near sqrt(2) = 1.41 (independent errors of equal size; 1.37-
// 1.38 measured between searched and unsearched encodings in GpuSynthetic.*ScaleSearch), so 1.0
// still separates the same quantizer from a different one. Re-run at 12:50 UTC: 0.767 / 0.475, pass. The perplexity-level match (KLD, top-1) is in
// scripts/device_full_models.sh and docs/benchmarks.md.
TEST(GpuRealModel, SmolLM2Full) {
  SKIP_WITHOUT_GPU();
  check_real("smollm2-full", 1.0);
}
TEST(GpuRealModel, Gemma3AllLayers) {
  SKIP_WITHOUT_GPU();
  check_real("gemma3-18l", 1.0);
}

// The synthetic Llama-3.1-8B-shaped model runs a few decode steps at batch 4 (smoke test of the
// benchmark path: random weights and random pages, graph replays, finite greedy tokens).
TEST(GpuSynthetic, Llama8bShapeDecodes) {
  SKIP_WITHOUT_GPU();
  auto info = tqkv::gpu_device_info();
  ASSERT_TRUE(info.is_ok());
  if (info->free_bytes < (int64_t{24} << 30)) GTEST_SKIP() << "needs 24 GB of free GPU memory";
  auto gm = tqkv::GpuModel::synthetic(tqkv::GpuModel::llama3_8b_config(), 1);
  ASSERT_TRUE(gm.is_ok()) << gm.status().to_string();
  tqkv::GpuContextOptions o;
  o.format = {4, 4};
  o.max_seqs = 4;
  o.max_chunk = 4;
  o.max_tokens = 1024;
  auto ctx = tqkv::GpuContext::create(**gm, o);
  ASSERT_TRUE(ctx.is_ok()) << ctx.status().to_string();
  ASSERT_TRUE((*ctx)->fill_random(1000, 5).is_ok());
  auto t = (*ctx)->time_decode_steps(4, 3, 17);
  ASSERT_TRUE(t.is_ok()) << t.status().to_string();
  EXPECT_GT(*t, 0.0);
  std::vector<int32_t> toks = {1, 2, 3, 4}, am(4, -1);
  std::vector<float> logits(static_cast<size_t>(4) * 128256);
  ASSERT_TRUE((*ctx)->decode(toks.data(), 4, logits.data(), am.data()).is_ok());
  for (int b = 0; b < 4; ++b) {
    EXPECT_GE(am[b], 0);
    const float* row = logits.data() + static_cast<size_t>(b) * 128256;
    EXPECT_EQ(static_cast<int>(std::max_element(row, row + 128256) - row), am[b]);
    for (int i = 0; i < 128256; i += 997) EXPECT_TRUE(std::isfinite(row[i]));
  }
}

}  // namespace
