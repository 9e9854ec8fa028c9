// Decode / quantize-on-write benchmark (see bench_attention.h).
//
// Method: random but valid pages (indices uniform, scales finite, fp16 values finite), page
// placement shuffled; the working set is replicated into enough copies to exceed 4x the L2 and
// the timed calls cycle through the copies, so every call streams its KV bytes from DRAM. Each
// repetition replays a CUDA graph of `iters` calls between two events; the median repetition is
// reported. Bytes = KV tiles of every visible page (padding included) + queries + outputs.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <numeric>
#include <random>
#include <sstream>

#include "cuda/bench_attention.h"
#include "cuda/cuda_check.h"
#include "cuda/decode_probe.cuh"
#include "cuda/graph_timer.cuh"
#include "tqkv/cuda_attention.h"
#include "tqkv/kv_layout.h"

namespace tqkv::cuda {
namespace {

struct DevMem {
  void* p = nullptr;
  DevMem() = default;
  DevMem(const DevMem&) = delete;
  DevMem& operator=(const DevMem&) = delete;
  ~DevMem() { if (p) cudaFree(p); }
};
Status dev_alloc(DevMem& m, size_t bytes) {
  TQKV_CUDA_RETURN_IF_ERROR(cudaMalloc(&m.p, std::max<size_t>(bytes, 256)));
  return Status::ok();
}

__device__ __forceinline__ uint32_t hash32(uint64_t x) {
  x ^= x >> 33; x *= 0xff51afd7ed558ccdull; x ^= x >> 33; x *= 0xc4ceb9fe1a85ec53ull; x ^= x >> 33;
  return static_cast<uint32_t>(x);
}

// Fills `tiles` tiles of `tile_bytes`: random index bytes and finite fp16 scales (TurboQuant), or
// finite fp16 values in [-1, 1) (bits 16).
__global__ void fill_tiles_kernel(uint8_t* pages, long long tiles, int tile_bytes, int page_size, int d,
                                  int bits, uint64_t seed) {
  const long long total = tiles * (tile_bytes / 2);
  const int scales_off = bits == kF16Bits ? tile_bytes : static_cast<int>(tile_scales_offset(page_size, d, bits));
  for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<long long>(gridDim.x) * blockDim.x) {
    const int off = static_cast<int>((i % (tile_bytes / 2)) * 2);
    const uint32_t r = hash32(seed * 0x9e3779b97f4a7c15ull + i);
    uint16_t v;
    if (bits == kF16Bits) {
      v = __half_as_ushort(__float2half_rn((r & 0xffff) / 32768.f - 1.f));
    } else if (off < scales_off) {
      v = static_cast<uint16_t>(r);
    } else {
      v = __half_as_ushort(__float2half_rn((0.5f + (r & 0xffff) / 65536.f) * sqrtf(static_cast<float>(d))));
    }
    reinterpret_cast<uint16_t*>(pages)[i] = v;
  }
}

__global__ void fill_float_kernel(float* p, long long n, float lo, float hi, uint64_t seed) {
  for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<long long>(gridDim.x) * blockDim.x)
    p[i] = lo + (hi - lo) * (hash32(seed + i) & 0xffffff) / 16777216.f;
}

struct Format {
  int kb, vb;
};
Result<Format> parse_format(const std::string& s) {
  if (s == "f16") return Format{16, 16};
  int k = 0, v = 0;
  if (std::sscanf(s.c_str(), "k%dv%d", &k, &v) == 2 && is_valid_kv_bits(k) && is_valid_kv_bits(v)) return Format{k, v};
  return invalid_argument("unknown KV format '" + s + "' (f16, k8v4, k4v4, k4v3, k3v3, k2v2, ...)");
}

// Sorted Lloyd-Max-like table, good enough for timing (values do not affect speed).
std::vector<float> bench_centroids(int bits, int d) {
  const int L = 1 << bits;
  std::vector<float> c(L);
  for (int i = 0; i < L; ++i) c[i] = static_cast<float>((2.0 * (i + 0.5) / L - 1.0) * 2.5 / std::sqrt(double(d)));
  return c;
}


