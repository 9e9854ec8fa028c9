// tqkv_cuda_bench: decode attention per KV format vs our fp16 kernel and the copy bandwidth of
// the same run, plus quantize-on-write. Prints a table; --json FILE writes the rows as JSON.
//
//   tqkv_cuda_bench [--formats f16,k4v4,...] [--batch 8,32] [--context 8192,16384]
//                   [--head-dim 128,96] [--heads 32:8] [--splits N] [--reps N] [--iters N] [--no-quantize] [--no-prefill]
//                   [--json FILE]
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

#include "cuda/bench_attention.h"

namespace {

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) if (!item.empty()) out.push_back(item);
  return out;
}
bool parse_ints(const std::string& s, std::vector<int>& out) {
  out.clear();
  for (const auto& x : split(s)) {
    char* end = nullptr;
    const long v = std::strtol(x.c_str(), &end, 10);
    if (*end != '\0' || v <= 0) return false;
    out.push_back(static_cast<int>(v));
  }
  return !out.empty();
}

void usage() {
  std::printf(
      "usage: tqkv_cuda_bench [options]\n"
      "  --formats LIST    KV formats (default f16,k8v4,k4v4,k4v3,k3v3,k2v2; f16 first gives speedups)\n"
      "  --batch LIST      batch sizes (default 8,32)\n"
      "  --context LIST    context lengths (default 8192,16384,32768)\n"
      "  --head-dim LIST   head sizes (default 128)\n"
      "  --heads HQ:HKV    query and KV heads (default 32:8)\n"
      "  --splits N        decode split count (default: plan_decode's choice)\n"
      "  --reps N          timed repetitions, median reported (default 7)\n"
      "  --iters N         calls per repetition, one CUDA graph (default 20)\n"
      "  --no-quantize     skip the quantize-on-write rows\n"
      "  --no-prefill      skip the prefill rows\n"
      "  --json FILE       also write the rows as JSON\n");
}

}  // namespace

int main(int argc, char** argv) {
  tqkv::cuda::CudaBenchConfig cfg;
  std::string json_path;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) { std::fprintf(stderr, "error: %s needs a value\n", a.c_str()); std::exit(2); }
      return argv[++i];
    };
    bool ok = true;
    if (a == "--help" || a == "-h") { usage(); return 0; }
    else if (a == "--formats") {  // "none": no decode rows (quantize-on-write only)
      cfg.formats = split(next());
      if (cfg.formats.size() == 1 && cfg.formats[0] == "none") cfg.formats.clear();
    }
    else if (a == "--batch") ok = parse_ints(next(), cfg.batches);
    else if (a == "--context") ok = parse_ints(next(), cfg.contexts);
    else if (a == "--head-dim") ok = parse_ints(next(), cfg.head_dims);
    else if (a == "--heads") ok = std::sscanf(next().c_str(), "%d:%d", &cfg.num_q_heads, &cfg.num_kv_heads) == 2;
    else if (a == "--splits") ok = (cfg.num_splits = std::atoi(next().c_str())) > 0;
    else if (a == "--reps") ok = (cfg.reps = std::atoi(next().c_str())) > 0;
    else if (a == "--iters") ok = (cfg.iters = std::atoi(next().c_str())) > 0;
    else if (a == "--no-quantize") cfg.quantize = false;
    else if (a == "--no-prefill") cfg.prefill = false;
    else if (a == "--json") json_path = next();
    else { std::fprintf(stderr, "error: unknown option %s (see --help)\n", a.c_str()); return 2; }
    if (!ok) { std::fprintf(stderr, "error: bad value for %s\n", a.c_str()); return 2; }
  }
  auto rows = tqkv::cuda::run_cuda_attention_bench(cfg, [](const std::string& line) {
    std::fprintf(stderr, "%s\n", line.c_str());
  });
  if (!rows.is_ok()) {
    std::fprintf(stderr, "error: %s\n", rows.status().to_string().c_str());
    return 1;
  }
  std::printf("%s", tqkv::cuda::format_bench_table(*rows).c_str());
  if (!json_path.empty()) {
    FILE* f = std::fopen(json_path.c_str(), "w");
    if (!f) { std::fprintf(stderr, "error: cannot write %s\n", json_path.c_str()); return 1; }
    const std::string j = tqkv::cuda::format_bench_json(*rows);
    std::fwrite(j.data(), 1, j.size(), f);
    std::fclose(f);
  }
  return 0;
}
