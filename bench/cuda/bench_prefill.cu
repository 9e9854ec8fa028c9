// Prefill attention benchmark: one attention_prefill call (query rotation, attention kernel,
// merge) for sequences of `context` cached tokens plus `chunk` new rows, every format on the
// tiled prefill kernel AND on the per-row decode-kernel path, in the same process.
//
//   tqkv_prefill_bench [--context 8192] [--chunks 512,2048] [--seqs 1] [--formats f16,k8v8,k4v4,k3v3]
//                      [--heads 32:8] [--head-dim 128] [--iters 20] [--reps 5] [--json]
//
// Pages are random but valid (random indices, fp16 scales around sqrt(d); random fp16 values for
// f16 sides), the page table a random permutation. Timing: CUDA events around `iters` back-to-back
// calls, the median of `reps` such runs. TFLOP/s counts 4 * q_heads * head_dim * (keys visible to
// each query row, summed over rows): QK^T and PV, no masked work.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "bench_common.cuh"
#include "cuda/prefill_internal.h"
#include "tqkv/cuda_attention.h"
#include "tqkv/kv_layout.h"

using namespace tqkv;
using namespace tqkv::cuda;
using tqkv::bench::DeviceBuffer;
using tqkv::bench::fill_tiles;
using tqkv::bench::split_list;

namespace {

struct Fmt {
  std::string name;
  int kb, vb;
};
Fmt parse_fmt(const std::string& s) {
  if (s == "f16") return {s, 16, 16};
  int k = 0, v = 0;
  if (std::sscanf(s.c_str(), "k%dv%d", &k, &v) != 2) {
    std::fprintf(stderr, "bad format %s\n", s.c_str());
    std::exit(1);
  }
  return {s, k, v};
}
}  // namespace

constexpr char kUsage[] =
    "usage: tqkv_prefill_bench [options]  (attention_prefill, tiled kernel against the per-row path;\n"
    "       method: the header of bench/cuda/bench_prefill.cu)\n"
    "  --context N        cached tokens per sequence (default 8192)\n"
    "  --chunks LIST      new rows per call (default 512,2048)\n"
    "  --seqs N           sequences (default 1)\n"
    "  --formats LIST     KV formats (default f16,k8v8,k4v4,k3v3)\n"
    "  --heads HQ:HKV     query and KV heads (default 32:8)\n"
    "  --head-dim N       head size (default 128)\n"
    "  --iters N          calls per timed run (default 20)\n"
    "  --reps N           timed runs, median reported (default 5)\n"
    "  --json             also print the rows as JSON\n";

