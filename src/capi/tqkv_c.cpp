// The C API (include/tqkv/tqkv_c.h) over KVCache and the CPU attention. Its only jobs: check the
// pointers C callers can get wrong, turn Status into a code plus a per-thread message, and keep
// C++ exceptions (std::bad_alloc from a large budget) from crossing the C boundary.
#include "tqkv/tqkv_c.h"

#include <exception>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "tqkv/attention.h"
#include "tqkv/kv_cache.h"

struct tqkv_cache {
  std::unique_ptr<tqkv::KVCache> impl;
  tqkv::KVViewWorkspace ws;  // reused by every attention call: no allocation once grown
};

namespace {

thread_local std::string g_last_error;

tqkv_status fail(tqkv_status code, std::string message) {
  g_last_error = std::move(message);
  return code;
}

tqkv_status from_status(const tqkv::Status& s) {
  if (s.is_ok()) return TQKV_OK;
  return fail(static_cast<tqkv_status>(static_cast<int>(s.code())), s.to_string());
}

// Runs `body` (which returns tqkv_status) with exceptions mapped to codes.
template <typename F>
tqkv_status guarded(F&& body) {
  try {
    return body();
  } catch (const std::bad_alloc&) {
    return fail(TQKV_RESOURCE_EXHAUSTED, "resource exhausted: out of memory");
  } catch (const std::exception& e) {
    return fail(TQKV_INTERNAL, std::string("internal: ") + e.what());
  } catch (...) {
    return fail(TQKV_INTERNAL, "internal: unknown exception");
  }
}

tqkv_status null_arg(const char* what) { return fail(TQKV_INVALID_ARGUMENT, std::string("invalid argument: ") + what + " is NULL"); }

tqkv::AttentionParams to_params(const tqkv_attention_params& p) {
  tqkv::AttentionParams a{p.num_q_heads, p.scale};
  a.softcap = p.softcap;
  a.window = p.window;
  return a;
}

}  // namespace

namespace {

tqkv_status attention_common(tqkv_cache* cache, int32_t layer, const int32_t* seq_ids, int32_t num_seqs,
                             const int32_t* q_lens, const tqkv_attention_params* params, const float* q,
                             float* out, bool prefill) {
  if (!cache) return null_arg("cache");
  if (!params) return null_arg("params");
  if (num_seqs <= 0) return fail(TQKV_INVALID_ARGUMENT, "invalid argument: num_seqs must be positive");
  if (!seq_ids) return null_arg("seq_ids");
  if (!q || !out) return null_arg("q/out");
  if (prefill && !q_lens) return null_arg("q_lens");
  return guarded([&] {
    if (layer < 0 || layer >= cache->impl->config().num_layers)
      return fail(TQKV_OUT_OF_RANGE, "out of range: layer " + std::to_string(layer));
    auto view = cache->impl->view(layer, std::span<const int32_t>(seq_ids, static_cast<size_t>(num_seqs)), &cache->ws);
    if (!view.is_ok()) return from_status(view.status());
    const tqkv::AttentionParams p = to_params(*params);
    return from_status(prefill ? tqkv::attention_prefill_cpu(view.value(), p, q_lens, q, out)
                               : tqkv::attention_decode_cpu(view.value(), p, q, out));
  });
}

}  // namespace

