// `tqkv inspect MODEL [--json]`: what a GGUF file holds and what its KV cache costs.
// Architecture and sizes, attention geometry, RoPE, sliding window, tensor types and bytes,
// tokenizer, and KV-cache bytes per token for each cache format (kv_layout.h tile sizes, page
// size 16, summed over all layers).
#include <cstdio>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "cli/command_registry.h"
#include "tqkv/gguf.h"
#include "tqkv/kv_layout.h"

namespace {

using tqkv::GgufFile;
using tqkv::Result;
using tqkv::Status;
using json = nlohmann::ordered_json;

struct Options {
  std::string path;
  bool as_json = false;
};

// (name, K bits, V bits); 16 = fp16.
struct KvFormat {
  const char* name;
  int k_bits, v_bits;
};
constexpr KvFormat kKvFormats[] = {{"f16", 16, 16}, {"k8v4", 8, 4}, {"k4v4", 4, 4},
                                   {"k4v3", 4, 3},  {"k3v3", 3, 3}, {"k2v2", 2, 2}};

// Per-layer values that files store either as one number or as an array (one per layer).
Result<std::vector<int64_t>> per_layer(const GgufFile& g, const std::string& key, int64_t layers,
                                       int64_t fallback) {
  if (g.find_array(key)) {
    TQKV_ASSIGN_OR_RETURN(std::vector<int64_t> v, g.get_int_array(key));
    if (static_cast<int64_t>(v.size()) != layers) {
      return tqkv::corrupt_data(key + " has " + std::to_string(v.size()) + " entries for " +
                                std::to_string(layers) + " layers");
    }
    return v;
  }
  TQKV_ASSIGN_OR_RETURN(int64_t x, g.get_i64_or(key, fallback));
  return std::vector<int64_t>(static_cast<size_t>(layers), x);
}

Result<json> summarize(const tqkv::GgufMappedFile& m) {
  const GgufFile& g = m.gguf;
  json out;
  out["file"] = {{"path", m.file.path()},           {"bytes", m.file.size()},
                 {"gguf_version", g.version},       {"alignment", g.alignment},
                 {"metadata_entries", g.metadata.size()}, {"tensors", g.tensors.size()}};
  const std::string arch = g.architecture();
  if (arch.empty()) return tqkv::corrupt_data("no general.architecture: not a model file?");
  TQKV_ASSIGN_OR_RETURN(std::string name, g.get_string_or("general.name", ""));
  TQKV_ASSIGN_OR_RETURN(uint32_t file_type, g.get_u32_or("general.file_type", 0));
  out["general"] = {{"architecture", arch}, {"name", name}, {"file_type", file_type}};

  TQKV_ASSIGN_OR_RETURN(uint32_t layers, g.get_u32(g.arch_key("block_count")));
  TQKV_ASSIGN_OR_RETURN(uint32_t embd, g.get_u32(g.arch_key("embedding_length")));
  TQKV_ASSIGN_OR_RETURN(uint32_t ffn, g.get_u32_or(g.arch_key("feed_forward_length"), 0));
  TQKV_ASSIGN_OR_RETURN(uint32_t heads, g.get_u32(g.arch_key("attention.head_count")));
  if (heads == 0 || layers == 0) return tqkv::corrupt_data("zero layers or attention heads");
  TQKV_ASSIGN_OR_RETURN(std::vector<int64_t> kv_heads,
                        per_layer(g, g.arch_key("attention.head_count_kv"), layers, heads));
  TQKV_ASSIGN_OR_RETURN(uint32_t head_k, g.get_u32_or(g.arch_key("attention.key_length"), embd / heads));
  TQKV_ASSIGN_OR_RETURN(uint32_t head_v, g.get_u32_or(g.arch_key("attention.value_length"), embd / heads));
  TQKV_ASSIGN_OR_RETURN(uint32_t ctx, g.get_u32_or(g.arch_key("context_length"), 0));
  TQKV_ASSIGN_OR_RETURN(float eps, g.get_f32_or(g.arch_key("attention.layer_norm_rms_epsilon"), 0.0f));
  int64_t params = 0;
  for (const auto& t : g.tensors) params += t.num_elements();
  json kvh = json::array();
  bool uniform = true;
  for (int64_t h : kv_heads) uniform = uniform && h == kv_heads[0];
  out["model"] = {{"layers", layers},        {"embedding_length", embd}, {"feed_forward_length", ffn},
                  {"heads", heads},          {"kv_heads", uniform ? json(kv_heads[0]) : json(kv_heads)},
                  {"head_dim_k", head_k},    {"head_dim_v", head_v},      {"context_length", ctx},
                  {"rms_norm_eps", eps},     {"parameters", params}};

  TQKV_ASSIGN_OR_RETURN(float rope_base, g.get_f32_or(g.arch_key("rope.freq_base"), 10000.0f));
  TQKV_ASSIGN_OR_RETURN(uint32_t rope_dims, g.get_u32_or(g.arch_key("rope.dimension_count"), head_k));
  TQKV_ASSIGN_OR_RETURN(std::string scaling, g.get_string_or(g.arch_key("rope.scaling.type"), "none"));
  TQKV_ASSIGN_OR_RETURN(float factor, g.get_f32_or(g.arch_key("rope.scaling.factor"), 1.0f));
  TQKV_ASSIGN_OR_RETURN(uint32_t orig_ctx, g.get_u32_or(g.arch_key("rope.scaling.original_context_length"), 0));
  out["rope"] = {{"freq_base", rope_base}, {"dimensions", rope_dims},
                 {"scaling", {{"type", scaling}, {"factor", factor}, {"original_context_length", orig_ctx}}}};

  // Sliding window. Gemma 3 files state the window but not the layer pattern: llama.cpp and HF
  // use 5 local layers then 1 global (period 6), and RoPE base 10000 on the local layers.
  TQKV_ASSIGN_OR_RETURN(uint32_t window, g.get_u32_or(g.arch_key("attention.sliding_window"), 0));
  json sw = {{"window", window}};
  if (window > 0) {
    uint32_t period = 0;
    std::string source;
    if (g.has(g.arch_key("attention.sliding_window_pattern")) && !g.find_array(g.arch_key("attention.sliding_window_pattern"))) {
      TQKV_ASSIGN_OR_RETURN(period, g.get_u32(g.arch_key("attention.sliding_window_pattern")));
      source = "file";
    } else if (arch == "gemma3") {
      period = 6;
      source = "gemma3 default (not stored in the file)";
      out["rope"]["freq_base_local"] = 10000.0;
    }
    if (period > 0) {
      json global = json::array();
      for (uint32_t l = 0; l < layers; ++l) {
        if ((l + 1) % period == 0) global.push_back(l);
      }
      sw["pattern"] = {{"period", period}, {"global_layers", global}, {"source", source}};
    }
  }
  out["sliding_window"] = sw;

  std::map<std::string, std::pair<int64_t, uint64_t>> by_type;
  uint64_t tensor_bytes = 0;
  for (const auto& t : g.tensors) {
    auto& e = by_type[std::string(tqkv::ggml_type_name(t.type))];
    e.first += 1;
    e.second += t.nbytes;
    tensor_bytes += t.nbytes;
  }
  json types = json::object();
  for (const auto& [tn, e] : by_type) types[tn] = {{"count", e.first}, {"bytes", e.second}};
  out["tensor_types"] = types;
  out["tensor_bytes"] = tensor_bytes;

  TQKV_ASSIGN_OR_RETURN(std::string tok_model, g.get_string_or("tokenizer.ggml.model", ""));
  TQKV_ASSIGN_OR_RETURN(std::string tok_pre, g.get_string_or("tokenizer.ggml.pre", ""));
  json tok = {{"model", tok_model}, {"pre", tok_pre}, {"vocab_size", 0}};
  if (const tqkv::GgufArray* a = g.find_array("tokenizer.ggml.tokens")) tok["vocab_size"] = a->size();
  if (const tqkv::GgufArray* a = g.find_array("tokenizer.ggml.merges")) tok["merges"] = a->size();
  for (const char* k : {"bos_token_id", "eos_token_id"}) {
    const std::string key = std::string("tokenizer.ggml.") + k;
    if (g.has(key)) {
      TQKV_ASSIGN_OR_RETURN(uint32_t id, g.get_u32(key));
      tok[k] = id;
    }
  }
  out["tokenizer"] = tok;

  // KV cache: per layer, K and V tiles of page_size tokens for each KV head.
  json kv = json::object();
  const int ps = tqkv::kDefaultPageSize;
  for (const KvFormat& f : kKvFormats) {
    int64_t per_page = 0;
    for (int64_t h : kv_heads) {
      per_page += h * (tqkv::tile_bytes(ps, static_cast<int>(head_k), f.k_bits) +
                       tqkv::tile_bytes(ps, static_cast<int>(head_v), f.v_bits));
    }
    kv[f.name] = static_cast<double>(per_page) / ps;
  }
  out["kv_bytes_per_token"] = kv;
  out["kv_page_size"] = ps;
  return out;
}

std::string human_bytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB"};
  int u = 0;
  while (b >= 1024.0 && u < 3) { b /= 1024.0; ++u; }
  char s[32];
  std::snprintf(s, sizeof s, u == 0 ? "%.0f %s" : "%.1f %s", b, units[u]);
  return s;
}