// Plain 16-byte grid-stride copy: the SM-driven copy ceiling (a graph memcpy node may use a copy
// engine, which is slower on this machine).
__global__ void copy_kernel(const uint4* __restrict__ src, uint4* __restrict__ dst, size_t n) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x)
    dst[i] = src[i];
}

// Copy bandwidth counts bytes read plus bytes written. Both a cudaMemcpyAsync and a copy kernel
// are measured; the larger is the ceiling the fractions refer to.
Result<double> measure_copy_gbps(cudaStream_t stream, std::vector<CudaBenchRow>& rows) {
  const size_t bytes = size_t{1} << 30;
  DevMem src, dst;
  TQKV_RETURN_IF_ERROR(dev_alloc(src, bytes));
  TQKV_RETURN_IF_ERROR(dev_alloc(dst, bytes));
  TQKV_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(src.p, 1, bytes, stream));
  TQKV_ASSIGN_OR_RETURN(const double us, time_graph([&](int) -> Status {
    TQKV_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(dst.p, src.p, bytes, cudaMemcpyDeviceToDevice, stream));
    return Status::ok();
  }, 5, 5, stream));
  int dev = 0, sms = 0;
  TQKV_CUDA_RETURN_IF_ERROR(cudaGetDevice(&dev));
  TQKV_CUDA_RETURN_IF_ERROR(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  TQKV_ASSIGN_OR_RETURN(const double us_k, time_graph([&](int) -> Status {
    copy_kernel<<<sms * 8, 256, 0, stream>>>(static_cast<const uint4*>(src.p), static_cast<uint4*>(dst.p), bytes / 16);
    TQKV_CUDA_RETURN_IF_ERROR(cudaGetLastError());
    return Status::ok();
  }, 5, 5, stream));
  const double best = 2.0 * bytes / (std::min(us, us_k) * 1e3);
  for (auto [name, t] : {std::pair{"memcpy", us}, {"kernel", us_k}}) {
    CudaBenchRow r;
    r.op = "copy"; r.kv = name; r.time_us = t; r.bytes = 2.0 * bytes;
    r.gbps = r.bytes / (t * 1e3);
    r.frac_copy = r.gbps / best;
    rows.push_back(r);
  }
  return best;
}

// The floor under every decode call: an empty kernel with the decode kernel's launch shape (one
// CTA of 512 threads per SM, most of the shared memory), alone and as clusters of 2 (the fused
// merge), timed like the decode rows (back-to-back calls in one graph).
__global__ void empty_kernel() {}

