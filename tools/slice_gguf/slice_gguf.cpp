// tqkv_slice_gguf: cuts a real GGUF model down to its first N layers and first K vocabulary rows
// (written with our GGUF writer), and records CPU logits on the cut model as a fixture for the GPU
// runtime's test (tests/gpu/test_gpu_model.cpp). The GPU machine cannot receive the full files
// (the working tree that travels is limited to 64 MiB), so the comparison runs on reduced models
// whose CPU logits are computed here, by the CPU runtime, from the very same reduced files.
//
//   tqkv_slice_gguf slice IN.gguf OUT.gguf --layers N --vocab K [--keep-tokenizer]
//   tqkv_slice_gguf logits MODEL.gguf OUT_PREFIX [--prompts 40,800] [--steps 4] [--formats f16,k4v4]
//
// `slice` keeps every metadata key except tokenizer.* (unless --keep-tokenizer: then texts whose
// tokens all fall below K still run, e.g. `tqkv generate` on short English with SmolLM2), sets {arch}.block_count = N, keeps token_embd / output rows < K, the
// output norm, rope_freqs and the tensors of layers < N, byte for byte (quantized as in the file).
// `logits` writes OUT_PREFIX.json (prompt ids, greedy continuation ids, shapes) and OUT_PREFIX.f32
// (rows of n_vocab floats: for each format, for each prompt, the logits after the prompt and
// after each of `steps` greedy decode tokens, teacher-forced with the f16 run's greedy ids).
#include <cstdio>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "gguf/gguf_writer.h"
#include "tqkv/gguf.h"
#include "tqkv/model.h"

namespace {

int fail(const std::string& m) {
  std::fprintf(stderr, "tqkv_slice_gguf: %s\n", m.c_str());
  return 1;
}

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string x;
  while (std::getline(ss, x, ',')) out.push_back(x);
  return out;
}

int slice(const std::string& in, const std::string& out, int layers, int64_t vocab, bool keep_tokenizer) {
  auto f = tqkv::open_gguf(in);
  if (!f.is_ok()) return fail(f.status().to_string());
  const tqkv::GgufFile& g = f->gguf;
  const std::string arch = g.architecture();
  tqkv::GgufWriter w;
  if (g.alignment != 32) {
    auto st = w.set_alignment(static_cast<uint32_t>(g.alignment));
    if (!st.is_ok()) return fail(st.to_string());
  }
  for (const auto& kv : g.metadata) {
    if (kv.key == "general.alignment" || (!keep_tokenizer && kv.key.rfind("tokenizer.", 0) == 0)) continue;
    if (kv.key == arch + ".block_count") {
      w.add_u32(kv.key, static_cast<uint32_t>(layers));
      continue;
    }
    w.add_value(kv.key, kv.value);
  }
  for (const auto& t : g.tensors) {
    bool keep = false;
    std::vector<int64_t> dims(t.dims.begin(), t.dims.begin() + t.n_dims);
    uint64_t bytes = t.nbytes;
    if (t.name == "token_embd.weight" || t.name == "output.weight") {
      keep = true;
      if (t.n_dims == 2 && t.dims[1] > vocab) {
        dims[1] = vocab;
        bytes = t.row_bytes() * static_cast<uint64_t>(vocab);
      }
    } else if (t.name.rfind("blk.", 0) == 0) {
      keep = std::stoi(t.name.substr(4)) < layers;
    } else {
      keep = true;  // output_norm, rope_freqs, ...
    }
    if (!keep) continue;
    auto st = w.add_tensor(t.name, t.type, dims, std::span<const uint8_t>(t.data, bytes));
    if (!st.is_ok()) return fail(t.name + ": " + st.to_string());
  }
  auto st = w.write_file(out);
  if (!st.is_ok()) return fail(st.to_string());
  std::printf("wrote %s (%s, %d layers, vocab %lld)\n", out.c_str(), arch.c_str(), layers, static_cast<long long>(vocab));
  return 0;
}

