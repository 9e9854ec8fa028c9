// The fixture the GPU-against-CPU tests share (test_cuda_vs_cpu.cpp, test_cuda_sinks.cpp): a
// one-layer CPU KVCache filled by the project's real codec (real Lloyd-Max codebooks, real seeded
// rotations), optionally with attention sinks, its byte-for-byte copy on the device, and the
// runners that compare attention_decode / attention_prefill on the GPU with the CPU's fp64
// reference over the same view.
//
// Tolerance of the runners: per element |gpu - ref| <= 4e-3 * max|ref row| + 1e-2 * |ref|, zero
// violations, NaN never passes (the kernels feed the tensor cores fp16 operands: q, codebook
// values, probabilities, each with relative rounding 2^-11).
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "cuda_test_util.h"
#include "tqkv/attention.h"
#include "tqkv/codec.h"
#include "tqkv/cuda_attention.h"
#include "tqkv/fp16.h"
#include "tqkv/kv_cache.h"

namespace tqkv::cuda::testing {

// Random tokens [n][heads][d] with per-token norms that vary 1:6 and a few heavier channels
// (like real keys).
inline std::vector<float> random_tokens(int n, int heads, int d, std::mt19937_64& rng, float sigma = 1.f) {
  std::normal_distribution<float> nd(0.f, 1.f);
  std::uniform_real_distribution<float> norm(0.5f, 3.f);
  std::vector<float> x(static_cast<size_t>(n) * heads * d);
  for (size_t v = 0; v < x.size() / d; ++v) {
    const float f = sigma * norm(rng);
    for (int j = 0; j < d; ++j) x[v * d + j] = f * nd(rng) * (j % 17 == 3 ? 4.f : 1.f);
  }
  return x;
}

// A one-layer CPU KV cache and its device copy. Set the fields, then build(), then upload().
// With sinks > 0 the cache keeps attention sinks; for the all-f16 format (where the cache holds
// none: nothing to gain) the fixture makes the sink tiles itself from the fp16 tokens, so the f16
// kernels are tested with sinks too.
struct CpuCache {
  int d = 128, kb = 4, vb = 4, H = 2, window = 0, sinks = 0;
  int recent = 0;  // KVCacheConfig::recent_tokens (the CPU cache writes its rings; compressed layers only)
  bool scale_search = false;  // the CPU cache's encoder searches the scale (KVCacheConfig::scale_search)
  std::vector<int32_t> lens;
  std::unique_ptr<KVCache> cache;
  std::vector<int32_t> ids;
  std::vector<std::vector<float>> k_tokens, v_tokens;  // [seq][pos][H][d] fp32 inputs
  PagedKVView host{};
  int64_t num_pages = 0, sink_tile = 0, ring_tile = 0;
  std::vector<float> boundaries_k, boundaries_v;
  std::vector<uint8_t> own_sk, own_sv;  // sink tiles made here (f16 format), or replaced by a test
  std::vector<int32_t> own_slot;

  DeviceBuffer d_kp, d_vp, d_pt, d_lens, d_first, d_ck, d_cv, d_rot, d_signs, d_sk, d_sv, d_slot, d_rk, d_rv;

  // Tokens are appended `chunk` at a time (0 = each sequence at once); with sinks, the first 3
  // positions go in their own append first, so the sink tiles are written by two appends.
  Status build(uint64_t seed, int chunk = 0) {
    KVCacheConfig cfg;
    cfg.num_layers = 1;
    cfg.num_kv_heads = H;
    cfg.head_dim = d;
    cfg.max_seqs = static_cast<int32_t>(lens.size());
    cfg.sink_tokens = sinks;
    cfg.recent_tokens = recent;
    cfg.scale_search = scale_search;
    int32_t max_len = 16;
    int64_t pages = 0;
    for (int32_t l : lens) { max_len = std::max(max_len, l); pages += (l + 15) / 16 + 2; }
    cfg.max_seq_len = max_len + 16;
    cfg.default_policy = {kb, vb, window};
    cfg.shuffle_seed = seed | 1;
    cfg.seed = kDefaultRotationSeed ^ seed;
    cfg.budget_bytes = (pages + 8) * H * (tile_bytes(16, d, kb) + tile_bytes(16, d, vb));
    if (sinks > 0) {
      sink_tile = tile_bytes(sinks, d, kF16Bits);
      cfg.budget_bytes += 2ll * cfg.max_seqs * H * sink_tile;
    }
    if (recent > 0) {
      ring_tile = tile_bytes(recent, d, kF16Bits);
      cfg.budget_bytes += 2ll * cfg.max_seqs * H * ring_tile;
    }
    auto c = KVCache::create(cfg);
    if (!c.is_ok()) return c.status();
    cache = std::move(*c);
    std::mt19937_64 rng(seed);
    for (int32_t len : lens) {
      auto id = cache->add_sequence();
      if (!id.is_ok()) return id.status();
      ids.push_back(*id);
      k_tokens.push_back(random_tokens(len, H, d, rng));
      v_tokens.push_back(random_tokens(len, H, d, rng));
      const int step = chunk > 0 ? chunk : std::max(len, 1);
      for (int p0 = 0; p0 < len;) {
        const int n = sinks > 0 && p0 == 0 ? std::min(len, 3) : std::min(step, len - p0);
        const size_t off = static_cast<size_t>(p0) * H * d;
        TQKV_RETURN_IF_ERROR(cache->append_and_write(*id, n, k_tokens.back().data() + off, v_tokens.back().data() + off));
        p0 += n;
      }
    }
    auto v = cache->view(0, ids);
    if (!v.is_ok()) return v.status();
    host = *v;
    num_pages = cache->total_pages(cache->group_of_layer(0));
    if (kb != kF16Bits) {
      const Codebook& cb = cache->k_codec(0)->codebook();
      boundaries_k.assign(cb.boundaries(), cb.boundaries() + cb.levels() - 1);
    }
    if (vb != kF16Bits) {
      const Codebook& cb = cache->v_codec(0)->codebook();
      boundaries_v.assign(cb.boundaries(), cb.boundaries() + cb.levels() - 1);
    }
    if (sinks > 0 && host.sink_tokens == 0) make_f16_sink_tiles();
    return Status::ok();
  }