void print_text(const json& j) {
  const json& f = j["file"];
  const json& m = j["model"];
  std::printf("file           %s (%s, GGUF v%d, %d tensors, %d metadata entries)\n",
              f["path"].get<std::string>().c_str(), human_bytes(f["bytes"].get<double>()).c_str(),
              f["gguf_version"].get<int>(), f["tensors"].get<int>(), f["metadata_entries"].get<int>());
  std::printf("model          %s (architecture %s)\n", j["general"]["name"].get<std::string>().c_str(),
              j["general"]["architecture"].get<std::string>().c_str());
  std::printf("parameters     %.1f M\n", m["parameters"].get<double>() / 1e6);
  std::printf("layers         %d\n", m["layers"].get<int>());
  std::printf("embedding      %d   feed-forward %d\n", m["embedding_length"].get<int>(), m["feed_forward_length"].get<int>());
  std::printf("heads          %d query, %s KV, head size %d (K) / %d (V)\n", m["heads"].get<int>(),
              m["kv_heads"].dump().c_str(), m["head_dim_k"].get<int>(), m["head_dim_v"].get<int>());
  std::printf("context        %d tokens\n", m["context_length"].get<int>());
  const json& r = j["rope"];
  std::printf("rope           base %g, %d dims, scaling %s (factor %g)", r["freq_base"].get<double>(),
              r["dimensions"].get<int>(), r["scaling"]["type"].get<std::string>().c_str(),
              r["scaling"]["factor"].get<double>());
  if (r.contains("freq_base_local")) std::printf(", local layers base %g", r["freq_base_local"].get<double>());
  std::printf("\n");
  const json& sw = j["sliding_window"];
  if (sw["window"].get<int>() == 0) {
    std::printf("sliding window none\n");
  } else {
    std::printf("sliding window %d tokens", sw["window"].get<int>());
    if (sw.contains("pattern")) {
      std::printf("; global layers %s (period %d, %s)", sw["pattern"]["global_layers"].dump().c_str(),
                  sw["pattern"]["period"].get<int>(), sw["pattern"]["source"].get<std::string>().c_str());
    }
    std::printf("\n");
  }
  std::printf("tensors        %s in total\n", human_bytes(j["tensor_bytes"].get<double>()).c_str());
  for (const auto& [tn, e] : j["tensor_types"].items()) {
    std::printf("  %-6s %4d tensors %12s\n", tn.c_str(), e["count"].get<int>(), human_bytes(e["bytes"].get<double>()).c_str());
  }
  const json& t = j["tokenizer"];
  std::printf("tokenizer      %s (pre %s), vocab %d", t["model"].get<std::string>().c_str(),
              t["pre"].get<std::string>().c_str(), t["vocab_size"].get<int>());
  if (t.contains("merges")) std::printf(", %d merges", t["merges"].get<int>());
  if (t.contains("bos_token_id")) std::printf(", bos %d", t["bos_token_id"].get<int>());
  if (t.contains("eos_token_id")) std::printf(", eos %d", t["eos_token_id"].get<int>());
  std::printf("\n");
  std::printf("KV cache bytes per token (all %d layers, page size %d):\n", m["layers"].get<int>(), j["kv_page_size"].get<int>());
  const double f16 = j["kv_bytes_per_token"]["f16"].get<double>();
  for (const auto& [fn, v] : j["kv_bytes_per_token"].items()) {
    std::printf("  %-5s %10.1f B  (%.2fx compression vs f16)\n", fn.c_str(), v.get<double>(), f16 / v.get<double>());
  }
}

tqkv::cli::RunFn setup(CLI::App& sub) {
  auto opt = std::make_shared<Options>();
  sub.add_option("model", opt->path, "GGUF model file")->required();
  sub.add_flag("--json", opt->as_json, "Print machine-readable JSON");
  return [opt] {
    Result<tqkv::GgufMappedFile> m = tqkv::open_gguf(opt->path);
    if (!m.is_ok()) {
      std::fprintf(stderr, "tqkv inspect: %s\n", m.status().to_string().c_str());
      return 1;
    }
    Result<json> j = summarize(m.value());
    if (!j.is_ok()) {
      std::fprintf(stderr, "tqkv inspect: %s: %s\n", opt->path.c_str(), j.status().to_string().c_str());
      return 1;
    }
    if (opt->as_json) {
      std::printf("%s\n", j->dump(2).c_str());
    } else {
      print_text(j.value());
    }
    return 0;
  };
}

tqkv::cli::CommandRegistrar reg("inspect", "Show a GGUF model's architecture, tensors, tokenizer and KV-cache cost", &setup);

}  // namespace
