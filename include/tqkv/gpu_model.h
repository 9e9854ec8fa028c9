// The GPU model runtime: the CPU runtime's architectures (include/tqkv/model.h) on one CUDA
// device, over a device-resident paged KV cache with the same byte layout as the CPU cache
// (include/tqkv/kv_layout.h) and the CUDA kernels of include/tqkv/cuda_attention.h.
//
//   TQKV_ASSIGN_OR_RETURN(auto cpu, tqkv::Model::load(path));          // config + mapped file
//   TQKV_ASSIGN_OR_RETURN(auto gm, tqkv::GpuModel::from_gguf(cpu->gguf(), cpu->config()));
//   tqkv::GpuContextOptions o;  o.format = {4, 4};  o.max_seqs = 1;  o.max_tokens = 4096;
//   TQKV_ASSIGN_OR_RETURN(auto ctx, tqkv::GpuContext::create(*gm, o));
//   TQKV_RETURN_IF_ERROR(ctx->prefill(0, ids.data(), n, logits.data(), tqkv::LogitsMode::kLast));
//   TQKV_RETURN_IF_ERROR(ctx->decode(&next, 1, logits.data(), nullptr));   // one token per sequence
//
// Weights: every matrix is dequantized on the CPU (src/quant row dequantization, as the CPU
// runtime reads it) and uploaded as fp16; Q/K/V are stored as one fused [q; k; v] matrix and
// gate/up as one [gate; up] matrix, so a layer is 4 GEMMs (cuBLAS, fp16 in, fp32 accumulate).
// Norm weights and biases are fp32. Activations: the residual stream is fp32, GEMM inputs fp16.
//
// KV cache: one device pool per layer and side, pages of 16 tokens; each sequence slot owns a
// fixed, shuffled set of pages for the full-attention layers (max_tokens of them) and a ring of
// ceil((window + chunk) / 16) + 2 pages for sliding-window layers (Gemma): the page table row of
// a sliding layer repeats the ring, so old positions are overwritten in place and the decode
// kernel's window keeps them out of view. Per-layer policy as on the CPU: the chosen format,
// f16 for `f16_layers`, f16 for sliding layers. New K/V go through quantize_and_store before
// attention. Prefill chunks (one or more sequences, rows grouped by sequence) run
// cuda::attention_prefill, the tiled tensor-core prefill kernel: the chunk's query rows of a
// sequence against its pages, causal inside the chunk, with the layer's window and soft-cap (a
// sliding layer's ring holds window + chunk positions, so the chunk's whole visible span is in it);
// q_lens and the per-sequence lengths and page-table rows are written on the device with the other
// step inputs. Decode steps (one token of each of T sequences) run attention_decode. The previous
// prefill path, every chunk token through attention_decode as its own "virtual sequence" of length
// position + 1 (it reads the pages once per query row), stays as a fallback: environment
// TQKV_GPU_PREFILL=decode, or GpuContextOptions::prefill_path.
//
// Decode steps (`decode`) run as one CUDA graph per batch size, captured on first use (no
// allocation and no host synchronisation inside; the inputs are copied in before the launch).
//
// Threads: a GpuModel is immutable after load; a GpuContext belongs to one caller at a time.
// Built only with the CUDA backend (TQKV_HAVE_CUDA); `gpu_available()` says whether a device is there.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "tqkv/generate.h"
#include "tqkv/serve.h"
#include "tqkv/model.h"
#include "tqkv/status.h"

namespace tqkv {

// OK when a CUDA device is usable; else kUnsupported with the reason (no device, driver error).
Status gpu_available();

struct GpuDeviceInfo {
  std::string name;
  int sm_count = 0;
  int64_t free_bytes = 0, total_bytes = 0;
};
Result<GpuDeviceInfo> gpu_device_info();
// Copy bandwidth of a 16-byte grid-stride copy kernel over `bytes` (read + written bytes per
// second, median of `reps` timed copies), the ceiling the benchmarks compare against.
Result<double> gpu_copy_bandwidth(int64_t bytes, int reps);

class GpuModel {
 public:
  // Uploads the weights of a file whose configuration is `cfg` (config_from_gguf). The file only
  // needs to live during the call.
  static Result<std::unique_ptr<GpuModel>> from_gguf(const GgufFile& g, const ModelConfig& cfg);
  // Random fp16 weights generated on the device (benchmarks): matrices ~ N(0, 1/cols) in spirit
  // (uniform with that variance), norms 1, no biases. Only llama-style configs (no fused/bias flags needed).
  static Result<std::unique_ptr<GpuModel>> synthetic(const ModelConfig& cfg, uint64_t seed);
  // Llama-3.1-8B shape: 32 layers, 4096 hidden, 32:8 heads of 128, 14336 FFN, vocab 128256.
  static ModelConfig llama3_8b_config();

