// The model runtime: a decoder-only transformer read from a GGUF file, run on the CPU over a KV
// cache chosen at run time (uncompressed, or the TurboQuant paged cache).
//
//   TQKV_ASSIGN_OR_RETURN(auto model, tqkv::Model::load("models/smollm2.gguf"));
//   TQKV_ASSIGN_OR_RETURN(auto kv, tqkv::make_kv_backend(model->config(), kv_options));
//   std::vector<float> logits(model->config().n_vocab);
//   TQKV_RETURN_IF_ERROR(model->forward(ids.data(), n, /*pos0=*/0, *kv, logits.data(), tqkv::LogitsMode::kLast));
//
// One forward pass serves every architecture. What differs between architectures is data
// (ModelConfig: sizes, RoPE style and bases, which layers slide, soft-capping, scales) plus a few
// flags that switch on the places where the pass differs (QKV biases, fused QKV, QK norms, extra
// post-norms, GELU). src/model/model_config.cpp fills it from the file's metadata.
//
// Threads: a Model is immutable after load and may be shared; a KvBackend (one sequence's cache)
// and a ForwardWorkspace belong to one caller at a time. forward() itself uses OpenMP threads.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "tqkv/gguf.h"
#include "tqkv/status.h"
#include "tqkv/weights.h"

namespace tqkv {

enum class ModelArch { kLlama, kQwen2, kPhi3, kGemma2, kGemma3 };
const char* model_arch_name(ModelArch a);

// How RoPE pairs the elements of a head (see shared/TURBOQUANT.md, "GGUF"):
//   kAdjacent: (2i, 2i+1) — llama-architecture files, whose Q/K rows the converter permuted
//   kHalf:     (i, i + n_rot/2) — "NeoX" style: gemma, qwen2, phi3
enum class RopeStyle { kAdjacent, kHalf };
enum class Activation { kSilu, kGeluTanh };

struct ModelConfig {
  ModelArch arch = ModelArch::kLlama;
  std::string arch_name;   // general.architecture
  int n_vocab = 0;
  int n_embd = 0;
  int n_layer = 0;
  int n_head = 0;
  int n_head_kv = 0;
  int head_dim = 0;        // key_length == value_length (we require equal)
  int n_ff = 0;
  int n_ctx_train = 0;
  int n_rot = 0;           // rotated dims per head (rope.dimension_count), <= head_dim, even
  float rms_eps = 1e-5f;

  RopeStyle rope_style = RopeStyle::kAdjacent;
  float rope_base = 10000.0f;        // global layers
  float rope_base_local = 10000.0f;  // sliding layers (Gemma 3 uses 10000 there)
  bool has_rope_freqs = false;       // Llama 3.1: rope_freqs.weight [n_rot/2] divides the frequencies

  float attn_scale = 0.0f;           // multiplies q.k; 1/sqrt(head_dim) unless the arch says otherwise
  float attn_softcap = 0.0f;         // 0 = off; else scores = c * tanh(scores / c)  (Gemma 2)
  float final_softcap = 0.0f;        // same on the output logits (Gemma 2)
  int sliding_window = 0;            // keys per query on sliding layers (itself included); 0 = none
  std::vector<uint8_t> layer_sliding;  // [n_layer] 1 when the layer uses the sliding window

  // The places where the forward pass differs.
  bool embed_scale = false;     // multiply embeddings by sqrt(n_embd) (Gemma)
  bool qkv_bias = false;        // attn_q/k/v.bias (Qwen2)
  bool fused_qkv = false;       // attn_qkv.weight holds [q; k; v] rows (Phi-3)
  bool fused_gate_up = false;   // ffn_up.weight holds [gate; up] rows, no ffn_gate (Phi-3)
  bool qk_norm = false;         // per-head RMSNorm of q and k before RoPE (Gemma 3)
  bool post_norms = false;      // RMSNorm of the attention and FFN outputs before the residual add (Gemma 2/3)
  Activation act = Activation::kSilu;
  bool tied_output = false;     // no output.weight: logits use token_embd.weight

