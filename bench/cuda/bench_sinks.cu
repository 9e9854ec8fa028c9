// tqkv_sink_bench: the cost of attention sinks in CUDA decode attention. The same random paged
// cache (Llama-3.1-8B attention shape: 32 query heads, 8 KV heads, head size 128; shuffled pages)
// timed with sink_tokens = 0 and sink_tokens = N in one process: each variant is one CUDA graph
// of `iters` attention_decode calls (rotation + split-KV kernel + merge), the two graphs replayed
// alternately, the median per call reported.
//
//   tqkv_sink_bench [--formats k4v4,f16] [--batch 8,32] [--context 8192,16384] [--sinks 4]
//                   [--reps 9] [--iters 20]
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "bench_common.cuh"
#include "tqkv/cuda_attention.h"

using tqkv::bench::DeviceBuffer;
using tqkv::bench::fill_tiles;
using tqkv::bench::parse_ints;
using tqkv::bench::split_list;

constexpr char kUsage[] =
    "usage: tqkv_sink_bench [options]  (decode attention with N sink tokens against none, same cache;\n"
    "       method: the header of bench/cuda/bench_sinks.cu)\n"
    "  --formats LIST     KV formats (default k4v4)\n"
    "  --batch LIST       batch sizes (default 8,32)\n"
    "  --context LIST     context lengths (default 8192,16384)\n"
    "  --sinks N          sink tokens (default 4)\n"
    "  --reps N           replays of each graph, median reported (default 9)\n"
    "  --iters N          calls per graph (default 20)\n";