  const ModelConfig& config() const { return cfg_; }
  int64_t weight_bytes() const { return weight_bytes_; }

  ~GpuModel();
  struct Impl;
  Impl& impl() const { return *impl_; }

 private:
  GpuModel() = default;
  ModelConfig cfg_;
  int64_t weight_bytes_ = 0;
  std::unique_ptr<Impl> impl_;
};

enum class GpuPrefillPath { kDefault, kTiled, kDecode };

struct GpuContextOptions {
  KvFormat format;                 // K/V bits of the compressed layers
  std::vector<int> f16_layers;     // layers kept in f16 (negative = from the end)
  int max_seqs = 1;                // sequence slots (decode batch size at most this)
  int64_t max_tokens = 4096;       // tokens each slot can hold
  int max_chunk = 128;             // prefill tokens per forward pass
  bool use_graphs = true;          // capture decode steps in CUDA graphs
  uint64_t page_shuffle_seed = 1;  // 0 = pages in order; else a random placement in the pool
  // Exact key centering as KvOptions::center_keys on the CPU (src/model/kv_transform.cpp): per
  // layer and KV head, the mean of a sequence's first write (its first min(max_chunk,
  // Model::kMaxChunk) tokens, the CPU's first chunk; only when that is >= kCenterMinTokens) is
  // subtracted from every key of the sequence before quantize_and_store, on compressed layers
  // without attention soft-capping. Matches the CPU's mu when max_chunk >= Model::kMaxChunk.
  bool center_keys = false;
  // Exact key smoothing as KvOptions::smooth_keys on the CPU (docs/formats.md, "Key smoothing"):
  // per sequence, layer, KV head and channel a factor s from the same first write as centering
  // (after it); keys divided by s before quantize_and_store, queries multiplied by s. Compressed
  // keys, soft-capped layers included.
  bool smooth_keys = false;
  // The encoder's scale search (KvOptions::scale_search, docs/formats.md): quantize-on-write tries
  // the CPU encoder's seven pre-scales per vector (the generic quantize kernel, not the
  // tensor-core ones). Same format; the CLI turns it on.
  bool scale_search = false;
  // Attention of prefill chunks: kDefault = the tiled prefill kernel unless the environment says
  // TQKV_GPU_PREFILL=decode (read at create); kTiled / kDecode force either path (tests, benches).
  GpuPrefillPath prefill_path = GpuPrefillPath::kDefault;
  // Attention sinks as KvOptions::sink_tokens on the CPU (docs/formats.md, "Attention sinks"): the
  // first sink_tokens (0..16) positions of each sequence also kept in fp16 sink tiles in every
  // compressed full-attention layer (written by cuda::store_sink_tokens beside quantize-on-write,
  // keys after centering); attention reads those positions from the tiles. 0 = none.
  int sink_tokens = 0;
  // Recent tokens as KvOptions::recent_tokens on the CPU (docs/formats.md, "Recent tokens"): the
  // last recent_tokens (0..64) positions of each sequence also kept in an fp16 ring in the same
  // layers as the sinks (written by cuda::store_sink_tokens); attention reads them from there.
  int recent_tokens = 0;
  // Shared page pool (`tqkv serve --device cuda --kv-budget-mib`): > 0 = the full-attention layers'
  // pages form one pool of this many tokens (whole 16-token pages) that the slots share; a sequence
  // takes pages as it grows and reset() gives them back. A step whose new tokens need more pages
  // than are free fails with kResourceExhausted before anything runs (no sequence loses data).
  // 0 = each slot owns max_tokens of pages (the default). Sliding-window rings, sink tiles and
  // recent rings stay per slot either way.
  int64_t pool_tokens = 0;
};

class GpuContext {
 public:
  static Result<std::unique_ptr<GpuContext>> create(const GpuModel& model, const GpuContextOptions& opt);
  ~GpuContext();