int main(int argc, char** argv) {
  if (tqkv::bench::wants_help(argc, argv, kUsage)) return 0;
  int context = 8192, seqs = 1, hq = 32, hkv = 8, d = 128, iters = 20, reps = 5;
  std::vector<int> chunks = {512, 2048};
  std::vector<std::string> formats = {"f16", "k8v8", "k4v4", "k3v3"};
  bool json = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) { std::fprintf(stderr, "%s needs a value\n", a.c_str()); std::exit(1); }
      return argv[++i];
    };
    if (a == "--context") context = std::stoi(next());
    else if (a == "--chunks") { chunks.clear(); for (auto& c : split_list(next())) chunks.push_back(std::stoi(c)); }
    else if (a == "--seqs") seqs = std::stoi(next());
    else if (a == "--formats") formats = split_list(next());
    else if (a == "--heads") { const std::string h = next(); std::sscanf(h.c_str(), "%d:%d", &hq, &hkv); }
    else if (a == "--head-dim") d = std::stoi(next());
    else if (a == "--iters") iters = std::stoi(next());
    else if (a == "--reps") reps = std::stoi(next());
    else if (a == "--json") json = true;
    else { std::fprintf(stderr, "unknown flag %s (--help lists them)\n", a.c_str()); return 1; }
  }
  tqkv::bench::require_device("tqkv_prefill_bench");
  int dev = 0, sms = 0;
  TQKV_BENCH_CHECK(cudaGetDevice(&dev));
  TQKV_BENCH_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  cudaDeviceProp prop;
  TQKV_BENCH_CHECK(cudaGetDeviceProperties(&prop, dev));
  cudaStream_t stream;
  TQKV_BENCH_CHECK(cudaStreamCreate(&stream));
  std::mt19937_64 rng(1);

  std::string rows_json;
  if (!json) std::printf("device %s, %d SMs; %d seq(s) x (%d cached + chunk) tokens, %d:%d heads, d%d\n", prop.name, sms, seqs,
                         context, hq, hkv, d);
  for (int chunk : chunks) {
    const int len = context + chunk;
    const int pages_per_seq = (len + 15) / 16;
    const int64_t pool_pages = static_cast<int64_t>(pages_per_seq) * seqs;
    std::vector<int32_t> perm(pool_pages);
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng);
    DeviceBuffer d_pt(perm.size() * 4), d_lens(seqs * 4), d_qlens(seqs * 4);
    TQKV_BENCH_CHECK(cudaMemcpy(d_pt.p, perm.data(), perm.size() * 4, cudaMemcpyHostToDevice));
    std::vector<int32_t> lens(seqs, len), qlens(seqs, chunk);
    TQKV_BENCH_CHECK(cudaMemcpy(d_lens.p, lens.data(), seqs * 4, cudaMemcpyHostToDevice));
    TQKV_BENCH_CHECK(cudaMemcpy(d_qlens.p, qlens.data(), seqs * 4, cudaMemcpyHostToDevice));
    const int total_q = seqs * chunk;
    const size_t qn = static_cast<size_t>(total_q) * hq * d;
    std::vector<float> qh(qn);
    std::normal_distribution<float> nd(0.f, 1.f);
    for (auto& x : qh) x = nd(rng);
    DeviceBuffer d_q(qn * 4), d_out(qn * 2);
    TQKV_BENCH_CHECK(cudaMemcpy(d_q.p, qh.data(), qn * 4, cudaMemcpyHostToDevice));
    // Visible keys summed over rows: row i of the chunk sees context + i + 1 keys.
    const double keys = static_cast<double>(seqs) * (static_cast<double>(chunk) * context + 0.5 * chunk * (chunk + 1.0));
    const double flops = 4.0 * hq * d * keys;
    double f16_tiles_us = 0;
    for (const std::string& fs : formats) {
      const Fmt f = parse_fmt(fs);
      const int64_t tk = tile_bytes(16, d, f.kb), tv = tile_bytes(16, d, f.vb);
      DeviceBuffer kp(pool_pages * hkv * tk), vp(pool_pages * hkv * tv);
      fill_tiles<<<1024, 256, 0, stream>>>(static_cast<uint8_t*>(kp.p), pool_pages * hkv, tk, f.kb, 16, d, 11);
      fill_tiles<<<1024, 256, 0, stream>>>(static_cast<uint8_t*>(vp.p), pool_pages * hkv, tv, f.vb, 16, d, 12);
      TQKV_BENCH_CHECK(cudaGetLastError());
      std::vector<float> cent(256), rot(static_cast<size_t>(d) * d), signs(d);
      for (int i = 0; i < 256; ++i) cent[i] = (2.f * (i + 0.5f) / 256.f - 1.f) * 2.5f / std::sqrt(static_cast<float>(d));
      for (auto& x : rot) x = nd(rng) / std::sqrt(static_cast<float>(d));
      for (auto& x : signs) x = (rng() & 1) ? 1.f : -1.f;
      std::vector<float> ck(1 << std::min(f.kb, 8)), cv(1 << std::min(f.vb, 8));
      for (size_t i = 0; i < ck.size(); ++i) ck[i] = (2.f * (i + 0.5f) / ck.size() - 1.f) * 2.5f / std::sqrt(static_cast<float>(d));
      for (size_t i = 0; i < cv.size(); ++i) cv[i] = (2.f * (i + 0.5f) / cv.size() - 1.f) * 2.5f / std::sqrt(static_cast<float>(d));
      DeviceBuffer d_ck(ck.size() * 4), d_cv(cv.size() * 4), d_rot(rot.size() * 4), d_signs(d * 4);
      TQKV_BENCH_CHECK(cudaMemcpy(d_ck.p, ck.data(), ck.size() * 4, cudaMemcpyHostToDevice));
      TQKV_BENCH_CHECK(cudaMemcpy(d_cv.p, cv.data(), cv.size() * 4, cudaMemcpyHostToDevice));
      TQKV_BENCH_CHECK(cudaMemcpy(d_rot.p, rot.data(), rot.size() * 4, cudaMemcpyHostToDevice));
      TQKV_BENCH_CHECK(cudaMemcpy(d_signs.p, signs.data(), d * 4, cudaMemcpyHostToDevice));
      PagedKVView view;
      view.k = {static_cast<uint8_t*>(kp.p), f.kb, tk, f.kb == 16 ? nullptr : static_cast<const float*>(d_ck.p)};
      view.v = {static_cast<uint8_t*>(vp.p), f.vb, tv, f.vb == 16 ? nullptr : static_cast<const float*>(d_cv.p)};
      view.num_kv_heads = hkv;
      view.head_dim = d;
      view.page_size = 16;
      view.num_seqs = seqs;
      view.page_table = static_cast<const int32_t*>(d_pt.p);
      view.max_pages_per_seq = pages_per_seq;
      view.seq_lens = static_cast<const int32_t*>(d_lens.p);
      view.first_page = nullptr;
      const bool tq = f.kb != 16 || f.vb != 16;
      view.rotation = tq ? static_cast<const float*>(d_rot.p) : nullptr;
      view.hadamard_signs = tq && (d & (d - 1)) == 0 ? static_cast<const float*>(d_signs.p) : nullptr;
      DecodeParams p;
      p.num_q_heads = hq;
      p.scale = 1.f / std::sqrt(static_cast<float>(d));
      double us[2] = {0, 0};
      int splits[2] = {0, 0};
      for (int path = 0; path < 2; ++path) {
        detail::set_prefill_path(path == 0 ? detail::PrefillPath::kTiles : detail::PrefillPath::kRows);
        auto plan = plan_prefill(view, p, total_q, sms);
        if (!plan.is_ok()) { std::fprintf(stderr, "%s: %s\n", fs.c_str(), plan.status().to_string().c_str()); return 1; }
        splits[path] = plan->num_splits;
        DeviceBuffer ws(plan->workspace_bytes);
        auto call = [&] {
          const Status st = attention_prefill(view, p, *plan, static_cast<const int32_t*>(d_qlens.p), total_q, d_q.p,
                                              DType::kF32, d_out.p, DType::kF16, ws.p, plan->workspace_bytes, stream);
          if (!st.is_ok()) { std::fprintf(stderr, "%s: %s\n", fs.c_str(), st.to_string().c_str()); std::exit(1); }
        };
        call();  // warm-up
        TQKV_BENCH_CHECK(cudaStreamSynchronize(stream));
        cudaEvent_t e0, e1;
        TQKV_BENCH_CHECK(cudaEventCreate(&e0));
        TQKV_BENCH_CHECK(cudaEventCreate(&e1));
        std::vector<double> t;
        const int n_it = path == 0 ? iters : std::max(2, iters / 4);  // the per-row path is slow
        for (int r = 0; r < reps; ++r) {
          TQKV_BENCH_CHECK(cudaEventRecord(e0, stream));
          for (int it = 0; it < n_it; ++it) call();
          TQKV_BENCH_CHECK(cudaEventRecord(e1, stream));
          TQKV_BENCH_CHECK(cudaEventSynchronize(e1));
          float ms = 0;
          TQKV_BENCH_CHECK(cudaEventElapsedTime(&ms, e0, e1));
          t.push_back(1000.0 * ms / n_it);
        }
        std::sort(t.begin(), t.end());
        us[path] = t[t.size() / 2];
        TQKV_BENCH_CHECK(cudaEventDestroy(e0));
        TQKV_BENCH_CHECK(cudaEventDestroy(e1));
      }
      detail::set_prefill_path(detail::PrefillPath::kTiles);
      if (f.kb == 16 && f.vb == 16) f16_tiles_us = us[0];
      const double tf_tiles = flops / (us[0] * 1e-6) / 1e12, tf_rows = flops / (us[1] * 1e-6) / 1e12;
      if (json) {
        char buf[512];
        std::snprintf(buf, sizeof buf,
                      "%s{\"kv\":\"%s\",\"context\":%d,\"chunk\":%d,\"seqs\":%d,\"tiled_us\":%.1f,\"tiled_tflops\":%.1f,"
                      "\"tiled_splits\":%d,\"rows_us\":%.1f,\"rows_tflops\":%.1f,\"rows_splits\":%d,\"speedup\":%.2f,"
                      "\"vs_f16_tiled\":%.2f}",
                      rows_json.empty() ? "" : ",", fs.c_str(), context, chunk, seqs, us[0], tf_tiles, splits[0], us[1],
                      tf_rows, splits[1], us[1] / us[0], f16_tiles_us > 0 ? f16_tiles_us / us[0] : 0.0);
        rows_json += buf;
      } else {
        std::printf("prefill %-5s ctx %5d + chunk %4d: tiled %9.1f us %6.1f TFLOP/s (splits %d) | per-row %9.1f us %6.1f "
                    "TFLOP/s (splits %d) | tiled %.2fx per-row%s\n",
                    fs.c_str(), context, chunk, us[0], tf_tiles, splits[0], us[1], tf_rows, splits[1], us[1] / us[0],
                    f16_tiles_us > 0 && !(f.kb == 16 && f.vb == 16)
                        ? (", " + std::to_string(f16_tiles_us / us[0]).substr(0, 4) + "x f16 tiled").c_str()
                        : "");
      }
      std::fflush(stdout);
    }
  }
  if (json)
    std::printf("{\"device\":\"%s\",\"sms\":%d,\"heads\":\"%d:%d\",\"head_dim\":%d,\"rows\":[%s]}\n", prop.name, sms, hq, hkv,
                d, rows_json.c_str());
  cudaStreamDestroy(stream);
  return 0;
}
