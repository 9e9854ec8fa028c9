// tqkv_quant_bench: quantize-on-write (tqkv::cuda::quantize_and_store) per KV format, head size
// and input type, the tensor-core kernels (default: staged inputs) against the previous kernels
// (TQKV_CUDA_QUANT=old) and against themselves without input staging (variant 0,
// TQKV_CUDA_QUANT=nostage) in the same process, and the device copy bandwidth of the same run.
//
//   tqkv_quant_bench [--tokens N] [--heads H] [--head-dim 128,96] [--formats k4v4,k3v3,...]
//                    [--input f16,f32] [--reps N] [--iters N] [--old-iters N] [--old-reps N]
//                    [--scale-search]
//
// --scale-search: the encoder's scale search (PagedKVView::scale_search, docs/formats.md). The
// columns become: "gen+s" = the generic kernel with the search (TQKV_CUDA_QUANT=old: where the
// tensor-core kernels do not search), "tc" = the tensor-core kernel without the search (staged,
// the default variant), "tc+s" = the tensor-core kernel with the search (d = 128; at d = 96 the
// call goes to the generic kernel); differing bytes: tc+s vs gen+s (index bytes; near-ties and
// pre-scale near-ties), tc+s vs tc (whole tiles: what the search changed).
//
// Method: N new tokens x H KV heads to consecutive slots (a prefill chunk; N = 32768, H = 8 by
// default), inputs random normal fp16 / fp32, the real Lloyd-Max codebooks and the default
// rotation (Hadamard for 128, dense for 96). `iters` calls captured in one CUDA graph, median of
// `reps` replays after 2 warm-up replays. Bytes = inputs read + tiles written (padding included) +
// slot ids. Copy bandwidth: the larger of cudaMemcpyAsync and a 16-byte copy kernel over 1 GiB,
// read + write counted. The last column compares the new kernel's output bytes with the old
// kernel's (index bytes differing: near-ties of fp32 arithmetic, expected ~0), and the new
// kernel's bytes with variant 0's (same arithmetic, whole tiles: must be 0).
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

#include "bench_common.cuh"
#include "cuda/quantize_tc.cuh"
#include "tqkv/codec.h"
#include "tqkv/cuda_attention.h"
#include "tqkv/kv_layout.h"

using tqkv::bench::split_list;
using tqkv::bench::time_graph;

namespace {

__global__ void copy_kernel(const uint4* __restrict__ src, uint4* __restrict__ dst, size_t n) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x)
    dst[i] = src[i];
}

__device__ float hash_normal(uint64_t i, uint32_t seed) {  // Box-Muller on two hashed uniforms
  uint64_t x = i * 0x9E3779B97F4A7C15ull + seed;
  x ^= x >> 31; x *= 0xBF58476D1CE4E5B9ull; x ^= x >> 29; x *= 0x94D049BB133111EBull; x ^= x >> 32;
  const float u1 = (static_cast<uint32_t>(x) + 1.f) * 2.3283064e-10f, u2 = static_cast<uint32_t>(x >> 32) * 2.3283064e-10f;
  return sqrtf(-2.f * logf(u1)) * cospif(2.f * u2);
}
__global__ void fill_kernel(void* p, size_t n, bool f32, uint32_t seed, float sd) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const float v = hash_normal(i, seed) * sd;
    if (f32) static_cast<float*>(p)[i] = v; else static_cast<__half*>(p)[i] = __float2half_rn(v);
  }
}

bool parse_format(const std::string& f, int& kb, int& vb) {
  if (f == "f16") { kb = vb = 16; return true; }
  return std::sscanf(f.c_str(), "k%dv%d", &kb, &vb) == 2 && tqkv::is_valid_kv_bits(kb) && tqkv::is_valid_kv_bits(vb);
}

}  // namespace

constexpr char kUsage[] =
    "usage: tqkv_quant_bench [options]  (quantize-on-write per format, head size and input type;\n"
    "       method and columns: the header of bench/cuda/bench_quantize.cu)\n"
    "  --tokens N         new tokens per call (default 32768: a prefill chunk; 32: a decode step)\n"
    "  --heads H          KV heads (default 8)\n"
    "  --head-dim LIST    head sizes (default 128,96)\n"
    "  --formats LIST     KV formats (default k4v4,k3v3,k8v4,k8v8,k4v3,k2v2)\n"
    "  --input LIST       input types f16,f32 (default both)\n"
    "  --scale-search     with the encoder's scale search\n"
    "  --reps N           timed replays, median reported (default 7)\n"
    "  --iters N          calls per replay, one CUDA graph (default 20)\n"
    "  --old-iters N, --old-reps N   the same for the previous kernels (default: --iters, --reps)\n";