  // Appends n tokens to sequence `seq` (at its current length) and writes logits to host memory:
  // kLast [n_vocab] of the last token, kAll [n][n_vocab]; null logits = none.
  Status prefill(int seq, const int32_t* tokens, int n, float* logits, LogitsMode mode);
  // Prefill of several sequences in the same forward passes: n[i] tokens for sequence seqs[i]
  // (distinct slots), appended at their current lengths; the chunks of each pass hold at most
  // max_chunk tokens in all (a sequence may be split across passes). logits: null, or host
  // [count][n_vocab], the last token's logits of each sequence. Key centering: unsupported here
  // (kUnsupported when the context centers keys; prefill() one sequence at a time instead).
  Status prefill_batch(const int* seqs, const int32_t* const* tokens, const int* n, int count, float* logits);
  // Which attention path prefill chunks take ("tiled" or "decode").
  const char* prefill_path_name() const;
  // One token for each of the sequences 0..batch-1 (tokens[b] at position seq_len(b)).
  // logits: [batch][n_vocab] host, or null; argmax: [batch] host, or null. active: null (all), or
  // [batch] flags; an inactive slot is emptied and runs its token at position 0 into a scratch page
  // (its output is meaningless; it stays empty and takes no page of a shared pool): serving steps a
  // prefix of its slots, some of them idle, so that one captured graph per batch size serves.
  Status decode(const int32_t* tokens, int batch, float* logits, int32_t* argmax,
                const uint8_t* active = nullptr);
  Status reset(int seq);
  int64_t seq_len(int seq) const;

  // --- benchmarking -------------------------------------------------------------------------
  // Fills every slot with `len` tokens of random but valid KV data (indices uniform, finite
  // scales / fp16 values) in every layer, without running the model.
  Status fill_random(int64_t len, uint64_t seed);
  // Runs `steps` decode steps of sequences 0..batch-1 back to back from the current lengths,
  // each step's greedy token feeding the next, entirely on the device (graph replays); returns
  // seconds between device events. Lengths advance by `steps`.
  Result<double> time_decode_steps(int batch, int steps, int32_t first_token);
  // Times only the attention calls of one decode step (every layer; rotation + split-KV + merge)
  // over the current lengths of sequences 0..batch-1, `iters` times in one graph; returns seconds
  // per step (median of `reps` replays).
  Result<double> time_attention_step(int batch, int iters, int reps);
  // KV bytes the attention of one decode step reads at the current lengths (tiles, all layers).
  int64_t attention_bytes_per_step(int batch) const;

  // --- diagnostics ----------------------------------------------------------------------------
  // Attention probe (`tqkv verify --device cuda`): per-layer attention fidelity measured from the
  // GPU run itself. While on (seq >= 0), every prefill() chunk of sequence `seq` copies each
  // layer's q, k, v (as the projection, norms and RoPE leave them: before key centering and
  // smoothing, which leave attention unchanged) and the layer's attention output (fp16, what the
  // output projection reads) to the host, and compares that output with dense fp32 attention on the
  // host over the same q, k, v and every earlier position of the sequence (the layer's window and
  // soft-cap). Sums over every measured row of every chunk, as PerplexityOptions::per_layer on the
  // CPU. Measurement starts at a prefill of the sequence from position 0 (after reset) and stops
  // at a decode step of it (decode steps are not measured). Slower: host copies and host attention
  // per chunk. seq = -1: off (the default). prefill_batch is kUnsupported while the probe is on.
  Status set_attention_probe(int seq);
  // Per layer: layer, compressed (kept in the format under test, not f16), att_rel_err = sum
  // |o_gpu - o_ref|^2 / sum |o_ref|^2 over the measured rows (0 when none); k_rel_mse, v_rel_mse and
  // the other fields of LayerKvError are NaN (not measured on the GPU). Empty when the probe is off.
  std::vector<LayerKvError> attention_probe_result() const;
  // Query rows the probe has measured since it was switched on (each row once, all layers).
  int64_t attention_probe_rows() const;

