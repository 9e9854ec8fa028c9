// Private to src/gpu: the state behind GpuContext (include/tqkv/gpu_model.h), shared by
// gpu_context.cpp (creation, prefill, decode, sizes) and gpu_context_bench.cpp (the benchmark
// helpers: random pages, timed decode steps and attention-only steps).
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <map>
#include <numeric>
#include <random>
#include <vector>

#include "cuda/cuda_check.h"
#include "gpu/gpu_kernels.h"
#include "tqkv/codec.h"
#include "tqkv/cuda_attention.h"
#include "tqkv/fp16.h"
#include "tqkv/gpu_model.h"
#include "tqkv/kv_layout.h"
#include "tqkv/weights.h"
#include "gpu/gpu_internal.h"

namespace tqkv {
namespace gpu_detail {

constexpr int kPage = kDefaultPageSize;

// T query rows; S = 0: decode (attention_decode, T sequences), S > 0: a prefill chunk of S
// sequences (attention_prefill).
struct LayerPlanKey {
  int T, S, layer;
  bool operator<(const LayerPlanKey& o) const {
    return T != o.T ? T < o.T : S != o.S ? S < o.S : layer < o.layer;
  }
};

inline bool prefill_tiled(GpuPrefillPath p) {
  if (p != GpuPrefillPath::kDefault) return p == GpuPrefillPath::kTiled;
  const char* e = std::getenv("TQKV_GPU_PREFILL");
  return !(e != nullptr && std::string(e) == "decode");
}

inline bool layer_is_sliding(const ModelConfig& c, int l) { return c.is_sliding(l) && c.sliding_window > 0; }

inline bool layer_is_f16(const ModelConfig& c, const std::vector<int>& f16_layers, int l) {
  bool f = layer_is_sliding(c, l);
  for (int x : f16_layers) f |= (x >= 0 ? x : c.n_layer + x) == l;
  return f;
}

inline int64_t ring_pages_for(const ModelConfig& c, int max_chunk) {
  return (c.sliding_window + max_chunk + kPage - 1) / kPage + 2;
}

}  // namespace gpu_detail

using namespace gpu_detail;  // private header of src/gpu: its .cpp files all use these names

struct GpuContext::Impl {
  const GpuModel* model = nullptr;
  ModelConfig cfg;
  GpuContextOptions opt;
  DeviceArena arena;
  cudaStream_t stream = nullptr;
  cublasHandle_t blas = nullptr;
  int sm_count = 1;
  int Tmax = 1;
  bool tiled_prefill = true;  // prefill chunks through attention_prefill (else attention_decode)