Status measure_launch_floor(cudaStream_t stream, int sms, std::vector<CudaBenchRow>& rows) {
  const int smem = 200 * 1024;
  TQKV_CUDA_RETURN_IF_ERROR(cudaFuncSetAttribute(empty_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  for (int cluster : {1, 2}) {
    TQKV_ASSIGN_OR_RETURN(const double us, time_graph([&](int) -> Status {
      cudaLaunchConfig_t cfg = {};
      cfg.gridDim = dim3(sms / 2 * 2);
      cfg.blockDim = dim3(512);
      cfg.dynamicSmemBytes = smem;
      cfg.stream = stream;
      cudaLaunchAttribute attr[1];
      attr[0].id = cudaLaunchAttributeClusterDimension;
      attr[0].val.clusterDim.x = cluster;
      attr[0].val.clusterDim.y = 1;
      attr[0].val.clusterDim.z = 1;
      cfg.attrs = attr;
      cfg.numAttrs = 1;
      TQKV_CUDA_RETURN_IF_ERROR(cudaLaunchKernelEx(&cfg, empty_kernel));
      return Status::ok();
    }, 20, 7, stream));
    CudaBenchRow r;
    r.op = "launch";
    r.kv = "empty";
    r.splits = cluster;
    r.time_us = us;
    rows.push_back(r);
  }
  return Status::ok();
}

constexpr int kPageSize = 16;

struct CacheSet {  // `copies` replicas of one batch's pages, sharing tables
  DevMem kp, vp, pt, lens, ck, cv, rot, signs;
  int copies = 1;
  size_t pages_per_copy = 0;
  PagedKVView view;
  PagedKVView copy_view(int c) const {
    PagedKVView v = view;
    v.k.pages += static_cast<size_t>(c) * pages_per_copy * view.num_kv_heads * view.k.tile_bytes;
    v.v.pages += static_cast<size_t>(c) * pages_per_copy * view.num_kv_heads * view.v.tile_bytes;
    return v;
  }
};

Status upload(DevMem& m, const void* src, size_t bytes) {
  TQKV_RETURN_IF_ERROR(dev_alloc(m, bytes));
  TQKV_CUDA_RETURN_IF_ERROR(cudaMemcpy(m.p, src, bytes, cudaMemcpyHostToDevice));
  return Status::ok();
}

Status build_cache(CacheSet& cs, int batch, int context, int hkv, int d, Format f, size_t min_bytes) {
  const int pages_per_seq = (context + kPageSize - 1) / kPageSize;
  cs.pages_per_copy = static_cast<size_t>(batch) * pages_per_seq;
  const int64_t tk = tile_bytes(kPageSize, d, f.kb), tv = tile_bytes(kPageSize, d, f.vb);
  const size_t copy_bytes = cs.pages_per_copy * hkv * (tk + tv);
  cs.copies = static_cast<int>(std::max<size_t>(1, (min_bytes + copy_bytes - 1) / copy_bytes));
  const size_t pages = cs.pages_per_copy * cs.copies;
  TQKV_RETURN_IF_ERROR(dev_alloc(cs.kp, pages * hkv * tk));
  TQKV_RETURN_IF_ERROR(dev_alloc(cs.vp, pages * hkv * tv));
  fill_tiles_kernel<<<4096, 256>>>(static_cast<uint8_t*>(cs.kp.p), static_cast<long long>(pages) * hkv,
                                   static_cast<int>(tk), kPageSize, d, f.kb, 1);
  fill_tiles_kernel<<<4096, 256>>>(static_cast<uint8_t*>(cs.vp.p), static_cast<long long>(pages) * hkv,
                                   static_cast<int>(tv), kPageSize, d, f.vb, 2);
  TQKV_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  // Page placement shuffled within a copy (pages of a sequence are not contiguous).
  std::vector<int32_t> perm(cs.pages_per_copy);
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), std::mt19937_64(42));
  std::vector<int32_t> lens(batch, context);
  TQKV_RETURN_IF_ERROR(upload(cs.pt, perm.data(), perm.size() * 4));
  TQKV_RETURN_IF_ERROR(upload(cs.lens, lens.data(), lens.size() * 4));
  PagedKVView& v = cs.view;
  v = PagedKVView{};
  v.k = {static_cast<uint8_t*>(cs.kp.p), f.kb, tk, nullptr};
  v.v = {static_cast<uint8_t*>(cs.vp.p), f.vb, tv, nullptr};
  if (f.kb != kF16Bits) {
    const auto c = bench_centroids(f.kb, d);
    TQKV_RETURN_IF_ERROR(upload(cs.ck, c.data(), c.size() * 4));
    v.k.centroids = static_cast<const float*>(cs.ck.p);
  }
  if (f.vb != kF16Bits) {
    const auto c = bench_centroids(f.vb, d);
    TQKV_RETURN_IF_ERROR(upload(cs.cv, c.data(), c.size() * 4));
    v.v.centroids = static_cast<const float*>(cs.cv.p);
  }
  if (f.kb != kF16Bits || f.vb != kF16Bits) {
    // Power-of-two head sizes use the randomized Hadamard rotation (the default, fast transform);
    // others a dense matrix (identity here: the dense path costs the same for any matrix).
    const bool pow2 = (d & (d - 1)) == 0;
    std::vector<float> rot(static_cast<size_t>(d) * d, 0.f), signs(d);
    for (int j = 0; j < d; ++j) signs[j] = (j * 7 + 3) % 5 < 2 ? -1.f : 1.f;
    for (int i = 0; i < d; ++i)
      for (int j = 0; j < d; ++j)
        rot[static_cast<size_t>(i) * d + j] =
            pow2 ? ((__builtin_popcount(i & j) & 1) ? -1.f : 1.f) * signs[j] / std::sqrt(static_cast<float>(d))
                 : (i == j ? 1.f : 0.f);
    TQKV_RETURN_IF_ERROR(upload(cs.rot, rot.data(), rot.size() * 4));
    v.rotation = static_cast<const float*>(cs.rot.p);
    if (pow2) {
      TQKV_RETURN_IF_ERROR(upload(cs.signs, signs.data(), signs.size() * 4));
      v.hadamard_signs = static_cast<const float*>(cs.signs.p);
    }
  }
  v.num_kv_heads = hkv;
  v.head_dim = d;
  v.page_size = kPageSize;
  v.num_seqs = batch;
  v.page_table = static_cast<const int32_t*>(cs.pt.p);
  v.max_pages_per_seq = pages_per_seq;
  v.seq_lens = static_cast<const int32_t*>(cs.lens.p);
  TQKV_CUDA_RETURN_IF_ERROR(cudaDeviceSynchronize());
  return Status::ok();
}

