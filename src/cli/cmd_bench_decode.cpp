// `tqkv bench decode --backend cuda (--model M | --synthetic llama3-8b) --kv FORMAT --batch B
// --context L [--steps N] [--budget-gib G] [--json]`: end-to-end decode on the GPU runtime
// (include/tqkv/gpu_model.h) with every sequence of the batch at context L, for the f16 cache and
// for FORMAT in the same run. The cache is filled with random but valid pages (no prefill). Reports
// per format: attention time per step (all layers: rotation + split-KV + merge, one CUDA graph)
// with its bytes and GB/s against the copy bandwidth measured in the same run, the whole decode
// step (graph replays, each step's greedy token feeding the next) as tokens/s, and capacity: how
// many sequences of context L fit the memory budget (default: free GPU memory after the weights).
// --prefill N adds, per format, prefill tokens/s of one N-token prompt (chunks of --prefill-chunk)
// through the tiled prefill kernel and through the per-token decode path (TQKV_GPU_PREFILL=decode),
// each timed on a second run after a warm-up run.
// Hooked into `tqkv bench` (src/cli/cmd_bench.cpp) as the `decode` subcommand.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "cli/command_registry.h"
#include "tqkv/model.h"
#ifdef TQKV_HAVE_GPU_RUNTIME
#include "tqkv/gpu_model.h"
#endif