  int G = 1;
  int max_pages[2] = {0, 0};
  int64_t ring = 0;
  int32_t* table[2] = {nullptr, nullptr};
  // Shared page pool (opt.pool_tokens > 0, group 0 only): free page ids, the pages each slot holds
  // in position order (owned[s][p] = its page of positions [16p, 16p + 16)), and a scratch page that
  // inactive decode slots write into (entry 0 of every slot's row while it holds nothing).
  bool pooled = false;
  std::vector<int32_t> free_pages;
  std::vector<std::vector<int32_t>> owned;
  int32_t scratch_page = -1;
  // Pages positions [0, len) of `seq` still need from the pool (0 without one).
  int64_t pages_short(int seq, int64_t len) const {
    return pooled ? std::max<int64_t>(0, (len + kPage - 1) / kPage - static_cast<int64_t>(owned[seq].size())) : 0;
  }
  // kResourceExhausted unless `need` pages are free.
  Status pool_holds(int64_t need) const {
    if (need <= static_cast<int64_t>(free_pages.size())) return Status::ok();
    return resource_exhausted("GPU KV page pool is full: " + std::to_string(need) + " more pages needed, " +
                              std::to_string(free_pages.size()) + " free");
  }
  // Pages for positions [0, len) of `seq` (pool: taken from the free list and written into the
  // device table before the next step; kResourceExhausted when too few are free, nothing taken).
  Status ensure_pages(int seq, int64_t len) {
    const int64_t short_by = pages_short(seq, len);
    if (short_by == 0) return Status::ok();
    TQKV_RETURN_IF_ERROR(pool_holds(short_by));
    auto& own = owned[seq];
    const size_t first = own.size();
    for (int64_t i = 0; i < short_by; ++i) {
      own.push_back(free_pages.back());
      free_pages.pop_back();
    }
    // Pageable source: the copy is staged before cudaMemcpyAsync returns, so `own` may change after.
    CK(cudaMemcpyAsync(table[0] + static_cast<int64_t>(seq) * max_pages[0] + first, own.data() + first,
                       static_cast<size_t>(short_by) * sizeof(int32_t), cudaMemcpyHostToDevice, stream));
    return Status::ok();
  }
  // A slot emptied: its pages back to the pool, its first table entry on the scratch page.
  Status release_pages(int seq) {
    if (!pooled) return Status::ok();
    auto& own = owned[seq];
    free_pages.insert(free_pages.end(), own.rbegin(), own.rend());
    const bool had = !own.empty();
    own.clear();
    if (had)
      CK(cudaMemcpyAsync(table[0] + static_cast<int64_t>(seq) * max_pages[0], &scratch_page, sizeof(int32_t),
                         cudaMemcpyHostToDevice, stream));
    return Status::ok();
  }
  struct LayerKv {
    uint8_t *k = nullptr, *v = nullptr;
    int kb = 16, vb = 16, group = 0, window = 0;
    int64_t tk = 0, tv = 0, pages = 0;
    // Attention sinks (opt.sink_tokens; compressed full-attention layers, as on the CPU): fp16
    // tiles [max_seqs][n_head_kv][tile_bytes(sinks, D, 16)] per side, in each side's space.
    int sinks = 0;
    uint8_t *sk = nullptr, *sv = nullptr;
    int64_t sink_tile = 0;
    // Recent tokens (opt.recent_tokens; the same layers): rings [max_seqs][n_head_kv][ring_tile]
    // per side, ring_tile = tile_bytes(recent, D, 16), position t in row t % recent.
    int recent = 0;
    uint8_t *rk = nullptr, *rv = nullptr;
    int64_t ring_tile = 0;
  };
  std::vector<LayerKv> lkv;
  float* centroids[17] = {};
  float* boundaries[17] = {};
  float* rotation = nullptr;
  float* signs = nullptr;
  // Key centering (opt.center_keys): mu_k [max_seqs][n_layer][kv_dim], zero where a sequence is
  // not centered (subtracting 0 is exact, so one captured graph serves every sequence);
  // center_layer[l]: keys of layer l are centered. first_write / first_seq: set by prefill for
  // the first forward pass of a sequence (the tokens whose mean becomes mu), 0 otherwise.
  float* mu_k = nullptr;
  std::vector<uint8_t> center_layer;
  // Key smoothing (opt.smooth_keys): s_k [max_seqs][n_layer][kv_dim], 1 where a sequence is not
  // smoothed (yet); smooth_layer[l]: keys of layer l are smoothed (compressed keys, as on the CPU).
  float* s_k = nullptr;
  std::vector<uint8_t> smooth_layer;
  int first_write = 0, first_seq = 0;

  float *x = nullptr, *qkv = nullptr, *q = nullptr, *k = nullptr, *v = nullptr, *o = nullptr, *gu = nullptr,
        *logits = nullptr;
  uint16_t *h16 = nullptr, *att16 = nullptr;
  // [5][Tmax]: tokens, seqs, positions, then per sequence of a prefill chunk its q_len and last
  // row (one copy from pinned memory, before the forward: the forward itself only reads them).
  int32_t *d_in = nullptr;
  int32_t *d_vlen = nullptr, *d_argmax = nullptr;
  int64_t* d_slots[2] = {nullptr, nullptr};
  int32_t* d_vtable[2] = {nullptr, nullptr};
  int32_t* h_in = nullptr;  // pinned [5][Tmax]
  void* ws = nullptr;
  size_t ws_bytes = 0;
  void* blas_ws = nullptr;
  std::map<LayerPlanKey, cuda::DecodePlan> plans;
  std::vector<int64_t> lens;
  std::map<int, cudaGraphExec_t> graphs;  // decode steps by batch size
  std::map<int, int> graph_uses;