  int q_dim() const { return n_head * head_dim; }
  int kv_dim() const { return n_head_kv * head_dim; }
  bool is_sliding(int layer) const { return !layer_sliding.empty() && layer_sliding[layer] != 0; }
};

// Reads the configuration from the file's metadata and tensor shapes. Fails with kUnsupported for
// an architecture not listed in ModelArch (naming it), kCorruptData for missing or inconsistent keys.
Result<ModelConfig> config_from_gguf(const GgufFile& g);

// --- KV cache backends ------------------------------------------------------------------------

// What one layer's attention needs from the backend.
struct LayerAttention {
  int layer = 0;
  float scale = 1.0f;
  float softcap = 0.0f;  // 0 = off
  int window = 0;        // 0 = full causal; else query i sees keys i-window+1 .. i
};

// One sequence's KV cache for every layer, plus the attention that reads it. The model hands it
// each layer's new K and V (already RoPE'd) and the queries; the backend stores K/V in its format
// and writes the attention output.
class KvBackend {
 public:
  virtual ~KvBackend() = default;
  // Appends n tokens at positions pos0 .. pos0+n-1 (pos0 must equal the tokens held) for `layer`,
  // then causal attention of the n queries over everything held.
  //   q: [n][n_head][head_dim], k, v: [n][n_head_kv][head_dim], out: [n][n_head][head_dim]
  virtual Status attend(const LayerAttention& la, int64_t pos0, int n, const float* q,
                        const float* k, const float* v, float* out) = 0;
  // Forget every token (start a new sequence).
  virtual Status reset() = 0;
  virtual int64_t tokens() const = 0;            // tokens held (layer 0)
  virtual int64_t bytes_in_use() const = 0;      // KV bytes the held tokens occupy, all layers
  virtual int64_t f16_bytes_for(int64_t n_tokens) const = 0;  // what an f16 cache would use
  virtual std::string describe() const = 0;      // "k4v4 paged (16-token pages), 3 f16 layers"
  // Reads back what the cache holds for positions pos0 .. pos0+n-1 of `layer`, decoded to fp32
  // in the model's space ([n][n_head_kv][head_dim] each): the values attention actually sees.
  // For diagnostics (per-layer reconstruction error); kUnsupported where a backend cannot.
  virtual Status read_back(int layer, int64_t pos0, int n, float* k, float* v) const {
    (void)layer, (void)pos0, (void)n, (void)k, (void)v;
    return unsupported("read_back: not supported by this KV backend");
  }
};

// A KV format: bits of K and of V (16 = fp16, else TurboQuant 2/3/4/8 bits).
struct KvFormat {
  int32_t k_bits = 16;
  int32_t v_bits = 16;
};
// "f16", "k8v8", "k8v4", "k4v4", "k4v3", "k3v3", "k2v2" (any kXvY with X, Y in {2,3,4,8,16});
// the same parser as the cache's (include/tqkv/kv_cache.h).
Result<KvFormat> parse_kv_format(const std::string& s);
std::string kv_format_name(const KvFormat& f);

struct KvOptions {
  KvFormat format;
  int64_t max_tokens = 4096;   // context the cache must hold
  bool dense_fp32 = false;     // reference backend: plain fp32 arrays, dense attention (tests)
  bool paged = true;           // the paged cache (include/tqkv/kv_cache.h); false = contiguous arrays
  // Per-layer policy: these layers keep fp16 K and V whatever `format` says (the first and last
  // layers are the most sensitive to compression; shared/TURBOQUANT.md). Negative = from the end.
  std::vector<int> f16_layers;
  // These layers keep 8-bit TurboQuant keys (values as `format` says) when the format's keys have
  // fewer bits: for a layer that dominates the error (measure with `tqkv perplexity --per-layer`).
  std::vector<int> k8_layers;
  // Exact centering (src/model/kv_transform.cpp): per layer and KV head, subtract a mean vector
  // from the keys (and/or values) before they are quantized. Keys: q.(k - mu) = q.k - q.mu shifts
  // every score of a query by the same amount, so softmax is unchanged; values: sum p (v - mu) + mu
  // = sum p v since the probabilities sum to 1. Only quantization error changes. mu is the mean of
  // the first write of a sequence (when it has at least kCenterMinTokens tokens; else no centering)
  // and then stays fixed for that sequence. Applies to compressed (TurboQuant) layers only; keys are
  // not centered on soft-capped layers (tanh breaks the shift invariance).
  // Off here, so that the library's plain codec stays the reference; `tqkv generate`, `perplexity`
  // and `verify` turn keys on by default (the GPU runtime centers the same way:
  // GpuContextOptions::center_keys).
  bool center_keys = false;
  bool center_values = false;
  // Exact key smoothing (src/model/kv_transform.cpp; docs/formats.md, "Key smoothing"): per layer,
  // KV head and channel c, keys are divided by s_c before they are quantized and the queries of
  // that KV head multiplied by s_c, so q.k is unchanged. s_c = sqrt(rms_k,c / rms_q,c) over the
  // first write (after centering when that is on), scaled to geometric mean 1 and clamped to
  // [1/64, 64]: channels where keys are large and queries small (the usual key outliers) get
  // their quantization error shrunk where the queries would amplify it. Same first-write rule and
  // layers as centering (compressed keys), also on soft-capped layers (the scores are unchanged).
  // Off here; the CLI turns it on by default (the GPU runtime smooths the same way:
  // GpuContextOptions::smooth_keys).
  bool smooth_keys = false;
  // Attention sinks (paged cache only; KVCacheConfig::sink_tokens): the first sink_tokens positions
  // keep fp16 K and V in every compressed full-attention layer. The first tokens draw a large share
  // of the attention in most heads, so their quantization error reaches every later query. Off here
  // (the library's plain codec stays the reference); the CLI's default is kDefaultSinkTokens.
  int32_t sink_tokens = 0;
  static constexpr int32_t kDefaultSinkTokens = 4;
  // Recent tokens (paged cache only; KVCacheConfig::recent_tokens): the last recent_tokens positions
  // also keep fp16 K and V, in the same layers as the sinks, so a decode step sees its nearest
  // predecessors exactly (the keep-recent-tokens-exact policy of KIVI and of Hugging Face's
  // quantized cache). Off here; the CLI's default is kDefaultRecentTokens (the GPU runtime keeps
  // the same ring: GpuContextOptions::recent_tokens, at most 64 there).
  int32_t recent_tokens = 0;
  static constexpr int32_t kDefaultRecentTokens = 32;
  // Scale search in the TurboQuant encoder (CodecConfig::scale_search; docs/formats.md): same
  // format, lower error at 2-4 bits. Off here; the CLI turns it on (the GPU runtime searches the
  // same way: GpuContextOptions::scale_search).
  bool scale_search = false;
  static constexpr int kCenterMinTokens = 8;
  // Evaluation only (quality comparison with llama.cpp's rotated q4_0 KV cache): "q4_0h" rounds
  // K and V of the layers the format would compress through a randomized Hadamard rotation and
  // q4_0 (blocks of 32, one fp16 absmax scale, 4.5 bits per element), rotates back and stores them
  // in an f16 cache. Empty = off. `format` must be f16 when this is set; center_keys/values then
  // center before the rounding, as for TurboQuant.
  std::string emulate;
};
// The paged cache (KVCache + the fused CPU attention of include/tqkv/attention.h) when `paged` and
// the head size suits it (64..256, multiple of 8); else contiguous arrays (src/model/kv_contiguous.cpp,
// also the fp32 reference with dense_fp32). Gemma's sliding layers always keep an f16 window.
Result<std::unique_ptr<KvBackend>> make_kv_backend(const ModelConfig& cfg, const KvOptions& opt);

class KVCache;
class PagedKv;
// Paged caches of `slots` sequences that share one page pool of `budget_bytes` (serving: memory is
// taken as sequences grow, so many short sequences or a few long ones fit the same budget; a
// compressed format fits ~4x the tokens of f16). Each slot is a KvBackend as make_kv_backend's
// (the same transforms), of at most opt.max_tokens positions; an append the pool cannot hold fails
// with kResourceExhausted. Not thread-safe (one owner drives every slot).
class KvPool {
 public:
  static Result<std::unique_ptr<KvPool>> create(const ModelConfig& cfg, const KvOptions& opt, int slots,
                                                int64_t budget_bytes);
  ~KvPool();
  int slots() const { return static_cast<int>(slots_.size()); }
  KvBackend& slot(int i) { return *slots_[i]; }
  const KvBackend& slot(int i) const { return *slots_[i]; }
  // Whether slots[i] can each take n[i] more tokens together (pages of the full-attention pool).
  bool fits(const int* slots, const int* n, int count) const;
  int64_t token_capacity() const;  // tokens the pool holds in all (full-attention pages)
  int page_size() const;           // tokens per page
  int64_t bytes() const;           // bytes allocated (pages, sink tiles, recent rings)