namespace tqkv::cli {

namespace {

struct DecodeBenchOptions {
  std::string backend = "cuda", model, synthetic, kv = "k4v4";
  int batch = 32;
  int64_t context = 16384;
  int steps = 20;
  double budget_gib = 0;
  std::vector<int> f16_layers;
  bool json = false;
  uint64_t seed = 1;
  int prefill = 0, prefill_chunk = 2048;
  int sink_tokens = 0;  // attention sinks in the compressed layers (0 here: figures comparable to earlier runs)
  int recent_tokens = 0;  // the ring of recent tokens in the compressed layers (0 here, likewise)
  std::string scale_search = "off";  // the encoder's scale search (off here: figures comparable to earlier runs)
};

int fail(const std::string& m) {
  std::fprintf(stderr, "tqkv bench decode: %s\n", m.c_str());
  return 1;
}

#ifdef TQKV_HAVE_GPU_RUNTIME
// Seconds of prefill(0, n random tokens) on a fresh context (second of two runs; kLast logits).
Result<double> time_prefill(const GpuModel& gm, KvFormat f, const DecodeBenchOptions& o, GpuPrefillPath path) {
  GpuContextOptions co;
  co.format = f;
  co.f16_layers = o.f16_layers;
  co.max_seqs = 1;
  co.max_chunk = std::min(o.prefill_chunk, o.prefill);
  co.max_tokens = o.prefill;
  co.prefill_path = path;
  co.page_shuffle_seed = o.seed + 7;
  co.sink_tokens = o.sink_tokens;
  co.recent_tokens = o.recent_tokens;
  co.scale_search = o.scale_search == "on";
  TQKV_ASSIGN_OR_RETURN(auto ctx, GpuContext::create(gm, co));
  std::vector<int32_t> ids(static_cast<size_t>(o.prefill));
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int32_t>((i * 2654435761u + o.seed) % gm.config().n_vocab);
  std::vector<float> logits(static_cast<size_t>(gm.config().n_vocab));
  double secs = 0;
  for (int run = 0; run < 2; ++run) {
    TQKV_RETURN_IF_ERROR(ctx->reset(0));
    const auto t0 = std::chrono::steady_clock::now();
    TQKV_RETURN_IF_ERROR(ctx->prefill(0, ids.data(), o.prefill, logits.data(), LogitsMode::kLast));  // ends synchronised
    secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  return secs;
}

int run_decode_bench(const DecodeBenchOptions& o) {
  auto fmt = parse_kv_format(o.kv);
  if (!fmt.is_ok()) return fail("--kv: " + fmt.status().to_string());
  if (o.model.empty() == o.synthetic.empty()) return fail("give exactly one of --model M or --synthetic llama3-8b");
  if (!o.synthetic.empty() && o.synthetic != "llama3-8b") return fail("--synthetic: only llama3-8b is known");
  auto avail = gpu_available();
  if (!avail.is_ok()) return fail(avail.to_string());
  auto info = gpu_device_info();
  if (!info.is_ok()) return fail(info.status().to_string());
  std::fprintf(stderr, "device: %s, %d SMs, %.1f GiB free\n", info->name.c_str(), info->sm_count, info->free_bytes / 1073741824.0);
  auto copy_bw = gpu_copy_bandwidth(int64_t{1} << 30, 7);
  if (!copy_bw.is_ok()) return fail(copy_bw.status().to_string());
  std::fprintf(stderr, "copy bandwidth (16-byte copy kernel, 1 GiB, read + write): %.0f GB/s\n", *copy_bw / 1e9);

  std::unique_ptr<Model> cpu_model;
  std::unique_ptr<GpuModel> gm;
  if (!o.synthetic.empty()) {
    auto m = GpuModel::synthetic(GpuModel::llama3_8b_config(), o.seed);
    if (!m.is_ok()) return fail(m.status().to_string());
    gm = std::move(*m);
  } else {
    auto cm = Model::load(o.model);
    if (!cm.is_ok()) return fail(cm.status().to_string());
    cpu_model = std::move(*cm);
    auto m = GpuModel::from_gguf(cpu_model->gguf(), cpu_model->config());
    if (!m.is_ok()) return fail(m.status().to_string());
    gm = std::move(*m);
  }
  const ModelConfig& c = gm->config();
  auto after = gpu_device_info();
  if (!after.is_ok()) return fail(after.status().to_string());
  const int64_t budget = o.budget_gib > 0 ? static_cast<int64_t>(o.budget_gib * 1073741824.0) : after->free_bytes;
  std::fprintf(stderr, "model: %s, %d layers, %d:%d heads of %d, weights %.2f GB fp16; KV budget %.1f GiB\n",
               o.synthetic.empty() ? o.model.c_str() : "synthetic llama3-8b", c.n_layer, c.n_head, c.n_head_kv, c.head_dim,
               gm->weight_bytes() / 1e9, budget / 1073741824.0);

  std::vector<KvFormat> formats = {KvFormat{16, 16}};
  if (!(fmt->k_bits == 16 && fmt->v_bits == 16)) formats.push_back(*fmt);
  nlohmann::ordered_json rows = nlohmann::ordered_json::array();
  double f16_tok_s = 0, f16_attn = 0;
  int64_t f16_fit = 0;
  for (const KvFormat& f : formats) {
    GpuContextOptions co;
    co.format = f;
    co.f16_layers = o.f16_layers;
    co.max_seqs = o.batch;
    co.max_chunk = o.batch;
    co.max_tokens = o.context + o.steps + 8;
    co.page_shuffle_seed = o.seed + 7;
    co.sink_tokens = o.sink_tokens;
    co.recent_tokens = o.recent_tokens;
    co.scale_search = o.scale_search == "on";
    const std::string name = kv_format_name(f);
    auto ctx = GpuContext::create(*gm, co);
    if (!ctx.is_ok()) return fail(name + ": " + ctx.status().to_string());
    auto st = (*ctx)->fill_random(o.context, o.seed + 11);
    if (!st.is_ok()) return fail(name + ": " + st.to_string());
    auto attn = (*ctx)->time_attention_step(o.batch, 5, 7);
    if (!attn.is_ok()) return fail(name + ": " + attn.status().to_string());
    const int64_t attn_bytes = (*ctx)->attention_bytes_per_step(o.batch);
    auto total = (*ctx)->time_decode_steps(o.batch, o.steps, 1);
    if (!total.is_ok()) return fail(name + ": " + total.status().to_string());
    const double step_s = *total / o.steps;
    const double tok_s = o.batch / step_s;
    const int64_t per_seq = (*ctx)->kv_bytes_per_seq(o.context);
    const int64_t fit = per_seq > 0 ? budget / per_seq : 0;
    const double attn_gbs = attn_bytes / *attn / 1e9;
    const double step_bytes = static_cast<double>(gm->weight_bytes()) + attn_bytes;
    if (f.k_bits == 16 && f.v_bits == 16) {
      f16_tok_s = tok_s;
      f16_attn = *attn;
      f16_fit = fit;
    }
    nlohmann::ordered_json r;
    r["kv"] = name;
    r["cache"] = (*ctx)->describe();
    r["batch"] = o.batch;
    r["context"] = o.context;
    r["sink_tokens"] = o.sink_tokens;
    r["recent_tokens"] = o.recent_tokens;
    r["scale_search"] = o.scale_search == "on";
    r["attention_us_per_step"] = *attn * 1e6;
    r["attention_bytes_per_step"] = attn_bytes;
    r["attention_gb_s"] = attn_gbs;
    r["attention_frac_copy_bw"] = attn_gbs * 1e9 / *copy_bw;
    r["attention_speedup_vs_f16"] = f16_attn / *attn;
    r["step_ms"] = step_s * 1e3;
    r["step_bytes"] = step_bytes;
    r["step_gb_s"] = step_bytes / step_s / 1e9;
    r["decode_tok_s"] = tok_s;
    r["decode_speedup_vs_f16"] = tok_s / f16_tok_s;
    r["kv_bytes_per_seq"] = per_seq;
    r["seqs_fit_budget"] = fit;
    r["capacity_vs_f16"] = f16_fit > 0 ? static_cast<double>(fit) / f16_fit : 0.0;
    rows.push_back(r);
    std::fprintf(stderr, "  %s done: step %.2f ms, %.0f tok/s\n", name.c_str(), step_s * 1e3, tok_s);
  }
  nlohmann::ordered_json prefill_rows = nlohmann::ordered_json::array();
  for (const KvFormat& f : o.prefill > 0 ? formats : std::vector<KvFormat>{}) {
    const std::string name = kv_format_name(f);
    auto tiled = time_prefill(*gm, f, o, GpuPrefillPath::kTiled);
    if (!tiled.is_ok()) return fail(name + " prefill (tiled): " + tiled.status().to_string());
    auto dec = time_prefill(*gm, f, o, GpuPrefillPath::kDecode);
    if (!dec.is_ok()) return fail(name + " prefill (decode path): " + dec.status().to_string());
    nlohmann::ordered_json r;
    r["kv"] = name;
    r["tokens"] = o.prefill;
    r["chunk"] = std::min(o.prefill_chunk, o.prefill);
    r["tiled_s"] = *tiled;
    r["tiled_tok_s"] = o.prefill / *tiled;
    r["decode_path_s"] = *dec;
    r["decode_path_tok_s"] = o.prefill / *dec;
    r["speedup"] = *dec / *tiled;
    prefill_rows.push_back(r);
    std::fprintf(stderr, "  %s prefill %d tokens: tiled %.0f tok/s, decode path %.0f tok/s\n", name.c_str(), o.prefill,
                 o.prefill / *tiled, o.prefill / *dec);
  }
  nlohmann::ordered_json out;
  out["device"] = info->name;
  out["model"] = o.synthetic.empty() ? o.model : "synthetic llama3-8b";
  out["weight_bytes"] = gm->weight_bytes();
  out["copy_gb_s"] = *copy_bw / 1e9;
  out["budget_bytes"] = budget;
  out["steps"] = o.steps;
  out["rows"] = rows;
  if (o.prefill > 0) out["prefill"] = prefill_rows;
  if (o.json) {
    std::printf("%s\n", out.dump(2).c_str());
    return 0;
  }
  std::printf("device %s | copy bandwidth %.0f GB/s | weights %.2f GB | budget %.1f GiB | batch %d x context %lld\n",
              info->name.c_str(), *copy_bw / 1e9, gm->weight_bytes() / 1e9, budget / 1073741824.0, o.batch,
              static_cast<long long>(o.context));
  std::printf("%-6s %12s %10s %9s %8s %8s %10s %10s %9s %10s %9s\n", "kv", "attn us/step", "attn MB", "attn GB/s",
              "of copy", "vs f16", "step ms", "tok/s", "vs f16", "seqs fit", "vs f16");
  for (const auto& r : rows)
    std::printf("%-6s %12.1f %10.1f %9.0f %7.0f%% %7.2fx %10.2f %10.1f %8.2fx %10lld %8.2fx\n",
                r["kv"].get<std::string>().c_str(), r["attention_us_per_step"].get<double>(),
                r["attention_bytes_per_step"].get<int64_t>() / 1e6, r["attention_gb_s"].get<double>(),
                100.0 * r["attention_frac_copy_bw"].get<double>(), r["attention_speedup_vs_f16"].get<double>(),
                r["step_ms"].get<double>(), r["decode_tok_s"].get<double>(), r["decode_speedup_vs_f16"].get<double>(),
                static_cast<long long>(r["seqs_fit_budget"].get<int64_t>()), r["capacity_vs_f16"].get<double>());
  for (const auto& r : prefill_rows)
    std::printf("prefill %-6s %d tokens (chunks of %d): tiled %.0f tok/s (%.3f s), decode path %.0f tok/s (%.3f s), %.2fx\n",
                r["kv"].get<std::string>().c_str(), r["tokens"].get<int>(), r["chunk"].get<int>(),
                r["tiled_tok_s"].get<double>(), r["tiled_s"].get<double>(), r["decode_path_tok_s"].get<double>(),
                r["decode_path_s"].get<double>(), r["speedup"].get<double>());
  return 0;
}
#endif

}  // namespace

RunFn setup_bench_decode(CLI::App& sub) {
  auto o = std::make_shared<DecodeBenchOptions>();
  sub.add_option("--backend", o->backend, "cuda (the GPU runtime; the CPU runtime has `tqkv generate`)")
      ->check(CLI::IsMember({"cpu", "cuda"}));
  sub.add_option("--model", o->model, "GGUF model file");
  sub.add_option("--synthetic", o->synthetic, "synthetic model shape: llama3-8b (random fp16 weights)");
  sub.add_option("--kv", o->kv, "KV format compared with f16 (default k4v4)");
  sub.add_option("--batch", o->batch, "sequences decoded together (default 32)")->check(CLI::Range(1, 4096));
  sub.add_option("--context", o->context, "tokens already in each sequence (default 16384)")->check(CLI::PositiveNumber);
  sub.add_option("--steps", o->steps, "timed decode steps (default 20)")->check(CLI::Range(1, 100000));
  sub.add_option("--budget-gib", o->budget_gib, "KV memory budget for capacity (default: free GPU memory after weights)");
  sub.add_option("--f16-layers", o->f16_layers, "layers kept in f16 (negative = from the end)")->delimiter(',');
  sub.add_option("--seed", o->seed, "random seed");
  sub.add_option("--sink-tokens", o->sink_tokens,
                 "attention-sink tokens kept in f16 in the compressed layers (default 0 here; generate and "
                 "perplexity default to 4)")
      ->check(CLI::Range(0, 16));
  sub.add_option("--recent-tokens", o->recent_tokens,
                 "last tokens kept in f16 in the compressed layers (default 0 here; generate and perplexity "
                 "default to 32)")
      ->check(CLI::Range(0, 64));
  sub.add_option("--scale-search", o->scale_search,
                 "on: quantize-on-write with the encoder's scale search (generic kernel; generate and perplexity "
                 "default to on); off (default here): the tensor-core kernels")
      ->check(CLI::IsMember({"on", "off"}));
  sub.add_flag("--json", o->json, "print one JSON object");
  sub.add_option("--prefill", o->prefill, "also time the prefill of one prompt of N tokens, tiled kernel vs decode path (0 = off)")
      ->check(CLI::Range(0, 1 << 20));
  sub.add_option("--prefill-chunk", o->prefill_chunk, "prefill tokens per forward pass (default 2048)")->check(CLI::Range(1, 65535));
  return [o]() -> int {
    if (o->backend != "cuda") return fail("only --backend cuda is implemented (CPU decode: tqkv generate / tqkv bench attention)");
#ifdef TQKV_HAVE_GPU_RUNTIME
    return run_decode_bench(*o);
#else
    return fail("this tqkv was built without the CUDA backend (configure with -DTQKV_CUDA=ON on a machine with nvcc)");
#endif
  };
}

}  // namespace tqkv::cli
