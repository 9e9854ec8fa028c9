// CPU decode-attention benchmark (see bench_cpu.h).
#include "attention/bench_cpu.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <memory>
#include <vector>

#include "core/cpu_features.h"
#include "tqkv/attention.h"
#include "tqkv/kv_cache.h"

namespace tqkv {

namespace {

// Cheap non-zero random values in about [-1.5, 1.5] (normal samples would dominate set-up time).
struct FastRng {
  uint64_t s;
  float next() {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    return static_cast<float>(static_cast<int64_t>(s >> 40) - (1 << 23)) / (1 << 23) * 1.5f + 0.05f;
  }
};

Result<std::unique_ptr<KVCache>> build_cache(const CpuAttentionBenchConfig& c, int32_t k_bits, int32_t v_bits,
                                             const BenchProgress& progress) {
  KVCacheConfig kc;
  kc.num_layers = 1;
  kc.num_kv_heads = c.num_kv_heads;
  kc.head_dim = c.head_dim;
  kc.max_seqs = c.batch;
  kc.max_seq_len = static_cast<int32_t>(c.context);
  kc.default_policy = {k_bits, v_bits, 0};
  const int64_t pages = c.batch * ((c.context + kc.page_size - 1) / kc.page_size) + 1;
  kc.budget_bytes = pages * c.num_kv_heads *
                    (tile_bytes(kc.page_size, c.head_dim, k_bits) + tile_bytes(kc.page_size, c.head_dim, v_bits));
  kc.shuffle_seed = c.seed * 7919 + 1;
  TQKV_ASSIGN_OR_RETURN(std::unique_ptr<KVCache> kv, KVCache::create(kc));
  const int64_t chunk = 1024;
  std::vector<float> k(static_cast<size_t>(chunk * c.num_kv_heads * c.head_dim)), v(k.size());
  for (int32_t b = 0; b < c.batch; ++b) {
    TQKV_ASSIGN_OR_RETURN(const int32_t id, kv->add_sequence());
    FastRng rng{c.seed * 1000003 + static_cast<uint64_t>(b) + 1};  // same tokens for every format
    for (int64_t t = 0; t < c.context; t += chunk) {
      const int32_t n = static_cast<int32_t>(std::min(chunk, c.context - t));
      for (int64_t i = 0; i < static_cast<int64_t>(n) * c.num_kv_heads * c.head_dim; ++i) {
        k[i] = rng.next();
        v[i] = rng.next();
      }
      TQKV_RETURN_IF_ERROR(kv->append_and_write(id, n, k.data(), v.data()));
    }
    if (progress) progress("  " + kv_format_name(k_bits, v_bits) + ": sequence " + std::to_string(b + 1) + "/" +
                           std::to_string(c.batch) + " written");
  }
  return kv;
}

double rel_l2(const std::vector<float>& a, const std::vector<float>& ref) {
  double num = 0, den = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double d = static_cast<double>(a[i]) - ref[i];
    num += d * d;
    den += static_cast<double>(ref[i]) * ref[i];
  }
  return den > 0 ? std::sqrt(num / den) : (num > 0 ? INFINITY : 0.0);
}

struct PathRun {
  double median_ms = 0, min_ms = 0;
  int64_t bytes = 0;
  std::vector<float> out;
  double ref_rel_error = 0;
};

Result<PathRun> run_path(KVCache& kv, const CpuAttentionBenchConfig& c, const std::vector<float>& q) {
  std::vector<int32_t> ids(c.batch);
  for (int32_t b = 0; b < c.batch; ++b) ids[b] = b;
  TQKV_ASSIGN_OR_RETURN(const PagedKVView view, kv.view(0, ids));
  const AttentionParams p{c.num_q_heads, 1.f / std::sqrt(static_cast<float>(c.head_dim)), 0.f, c.window};
  PathRun r;
  r.out.resize(q.size());
  r.bytes = attention_decode_bytes_read(view, p);
  TQKV_RETURN_IF_ERROR(attention_decode_cpu(view, p, q.data(), r.out.data()));  // warm-up
  std::vector<double> ms;
  for (int32_t i = 0; i < c.iters; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    TQKV_RETURN_IF_ERROR(attention_decode_cpu(view, p, q.data(), r.out.data()));
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(ms.begin(), ms.end());
  r.median_ms = ms[ms.size() / 2];
  r.min_ms = ms.front();
  // Reference on a subset: the first sequence truncated to ref_tokens (query = its first row).
  PagedKVView one = view;
  const int32_t len = static_cast<int32_t>(std::min(c.context, c.ref_tokens));
  one.num_seqs = 1;
  one.seq_lens = &len;
  const size_t row = static_cast<size_t>(c.num_q_heads) * c.head_dim;
  const std::vector<float> q0(q.begin(), q.begin() + row);
  std::vector<float> fused(row), ref(row);
  TQKV_RETURN_IF_ERROR(attention_decode_cpu(one, p, q0.data(), fused.data()));
  TQKV_RETURN_IF_ERROR(attention_decode_reference(one, p, q0.data(), ref.data()));
  r.ref_rel_error = rel_l2(fused, ref);
  return r;
}

}  // namespace

Result<CpuAttentionBenchResult> run_cpu_attention_bench(const CpuAttentionBenchConfig& cfg,
                                                        const BenchProgress& progress) {
  int32_t kb = 0, vb = 0;
  TQKV_RETURN_IF_ERROR(parse_kv_format(cfg.kv, &kb, &vb));
  if (cfg.context <= 0 || cfg.context > (1 << 30) || cfg.batch <= 0 || cfg.iters <= 0 || cfg.ref_tokens <= 0)
    return invalid_argument("context, batch, iters and ref_tokens must be positive");
  if (cfg.num_kv_heads <= 0 || cfg.num_q_heads <= 0 || cfg.num_q_heads % cfg.num_kv_heads != 0)
    return invalid_argument("heads must be HQ:HKV with HQ a multiple of HKV");
  if (cfg.threads > 0) omp_set_num_threads(cfg.threads);
  CpuAttentionBenchResult res;
  res.cfg = cfg;
  res.threads = omp_get_max_threads();
  res.avx2 = cpu_has_avx2_fma_f16c();
  res.avx512 = cpu_has_avx512bw_kernels();

  FastRng rng{cfg.seed + 99};
  std::vector<float> q(static_cast<size_t>(cfg.batch) * cfg.num_q_heads * cfg.head_dim);
  for (float& x : q) x = rng.next();

  if (progress) progress("writing " + cfg.kv + " cache (" + std::to_string(cfg.batch) + " x " +
                         std::to_string(cfg.context) + " tokens)");
  TQKV_ASSIGN_OR_RETURN(std::unique_ptr<KVCache> comp, build_cache(cfg, kb, vb, progress));
  if (progress) progress("timing " + cfg.kv);
  TQKV_ASSIGN_OR_RETURN(PathRun a, run_path(*comp, cfg, q));
  comp.reset();
  if (progress) progress("writing f16 cache");
  TQKV_ASSIGN_OR_RETURN(std::unique_ptr<KVCache> f16, build_cache(cfg, kF16Bits, kF16Bits, progress));
  if (progress) progress("timing f16");
  TQKV_ASSIGN_OR_RETURN(PathRun b, run_path(*f16, cfg, q));

  res.time_ms = a.median_ms;
  res.baseline_f16_time_ms = b.median_ms;
  res.speedup_vs_f16 = b.median_ms / a.median_ms;
  res.time_min_ms = a.min_ms;
  res.baseline_f16_time_min_ms = b.min_ms;
  res.speedup_vs_f16_min = b.min_ms / a.min_ms;
  res.bytes_read = a.bytes;
  res.f16_bytes_read = b.bytes;
  res.gbps = a.bytes / (a.median_ms * 1e6);
  res.f16_gbps = b.bytes / (b.median_ms * 1e6);
  res.rel_error = a.ref_rel_error;
  res.f16_rel_error = b.ref_rel_error;
  res.ref_tokens = std::min(cfg.context, cfg.ref_tokens);
  res.rel_error_vs_f16 = rel_l2(a.out, b.out);
  const CapacityReport ca = capacity_for(1ll << 30, 1, cfg.num_kv_heads, cfg.head_dim, kDefaultPageSize, kb, vb);
  const CapacityReport cf = capacity_for(1ll << 30, 1, cfg.num_kv_heads, cfg.head_dim, kDefaultPageSize, 16, 16);
  res.capacity_ratio_vs_f16 = static_cast<double>(ca.tokens) / cf.tokens;
  return res;
}

}  // namespace tqkv