 private:
  KvPool() = default;
  std::shared_ptr<KVCache> cache_;
  int32_t full_group_ = -1;
  std::vector<PagedKv*> inner_;  // the paged caches under the transforms, for their lengths
  std::vector<std::unique_ptr<KvBackend>> slots_;
};

// --- the model ----------------------------------------------------------------------------------

enum class LogitsMode { kLast, kAll };

class Model {
 public:
  // Opens and maps the file, reads the configuration, binds every tensor (checking shapes and
  // types). Weights stay in the file's formats (quantized) and are read through src/quant.
  static Result<std::unique_ptr<Model>> load(const std::string& path);
  // Same over an already-parsed file, which must outlive the model (tests).
  static Result<std::unique_ptr<Model>> from_gguf(const GgufFile* gguf);

  const ModelConfig& config() const { return cfg_; }
  const GgufFile& gguf() const { return *gguf_; }

  // Runs n tokens at positions pos0.. through every layer, appending to `kv`, and writes logits:
  // kLast: [n_vocab] for the last token; kAll: [n][n_vocab]. Long inputs are split into chunks
  // of at most max_chunk tokens internally.
  Status forward(const int32_t* tokens, int n, int64_t pos0, KvBackend& kv, float* logits,
                 LogitsMode mode) const;