  size_t sink_bytes() const { return static_cast<size_t>(cache->config().max_seqs) * H * sink_tile; }
  std::vector<uint8_t> pool(int side) const {
    const KVSideView& s = side == 0 ? host.k : host.v;
    return std::vector<uint8_t>(s.pages, s.pages + num_pages * H * s.tile_bytes);
  }
  std::vector<uint8_t> sink_pool(int side) const {
    const uint8_t* p = side == 0 ? host.sink_k : host.sink_v;
    return std::vector<uint8_t>(p, p + sink_bytes());
  }
  size_t ring_bytes() const { return static_cast<size_t>(cache->config().max_seqs) * H * ring_tile; }
  std::vector<uint8_t> ring_pool(int side) const {
    const uint8_t* p = side == 0 ? host.recent_k : host.recent_v;
    return std::vector<uint8_t>(p, p + ring_bytes());
  }

  // Device copy of everything; `k_pool` / `v_pool` replace the CPU pools when non-null.
  PagedKVView upload(const std::vector<uint8_t>* k_pool = nullptr, const std::vector<uint8_t>* v_pool = nullptr) {
    d_kp = to_device(k_pool ? *k_pool : pool(0));
    d_vp = to_device(v_pool ? *v_pool : pool(1));
    const int ns = host.num_seqs;
    d_pt = to_device(std::vector<int32_t>(host.page_table, host.page_table + static_cast<size_t>(ns) * host.max_pages_per_seq));
    d_lens = to_device(std::vector<int32_t>(host.seq_lens, host.seq_lens + ns));
    d_first = to_device(std::vector<int32_t>(host.first_page, host.first_page + ns));
    if (kb != kF16Bits) d_ck = to_device(std::vector<float>(host.k.centroids, host.k.centroids + (1 << kb)));
    if (vb != kF16Bits) d_cv = to_device(std::vector<float>(host.v.centroids, host.v.centroids + (1 << vb)));
    if (host.rotation) d_rot = to_device(std::vector<float>(host.rotation, host.rotation + static_cast<size_t>(d) * d));
    if (host.hadamard_signs) d_signs = to_device(std::vector<float>(host.hadamard_signs, host.hadamard_signs + d));
    PagedKVView v = host;
    v.k.pages = d_kp.get<uint8_t>();
    v.v.pages = d_vp.get<uint8_t>();
    v.k.centroids = d_ck.get<const float>();
    v.v.centroids = d_cv.get<const float>();
    v.page_table = d_pt.get<const int32_t>();
    v.seq_lens = d_lens.get<const int32_t>();
    v.first_page = d_first.get<const int32_t>();
    v.rotation = d_rot.get<const float>();
    v.hadamard_signs = d_signs.get<const float>();
    if (host.sink_tokens > 0) {
      d_sk = to_device(sink_pool(0));
      d_sv = to_device(sink_pool(1));
      d_slot = to_device(std::vector<int32_t>(host.sink_slot, host.sink_slot + ns));
      v.sink_k = d_sk.get<uint8_t>();
      v.sink_v = d_sv.get<uint8_t>();
      v.sink_slot = d_slot.get<const int32_t>();
    }
    if (host.recent_tokens > 0) {
      d_rk = to_device(ring_pool(0));
      d_rv = to_device(ring_pool(1));
      if (host.sink_tokens == 0) d_slot = to_device(std::vector<int32_t>(host.sink_slot, host.sink_slot + ns));
      v.recent_k = d_rk.get<uint8_t>();
      v.recent_v = d_rv.get<uint8_t>();
      v.sink_slot = d_slot.get<const int32_t>();
    }
    return v;
  }