  // Shared page pool (GpuContextOptions::pool_tokens): its size and free pages in tokens (whole
  // pages), and the pages sequence `seq` holds, in tokens; all 0 without a pool.
  int64_t pool_tokens() const;
  int64_t pool_free_tokens() const;
  int64_t pool_held_tokens(int seq) const;
  // Tokens of a pool that a budget of `bytes` buys for `max_seqs` slots under `opt` (the slots'
  // fixed parts, i.e. sliding-window rings, sink tiles and recent rings, come off first); <= 0 when
  // the budget does not cover them.
  static int64_t pool_tokens_for_budget(const ModelConfig& cfg, const GpuContextOptions& opt, int64_t bytes);

  int64_t kv_bytes_allocated() const;
  // Bytes one sequence of `len` tokens needs under this context's per-layer policy (whole pages).
  int64_t kv_bytes_per_seq(int64_t len) const;
  std::string describe() const;

  struct Impl;

 private:
  GpuContext() = default;
  std::unique_ptr<Impl> impl_;
};

// Bytes one sequence of `len` tokens needs for `cfg` with every layer in `fmt` except sliding
// layers (f16 window ring) and f16_layers, in whole 16-token pages (capacity reports), plus the
// attention-sink tiles and recent rings of the compressed full-attention layers when sink_tokens /
// recent_tokens > 0.
int64_t gpu_kv_bytes_per_seq(const ModelConfig& cfg, KvFormat fmt, const std::vector<int>& f16_layers,
                             int64_t len, int max_chunk = 128, int sink_tokens = 0, int recent_tokens = 0);

// Generation and perplexity on the GPU: the same loops and outputs as generate() and
// evaluate_perplexity() in include/tqkv/generate.h (sampling on the host). Perplexity with
// PerplexityOptions::per_layer: r.layers from GpuContext::set_attention_probe (the attention
// error measured from the GPU run; K/V reconstruction errors and the codec figures NaN: not
// measured on the GPU); k8_layers and emulate are kUnsupported (CPU runtime only).
// gpu_generate takes the CPU runtime's KvOptions: format, f16_layers, max_tokens, center_keys,
// sink_tokens, recent_tokens, smooth_keys and scale_search (the fields the GPU runtime implements); k8_layers,
// center_values and emulate are kUnsupported (CPU runtime only), as in gpu_evaluate_perplexity.
// The GpuContextOptions of the KvOptions fields the GPU runtime implements (format, f16_layers,
// max_tokens, center_keys, smooth_keys, scale_search, sink_tokens, recent_tokens), max_seqs slots.
GpuContextOptions gpu_context_options(const KvOptions& kv, int max_seqs);

// `tqkv serve --device cuda` (include/tqkv/serve.h): `slots` sequence slots of one GpuContext
// (gpu_context_options(kv, slots)); a step is one GpuContext::decode over slots 0 .. the highest
// busy one, rounded up to one of a few batch sizes (idle slots in it are inactive). kv_budget_bytes
// > 0: the slots share a page pool of what that budget buys (GpuContext::pool_tokens_for_budget,
// at most slots x kv.max_tokens), else each holds kv.max_tokens. k8_layers, center_values and
// emulate are kUnsupported, as in gpu_generate.
Result<std::unique_ptr<ServeBackend>> gpu_serve_backend(const GpuModel& model, const KvOptions& kv, int slots,
                                                        int64_t kv_budget_bytes = 0);

Result<GenerateStats> gpu_generate(const GpuModel& model, const Tokenizer& tok, const KvOptions& kv,
                                   const std::vector<int32_t>& prompt, const GenerateOptions& opt,
                                   const std::function<void(int32_t)>& on_token);
Result<PerplexityResult> gpu_evaluate_perplexity(const GpuModel& model, const std::vector<int32_t>& tokens,
                                                 const PerplexityOptions& opt,
                                                 const std::function<void(int done, int total)>& progress);

}  // namespace tqkv