int main(int argc, char** argv) {
  if (tqkv::bench::wants_help(argc, argv, kUsage)) return 0;
  int tokens = 32768, heads = 8, reps = 7, iters = 20, old_iters = -1, old_reps = -1;
  bool search = false;
  std::vector<int> dims = {128, 96};
  std::vector<std::string> formats = {"k4v4", "k3v3", "k8v4", "k8v8", "k4v3", "k2v2"}, inputs = {"f16", "f32"};
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const char* v = i + 1 < argc ? argv[i + 1] : "";
    if (a == "--tokens") { tokens = std::atoi(v); ++i; }
    else if (a == "--heads") { heads = std::atoi(v); ++i; }
    else if (a == "--reps") { reps = std::atoi(v); ++i; }
    else if (a == "--iters") { iters = std::atoi(v); ++i; }
    else if (a == "--old-iters") { old_iters = std::atoi(v); ++i; }  // the old d = 96 kernel takes ~20 ms a call
    else if (a == "--old-reps") { old_reps = std::atoi(v); ++i; }
    else if (a == "--formats") { formats = split_list(v); ++i; }
    else if (a == "--input") { inputs = split_list(v); ++i; }
    else if (a == "--scale-search") search = true;
    else if (a == "--head-dim") { dims.clear(); for (auto& x : split_list(v)) dims.push_back(std::atoi(x.c_str())); ++i; }
    else { std::fprintf(stderr, "unknown option %s (--help lists them)\n", a.c_str()); return 1; }
  }
  tqkv::bench::require_device("tqkv_quant_bench");
  if (old_iters <= 0) old_iters = iters;
  if (old_reps <= 0) old_reps = reps;
  if (tokens <= 0 || heads <= 0 || reps <= 0 || iters <= 0) { std::fprintf(stderr, "bad sizes\n"); return 1; }
  cudaStream_t s;
  TQKV_BENCH_CHECK(cudaStreamCreate(&s));
  cudaDeviceProp prop;
  TQKV_BENCH_CHECK(cudaGetDeviceProperties(&prop, 0));

  // Copy bandwidth of this run.
  const size_t cbytes = size_t{1} << 30;
  void *csrc, *cdst;
  TQKV_BENCH_CHECK(cudaMalloc(&csrc, cbytes));
  TQKV_BENCH_CHECK(cudaMalloc(&cdst, cbytes));
  TQKV_BENCH_CHECK(cudaMemsetAsync(csrc, 1, cbytes, s));
  const double us_m = time_graph([&] { TQKV_BENCH_CHECK(cudaMemcpyAsync(cdst, csrc, cbytes, cudaMemcpyDeviceToDevice, s)); }, 5, 5, s);
  const double us_k = time_graph([&] {
    copy_kernel<<<prop.multiProcessorCount * 8, 256, 0, s>>>(static_cast<const uint4*>(csrc), static_cast<uint4*>(cdst), cbytes / 16);
  }, 5, 5, s);
  TQKV_BENCH_CHECK(cudaFree(csrc));
  TQKV_BENCH_CHECK(cudaFree(cdst));
  const double copy_gbps = 2.0 * cbytes / (std::min(us_m, us_k) * 1e3);
  std::printf("device %s, %d SMs; copy: memcpy %.1f us, kernel %.1f us for 2 x 1 GiB -> %.0f GB/s\n", prop.name,
              prop.multiProcessorCount, us_m, us_k, copy_gbps);
  if (search)
    std::printf("%-5s %4s %4s %7s %8s %7s %7s %8s %7s %6s %7s %7s %s\n", "kv", "d", "in", "MB", "gen+s us", "tc us",
                "tc+s us", "tc+s GB/s", "gen+s %cp", "tc %", "tc+s %cp", "vs gen+s",
                "idx bytes differing tc+s/gen+s, tile bytes tc+s/tc");
  else
    std::printf("%-5s %4s %4s %7s %8s %7s %7s %8s %7s %6s %7s %7s %s\n", "kv", "d", "in", "MB", "old us", "v0 us",
                "new us", "new GB/s", "old %cp", "v0 %", "new %cp", "speedup", "idx bytes differing new/old, new/v0");

  for (int d : dims) {
    const int P = tqkv::kDefaultPageSize;
    const auto kind = tqkv::default_rotation(d);
    auto rot_r = tqkv::Rotation::create(d, kind, tqkv::kDefaultRotationSeed);
    if (!rot_r.is_ok()) { std::fprintf(stderr, "rotation: %s\n", rot_r.status().to_string().c_str()); return 1; }
    const auto& rot = rot_r.value();
    float *d_rot = nullptr, *d_signs = nullptr;
    TQKV_BENCH_CHECK(cudaMalloc(&d_rot, sizeof(float) * d * d));
    TQKV_BENCH_CHECK(cudaMemcpy(d_rot, rot->matrix(), sizeof(float) * d * d, cudaMemcpyHostToDevice));
    if (rot->signs()) {
      TQKV_BENCH_CHECK(cudaMalloc(&d_signs, sizeof(float) * d));
      TQKV_BENCH_CHECK(cudaMemcpy(d_signs, rot->signs(), sizeof(float) * d, cudaMemcpyHostToDevice));
    }
    for (const auto& in : inputs) {
      const bool f32 = in == "f32";
      const size_t xn = static_cast<size_t>(tokens) * heads * d, es = f32 ? 4 : 2;
      void *kin, *vin;
      TQKV_BENCH_CHECK(cudaMalloc(&kin, xn * es));
      TQKV_BENCH_CHECK(cudaMalloc(&vin, xn * es));
      fill_kernel<<<1024, 256, 0, s>>>(kin, xn, f32, 11, 2.f);
      fill_kernel<<<1024, 256, 0, s>>>(vin, xn, f32, 12, 1.f);
      std::vector<int64_t> slots(tokens);
      for (int i = 0; i < tokens; ++i) slots[i] = i;
      int64_t* d_slots;
      TQKV_BENCH_CHECK(cudaMalloc(&d_slots, 8 * slots.size()));
      TQKV_BENCH_CHECK(cudaMemcpy(d_slots, slots.data(), 8 * slots.size(), cudaMemcpyHostToDevice));
      for (const auto& fname : formats) {
        int kb = 0, vb = 0;
        if (!parse_format(fname, kb, vb)) { std::fprintf(stderr, "bad format %s\n", fname.c_str()); return 1; }
        const int pages = (tokens + P - 1) / P;
        tqkv::PagedKVView view;
        view.num_kv_heads = heads; view.head_dim = d; view.page_size = P;
        view.rotation = d_rot; view.hadamard_signs = d_signs;
        float* d_bnd[2] = {nullptr, nullptr};
        float* d_cent[2] = {nullptr, nullptr};
        uint8_t* pools[3][2] = {};  // [new, old, variant 0][side]
        for (int side = 0; side < 2; ++side) {
          const int bits = side == 0 ? kb : vb;
          tqkv::KVSideView& sv = side == 0 ? view.k : view.v;
          sv.bits = bits;
          sv.tile_bytes = tqkv::tile_bytes(P, d, bits);
          for (int w = 0; w < 3; ++w) {
            TQKV_BENCH_CHECK(cudaMalloc(&pools[w][side], static_cast<size_t>(pages) * heads * sv.tile_bytes));
            TQKV_BENCH_CHECK(cudaMemset(pools[w][side], 0, static_cast<size_t>(pages) * heads * sv.tile_bytes));
          }
          if (bits != tqkv::kF16Bits) {
            auto cb = tqkv::Codebook::get(d, bits);
            if (!cb.is_ok()) { std::fprintf(stderr, "codebook: %s\n", cb.status().to_string().c_str()); return 1; }
            const int L = cb.value()->levels();
            TQKV_BENCH_CHECK(cudaMalloc(&d_bnd[side], 4 * (L - 1)));
            TQKV_BENCH_CHECK(cudaMalloc(&d_cent[side], 4 * L));
            TQKV_BENCH_CHECK(cudaMemcpy(d_bnd[side], cb.value()->boundaries(), 4 * (L - 1), cudaMemcpyHostToDevice));
            TQKV_BENCH_CHECK(cudaMemcpy(d_cent[side], cb.value()->centroids(), 4 * L, cudaMemcpyHostToDevice));
            sv.centroids = d_cent[side];
          }
        }
        double us[3] = {0, 0, 0};
        // 0 = new (default variant), 1 = old, 2 = variant 0 (no staging); with --scale-search:
        // 0 = tensor-core + search, 1 = generic + search, 2 = tensor-core without search.
        for (int w = 0; w < 3; ++w) {
          tqkv::cuda::tc::set_quantize_kernel_old(w == 1);
          tqkv::cuda::tc::set_quantize_tc_variant(w == 2 && !search ? 0 : 1);
          tqkv::PagedKVView vw = view;
          vw.scale_search = search && w != 2 ? 1 : 0;
          vw.k.pages = pools[w][0];
          vw.v.pages = pools[w][1];
          const tqkv::cuda::DType dt = f32 ? tqkv::cuda::DType::kF32 : tqkv::cuda::DType::kF16;
          const tqkv::Status st0 = tqkv::cuda::quantize_and_store(vw, d_bnd[0], d_bnd[1], kin, vin, dt, d_slots, tokens, s);
          if (!st0.is_ok()) { std::fprintf(stderr, "quantize: %s\n", st0.to_string().c_str()); return 1; }
          us[w] = time_graph([&] {
            const tqkv::Status st = tqkv::cuda::quantize_and_store(vw, d_bnd[0], d_bnd[1], kin, vin, dt, d_slots, tokens, s);
            if (!st.is_ok()) { std::fprintf(stderr, "quantize: %s\n", st.to_string().c_str()); std::exit(1); }
          }, w == 1 ? old_iters : iters, w == 1 ? old_reps : reps, s);
        }
        tqkv::cuda::tc::set_quantize_kernel_old(-1);
        tqkv::cuda::tc::set_quantize_tc_variant(-1);
        TQKV_BENCH_CHECK(cudaStreamSynchronize(s));
        // Compare index bytes (rows), new vs old.
        size_t differ = 0, differ_ns = 0, total_idx = 0;
        for (int side = 0; side < 2; ++side) {
          const int64_t tb = side == 0 ? view.k.tile_bytes : view.v.tile_bytes;
          const int bits = side == 0 ? kb : vb;
          const size_t n = static_cast<size_t>(pages) * heads * tb;
          std::vector<uint8_t> a(n), b(n), c(n);
          TQKV_BENCH_CHECK(cudaMemcpy(a.data(), pools[0][side], n, cudaMemcpyDeviceToHost));
          TQKV_BENCH_CHECK(cudaMemcpy(b.data(), pools[1][side], n, cudaMemcpyDeviceToHost));
          TQKV_BENCH_CHECK(cudaMemcpy(c.data(), pools[2][side], n, cudaMemcpyDeviceToHost));
          for (size_t k = 0; k < n; ++k) differ_ns += a[k] != c[k];  // whole tiles, scales too
          const int64_t rb = bits == tqkv::kF16Bits ? 2LL * d * P : tqkv::index_bytes(d, bits) * P;
          for (size_t t0 = 0; t0 < n; t0 += tb)
            for (int64_t k = 0; k < rb; ++k) { ++total_idx; differ += a[t0 + k] != b[t0 + k]; }
        }
        const double bytes = 2.0 * xn * es + static_cast<double>(tokens) * heads *
                                 (view.k.tile_bytes + view.v.tile_bytes) / P + tokens * 8.0;
        const double gbps = bytes / (us[0] * 1e3);
        auto pct = [&](double u) { return 100 * bytes / (u * 1e3) / copy_gbps; };
        std::printf("%-5s %4d %4s %7.1f %8.1f %7.1f %7.1f %8.0f %6.0f%% %5.0f%% %6.0f%% %6.2fx %zu / %zu, %zu\n",
                    fname.c_str(), d, in.c_str(), bytes / 1e6, us[1], us[2], us[0], gbps, pct(us[1]), pct(us[2]),
                    pct(us[0]), us[1] / us[0], differ, total_idx, differ_ns);
        std::fflush(stdout);
        for (int side = 0; side < 2; ++side) {
          cudaFree(d_bnd[side]);
          cudaFree(d_cent[side]);
          for (int w = 0; w < 3; ++w) cudaFree(pools[w][side]);
        }
      }
      cudaFree(kin);
      cudaFree(vin);
      cudaFree(d_slots);
    }
    cudaFree(d_rot);
    if (d_signs) cudaFree(d_signs);
  }
  return 0;
}