#ifdef TQKV_DECODE_PROBE
// Probe build only (decode_probe.cuh): one decode call (the third of three back-to-back calls)
// with every CTA's phase times recorded, summarised as min / median / max over the CTAs in us
// from the first CTA's entry.
Result<std::string> probe_decode(CacheSet& cs, const DecodeParams& p, const DecodePlan& plan, void* q, void* out,
                                 void* ws, int batch, int num_kv_heads, cudaStream_t stream) {
  const size_t ctas = static_cast<size_t>(plan.num_splits) * num_kv_heads * plan.head_chunks * batch;
  const size_t n = ctas * detail::kProbeSlots;
  DevMem buf;
  TQKV_RETURN_IF_ERROR(dev_alloc(buf, n * 8));
  TQKV_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(buf.p, 0, n * 8, stream));
  detail::g_decode_probe = static_cast<unsigned long long*>(buf.p);
  for (int i = 0; i < 3; ++i) {
    const Status st = attention_decode(cs.copy_view(i % cs.copies), p, plan, q, DType::kF32, out, DType::kF32, ws,
                                       plan.workspace_bytes, stream);
    if (!st.is_ok()) {
      detail::g_decode_probe = nullptr;
      return st;
    }
  }
  detail::g_decode_probe = nullptr;
  std::vector<unsigned long long> h(n);
  TQKV_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(h.data(), buf.p, n * 8, cudaMemcpyDeviceToHost, stream));
  TQKV_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream));
  unsigned long long t0 = ~0ull;
  for (size_t c = 0; c < ctas; ++c) t0 = std::min(t0, h[c * detail::kProbeSlots + detail::kProbeEntry]);
  auto us = [&](unsigned long long t) { return t ? (static_cast<double>(t) - static_cast<double>(t0)) * 1e-3 : -1.0; };
  auto stats = [](std::vector<double> v) {
    v.erase(std::remove_if(v.begin(), v.end(), [](double x) { return x < 0; }), v.end());
    if (v.empty()) return std::string("-");
    std::sort(v.begin(), v.end());
    char b[64];
    std::snprintf(b, sizeof b, "%.2f/%.2f/%.2f", v.front(), v[v.size() / 2], v.back());
    return std::string(b);
  };
  std::vector<double> ph[15], life, spread, stream_t, pages;
  std::vector<int> per_sm(1024, 0);
  for (size_t c = 0; c < ctas; ++c) {
    const unsigned long long* r = &h[c * detail::kProbeSlots];
    for (int k = 0; k < 15; ++k)
      if (k != detail::kProbeSm && k != detail::kProbeCtaPages) ph[k].push_back(us(r[k]));
    if (r[detail::kProbeEnd]) life.push_back(us(r[detail::kProbeEnd]) - us(r[detail::kProbeEntry]));
    if (r[detail::kProbeSm] < 1024) ++per_sm[r[detail::kProbeSm]];
    pages.push_back(static_cast<double>(r[detail::kProbeCtaPages]));
    double lo = 1e30, hi = -1;
    for (int w = 0; w < 16; ++w) {
      const unsigned long long t = r[detail::kProbeWarpEnd + w];
      if (!t) continue;
      lo = std::min(lo, us(t));
      hi = std::max(hi, us(t));
    }
    if (hi >= 0) spread.push_back(hi - lo);
    if (hi >= 0 && r[detail::kProbeFirstPage]) stream_t.push_back(hi - us(r[detail::kProbeFirstPage]));
  }
  const int sms_used = static_cast<int>(std::count_if(per_sm.begin(), per_sm.end(), [](int x) { return x > 0; }));
  const int max_per_sm = *std::max_element(per_sm.begin(), per_sm.end());
  std::ostringstream o;
  o << ctas << " CTAs on " << sms_used << " SMs (max " << max_per_sm << " per SM), pages/CTA " << stats(pages)
    << "; us min/med/max from the first entry: entry " << stats(ph[detail::kProbeEntry]) << ", tables "
    << stats(ph[detail::kProbeTables]) << " (first pages issued " << stats(ph[detail::kProbeStarted])
    << ", row rotated " << stats(ph[detail::kProbeRotated]) << ", last warp " << stats(ph[detail::kProbeLastWarpTables])
    << "), ready " << stats(ph[detail::kProbeReady]) << ", first page "
    << stats(ph[detail::kProbeFirstPage]) << ", loops done " << stats(ph[detail::kProbeLoopsDone]) << " (rows stored "
    << stats(ph[detail::kProbeRowsStored]) << "), warp merge " << stats(ph[detail::kProbeWarpMerge])
    << ", cluster in " << stats(ph[detail::kProbeClusterIn]) << ", merged " << stats(ph[detail::kProbeMerged])
    << ", end " << stats(ph[detail::kProbeEnd]) << "; CTA life " << stats(life)
    << ", streaming (first page to last warp) " << stats(stream_t) << ", warp-end spread " << stats(spread);
  return o.str();
}
#endif

}  // namespace