  // Attention probe (GpuContext::set_attention_probe; gpu_context_probe.cpp). armed: set by
  // prefill() around the forward passes it measures (never during a graph capture); q/k/v/out:
  // this chunk's rows per layer; k_hist/v_hist: the sequence's keys and values so far per layer
  // ([position][kv_dim], as qkv_post leaves them); eo/no: error and reference energy sums.
  struct Probe {
    int seq = -1;
    bool valid = false, armed = false;
    int64_t rows = 0;
    std::vector<std::vector<float>> q, k, v, k_hist, v_hist;
    std::vector<std::vector<uint16_t>> out;
    std::vector<double> eo, no;
  } probe;
  Status probe_copy_qkv(int l, int T);                // after qkv_post (enqueued on the stream)
  Status probe_copy_out(int l, int T);                // after the layer's attention
  Status probe_measure(int64_t pos0, int n);          // after the chunk's fetch (stream synchronised)

  ~Impl() {
    for (auto& g : graphs) cudaGraphExecDestroy(g.second);
    if (blas) cublasDestroy(blas);
    if (h_in) cudaFreeHost(h_in);
    if (stream) cudaStreamDestroy(stream);
  }

  int32_t* d_tok() const { return d_in; }
  int32_t* d_seq() const { return d_in + Tmax; }
  int32_t* d_pos() const { return d_in + 2 * Tmax; }
  int32_t* d_qlens() const { return d_in + 3 * Tmax; }
  int32_t* d_last() const { return d_in + 4 * Tmax; }
  // Sink slot of each attention-view row: the token's sequence (decode), or each sequence of a
  // prefill chunk (S > 0). Staged with the inputs.
  int32_t* d_vslot() const { return d_in + 5 * Tmax; }
  static constexpr int kInRows = 6;

  PagedKVView view(int l, int T) const {
    const LayerKv& L = lkv[l];
    PagedKVView vw;
    vw.k = KVSideView{L.k, L.kb, L.tk, L.kb == kF16Bits ? nullptr : centroids[L.kb]};
    vw.v = KVSideView{L.v, L.vb, L.tv, L.vb == kF16Bits ? nullptr : centroids[L.vb]};
    vw.num_kv_heads = cfg.n_head_kv;
    vw.head_dim = cfg.head_dim;
    vw.page_size = kPage;
    vw.num_seqs = T;
    vw.page_table = d_vtable[L.group];
    vw.max_pages_per_seq = max_pages[L.group];
    vw.seq_lens = d_vlen;
    vw.first_page = nullptr;
    vw.rotation = (L.kb == kF16Bits && L.vb == kF16Bits) ? nullptr : rotation;
    vw.hadamard_signs = vw.rotation ? signs : nullptr;
    vw.scale_search = opt.scale_search ? 1 : 0;
    if (L.sinks > 0) {
      vw.sink_tokens = L.sinks;
      vw.sink_k = L.sk;
      vw.sink_v = L.sv;
      vw.sink_slot = d_vslot();
    }
    if (L.recent > 0) {
      vw.recent_tokens = L.recent;
      vw.recent_k = L.rk;
      vw.recent_v = L.rv;
      vw.sink_slot = d_vslot();
    }
    return vw;
  }
  cuda::DecodeParams params(int l) const {
    cuda::DecodeParams p;
    p.num_q_heads = cfg.n_head;
    p.scale = cfg.attn_scale;
    p.softcap = cfg.attn_softcap;
    p.window = lkv[l].window;
    return p;
  }
  // S = 0: decode plan for T sequences; S > 0: prefill plan for T rows of S sequences.
  Result<cuda::DecodePlan> plan(int T, int l, int S = 0) {
    auto it = plans.find({T, S, l});
    if (it != plans.end()) return it->second;
    cuda::DecodePlan p;
    if (S > 0) {
      TQKV_ASSIGN_OR_RETURN(p, cuda::plan_prefill(view(l, S), params(l), T, sm_count));
    } else {
      TQKV_ASSIGN_OR_RETURN(p, cuda::plan_decode(view(l, T), params(l), sm_count));
    }
    plans[{T, S, l}] = p;
    return p;
  }