  // Physical pages the sequences hold, in page-table order.
  std::vector<int32_t> held_pages() const {
    std::vector<int32_t> p;
    for (int s = 0; s < host.num_seqs; ++s) {
      const int n = (host.seq_lens[s] + 15) / 16 - host.first_page[s];
      for (int i = 0; i < n; ++i) p.push_back(host.page_table[static_cast<size_t>(s) * host.max_pages_per_seq + i]);
    }
    return p;
  }

 private:
  // What the cache would store for an all-f16 layer: the first tokens in fp16, slot s = sequence s.
  void make_f16_sink_tiles() {
    const int ns = static_cast<int>(lens.size());
    own_sk.assign(static_cast<size_t>(ns) * H * sink_tile, 0);
    own_sv.assign(own_sk.size(), 0);
    own_slot.resize(ns);
    for (int s = 0; s < ns; ++s) {
      own_slot[s] = s;
      for (int pos = 0; pos < std::min(lens[s], sinks); ++pos)
        for (int h = 0; h < H; ++h)
          for (int j = 0; j < d; ++j) {
            const size_t src = (static_cast<size_t>(pos) * H + h) * d + j;
            const size_t dst = (static_cast<size_t>(s) * H + h) * sink_tile / 2 + static_cast<size_t>(pos) * d + j;
            reinterpret_cast<uint16_t*>(own_sk.data())[dst] = float_to_fp16(k_tokens[s][src]);
            reinterpret_cast<uint16_t*>(own_sv.data())[dst] = float_to_fp16(v_tokens[s][src]);
          }
    }
    host.sink_tokens = sinks;
    host.sink_k = own_sk.data();
    host.sink_v = own_sv.data();
    host.sink_slot = own_slot.data();
  }
};

struct AttnCase {
  int group;
  float softcap;
  int window;
  int splits = 0;  // decode: the split count (0 = plan_decode's choice)
};

// Compares every output row (the tolerance at the top); empty when all pass. At least
// `min_nonzero` of the reference rows must be non-zero, so the comparison proves something.
// One fp16 row of d values the GPU wrote (sink tile or ring) against the CPU cache's, at half
// offset row0 of both pools: fp16 sides bit for bit; TurboQuant sides (rotated in fp32, the sum in
// another order) within 1 fp16 ulp + 2e-6 * max|row| (the fp32 rounding of a d-term sum, which
// shows near zero). "" when they match; *diffs counts the elements that differ at all.
inline std::string compare_exact_row(const std::vector<uint8_t>& gpu, const std::vector<uint8_t>& cpu, size_t row0, int d,
                                     bool f16, int* diffs) {
  const uint16_t* g = reinterpret_cast<const uint16_t*>(gpu.data()) + row0;
  const uint16_t* c = reinterpret_cast<const uint16_t*>(cpu.data()) + row0;
  float row_max = 0.f;
  for (int j = 0; j < d; ++j) row_max = std::max(row_max, std::fabs(fp16_to_float(c[j])));
  for (int j = 0; j < d; ++j) {
    if (f16 && g[j] != c[j]) return "coord " + std::to_string(j) + ": fp16 bits differ";
    const float fa = fp16_to_float(g[j]), fb = fp16_to_float(c[j]);
    const float ulp = std::ldexp(1.f, std::max(-24, std::ilogb(std::max(std::fabs(fb), 6.1e-5f)) - 10));
    if (!(std::fabs(fa - fb) <= ulp * 1.01f + 2e-6f * row_max))
      return "coord " + std::to_string(j) + ": gpu " + std::to_string(fa) + " cpu " + std::to_string(fb);
    *diffs += g[j] != c[j];
  }
  return {};
}

inline std::string compare_rows(const std::vector<float>& got, const std::vector<float>& ref, int d, int hq,
                                double min_nonzero) {
  size_t nonzero = 0;
  for (size_t r = 0; r * d < ref.size(); ++r) {
    double mx = 0;
    for (int j = 0; j < d; ++j) mx = std::max(mx, std::fabs(static_cast<double>(ref[r * d + j])));
    nonzero += mx > 1e-3;
    std::vector<double> refd(ref.begin() + r * d, ref.begin() + (r + 1) * d);
    const std::string e = compare(&got[r * d], refd.data(), d, 4e-3 * mx + 1e-30, 1e-2);
    if (!e.empty()) return "row " + std::to_string(r) + " (query row " + std::to_string(r / hq) + "): " + e;
  }
  if (static_cast<double>(nonzero) < min_nonzero * static_cast<double>(ref.size() / d))
    return "too many reference rows are zero (" + std::to_string(nonzero) + " of " + std::to_string(ref.size() / d) +
           " are not): the test would prove nothing";
  return {};
}

inline std::vector<float> random_queries(size_t n, const AttnCase& a, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.f, a.softcap > 0 ? 3.f : 1.f);  // soft-capping bounds the logits
  std::vector<float> q(n);
  for (auto& x : q) x = nd(rng);
  return q;
}