Result<std::vector<CudaBenchRow>> run_cuda_attention_bench(const CudaBenchConfig& cfg,
                                                           void (*progress)(const std::string&)) {
  int dev = 0, sms = 0, l2 = 0, ndev = 0;
  const cudaError_t count_err = cudaGetDeviceCount(&ndev);
  if (count_err != cudaSuccess || ndev == 0)
    return unsupported(std::string("no usable CUDA device for the CUDA bench (") +
                       (count_err != cudaSuccess ? cudaGetErrorString(count_err) : "no device") + ")");
  TQKV_CUDA_RETURN_IF_ERROR(cudaGetDevice(&dev));
  TQKV_CUDA_RETURN_IF_ERROR(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  TQKV_CUDA_RETURN_IF_ERROR(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, dev));
  const size_t min_bytes = std::max<size_t>(size_t{4} * l2, size_t{256} << 20);
  cudaStream_t stream;
  TQKV_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  std::unique_ptr<CUstream_st, void (*)(cudaStream_t)> stream_guard(stream, [](cudaStream_t s) { cudaStreamDestroy(s); });

  std::vector<CudaBenchRow> rows;
  TQKV_ASSIGN_OR_RETURN(const double copy_gbps, measure_copy_gbps(stream, rows));
  if (progress) progress("copy bandwidth " + std::to_string(copy_gbps) + " GB/s");
  TQKV_RETURN_IF_ERROR(measure_launch_floor(stream, sms, rows));

  for (int d : cfg.head_dims) {
    for (int batch : cfg.batches) {
      for (int context : cfg.contexts) {
        double f16_us = 0;
        for (const std::string& name : cfg.formats) {
          TQKV_ASSIGN_OR_RETURN(const Format f, parse_format(name));
          CacheSet cs;
          TQKV_RETURN_IF_ERROR(build_cache(cs, batch, context, cfg.num_kv_heads, d, f, min_bytes));
          DecodeParams p;
          p.num_q_heads = cfg.num_q_heads;
          p.scale = 1.f / std::sqrt(static_cast<float>(d));
          p.window = cfg.window;
          p.num_splits = cfg.num_splits;
          TQKV_ASSIGN_OR_RETURN(const DecodePlan plan, plan_decode(cs.view, p, sms));
          const size_t qn = static_cast<size_t>(batch) * cfg.num_q_heads * d;
          DevMem q, out, ws;
          TQKV_RETURN_IF_ERROR(dev_alloc(q, qn * 4));
          TQKV_RETURN_IF_ERROR(dev_alloc(out, qn * 4));
          TQKV_RETURN_IF_ERROR(dev_alloc(ws, plan.workspace_bytes));
          fill_float_kernel<<<256, 256, 0, stream>>>(static_cast<float*>(q.p), static_cast<long long>(qn), -1.f, 1.f, 3);
          TQKV_CUDA_RETURN_IF_ERROR(cudaGetLastError());
          TQKV_ASSIGN_OR_RETURN(const double us, time_graph([&](int i) -> Status {
            return attention_decode(cs.copy_view(i % cs.copies), p, plan, q.p, DType::kF32, out.p,
                                    DType::kF32, ws.p, plan.workspace_bytes, stream);
          }, cfg.iters, cfg.reps, stream));
#ifdef TQKV_DECODE_PROBE
          if (progress) {
            TQKV_ASSIGN_OR_RETURN(const std::string line, probe_decode(cs, p, plan, q.p, out.p, ws.p, batch, cfg.num_kv_heads, stream));
            progress("probe " + name + " d=" + std::to_string(d) + " batch=" + std::to_string(batch) + " context=" +
                     std::to_string(context) + " splits=" + std::to_string(plan.num_splits) + ": " + line);
          }
#endif
          CudaBenchRow r;
          r.op = "decode"; r.kv = name; r.batch = batch; r.context = context; r.head_dim = d;
          r.splits = plan.num_splits;
          r.time_us = us;
          // Pages the query can see (all of them without a window), K and V, padding included.
          const int lo = cfg.window > 0 ? std::max(0, context - cfg.window) : 0;
          const double pages_read = static_cast<double>(batch) * ((context - 1) / kPageSize - lo / kPageSize + 1);
          r.bytes = pages_read * cfg.num_kv_heads * (cs.view.k.tile_bytes + cs.view.v.tile_bytes) + 2.0 * qn * 4;
          r.copy_gbps = copy_gbps;
          r.gbps = r.bytes / (us * 1e3);
          r.frac_copy = r.gbps / copy_gbps;
          if (name == "f16") f16_us = us;
          r.speedup_vs_f16 = f16_us > 0 ? f16_us / us : 0;
          rows.push_back(r);
          if (progress) {
            char buf[200];
            std::snprintf(buf, sizeof buf, "decode %-5s d=%d batch=%d context=%d: %.1f us, %.0f GB/s (%.0f%% of copy)",
                          name.c_str(), d, batch, context, us, r.gbps, 100 * r.frac_copy);
            progress(buf);
          }
        }
      }
    }
  }

  if (cfg.prefill) {
    double f16_us = 0;
    for (const char* name : {"f16", "k4v4", "k3v3"}) {
      TQKV_ASSIGN_OR_RETURN(const Format f, parse_format(name));
      const int d = 128, ctx = cfg.prefill_context, chunk = std::min(cfg.prefill_chunk, cfg.prefill_context);
      CacheSet cs;
      TQKV_RETURN_IF_ERROR(build_cache(cs, 1, ctx, cfg.num_kv_heads, d, f, 0));
      DecodeParams p;
      p.num_q_heads = cfg.num_q_heads;
      p.scale = 1.f / std::sqrt(static_cast<float>(d));
      TQKV_ASSIGN_OR_RETURN(const DecodePlan plan, plan_prefill(cs.view, p, chunk, sms));
      const size_t qn = static_cast<size_t>(chunk) * cfg.num_q_heads * d;
      DevMem q, out, ws, ql;
      TQKV_RETURN_IF_ERROR(dev_alloc(q, qn * 4));
      TQKV_RETURN_IF_ERROR(dev_alloc(out, qn * 4));
      TQKV_RETURN_IF_ERROR(dev_alloc(ws, plan.workspace_bytes));
      TQKV_RETURN_IF_ERROR(upload(ql, &chunk, 4));
      fill_float_kernel<<<256, 256, 0, stream>>>(static_cast<float*>(q.p), static_cast<long long>(qn), -1.f, 1.f, 7);
      TQKV_CUDA_RETURN_IF_ERROR(cudaGetLastError());
      TQKV_ASSIGN_OR_RETURN(const double us, time_graph([&](int) -> Status {
        return attention_prefill(cs.view, p, plan, static_cast<const int32_t*>(ql.p), chunk, q.p, DType::kF32, out.p,
                                 DType::kF32, ws.p, plan.workspace_bytes, stream);
      }, 3, cfg.reps, stream));
      double keys = 0, pages = 0;  // visible keys and pages summed over the query rows
      for (int i = 0; i < chunk; ++i) {
        const int pos = ctx - chunk + i;
        keys += pos + 1;
        pages += pos / kPageSize + 1;
      }
      CudaBenchRow r;
      r.op = "prefill"; r.kv = name; r.batch = chunk; r.context = ctx; r.head_dim = d; r.splits = plan.num_splits;
      r.time_us = us;
      r.bytes = pages * cfg.num_kv_heads * (cs.view.k.tile_bytes + cs.view.v.tile_bytes) + 2.0 * qn * 4;
      r.gbps = r.bytes / (us * 1e3);
      r.frac_copy = r.gbps / copy_gbps;
      r.copy_gbps = copy_gbps;
      r.tflops = 4.0 * cfg.num_q_heads * d * keys / (us * 1e6);
      if (std::string(name) == "f16") f16_us = us;
      r.speedup_vs_f16 = f16_us > 0 ? f16_us / us : 0;
      rows.push_back(r);
      if (progress) {
        char buf[220];
        std::snprintf(buf, sizeof buf, "prefill %-5s context=%d chunk=%d: %.1f us, %.1f TFLOP/s, %.2fx f16", name, ctx,
                      chunk, us, r.tflops, r.speedup_vs_f16);
        progress(buf);
      }
    }
  }

  if (cfg.quantize) {
    for (const char* name : {"k4v4", "k3v3", "f16"}) {
      TQKV_ASSIGN_OR_RETURN(const Format f, parse_format(name));
      const int d = 128, hkv = cfg.num_kv_heads, n = cfg.quantize_tokens;
      CacheSet cs;
      TQKV_RETURN_IF_ERROR(build_cache(cs, 1, n, hkv, d, f, 0));
      std::vector<int64_t> slots(n);
      for (int i = 0; i < n; ++i) slots[i] = static_cast<int64_t>(i);  // a prefill chunk: consecutive slots
      DevMem dslots, kin, vin, bk, bv;
      TQKV_RETURN_IF_ERROR(upload(dslots, slots.data(), slots.size() * 8));
      const size_t xn = static_cast<size_t>(n) * hkv * d;
      TQKV_RETURN_IF_ERROR(dev_alloc(kin, xn * 2));
      TQKV_RETURN_IF_ERROR(dev_alloc(vin, xn * 2));
      fill_tiles_kernel<<<4096, 256, 0, stream>>>(static_cast<uint8_t*>(kin.p), static_cast<long long>(xn / 128), 256, 16, 128, 16, 5);
      fill_tiles_kernel<<<4096, 256, 0, stream>>>(static_cast<uint8_t*>(vin.p), static_cast<long long>(xn / 128), 256, 16, 128, 16, 6);
      std::vector<float> bnd_k, bnd_v;
      for (auto [bits, out] : {std::pair{f.kb, &bnd_k}, {f.vb, &bnd_v}}) {
        if (bits == kF16Bits) continue;
        const auto c = bench_centroids(bits, d);
        for (size_t i = 0; i + 1 < c.size(); ++i) out->push_back(0.5f * (c[i] + c[i + 1]));
      }
      if (!bnd_k.empty()) TQKV_RETURN_IF_ERROR(upload(bk, bnd_k.data(), bnd_k.size() * 4));
      if (!bnd_v.empty()) TQKV_RETURN_IF_ERROR(upload(bv, bnd_v.data(), bnd_v.size() * 4));
      TQKV_ASSIGN_OR_RETURN(const double us, time_graph([&](int) -> Status {
        return quantize_and_store(cs.view, static_cast<const float*>(bk.p), static_cast<const float*>(bv.p), kin.p,
                                  vin.p, DType::kF16, static_cast<const int64_t*>(dslots.p), n, stream);
      }, 5, cfg.reps, stream));
      CudaBenchRow r;
      r.op = "quantize"; r.kv = name; r.batch = n; r.context = 0; r.head_dim = d;
      r.time_us = us;
      r.bytes = 2.0 * xn * 2 + static_cast<double>(n) * hkv * (tile_bytes(16, d, f.kb) + tile_bytes(16, d, f.vb)) / 16 + n * 8.0;
      r.gbps = r.bytes / (us * 1e3);
      r.frac_copy = r.gbps / copy_gbps;
      r.copy_gbps = copy_gbps;
      rows.push_back(r);
      if (progress) {
        char buf[200];
        std::snprintf(buf, sizeof buf, "quantize %-5s tokens=%d: %.1f us, %.0f GB/s (%.0f%% of copy)", name, n, us,
                      r.gbps, 100 * r.frac_copy);
        progress(buf);
      }
    }
  }
  return rows;
}