  static constexpr int kMaxChunk = 64;

  // Several sequences in one pass (continuous batching): segment i appends its n tokens (1 ..
  // kMaxChunk) at positions pos0 .. (pos0 must equal its cache's length) to its own cache; the
  // rows of all segments go through each weight matrix together, attention runs per segment.
  // logits: [count][n_vocab], the last token of each segment. Caches must be distinct. The
  // products of a batch may round differently from a single sequence's (the matrix kernels differ
  // between one row and several), so results match single-sequence forward to rounding, not bits.
  struct BatchSegment {
    const int32_t* tokens = nullptr;
    int n = 0;
    int64_t pos0 = 0;
    KvBackend* kv = nullptr;
  };
  Status forward_batch(const BatchSegment* segs, int count, float* logits) const;

  ~Model();
  struct Weights;  // src/model/model_weights.h

 private:
  Model() = default;
  Status forward_chunk(const int32_t* tokens, int n, int64_t pos0, KvBackend& kv, float* logits,
                       LogitsMode mode) const;
  Status forward_rows(const BatchSegment* segs, int count, int total, float* logits, LogitsMode mode) const;
  std::unique_ptr<GgufMappedFile> owned_;
  const GgufFile* gguf_ = nullptr;
  ModelConfig cfg_;
  std::unique_ptr<Weights> w_;
  std::vector<float> rope_inv_freq_global_, rope_inv_freq_local_;  // [n_rot/2]
};

// Plain-loop reference forward pass (src/model/reference_forward.cpp): every weight dequantized
// with the reference dequantizer, fp64 accumulation, dense fp32 attention over all positions at
// once. Returns logits [n][n_vocab] for tokens at positions 0..n-1. Slow; for tests.
Result<std::vector<float>> reference_forward(const GgufFile& g, const ModelConfig& cfg,
                                             const std::vector<int32_t>& tokens);

}  // namespace tqkv