inline DecodeParams decode_params(const AttentionParams& ap) {
  DecodeParams p;
  p.num_q_heads = ap.num_q_heads;
  p.scale = ap.scale;
  p.softcap = ap.softcap;
  p.window = ap.window;
  return p;
}

// GPU decode over `gpu_view` (default `dv`) against the CPU reference over `hv` (the same cache).
// `gpu_out` gets the GPU result when non-null.
inline std::string run_decode(const PagedKVView& hv, const PagedKVView& dv, int H, int d, const AttnCase& a,
                              uint64_t seed, double min_nonzero = 1.0, std::vector<float>* gpu_out = nullptr,
                              const PagedKVView* gpu_view = nullptr) {
  const int hq = a.group * H;
  const std::vector<float> q = random_queries(static_cast<size_t>(hv.num_seqs) * hq * d, a, seed);
  const AttentionParams ap{hq, 1.f / std::sqrt(static_cast<float>(d)), a.softcap, a.window};
  std::vector<float> ref(q.size());
  Status st = attention_decode_reference(hv, ap, q.data(), ref.data());
  if (!st.is_ok()) return "CPU reference: " + st.to_string();
  DecodeParams p = decode_params(ap);
  p.num_splits = a.splits;
  const PagedKVView& gv = gpu_view ? *gpu_view : dv;
  auto plan = plan_decode(gv, p, sm_count());
  if (!plan.is_ok()) return "plan: " + plan.status().to_string();
  DeviceBuffer dq = to_device(q), dout(q.size() * 4), ws(plan->workspace_bytes);
  poison(dout);
  poison(ws);
  st = attention_decode(gv, p, *plan, dq.get(), DType::kF32, dout.get(), DType::kF32, ws.get(), ws.bytes(), nullptr);
  if (!st.is_ok()) return "GPU: " + st.to_string();
  if (cudaDeviceSynchronize() != cudaSuccess) return "kernel failed";
  const std::vector<float> got = to_host<float>(dout, q.size());
  if (gpu_out) *gpu_out = got;
  return compare_rows(got, ref, d, hq, min_nonzero);
}

// GPU prefill (q_lens new rows per sequence, causal) against the CPU reference prefill.
inline std::string run_prefill(const PagedKVView& hv, const PagedKVView& dv, int H, int d,
                               const std::vector<int32_t>& q_lens, const AttnCase& a, uint64_t seed,
                               double min_nonzero = 1.0, const PagedKVView* gpu_view = nullptr) {
  const int hq = a.group * H;
  int total = 0;
  for (int32_t x : q_lens) total += x;
  const std::vector<float> q = random_queries(static_cast<size_t>(total) * hq * d, a, seed);
  const AttentionParams ap{hq, 1.f / std::sqrt(static_cast<float>(d)), a.softcap, a.window};
  std::vector<float> ref(q.size());
  Status st = attention_prefill_reference(hv, ap, q_lens.data(), q.data(), ref.data());
  if (!st.is_ok()) return "CPU reference: " + st.to_string();
  const DecodeParams p = decode_params(ap);
  const PagedKVView& gv = gpu_view ? *gpu_view : dv;
  auto plan = plan_prefill(gv, p, total, sm_count());
  if (!plan.is_ok()) return "plan: " + plan.status().to_string();
  DeviceBuffer dq = to_device(q), dql = to_device(q_lens), dout(q.size() * 4), ws(plan->workspace_bytes);
  poison(dout);
  poison(ws);
  st = attention_prefill(gv, p, *plan, dql.get<int32_t>(), total, dq.get(), DType::kF32, dout.get(), DType::kF32,
                         ws.get(), ws.bytes(), nullptr);
  if (!st.is_ok()) return "GPU: " + st.to_string();
  if (cudaDeviceSynchronize() != cudaSuccess) return "kernel failed";
  return compare_rows(to_host<float>(dout, q.size()), ref, d, hq, min_nonzero);
}

}  // namespace tqkv::cuda::testing