int main(int argc, char** argv) {
  if (tqkv::bench::wants_help(argc, argv, kUsage)) return 0;
  std::vector<std::string> formats = {"k4v4"};
  std::vector<int> batches = {8, 32}, contexts = {8192, 16384};
  int sinks = 4, reps = 9, iters = 20;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--formats") {
      formats = split_list(argv[i + 1]);
    } else if (a == "--batch") batches = parse_ints(argv[i + 1]);
    else if (a == "--context") contexts = parse_ints(argv[i + 1]);
    else if (a == "--sinks") sinks = std::atoi(argv[i + 1]);
    else if (a == "--reps") reps = std::atoi(argv[i + 1]);
    else if (a == "--iters") iters = std::atoi(argv[i + 1]);
    else { std::fprintf(stderr, "unknown option %s (--help lists them)\n", a.c_str()); return 2; }
  }
  if (argc % 2 == 0) {  // options come in pairs: a trailing one has no value
    std::fprintf(stderr, "%s needs a value (--help lists the options)\n", argv[argc - 1]);
    return 2;
  }
  tqkv::bench::require_device("tqkv_sink_bench");
  cudaDeviceProp prop{};
  TQKV_BENCH_CHECK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s, %d SMs; head size 128, 32 query heads, 8 KV heads; %d sink tokens vs none; "
              "median of %d replays of %d calls\n", prop.name, prop.multiProcessorCount, sinks, reps, iters);
  std::printf("%-6s %5s %7s %6s %12s %12s %8s\n", "kv", "batch", "context", "splits", "no sinks us", "sinks us", "delta");
  const int d = 128, H = 8, HQ = 32;
  // P = H diag(signs) / sqrt(d): the rotation the kernels use through its signs (Hadamard path).
  std::mt19937_64 rng(1);
  std::vector<float> signs(d), rot(static_cast<size_t>(d) * d);
  for (auto& s : signs) s = (rng() & 1) ? 1.f : -1.f;
  for (int i = 0; i < d; ++i)
    for (int j = 0; j < d; ++j)
      rot[static_cast<size_t>(i) * d + j] = ((__builtin_popcount(i & j) & 1) ? -1.f : 1.f) * signs[j] / std::sqrt(128.f);
  DeviceBuffer d_rot(rot.size() * 4), d_signs(d * 4), d_cent(16 * 4);
  TQKV_BENCH_CHECK(cudaMemcpy(d_rot.p, rot.data(), rot.size() * 4, cudaMemcpyHostToDevice));
  TQKV_BENCH_CHECK(cudaMemcpy(d_signs.p, signs.data(), d * 4, cudaMemcpyHostToDevice));
  cudaStream_t stream;
  TQKV_BENCH_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  int sm = prop.multiProcessorCount;
  for (const std::string& f : formats) {
    const int bits = f == "f16" ? 16 : (f == "k8v8" ? 8 : (f == "k3v3" ? 3 : (f == "k2v2" ? 2 : 4)));
    if (bits != 16) {
      std::vector<float> c(1 << bits);
      for (int i = 0; i < (1 << bits); ++i) c[i] = (2.f * (i + 0.5f) / (1 << bits) - 1.f) * 2.5f / std::sqrt(128.f);
      TQKV_BENCH_CHECK(cudaMemcpy(d_cent.p, c.data(), c.size() * 4, cudaMemcpyHostToDevice));
    }
    for (int B : batches)
      for (int L : contexts) {
        const int mp = (L + 15) / 16;
        const int64_t pages = static_cast<int64_t>(B) * mp;
        const int64_t tb = tqkv::tile_bytes(16, d, bits);
        DeviceBuffer kp(pages * H * tb), vp(pages * H * tb);
        fill_tiles<<<1024, 256, 0, stream>>>(kp.get<uint8_t>(), pages * H, tb, bits, 16, d, 11);
        fill_tiles<<<1024, 256, 0, stream>>>(vp.get<uint8_t>(), pages * H, tb, bits, 16, d, 12);
        const int64_t stb = tqkv::tile_bytes(std::max(sinks, 1), d, 16);
        DeviceBuffer sk(B * H * stb), sv(B * H * stb);
        fill_tiles<<<64, 256, 0, stream>>>(sk.get<uint8_t>(), B * H, stb, 16, std::max(sinks, 1), d, 13);
        fill_tiles<<<64, 256, 0, stream>>>(sv.get<uint8_t>(), B * H, stb, 16, std::max(sinks, 1), d, 14);
        std::vector<int32_t> perm(static_cast<size_t>(pages)), lens(B, L), slot(B);
        std::iota(perm.begin(), perm.end(), 0);
        std::shuffle(perm.begin(), perm.end(), rng);
        std::iota(slot.begin(), slot.end(), 0);
        DeviceBuffer d_pt(pages * 4), d_lens(B * 4), d_slot(B * 4);
        TQKV_BENCH_CHECK(cudaMemcpy(d_pt.p, perm.data(), pages * 4, cudaMemcpyHostToDevice));
        TQKV_BENCH_CHECK(cudaMemcpy(d_lens.p, lens.data(), B * 4, cudaMemcpyHostToDevice));
        TQKV_BENCH_CHECK(cudaMemcpy(d_slot.p, slot.data(), B * 4, cudaMemcpyHostToDevice));
        tqkv::PagedKVView v;
        const float* cent = bits == 16 ? nullptr : d_cent.get<const float>();
        v.k = {kp.get<uint8_t>(), bits, tb, cent};
        v.v = {vp.get<uint8_t>(), bits, tb, cent};
        v.num_kv_heads = H;
        v.head_dim = d;
        v.num_seqs = B;
        v.page_table = d_pt.get<const int32_t>();
        v.max_pages_per_seq = mp;
        v.seq_lens = d_lens.get<const int32_t>();
        v.rotation = bits == 16 ? nullptr : d_rot.get<const float>();
        v.hadamard_signs = bits == 16 ? nullptr : d_signs.get<const float>();
        tqkv::PagedKVView vs = v;
        vs.sink_tokens = sinks;
        vs.sink_k = sk.get<uint8_t>();
        vs.sink_v = sv.get<uint8_t>();
        vs.sink_slot = d_slot.get<const int32_t>();
        tqkv::cuda::DecodeParams p;
        p.num_q_heads = HQ;
        p.scale = 1.f / std::sqrt(128.f);
        auto plan = tqkv::cuda::plan_decode(v, p, sm);
        auto plan_s = tqkv::cuda::plan_decode(vs, p, sm);
        if (!plan.is_ok() || !plan_s.is_ok()) {
          std::fprintf(stderr, "plan failed: %s\n", (plan.is_ok() ? plan_s.status() : plan.status()).to_string().c_str());
          return 1;
        }
        DeviceBuffer q(static_cast<size_t>(B) * HQ * d * 2), out(static_cast<size_t>(B) * HQ * d * 2),
            ws(std::max(plan->workspace_bytes, plan_s->workspace_bytes));
        fill_tiles<<<64, 256, 0, stream>>>(q.get<uint8_t>(), 1, static_cast<int64_t>(B) * HQ * d * 2, 16, B * HQ, d, 15);
        cudaGraphExec_t ge[2];
        for (int g = 0; g < 2; ++g) {
          const tqkv::PagedKVView& vv = g == 0 ? v : vs;
          const tqkv::cuda::DecodePlan& pl = g == 0 ? *plan : *plan_s;
          // Warm-up outside the graph, checking the status.
          tqkv::Status st = tqkv::cuda::attention_decode(vv, p, pl, q.p, tqkv::cuda::DType::kF16, out.p,
                                                         tqkv::cuda::DType::kF16, ws.p, std::max(plan->workspace_bytes, plan_s->workspace_bytes), stream);
          if (!st.is_ok()) { std::fprintf(stderr, "decode: %s\n", st.to_string().c_str()); return 1; }
          TQKV_BENCH_CHECK(cudaStreamSynchronize(stream));
          cudaGraph_t graph;
          TQKV_BENCH_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
          for (int i = 0; i < iters; ++i)
            (void)tqkv::cuda::attention_decode(vv, p, pl, q.p, tqkv::cuda::DType::kF16, out.p, tqkv::cuda::DType::kF16,
                                               ws.p, std::max(plan->workspace_bytes, plan_s->workspace_bytes), stream);
          TQKV_BENCH_CHECK(cudaStreamEndCapture(stream, &graph));
          TQKV_BENCH_CHECK(cudaGraphInstantiate(&ge[g], graph, 0));
          cudaGraphDestroy(graph);
          TQKV_BENCH_CHECK(cudaGraphLaunch(ge[g], stream));  // upload + warm
        }
        cudaEvent_t e0, e1;
        TQKV_BENCH_CHECK(cudaEventCreate(&e0));
        TQKV_BENCH_CHECK(cudaEventCreate(&e1));
        std::vector<float> ms[2];
        for (int r = 0; r < reps; ++r)
          for (int g = 0; g < 2; ++g) {
            TQKV_BENCH_CHECK(cudaEventRecord(e0, stream));
            TQKV_BENCH_CHECK(cudaGraphLaunch(ge[g], stream));
            TQKV_BENCH_CHECK(cudaEventRecord(e1, stream));
            TQKV_BENCH_CHECK(cudaEventSynchronize(e1));
            float t = 0;
            TQKV_BENCH_CHECK(cudaEventElapsedTime(&t, e0, e1));
            ms[g].push_back(t);
          }
        double med[2];
        for (int g = 0; g < 2; ++g) {
          std::sort(ms[g].begin(), ms[g].end());
          med[g] = ms[g][ms[g].size() / 2] * 1e3 / iters;
          cudaGraphExecDestroy(ge[g]);
        }
        cudaEventDestroy(e0);
        cudaEventDestroy(e1);
        std::printf("%-6s %5d %7d %6d %12.1f %12.1f %+7.1f%%\n", f.c_str(), B, L, plan->num_splits, med[0], med[1],
                    100.0 * (med[1] / med[0] - 1.0));
        std::fflush(stdout);
      }
  }
  cudaStreamDestroy(stream);
  return 0;
}