std::string format_bench_table(const std::vector<CudaBenchRow>& rows) {
  std::ostringstream o;
  char buf[256];
  std::snprintf(buf, sizeof buf, "%-9s %-5s %4s %6s %7s %6s %10s %10s %8s %9s %8s %7s\n", "op", "kv", "d", "batch",
                "context", "splits", "time_us", "MB", "GB/s", "frac_copy", "vs_f16", "TFLOP/s");
  o << buf;
  for (const auto& r : rows) {
    std::snprintf(buf, sizeof buf, "%-9s %-5s %4d %6d %7d %6d %10.2f %10.2f %8.0f %9.3f %8.2f %7.1f\n", r.op.c_str(),
                  r.kv.c_str(), r.head_dim, r.batch, r.context, r.splits, r.time_us, r.bytes / 1e6, r.gbps,
                  r.frac_copy, r.speedup_vs_f16, r.tflops);
    o << buf;
  }
  return o.str();
}

std::string format_bench_json(const std::vector<CudaBenchRow>& rows) {
  std::ostringstream o;
  o << "[";
  for (size_t i = 0; i < rows.size(); ++i) {
    const auto& r = rows[i];
    char buf[512];
    std::snprintf(buf, sizeof buf,
                  "%s\n  {\"op\": \"%s\", \"kv\": \"%s\", \"head_dim\": %d, \"batch\": %d, \"context\": %d, "
                  "\"splits\": %d, \"time_us\": %.3f, \"bytes\": %.0f, \"gbps\": %.1f, \"frac_copy\": %.4f, "
                  "\"speedup_vs_f16\": %.3f, \"copy_gbps\": %.1f, \"tflops\": %.2f}",
                  i ? "," : "", r.op.c_str(), r.kv.c_str(), r.head_dim, r.batch, r.context, r.splits, r.time_us,
                  r.bytes, r.gbps, r.frac_copy, r.speedup_vs_f16, r.copy_gbps, r.tflops);
    o << buf;
  }
  o << "\n]\n";
  return o.str();
}

}  // namespace tqkv::cuda
