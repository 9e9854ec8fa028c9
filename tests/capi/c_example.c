/* A C program embedding tqkv through libtqkv_c.so only (include/tqkv/tqkv_c.h): builds a two-layer
 * cache, writes random keys and values, runs decode attention, and checks the result against plain
 * attention computed here in double from the same fp32 inputs. Exit status 0 = all checks passed.
 * Also checks that errors come back as codes with messages and leave the cache usable. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tqkv/tqkv_c.h"

enum { kLayers = 2, kKvHeads = 2, kQHeads = 8, kDim = 64, kTokens = 77 };

static unsigned long long rng_state = 0x1234567ull;
static float uniform(void) { /* xorshift64*, in [-1, 1) */
  rng_state ^= rng_state >> 12;
  rng_state ^= rng_state << 25;
  rng_state ^= rng_state >> 27;
  return (float)((double)((rng_state * 2685821657736338717ull) >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

static int failures = 0;
#define CHECK(cond, ...)                                \
  do {                                                  \
    if (!(cond)) {                                      \
      fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); \
      fprintf(stderr, __VA_ARGS__);                     \
      fprintf(stderr, "\n");                            \
      ++failures;                                       \
    }                                                   \
  } while (0)

/* Plain softmax attention of every query head over kTokens keys (GQA: q head h -> kv head h/4). */
static void naive_attention(const float* k, const float* v, const float* q, double* out) {
  const int group = kQHeads / kKvHeads;
  for (int h = 0; h < kQHeads; ++h) {
    const int kvh = h / group;
    double s[kTokens], mx = -1e300, sum = 0;
    for (int t = 0; t < kTokens; ++t) {
      double dot = 0;
      for (int i = 0; i < kDim; ++i) dot += (double)q[h * kDim + i] * k[(t * kKvHeads + kvh) * kDim + i];
      s[t] = dot / sqrt((double)kDim);
      if (s[t] > mx) mx = s[t];
    }
    for (int t = 0; t < kTokens; ++t) sum += (s[t] = exp(s[t] - mx));
    for (int i = 0; i < kDim; ++i) {
      double acc = 0;
      for (int t = 0; t < kTokens; ++t) acc += s[t] / sum * v[(t * kKvHeads + kvh) * kDim + i];
      out[h * kDim + i] = acc;
    }
  }
}

static double rel_l2(const float* got, const double* want, int n) {
  double num = 0, den = 0;
  for (int i = 0; i < n; ++i) {
    num += (got[i] - want[i]) * (got[i] - want[i]);
    den += want[i] * want[i];
  }
  return sqrt(num / den);
}

/* Runs the scenario with one KV format; max_rel is the allowed relative L2 error. */
static void run_format(const char* format, double max_rel) {
  tqkv_cache_config cfg;
  tqkv_cache_config_init(&cfg);
  cfg.num_layers = kLayers;
  cfg.num_kv_heads = kKvHeads;
  cfg.head_dim = kDim;
  cfg.max_seqs = 2;
  cfg.max_seq_len = 256;
  cfg.budget_bytes = 1 << 20;
  CHECK(tqkv_parse_kv_format(format, &cfg.default_policy.k_bits, &cfg.default_policy.v_bits) == TQKV_OK,
        "parse %s: %s", format, tqkv_last_error());
  tqkv_cache* cache = NULL;
  tqkv_status st = tqkv_cache_create(&cfg, &cache);
  CHECK(st == TQKV_OK && cache, "create: %s", tqkv_last_error());
  if (!cache) return;

  int32_t seq = -1;
  CHECK(tqkv_cache_add_sequence(cache, &seq) == TQKV_OK, "add_sequence: %s", tqkv_last_error());
  CHECK(tqkv_cache_append(cache, seq, kTokens) == TQKV_OK, "append: %s", tqkv_last_error());
  const size_t kv_n = (size_t)kTokens * kKvHeads * kDim;
  float* k = malloc(kLayers * kv_n * sizeof(float));
  float* v = malloc(kLayers * kv_n * sizeof(float));
  float q[kQHeads * kDim], out[kQHeads * kDim];
  double want[kQHeads * kDim];
  for (size_t i = 0; i < kLayers * kv_n; ++i) {
    k[i] = uniform();
    v[i] = uniform();
  }
  for (int i = 0; i < kQHeads * kDim; ++i) q[i] = 2.0f * uniform();
  for (int l = 0; l < kLayers; ++l)
    CHECK(tqkv_cache_write(cache, l, seq, 0, kTokens, k + l * kv_n, v + l * kv_n) == TQKV_OK, "write: %s",
          tqkv_last_error());

  tqkv_attention_params p = {kQHeads, (float)(1.0 / sqrt((double)kDim)), 0.0f, 0};
  for (int l = 0; l < kLayers; ++l) {
    memset(out, 0, sizeof out);
    st = tqkv_attention_decode(cache, l, &seq, 1, &p, q, out);
    CHECK(st == TQKV_OK, "decode: %s", tqkv_last_error());
    naive_attention(k + l * kv_n, v + l * kv_n, q, want);
    const double e = rel_l2(out, want, kQHeads * kDim);
    printf("%s layer %d: relative L2 error vs plain attention %.3g (allowed %.3g)\n", format, l, e, max_rel);
    CHECK(e < max_rel, "%s layer %d: error %.3g", format, l, e);
  }

  /* Errors: a code, a message, and the cache still answers. */
  int32_t other = -1;
  CHECK(tqkv_cache_append(cache, 57, 1) == TQKV_OUT_OF_RANGE, "bad seq id accepted");
  CHECK(strlen(tqkv_last_error()) > 0, "no message for a bad seq id");
  CHECK(tqkv_cache_append(cache, seq, 1000) != TQKV_OK, "append past max_seq_len accepted");
  CHECK(tqkv_attention_decode(cache, kLayers, &seq, 1, &p, q, out) == TQKV_OUT_OF_RANGE, "bad layer accepted");
  CHECK(tqkv_attention_decode(cache, 0, &seq, 1, NULL, q, out) == TQKV_INVALID_ARGUMENT, "NULL params accepted");
  CHECK(tqkv_cache_add_sequence(NULL, &other) == TQKV_INVALID_ARGUMENT, "NULL cache accepted");
  int32_t len = 0;
  CHECK(tqkv_cache_seq_len(cache, seq, &len) == TQKV_OK && len == kTokens, "seq_len %d after failed calls", len);
  CHECK(tqkv_attention_decode(cache, 0, &seq, 1, &p, q, out) == TQKV_OK, "decode after errors: %s", tqkv_last_error());

  tqkv_cache_destroy(cache);
  free(k);
  free(v);
}

int main(void) {
  printf("tqkv %s through the C API\n", tqkv_version());
  /* f16 pages: only fp16 rounding of K and V. k4v4: the 4-bit codec's error (~10% per vector),
     averaged by attention. k8v4 in between. */
  run_format("f16", 2e-3);
  run_format("k8v4", 0.12);
  run_format("k4v4", 0.15);
  int32_t kb = 0, vb = 0;
  CHECK(tqkv_parse_kv_format("k5v5", &kb, &vb) == TQKV_INVALID_ARGUMENT, "k5v5 accepted");
  tqkv_cache_config bad;
  tqkv_cache_config_init(&bad);
  bad.head_dim = 7;
  tqkv_cache* c = NULL;
  CHECK(tqkv_cache_create(&bad, &c) == TQKV_INVALID_ARGUMENT && c == NULL, "head_dim 7 accepted");
  printf("%s (%d failures)\n", failures ? "FAILED" : "PASSED", failures);
  return failures ? 1 : 0;
}
