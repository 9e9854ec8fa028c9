/* The C API: the paged TurboQuant KV cache and CPU attention over it, for engines that embed tqkv
 * from C or through a foreign-function interface. A thin layer over include/tqkv/kv_cache.h and
 * include/tqkv/attention.h; the C++ headers say what each call does in detail.
 *
 * Conventions
 * - Every call that can fail returns a tqkv_status; TQKV_OK is 0. On failure nothing changed, and
 *   tqkv_last_error() returns the message (per thread, valid until that thread's next failing call).
 * - No call aborts or throws across the boundary: bad arguments, null pointers and allocation
 *   failures all come back as a status.
 * - Objects are opaque; the caller owns what a *_create returns and frees it with *_destroy.
 * - Arrays are fp32, row-major, as described per call. Bit widths: 2, 3, 4, 8 (TurboQuant) or 16 (fp16).
 * - Thread safety: a cache has one owner; see kv_cache.h for what may run in parallel.
 *
 * Linking: libtqkv_c.so (or the static modules with the C++ runtime and OpenMP).
 */
#ifndef TQKV_TQKV_C_H_
#define TQKV_TQKV_C_H_

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Values match tqkv::StatusCode. */
typedef enum tqkv_status {
  TQKV_OK = 0,
  TQKV_INVALID_ARGUMENT = 1,   /* a parameter out of range, a null pointer */
  TQKV_OUT_OF_RANGE = 2,       /* bad sequence id, append past max_seq_len, evicted position */
  TQKV_RESOURCE_EXHAUSTED = 3, /* no free KV pages (or out of memory) */
  TQKV_CORRUPT_DATA = 4,
  TQKV_UNSUPPORTED = 5,
  TQKV_IO_ERROR = 6,
  TQKV_INTERNAL = 7
} tqkv_status;

/* The message of this thread's last failing call ("" if none). */
const char* tqkv_last_error(void);
/* "0.1.0" */
const char* tqkv_version(void);

/* "f16", "k8v4", "k4v4", "k4v3", "k3v3", "k2v2", ... -> bit widths per side (16 = fp16). */
tqkv_status tqkv_parse_kv_format(const char* format, int32_t* k_bits, int32_t* v_bits);

/* How one layer stores K and V. window: sliding window in tokens, 0 = full attention. */
typedef struct tqkv_layer_policy {
  int32_t k_bits;
  int32_t v_bits;
  int32_t window;
} tqkv_layer_policy;

typedef struct tqkv_cache_config {
  int32_t num_layers;
  int32_t num_kv_heads;
  int32_t head_dim;      /* multiple of 8 in [64, 256] for TurboQuant sides */
  int32_t page_size;     /* tokens per page (16) */
  int32_t max_seqs;      /* sequence slots */
  int32_t max_seq_len;   /* tokens per sequence */
  int64_t budget_bytes;  /* bytes for all pages of all layers */
  /* Per-layer policies, num_layers entries; NULL = every layer uses default_policy. */
  const tqkv_layer_policy* layers;
  tqkv_layer_policy default_policy;
  uint64_t seed;         /* rotation seed */
  /* Attention sinks: the first sink_tokens positions of each sequence are also kept in fp16 in
   * every full-attention layer that compresses a side, and attention reads them from there
   * (docs/formats.md, "Attention sinks"). 0 = off (the default); at most page_size. */
  int32_t sink_tokens;
  /* Recent tokens: the last recent_tokens positions of each sequence are also kept in fp16 (a ring
   * per sequence) in the same layers as the sinks, and attention reads them from there
   * (docs/formats.md, "Recent tokens"). 0 = off (the default); at most 1024. */
  int32_t recent_tokens;
} tqkv_cache_config;

/* Fills the defaults of kv_cache.h (k4v4, page 16, 16 sequences, 32768 tokens, 1 GiB). */
void tqkv_cache_config_init(tqkv_cache_config* config);

typedef struct tqkv_cache tqkv_cache;

tqkv_status tqkv_cache_create(const tqkv_cache_config* config, tqkv_cache** out);
void tqkv_cache_destroy(tqkv_cache* cache); /* NULL is fine */

tqkv_status tqkv_cache_add_sequence(tqkv_cache* cache, int32_t* seq_out);
tqkv_status tqkv_cache_free_sequence(tqkv_cache* cache, int32_t seq);
/* A new sequence sharing every page of `seq` (copy-on-write). */
tqkv_status tqkv_cache_fork(tqkv_cache* cache, int32_t seq, int32_t* child_out);
tqkv_status tqkv_cache_seq_len(const tqkv_cache* cache, int32_t seq, int32_t* len_out);
/* Reserves n more tokens for `seq` in every layer (all or nothing). */
tqkv_status tqkv_cache_append(tqkv_cache* cache, int32_t seq, int32_t n);
/* Quantizes tokens [first_pos, first_pos + n) of one layer into place.
 * k, v: [n][num_kv_heads][head_dim]. */
tqkv_status tqkv_cache_write(tqkv_cache* cache, int32_t layer, int32_t seq, int32_t first_pos, int32_t n,
                             const float* k, const float* v);
/* Tokens of full-attention context the pool holds; bytes of page memory allocated. */
int64_t tqkv_cache_token_capacity(const tqkv_cache* cache);
int64_t tqkv_cache_bytes_allocated(const tqkv_cache* cache);

typedef struct tqkv_attention_params {
  int32_t num_q_heads; /* multiple of num_kv_heads (grouped-query attention) */
  float scale;         /* softmax scale, usually 1/sqrt(head_dim) */
  float softcap;       /* Gemma-2 logit soft-capping; 0 = off */
  int32_t window;      /* sliding window in tokens; 0 = full */
} tqkv_attention_params;

/* Decode: one query per sequence, at the sequence's last position (already written).
 * q, out: [num_seqs][num_q_heads][head_dim]. */
tqkv_status tqkv_attention_decode(tqkv_cache* cache, int32_t layer, const int32_t* seq_ids, int32_t num_seqs,
                                  const tqkv_attention_params* params, const float* q, float* out);
/* Prefill: sequence i has q_lens[i] new queries at its last q_lens[i] positions (already written),
 * causal. q, out: [sum q_lens][num_q_heads][head_dim], grouped by sequence in order. */
tqkv_status tqkv_attention_prefill(tqkv_cache* cache, int32_t layer, const int32_t* seq_ids, int32_t num_seqs,
                                   const int32_t* q_lens, const tqkv_attention_params* params, const float* q,
                                   float* out);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* TQKV_TQKV_C_H_ */