  Status gemm(const DevMat& W, const uint16_t* X, int T, float* Y) {
    const float alpha = 1.f, beta = 0.f;
    BK(cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(W.rows), T, static_cast<int>(W.cols), &alpha,
                    W.w, CUDA_R_16F, static_cast<int>(W.cols), X, CUDA_R_16F, static_cast<int>(W.cols), &beta, Y,
                    CUDA_R_32F, static_cast<int>(W.rows), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    return Status::ok();
  }

  // Enqueues the forward pass of T tokens staged in d_in; logits for rows [first, T) when want_logits.
  // S = 0: a decode step (or a prefill chunk on the decode path), one attention row per token;
  // S > 0: a prefill chunk of S sequences (q_lens and last rows staged), attention_prefill.
  Status enqueue_forward(int T, bool want_logits, int first, int S = 0) {
    const ModelConfig& c = cfg;
    const GpuModel::Impl& w = model->impl();
    const int E = c.n_embd, Q = c.q_dim(), KV = c.kv_dim(), F = c.n_ff;
    gpu::PrepareArgs pa;
    pa.T = T;
    pa.G = G;
    pa.seq = d_seq();
    pa.pos = d_pos();
    pa.vlen = d_vlen;
    pa.S = S;
    pa.seq_last = S > 0 ? d_last() : nullptr;
    for (int g = 0; g < G; ++g) {
      pa.table[g] = table[g];
      pa.max_pages[g] = max_pages[g];
      pa.slots[g] = d_slots[g];
      pa.vtable[g] = d_vtable[g];
    }
    TQKV_RETURN_IF_ERROR(gpu::prepare_step(pa, stream));
    TQKV_RETURN_IF_ERROR(gpu::embed_rows(w.tok_embd, d_tok(), T, E, c.embed_scale ? std::sqrt(static_cast<float>(E)) : 1.f, x, stream));
    for (int l = 0; l < c.n_layer; ++l) {
      const GpuModel::Impl::Layer& L = w.layers[l];
      const bool sliding = layer_is_sliding(c, l);
      TQKV_RETURN_IF_ERROR(gpu::rms_norm(x, L.attn_norm, T, E, c.rms_eps, h16, true, stream));
      TQKV_RETURN_IF_ERROR(gemm(L.wqkv, h16, T, qkv));
      gpu::QkvPostArgs qa;
      qa.qkv = qkv;
      qa.T = T;
      qa.n_head = c.n_head;
      qa.n_head_kv = c.n_head_kv;
      qa.head_dim = c.head_dim;
      qa.n_rot = c.n_rot;
      qa.rope_half = c.rope_style == RopeStyle::kHalf;
      qa.bq = L.bq;
      qa.bk = L.bk;
      qa.bv = L.bv;
      qa.q_norm = L.q_norm;
      qa.k_norm = L.k_norm;
      qa.eps = c.rms_eps;
      qa.inv_freq = c.is_sliding(l) ? w.inv_freq_local : w.inv_freq_global;
      qa.pos = d_pos();
      qa.q = q;
      qa.k = k;
      qa.v = v;
      TQKV_RETURN_IF_ERROR(gpu::qkv_post(qa, stream));
      if (probe.armed) TQKV_RETURN_IF_ERROR(probe_copy_qkv(l, T));
      if (mu_k != nullptr && center_layer[l]) {
        const int64_t stride = static_cast<int64_t>(c.n_layer) * KV;
        if (first_write > 0)
          TQKV_RETURN_IF_ERROR(gpu::key_mean(k, first_write, KV, mu_k + first_seq * stride + static_cast<int64_t>(l) * KV, stream));
        TQKV_RETURN_IF_ERROR(gpu::subtract_key_mean(k, d_seq(), T, KV, mu_k + static_cast<int64_t>(l) * KV, stride, stream));
      }
      if (s_k != nullptr && smooth_layer[l]) {  // after centering, as src/model/kv_transform.cpp
        const int64_t stride = static_cast<int64_t>(c.n_layer) * KV;
        const int Hk = c.n_head_kv, G = c.n_head / c.n_head_kv;
        if (first_write > 0)
          TQKV_RETURN_IF_ERROR(gpu::key_smoothing(k, q, first_write, Hk, G, c.head_dim,
                                                  s_k + first_seq * stride + static_cast<int64_t>(l) * KV, stream));
        TQKV_RETURN_IF_ERROR(gpu::apply_key_smoothing(k, q, d_seq(), T, Hk, G, c.head_dim,
                                                      s_k + static_cast<int64_t>(l) * KV, stride, stream));
      }
      // Quantize-on-write uses only the view's pools and codec (slots are per token); the
      // attention view has S rows (prefill) or T (decode).
      const PagedKVView vw = view(l, S > 0 ? S : T);
      const LayerKv& LK = lkv[l];
      TQKV_RETURN_IF_ERROR(cuda::quantize_and_store(vw, LK.kb == kF16Bits ? nullptr : boundaries[LK.kb],
                                                    LK.vb == kF16Bits ? nullptr : boundaries[LK.vb], k, v,
                                                    cuda::DType::kF32, d_slots[LK.group], T, stream));
      if (LK.sinks > 0 || LK.recent > 0)  // sink positions and every token also into the exact copies
        TQKV_RETURN_IF_ERROR(cuda::store_sink_tokens(vw, k, v, cuda::DType::kF32, d_seq(), d_pos(), T, stream));
      TQKV_ASSIGN_OR_RETURN(cuda::DecodePlan pl, plan(T, l, S));
      if (pl.workspace_bytes > ws_bytes) return internal_error("attention workspace too small (sizing bug)");
      if (S > 0) {
        // Sliding layers: the ring holds window + max_chunk positions (ring_pages_for), and the
        // chunk's rows see at most [first row - window + 1, last row]: no page of that span is
        // overwritten by another of it.
        TQKV_RETURN_IF_ERROR(cuda::attention_prefill(vw, params(l), pl, d_qlens(), T, q, cuda::DType::kF32, att16,
                                                     cuda::DType::kF16, ws, ws_bytes, stream));
      } else {
        TQKV_RETURN_IF_ERROR(cuda::attention_decode(vw, params(l), pl, q, cuda::DType::kF32, att16,
                                                    cuda::DType::kF16, ws, ws_bytes, stream));
      }
      (void)sliding;
      if (probe.armed) TQKV_RETURN_IF_ERROR(probe_copy_out(l, T));
      TQKV_RETURN_IF_ERROR(gemm(L.wo, att16, T, o));
      TQKV_RETURN_IF_ERROR(gpu::residual_add(x, o, c.post_norms ? L.post_attn_norm : nullptr, T, E, c.rms_eps, stream));
      TQKV_RETURN_IF_ERROR(gpu::rms_norm(x, L.ffn_norm, T, E, c.rms_eps, h16, true, stream));
      TQKV_RETURN_IF_ERROR(gemm(L.wgu, h16, T, gu));
      TQKV_RETURN_IF_ERROR(gpu::act_mul(gu, T, F, c.act == Activation::kGeluTanh, h16, stream));
      TQKV_RETURN_IF_ERROR(gemm(L.down, h16, T, o));
      TQKV_RETURN_IF_ERROR(gpu::residual_add(x, o, c.post_norms ? L.post_ffn_norm : nullptr, T, E, c.rms_eps, stream));
    }
    (void)Q;
    (void)KV;
    if (!want_logits) return Status::ok();
    const int rows = T - first;
    TQKV_RETURN_IF_ERROR(gpu::rms_norm(x + static_cast<int64_t>(first) * E, w.output_norm, rows, E, c.rms_eps, h16, true, stream));
    TQKV_RETURN_IF_ERROR(gemm(w.output, h16, rows, logits));
    if (c.final_softcap > 0.f)
      TQKV_RETURN_IF_ERROR(gpu::softcap(logits, static_cast<int64_t>(rows) * c.n_vocab, c.final_softcap, stream));
    TQKV_RETURN_IF_ERROR(gpu::argmax_rows(logits, rows, c.n_vocab, d_argmax, stream));
    return Status::ok();
  }

  // S > 0 (prefill chunk of S sequences): q_lens[S] and last[S] (each sequence's last row).
  Status stage(int T, const int32_t* tokens, const int32_t* seqs, const int32_t* pos, int S = 0,
               const int32_t* q_lens = nullptr, const int32_t* last = nullptr) {
    // The previous step's copy out of h_in may still be in flight only if nobody synchronised;
    // every step ends in fetch() (a stream synchronisation), so h_in is free here.
    std::memcpy(h_in, tokens, T * sizeof(int32_t));
    std::memcpy(h_in + Tmax, seqs, T * sizeof(int32_t));
    std::memcpy(h_in + 2 * Tmax, pos, T * sizeof(int32_t));
    if (S > 0) {
      std::memcpy(h_in + 3 * Tmax, q_lens, S * sizeof(int32_t));
      std::memcpy(h_in + 4 * Tmax, last, S * sizeof(int32_t));
      for (int s = 0; s < S; ++s) h_in[5 * Tmax + s] = seqs[last[s]];
    } else {
      std::memcpy(h_in + 5 * Tmax, seqs, T * sizeof(int32_t));
    }
    CK(cudaMemcpyAsync(d_in, h_in, kInRows * Tmax * sizeof(int32_t), cudaMemcpyHostToDevice, stream));
    return Status::ok();
  }

  // A sequence starting over: no centering until its first write says otherwise.
  Status clear_mu(int seq) {
    const int64_t stride = static_cast<int64_t>(cfg.n_layer) * cfg.kv_dim();
    if (mu_k != nullptr) CK(cudaMemsetAsync(mu_k + seq * stride, 0, static_cast<size_t>(stride) * sizeof(float), stream));
    if (s_k != nullptr) TQKV_RETURN_IF_ERROR(gpu::fill_f32(s_k + seq * stride, stride, 1.0f, stream));
    return Status::ok();
  }

  Status fetch(int rows, float* logits_host, int32_t* argmax_host) {
    if (logits_host)
      CK(cudaMemcpyAsync(logits_host, logits, static_cast<size_t>(rows) * cfg.n_vocab * sizeof(float),
                         cudaMemcpyDeviceToHost, stream));
    if (argmax_host) CK(cudaMemcpyAsync(argmax_host, d_argmax, rows * sizeof(int32_t), cudaMemcpyDeviceToHost, stream));
    CK(cudaStreamSynchronize(stream));
    return Status::ok();
  }

  Status capture(int T, bool chain, cudaGraphExec_t* out) {
    cudaGraph_t graph = nullptr;
    CK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    Status st = enqueue_forward(T, true, 0);
    if (st.is_ok() && chain) {
      // The greedy token of each sequence becomes its next input; positions advance.
      const cudaError_t e = cudaMemcpyAsync(d_tok(), d_argmax, T * sizeof(int32_t), cudaMemcpyDeviceToDevice, stream);
      if (e != cudaSuccess) st = cuda::cuda_status(e, "chain copy", __FILE__, __LINE__);
      if (st.is_ok()) st = gpu::advance_positions(d_pos(), T, stream);
    }
    const cudaError_t e = cudaStreamEndCapture(stream, &graph);
    TQKV_RETURN_IF_ERROR(st);
    CK(e);
    const cudaError_t ie = cudaGraphInstantiate(out, graph, 0);
    cudaGraphDestroy(graph);
    CK(ie);
    return Status::ok();
  }
};

}  // namespace tqkv