int logits(const std::string& path, const std::string& prefix, const std::vector<int>& prompt_lens, int steps,
           const std::vector<std::string>& formats) {
  auto model = tqkv::Model::load(path);
  if (!model.is_ok()) return fail(model.status().to_string());
  const tqkv::ModelConfig& c = (*model)->config();
  const int V = c.n_vocab;
  std::mt19937_64 rng(20261129);
  std::uniform_int_distribution<int> tok(1, V - 1);
  nlohmann::ordered_json j;
  j["model"] = path;
  j["arch"] = c.arch_name;
  j["n_vocab"] = V;
  j["n_layer"] = c.n_layer;
  j["steps"] = steps;
  j["formats"] = formats;
  std::vector<std::vector<int32_t>> prompts;
  for (int n : prompt_lens) {
    std::vector<int32_t> p(static_cast<size_t>(n));
    for (auto& x : p) x = tok(rng);
    prompts.push_back(p);
  }
  std::vector<std::vector<int32_t>> conts(prompts.size());
  std::ofstream bin(prefix + ".f32", std::ios::binary);
  std::vector<float> row(static_cast<size_t>(V));
  for (const std::string& fs : formats) {
    auto fmt = tqkv::parse_kv_format(fs);
    if (!fmt.is_ok()) return fail(fmt.status().to_string());
    for (size_t pi = 0; pi < prompts.size(); ++pi) {
      tqkv::KvOptions ko;
      ko.format = *fmt;
      ko.max_tokens = static_cast<int64_t>(prompts[pi].size()) + steps + 1;
      auto kv = tqkv::make_kv_backend(c, ko);
      if (!kv.is_ok()) return fail(kv.status().to_string());
      auto st = (*model)->forward(prompts[pi].data(), static_cast<int>(prompts[pi].size()), 0, **kv, row.data(),
                                  tqkv::LogitsMode::kLast);
      if (!st.is_ok()) return fail(st.to_string());
      bin.write(reinterpret_cast<const char*>(row.data()), static_cast<std::streamsize>(row.size() * 4));
      for (int s = 0; s < steps; ++s) {
        // The first format's greedy ids drive every format (teacher forcing).
        if (&fs == &formats[0]) conts[pi].push_back(static_cast<int32_t>(std::max_element(row.begin(), row.end()) - row.begin()));
        const int32_t id = conts[pi][s];
        st = (*model)->forward(&id, 1, static_cast<int64_t>(prompts[pi].size()) + s, **kv, row.data(), tqkv::LogitsMode::kLast);
        if (!st.is_ok()) return fail(st.to_string());
        bin.write(reinterpret_cast<const char*>(row.data()), static_cast<std::streamsize>(row.size() * 4));
      }
    }
  }
  for (size_t pi = 0; pi < prompts.size(); ++pi) {
    nlohmann::ordered_json p;
    p["ids"] = prompts[pi];
    p["continuation"] = conts[pi];
    j["prompts"].push_back(p);
  }
  std::ofstream(prefix + ".json") << j.dump(1) << "\n";
  std::printf("wrote %s.json and %s.f32 (%zu formats x %zu prompts x %d rows of %d)\n", prefix.c_str(), prefix.c_str(),
              formats.size(), prompts.size(), steps + 1, V);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr,
                 "usage: tqkv_slice_gguf slice IN OUT --layers N --vocab K [--keep-tokenizer]\n"
                 "       tqkv_slice_gguf logits MODEL OUT_PREFIX [--prompts 40,800] [--steps 4] [--formats f16,k4v4]\n");
    return 2;
  }
  const std::string mode = argv[1];
  int layers = 4, steps = 4;
  bool keep_tokenizer = false;
  int64_t vocab = 8192;
  std::vector<int> prompts = {40, 800};
  std::vector<std::string> formats = {"f16", "k4v4"};
  for (int i = 4; i < argc; i += 2) {
    const std::string k = argv[i];
    if (k == "--keep-tokenizer") {
      keep_tokenizer = true;
      --i;
      continue;
    }
    if (i + 1 >= argc) return fail("missing value for " + k);
    const std::string v = argv[i + 1];
    if (k == "--layers") layers = std::stoi(v);
    else if (k == "--vocab") vocab = std::stoll(v);
    else if (k == "--steps") steps = std::stoi(v);
    else if (k == "--formats") formats = split(v);
    else if (k == "--prompts") {
      prompts.clear();
      for (auto& s : split(v)) prompts.push_back(std::stoi(s));
    } else return fail("unknown option " + k);
  }
  if (mode == "slice") return slice(argv[2], argv[3], layers, vocab, keep_tokenizer);
  if (mode == "logits") return logits(argv[2], argv[3], prompts, steps, formats);
  return fail("unknown mode " + mode);
}