extern "C" {

const char* tqkv_last_error(void) { return g_last_error.c_str(); }
const char* tqkv_version(void) { return "0.1.0"; }

tqkv_status tqkv_parse_kv_format(const char* format, int32_t* k_bits, int32_t* v_bits) {
  if (!format) return null_arg("format");
  if (!k_bits || !v_bits) return null_arg("k_bits/v_bits");
  return guarded([&] { return from_status(tqkv::parse_kv_format(format, k_bits, v_bits)); });
}

void tqkv_cache_config_init(tqkv_cache_config* c) {
  if (!c) return;
  const tqkv::KVCacheConfig d;
  c->num_layers = d.num_layers;
  c->num_kv_heads = d.num_kv_heads;
  c->head_dim = d.head_dim;
  c->page_size = d.page_size;
  c->max_seqs = d.max_seqs;
  c->max_seq_len = d.max_seq_len;
  c->budget_bytes = d.budget_bytes;
  c->layers = nullptr;
  c->default_policy = {d.default_policy.k_bits, d.default_policy.v_bits, d.default_policy.window};
  c->seed = d.seed;
  c->sink_tokens = d.sink_tokens;
  c->recent_tokens = d.recent_tokens;
}

tqkv_status tqkv_cache_create(const tqkv_cache_config* c, tqkv_cache** out) {
  if (!c) return null_arg("config");
  if (!out) return null_arg("out");
  *out = nullptr;
  return guarded([&] {
    tqkv::KVCacheConfig cfg;
    cfg.num_layers = c->num_layers;
    cfg.num_kv_heads = c->num_kv_heads;
    cfg.head_dim = c->head_dim;
    cfg.page_size = c->page_size;
    cfg.max_seqs = c->max_seqs;
    cfg.max_seq_len = c->max_seq_len;
    cfg.budget_bytes = c->budget_bytes;
    cfg.default_policy = {c->default_policy.k_bits, c->default_policy.v_bits, c->default_policy.window};
    cfg.seed = c->seed;
    cfg.sink_tokens = c->sink_tokens;
    cfg.recent_tokens = c->recent_tokens;
    if (c->layers) {
      if (c->num_layers <= 0) return fail(TQKV_INVALID_ARGUMENT, "invalid argument: num_layers must be positive");
      for (int32_t i = 0; i < c->num_layers; ++i)
        cfg.layers.push_back({c->layers[i].k_bits, c->layers[i].v_bits, c->layers[i].window});
    }
    auto made = tqkv::KVCache::create(cfg);
    if (!made.is_ok()) return from_status(made.status());
    auto handle = std::make_unique<tqkv_cache>();
    handle->impl = std::move(made).value();
    *out = handle.release();
    return TQKV_OK;
  });
}

void tqkv_cache_destroy(tqkv_cache* cache) { delete cache; }

tqkv_status tqkv_cache_add_sequence(tqkv_cache* cache, int32_t* seq_out) {
  if (!cache) return null_arg("cache");
  if (!seq_out) return null_arg("seq_out");
  return guarded([&] {
    auto r = cache->impl->add_sequence();
    if (!r.is_ok()) return from_status(r.status());
    *seq_out = r.value();
    return TQKV_OK;
  });
}

tqkv_status tqkv_cache_free_sequence(tqkv_cache* cache, int32_t seq) {
  if (!cache) return null_arg("cache");
  return guarded([&] { return from_status(cache->impl->free_sequence(seq)); });
}

tqkv_status tqkv_cache_fork(tqkv_cache* cache, int32_t seq, int32_t* child_out) {
  if (!cache) return null_arg("cache");
  if (!child_out) return null_arg("child_out");
  return guarded([&] {
    auto r = cache->impl->fork(seq);
    if (!r.is_ok()) return from_status(r.status());
    *child_out = r.value();
    return TQKV_OK;
  });
}

tqkv_status tqkv_cache_seq_len(const tqkv_cache* cache, int32_t seq, int32_t* len_out) {
  if (!cache) return null_arg("cache");
  if (!len_out) return null_arg("len_out");
  return guarded([&] {
    auto r = cache->impl->seq_len(seq);
    if (!r.is_ok()) return from_status(r.status());
    *len_out = r.value();
    return TQKV_OK;
  });
}

tqkv_status tqkv_cache_append(tqkv_cache* cache, int32_t seq, int32_t n) {
  if (!cache) return null_arg("cache");
  return guarded([&] { return from_status(cache->impl->append(seq, n)); });
}

tqkv_status tqkv_cache_write(tqkv_cache* cache, int32_t layer, int32_t seq, int32_t first_pos, int32_t n,
                             const float* k, const float* v) {
  if (!cache) return null_arg("cache");
  if (n > 0 && (!k || !v)) return null_arg("k/v");
  return guarded([&] {
    if (layer < 0 || layer >= cache->impl->config().num_layers)
      return fail(TQKV_OUT_OF_RANGE, "out of range: layer " + std::to_string(layer));
    return from_status(cache->impl->write(layer, seq, first_pos, n, k, v));
  });
}

int64_t tqkv_cache_token_capacity(const tqkv_cache* cache) { return cache ? cache->impl->token_capacity() : 0; }
int64_t tqkv_cache_bytes_allocated(const tqkv_cache* cache) { return cache ? cache->impl->bytes_allocated() : 0; }

tqkv_status tqkv_attention_decode(tqkv_cache* cache, int32_t layer, const int32_t* seq_ids, int32_t num_seqs,
                                  const tqkv_attention_params* params, const float* q, float* out) {
  return attention_common(cache, layer, seq_ids, num_seqs, nullptr, params, q, out, false);
}

tqkv_status tqkv_attention_prefill(tqkv_cache* cache, int32_t layer, const int32_t* seq_ids, int32_t num_seqs,
                                   const int32_t* q_lens, const tqkv_attention_params* params, const float* q,
                                   float* out) {
  return attention_common(cache, layer, seq_ids, num_seqs, q_lens, params, q, out, true);
}

}  // extern "C"
