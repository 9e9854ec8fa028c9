// The GPU model runtime's per-batch state (GpuContext, include/tqkv/gpu_model.h): the device paged
// KV cache, prefill and decode steps (decode as a CUDA graph), cuBLAS GEMMs, the small kernels of
// gpu_kernels.cu and the paged-cache kernels of include/tqkv/cuda_attention.h. Attention: prefill
// chunks through cuda::attention_prefill (the tiled kernel; S sequences per chunk, q_lens on the
// device), decode steps through cuda::attention_decode; TQKV_GPU_PREFILL=decode sends prefill
// chunks through attention_decode as before (one virtual sequence per token).
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

using namespace gpu_detail;

// ---------------------------------------------------------------------------------------------
namespace {

constexpr int kPage = kDefaultPageSize;

// T query rows; S = 0: decode (attention_decode, T sequences), S > 0: a prefill chunk of S
// sequences (attention_prefill).
struct LayerPlanKey {
  int T, S, layer;
  bool operator<(const LayerPlanKey& o) const {
    return T != o.T ? T < o.T : S != o.S ? S < o.S : layer < o.layer;
  }
};

bool prefill_tiled(GpuPrefillPath p) {
  if (p != GpuPrefillPath::kDefault) return p == GpuPrefillPath::kTiled;
  const char* e = std::getenv("TQKV_GPU_PREFILL");
  return !(e != nullptr && std::string(e) == "decode");
}

bool layer_is_sliding(const ModelConfig& c, int l) { return c.is_sliding(l) && c.sliding_window > 0; }

bool layer_is_f16(const ModelConfig& c, const std::vector<int>& f16_layers, int l) {
  bool f = layer_is_sliding(c, l);
  for (int x : f16_layers) f |= (x >= 0 ? x : c.n_layer + x) == l;
  return f;
}

int64_t ring_pages_for(const ModelConfig& c, int max_chunk) {
  return (c.sliding_window + max_chunk + kPage - 1) / kPage + 2;
}

}  // namespace

int64_t gpu_kv_bytes_per_seq(const ModelConfig& c, KvFormat fmt, const std::vector<int>& f16_layers, int64_t len,
                             int max_chunk, int sink_tokens) {
  int64_t total = 0;
  const int64_t pages = (len + kPage - 1) / kPage;
  for (int l = 0; l < c.n_layer; ++l) {
    const bool f16 = layer_is_f16(c, f16_layers, l);
    const int kb = f16 ? kF16Bits : fmt.k_bits, vb = f16 ? kF16Bits : fmt.v_bits;
    const int64_t p = layer_is_sliding(c, l) ? std::min(pages, ring_pages_for(c, max_chunk)) : pages;
    total += p * c.n_head_kv * (tile_bytes(kPage, c.head_dim, kb) + tile_bytes(kPage, c.head_dim, vb));
    // Attention-sink tiles (K and V) of a compressed full-attention layer, as on the CPU.
    if (sink_tokens > 0 && (kb != kF16Bits || vb != kF16Bits))
      total += 2ll * c.n_head_kv * tile_bytes(sink_tokens, c.head_dim, kF16Bits);
  }
  return total;
}

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
  struct LayerKv {
    uint8_t *k = nullptr, *v = nullptr;
    int kb = 16, vb = 16, group = 0, window = 0;
    int64_t tk = 0, tv = 0, pages = 0;
    // Attention sinks (opt.sink_tokens; compressed full-attention layers, as on the CPU): fp16
    // tiles [max_seqs][n_head_kv][tile_bytes(sinks, D, 16)] per side, in each side's space.
    int sinks = 0;
    uint8_t *sk = nullptr, *sv = nullptr;
    int64_t sink_tile = 0;
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
    if (L.sinks > 0) {
      vw.sink_tokens = L.sinks;
      vw.sink_k = L.sk;
      vw.sink_v = L.sv;
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
      if (LK.sinks > 0)  // positions < sinks also into the sink tiles (each token's own sequence)
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

GpuContext::~GpuContext() = default;

Result<std::unique_ptr<GpuContext>> GpuContext::create(const GpuModel& model, const GpuContextOptions& opt) {
  TQKV_RETURN_IF_ERROR(gpu_available());
  const ModelConfig& c = model.config();
  if (opt.max_seqs < 1 || opt.max_tokens < 1 || opt.max_chunk < 1)
    return invalid_argument("GpuContext: max_seqs, max_tokens and max_chunk must be positive");
  if (!is_valid_kv_bits(opt.format.k_bits) || !is_valid_kv_bits(opt.format.v_bits))
    return invalid_argument("GpuContext: bad KV format");
  if (!is_valid_head_dim(c.head_dim)) return unsupported("GPU runtime: head size " + std::to_string(c.head_dim) + " not supported by the paged cache");
  if (opt.sink_tokens < 0 || opt.sink_tokens > kPage)
    return invalid_argument("GpuContext: sink_tokens must be in [0, " + std::to_string(kPage) + "] (got " +
                            std::to_string(opt.sink_tokens) + ")");
  std::unique_ptr<GpuContext> ctx(new GpuContext());
  ctx->impl_ = std::make_unique<Impl>();
  Impl& m = *ctx->impl_;
  m.model = &model;
  m.cfg = c;
  m.opt = opt;
  DeviceArena& a = m.arena;
  CK(cudaStreamCreateWithFlags(&m.stream, cudaStreamNonBlocking));
  BK(cublasCreate(&m.blas));
  BK(cublasSetStream(m.blas, m.stream));
  BK(cublasSetMathMode(m.blas, CUBLAS_DEFAULT_MATH));
  {
    const size_t blas_ws = 64u << 20;
    TQKV_ASSIGN_OR_RETURN(m.blas_ws, a.alloc<uint8_t>(blas_ws));
    BK(cublasSetWorkspace(m.blas, m.blas_ws, blas_ws));
  }
  int dev = 0;
  CK(cudaGetDevice(&dev));
  CK(cudaDeviceGetAttribute(&m.sm_count, cudaDevAttrMultiProcessorCount, dev));
  m.Tmax = std::max(opt.max_chunk, opt.max_seqs);
  m.tiled_prefill = prefill_tiled(opt.prefill_path);

  // Page tables: group 0 full attention, group 1 sliding (when the model has sliding layers).
  bool any_sliding = false;
  for (int l = 0; l < c.n_layer; ++l) any_sliding |= layer_is_sliding(c, l);
  m.G = any_sliding ? 2 : 1;
  m.max_pages[0] = static_cast<int>((opt.max_tokens + kPage - 1) / kPage);
  m.max_pages[1] = m.max_pages[0];
  m.ring = any_sliding ? std::min<int64_t>(ring_pages_for(c, opt.max_chunk), m.max_pages[0]) : 0;
  std::mt19937_64 rng(opt.page_shuffle_seed);
  const int64_t full_pool = static_cast<int64_t>(opt.max_seqs) * m.max_pages[0];
  const int64_t slide_pool = static_cast<int64_t>(opt.max_seqs) * m.ring;
  for (int g = 0; g < m.G; ++g) {
    const int64_t pool = g == 0 ? full_pool : slide_pool;
    std::vector<int32_t> perm(static_cast<size_t>(pool));
    std::iota(perm.begin(), perm.end(), 0);
    if (opt.page_shuffle_seed != 0) std::shuffle(perm.begin(), perm.end(), rng);
    std::vector<int32_t> t(static_cast<size_t>(opt.max_seqs) * m.max_pages[g]);
    for (int s = 0; s < opt.max_seqs; ++s)
      for (int p = 0; p < m.max_pages[g]; ++p)
        t[static_cast<size_t>(s) * m.max_pages[g] + p] =
            g == 0 ? perm[static_cast<size_t>(s) * m.max_pages[0] + p] : perm[static_cast<size_t>(s * m.ring + p % m.ring)];
    TQKV_ASSIGN_OR_RETURN(m.table[g], a.alloc<int32_t>(t.size()));
    CK(cudaMemcpy(m.table[g], t.data(), t.size() * sizeof(int32_t), cudaMemcpyHostToDevice));
  }

  // Codec data: rotation and codebooks of the head size (the CPU cache's seed and kinds).
  const int D = c.head_dim;
  TQKV_ASSIGN_OR_RETURN(auto rot, Rotation::create(D, default_rotation(D), kDefaultRotationSeed));
  TQKV_ASSIGN_OR_RETURN(m.rotation, upload_f32(a, std::vector<float>(rot->matrix(), rot->matrix() + D * D)));
  if (rot->signs()) {
    TQKV_ASSIGN_OR_RETURN(m.signs, upload_f32(a, std::vector<float>(rot->signs(), rot->signs() + D)));
  }
  for (int bits : {2, 3, 4, 8}) {
    if (opt.format.k_bits != bits && opt.format.v_bits != bits) continue;
    TQKV_ASSIGN_OR_RETURN(const Codebook* cb, Codebook::get(D, bits));
    TQKV_ASSIGN_OR_RETURN(m.centroids[bits], upload_f32(a, std::vector<float>(cb->centroids(), cb->centroids() + cb->levels())));
    TQKV_ASSIGN_OR_RETURN(m.boundaries[bits], upload_f32(a, std::vector<float>(cb->boundaries(), cb->boundaries() + cb->levels() - 1)));
  }

  // Layer pools.
  m.lkv.resize(static_cast<size_t>(c.n_layer));
  for (int l = 0; l < c.n_layer; ++l) {
    Impl::LayerKv& L = m.lkv[l];
    const bool f16 = layer_is_f16(c, opt.f16_layers, l);
    L.kb = f16 ? kF16Bits : opt.format.k_bits;
    L.vb = f16 ? kF16Bits : opt.format.v_bits;
    L.group = layer_is_sliding(c, l) ? 1 : 0;
    L.window = layer_is_sliding(c, l) ? c.sliding_window : 0;
    L.tk = tile_bytes(kPage, D, L.kb);
    L.tv = tile_bytes(kPage, D, L.vb);
    L.pages = L.group == 0 ? full_pool : slide_pool;
    TQKV_ASSIGN_OR_RETURN(L.k, a.alloc<uint8_t>(static_cast<size_t>(L.pages * c.n_head_kv * L.tk)));
    TQKV_ASSIGN_OR_RETURN(L.v, a.alloc<uint8_t>(static_cast<size_t>(L.pages * c.n_head_kv * L.tv)));
    if (opt.sink_tokens > 0 && (L.kb != kF16Bits || L.vb != kF16Bits)) {  // f16 covers sliding layers
      L.sinks = opt.sink_tokens;
      L.sink_tile = tile_bytes(L.sinks, D, kF16Bits);
      const size_t sb = static_cast<size_t>(opt.max_seqs) * c.n_head_kv * L.sink_tile;
      TQKV_ASSIGN_OR_RETURN(L.sk, a.alloc<uint8_t>(sb));
      TQKV_ASSIGN_OR_RETURN(L.sv, a.alloc<uint8_t>(sb));
      CK(cudaMemset(L.sk, 0, sb));
      CK(cudaMemset(L.sv, 0, sb));
    }
  }

  // Key centering: compressed keys of layers without attention soft-capping (as on the CPU).
  m.center_layer.assign(static_cast<size_t>(c.n_layer), 0);
  bool any_center = false;
  for (int l = 0; l < c.n_layer; ++l) {
    m.center_layer[l] = opt.center_keys && m.lkv[l].kb != kF16Bits && c.attn_softcap <= 0.0f ? 1 : 0;
    any_center |= m.center_layer[l] != 0;
  }
  if (any_center) {
    const size_t cnt = static_cast<size_t>(opt.max_seqs) * c.n_layer * c.kv_dim();
    TQKV_ASSIGN_OR_RETURN(m.mu_k, a.alloc<float>(cnt));
    CK(cudaMemset(m.mu_k, 0, cnt * sizeof(float)));
  }
  // Key smoothing: compressed keys, soft-capped layers included (the scores are unchanged).
  m.smooth_layer.assign(static_cast<size_t>(c.n_layer), 0);
  bool any_smooth = false;
  for (int l = 0; l < c.n_layer; ++l) {
    m.smooth_layer[l] = opt.smooth_keys && m.lkv[l].kb != kF16Bits ? 1 : 0;
    any_smooth |= m.smooth_layer[l] != 0;
  }
  if (any_smooth) {
    if (c.head_dim > 256) return unsupported("key smoothing: head size above 256");
    const int64_t cnt = static_cast<int64_t>(opt.max_seqs) * c.n_layer * c.kv_dim();
    TQKV_ASSIGN_OR_RETURN(m.s_k, a.alloc<float>(cnt));
    TQKV_RETURN_IF_ERROR(gpu::fill_f32(m.s_k, cnt, 1.0f, nullptr));
  }

  // Activations and per-step arrays.
  const int64_t T = m.Tmax, E = c.n_embd, Q = c.q_dim(), KV = c.kv_dim(), F = c.n_ff;
  TQKV_ASSIGN_OR_RETURN(m.x, a.alloc<float>(T * E));
  TQKV_ASSIGN_OR_RETURN(m.qkv, a.alloc<float>(T * (Q + 2 * KV)));
  TQKV_ASSIGN_OR_RETURN(m.q, a.alloc<float>(T * Q));
  TQKV_ASSIGN_OR_RETURN(m.k, a.alloc<float>(T * KV));
  TQKV_ASSIGN_OR_RETURN(m.v, a.alloc<float>(T * KV));
  TQKV_ASSIGN_OR_RETURN(m.o, a.alloc<float>(T * E));
  TQKV_ASSIGN_OR_RETURN(m.gu, a.alloc<float>(T * 2 * F));
  TQKV_ASSIGN_OR_RETURN(m.logits, a.alloc<float>(T * c.n_vocab));
  TQKV_ASSIGN_OR_RETURN(m.h16, a.alloc<uint16_t>(T * std::max({E, Q, F})));
  TQKV_ASSIGN_OR_RETURN(m.att16, a.alloc<uint16_t>(T * Q));
  TQKV_ASSIGN_OR_RETURN(m.d_in, a.alloc<int32_t>(Impl::kInRows * T));
  CK(cudaMemset(m.d_in, 0, Impl::kInRows * T * sizeof(int32_t)));
  TQKV_ASSIGN_OR_RETURN(m.d_vlen, a.alloc<int32_t>(T));
  TQKV_ASSIGN_OR_RETURN(m.d_argmax, a.alloc<int32_t>(T));
  for (int g = 0; g < m.G; ++g) {
    TQKV_ASSIGN_OR_RETURN(m.d_slots[g], a.alloc<int64_t>(T));
    TQKV_ASSIGN_OR_RETURN(m.d_vtable[g], a.alloc<int32_t>(T * m.max_pages[g]));
  }
  CK(cudaMallocHost(reinterpret_cast<void**>(&m.h_in), Impl::kInRows * T * sizeof(int32_t)));
  std::memset(m.h_in, 0, Impl::kInRows * T * sizeof(int32_t));

  // Attention workspace: the largest any decode step (t <= Tmax sequences) or, on the tiled path,
  // any prefill chunk (t <= max_chunk rows of up to min(max_seqs, t) sequences; fewer sequences
  // need no more: only the tile table grows with them) needs, for every layer.
  size_t ws = 256;
  auto same_kind = [&](int l) {
    return l > 0 && m.lkv[l].kb == m.lkv[l - 1].kb && m.lkv[l].vb == m.lkv[l - 1].vb &&
           m.lkv[l].group == m.lkv[l - 1].group && m.lkv[l].window == m.lkv[l - 1].window;
  };
  for (int t = 1; t <= m.Tmax; ++t)
    for (int l = 0; l < c.n_layer; ++l) {
      if (same_kind(l)) {
        m.plans[{t, 0, l}] = m.plans[{t, 0, l - 1}];
        continue;
      }
      TQKV_ASSIGN_OR_RETURN(cuda::DecodePlan p, m.plan(t, l));
      ws = std::max(ws, p.workspace_bytes);
    }
  if (m.tiled_prefill)
    for (int t = 1; t <= opt.max_chunk; ++t)
      for (int l = 0; l < c.n_layer; ++l) {
        const int S = std::min(opt.max_seqs, t);
        if (same_kind(l)) {
          m.plans[{t, S, l}] = m.plans[{t, S, l - 1}];
          continue;
        }
        TQKV_ASSIGN_OR_RETURN(cuda::DecodePlan p, m.plan(t, l, S));
        ws = std::max(ws, p.workspace_bytes);
      }
  m.ws_bytes = ws;
  TQKV_ASSIGN_OR_RETURN(m.ws, a.alloc<uint8_t>(ws));
  m.lens.assign(static_cast<size_t>(opt.max_seqs), 0);
  CK(cudaDeviceSynchronize());
  return ctx;
}

Status GpuContext::prefill(int seq, const int32_t* tokens, int n, float* logits, LogitsMode mode) {
  Impl& m = *impl_;
  if (seq < 0 || seq >= m.opt.max_seqs) return out_of_range("prefill: bad sequence slot");
  if (n <= 0 || tokens == nullptr) return invalid_argument("prefill: no tokens");
  for (int i = 0; i < n; ++i)
    if (tokens[i] < 0 || tokens[i] >= m.cfg.n_vocab) return out_of_range("prefill: token id " + std::to_string(tokens[i]) + " outside the vocabulary");
  if (m.lens[seq] + n > m.opt.max_tokens)
    return out_of_range("GPU KV cache full: " + std::to_string(m.lens[seq] + n) + " tokens > context " + std::to_string(m.opt.max_tokens));
  std::vector<int32_t> seqs(static_cast<size_t>(m.opt.max_chunk), seq), pos(static_cast<size_t>(m.opt.max_chunk));
  for (int done = 0; done < n;) {
    const int cnt = std::min(m.opt.max_chunk, n - done);
    const bool last = done + cnt == n;
    for (int i = 0; i < cnt; ++i) pos[i] = static_cast<int32_t>(m.lens[seq] + i);
    const int32_t qlen = cnt, last_row = cnt - 1;
    const int S = m.tiled_prefill ? 1 : 0;
    TQKV_RETURN_IF_ERROR(m.stage(cnt, tokens + done, seqs.data(), pos.data(), S, &qlen, &last_row));
    // The sequence's first write fixes mu: the CPU's first write is its first forward chunk
    // (Model::kMaxChunk tokens at most), so the mean is over that many tokens of this chunk.
    m.first_write = 0;
    if (m.lens[seq] == 0 && (m.mu_k != nullptr || m.s_k != nullptr)) {
      TQKV_RETURN_IF_ERROR(m.clear_mu(seq));
      const int w = std::min(cnt, Model::kMaxChunk);
      m.first_write = w >= KvOptions::kCenterMinTokens ? w : 0;
      m.first_seq = seq;
    }
    const bool want = logits != nullptr && (mode == LogitsMode::kAll || last);
    const int first = mode == LogitsMode::kAll ? 0 : cnt - 1;
    const Status fs = m.enqueue_forward(cnt, want, first, S);
    m.first_write = 0;
    TQKV_RETURN_IF_ERROR(fs);
    float* dst = nullptr;
    if (want) dst = mode == LogitsMode::kAll ? logits + static_cast<int64_t>(done) * m.cfg.n_vocab : logits;
    TQKV_RETURN_IF_ERROR(m.fetch(want ? cnt - first : 0, dst, nullptr));
    m.lens[seq] += cnt;
    done += cnt;
  }
  return Status::ok();
}

Status GpuContext::prefill_batch(const int* seqs, const int32_t* const* tokens, const int* n, int count,
                                 float* logits) {
  Impl& m = *impl_;
  if (count < 1 || seqs == nullptr || tokens == nullptr || n == nullptr)
    return invalid_argument("prefill_batch: no sequences");
  if (m.mu_k != nullptr || m.s_k != nullptr)
    return unsupported("prefill_batch: key centering and smoothing need prefill() one sequence at a time");
  std::vector<uint8_t> seen(static_cast<size_t>(m.opt.max_seqs), 0);
  for (int i = 0; i < count; ++i) {
    if (seqs[i] < 0 || seqs[i] >= m.opt.max_seqs) return out_of_range("prefill_batch: bad sequence slot");
    if (seen[seqs[i]]++) return invalid_argument("prefill_batch: sequence slot " + std::to_string(seqs[i]) + " given twice");
    if (n[i] <= 0 || tokens[i] == nullptr) return invalid_argument("prefill_batch: no tokens for a sequence");
    for (int j = 0; j < n[i]; ++j)
      if (tokens[i][j] < 0 || tokens[i][j] >= m.cfg.n_vocab) return out_of_range("prefill_batch: token id outside the vocabulary");
    if (m.lens[seqs[i]] + n[i] > m.opt.max_tokens) return out_of_range("GPU KV cache full (raise --ctx)");
  }
  const int C = m.opt.max_chunk, V = m.cfg.n_vocab;
  std::vector<int32_t> tok(static_cast<size_t>(C)), sq(static_cast<size_t>(C)), pos(static_cast<size_t>(C)),
      qlen(static_cast<size_t>(C)), last(static_cast<size_t>(C));
  std::vector<int> done(static_cast<size_t>(count), 0), owner(static_cast<size_t>(C));
  for (int cur = 0; cur < count;) {
    // One pass: the next max_chunk tokens, sequence after sequence (rows grouped by sequence).
    int T = 0, S = 0;
    for (int i = cur; i < count && T < C; ++i) {
      const int take = std::min(C - T, n[i] - done[i]);
      for (int j = 0; j < take; ++j) {
        tok[T + j] = tokens[i][done[i] + j];
        sq[T + j] = seqs[i];
        pos[T + j] = static_cast<int32_t>(m.lens[seqs[i]] + j);
      }
      qlen[S] = take;
      last[S] = T + take - 1;
      owner[S] = i;
      ++S;
      T += take;
    }
    const int Sa = m.tiled_prefill ? S : 0;
    TQKV_RETURN_IF_ERROR(m.stage(T, tok.data(), sq.data(), pos.data(), Sa, qlen.data(), last.data()));
    bool want = false;
    for (int s = 0; s < S; ++s) want |= logits != nullptr && done[owner[s]] + qlen[s] == n[owner[s]];
    m.first_write = 0;
    TQKV_RETURN_IF_ERROR(m.enqueue_forward(T, want, 0, Sa));
    for (int s = 0; s < S && want; ++s) {
      const int i = owner[s];
      if (done[i] + qlen[s] == n[i])
        CK(cudaMemcpyAsync(logits + static_cast<int64_t>(i) * V, m.logits + static_cast<int64_t>(last[s]) * V,
                           static_cast<size_t>(V) * sizeof(float), cudaMemcpyDeviceToHost, m.stream));
    }
    TQKV_RETURN_IF_ERROR(m.fetch(0, nullptr, nullptr));
    for (int s = 0; s < S; ++s) {
      const int i = owner[s];
      m.lens[seqs[i]] += qlen[s];
      done[i] += qlen[s];
      if (done[i] == n[i]) cur = std::max(cur, i + 1);
    }
  }
  return Status::ok();
}

const char* GpuContext::prefill_path_name() const { return impl_->tiled_prefill ? "tiled" : "decode"; }

Status GpuContext::decode(const int32_t* tokens, int batch, float* logits, int32_t* argmax) {
  Impl& m = *impl_;
  if (batch < 1 || batch > m.opt.max_seqs) return out_of_range("decode: batch must be 1.." + std::to_string(m.opt.max_seqs));
  std::vector<int32_t> seqs(static_cast<size_t>(batch)), pos(static_cast<size_t>(batch));
  for (int b = 0; b < batch; ++b) {
    if (tokens[b] < 0 || tokens[b] >= m.cfg.n_vocab) return out_of_range("decode: token id outside the vocabulary");
    if (m.lens[b] + 1 > m.opt.max_tokens) return out_of_range("GPU KV cache full (raise --ctx)");
    seqs[b] = b;
    pos[b] = static_cast<int32_t>(m.lens[b]);
    if (m.lens[b] == 0) TQKV_RETURN_IF_ERROR(m.clear_mu(b));  // a first write of one token: not centered
  }
  TQKV_RETURN_IF_ERROR(m.stage(batch, tokens, seqs.data(), pos.data()));
  auto it = m.graphs.find(batch);
  if (it != m.graphs.end()) {
    CK(cudaGraphLaunch(it->second, m.stream));
  } else if (m.opt.use_graphs && m.graph_uses[batch]++ > 0) {
    // Second step of this batch size: everything is warm (cuBLAS heuristics, plans); capture.
    cudaGraphExec_t ge = nullptr;
    TQKV_RETURN_IF_ERROR(m.capture(batch, false, &ge));
    m.graphs[batch] = ge;
    CK(cudaGraphLaunch(ge, m.stream));
  } else {
    TQKV_RETURN_IF_ERROR(m.enqueue_forward(batch, true, 0));
  }
  TQKV_RETURN_IF_ERROR(m.fetch(batch, logits, argmax));
  for (int b = 0; b < batch; ++b) ++m.lens[b];
  return Status::ok();
}

Status GpuContext::reset(int seq) {
  Impl& m = *impl_;
  if (seq < 0 || seq >= m.opt.max_seqs) return out_of_range("reset: bad sequence slot");
  m.lens[seq] = 0;
  return Status::ok();
}

int64_t GpuContext::seq_len(int seq) const {
  const Impl& m = *impl_;
  return seq >= 0 && seq < m.opt.max_seqs ? m.lens[seq] : -1;
}

Status GpuContext::fill_random(int64_t len, uint64_t seed) {
  Impl& m = *impl_;
  if (len < 0 || len > m.opt.max_tokens) return out_of_range("fill_random: length beyond the context");
  for (int l = 0; l < m.cfg.n_layer; ++l) {
    const Impl::LayerKv& L = m.lkv[l];
    const int64_t tiles = L.pages * m.cfg.n_head_kv;
    TQKV_RETURN_IF_ERROR(gpu::fill_random_tiles(L.k, tiles, L.tk, L.kb, kPage, m.cfg.head_dim, seed + 2 * l, m.stream));
    TQKV_RETURN_IF_ERROR(gpu::fill_random_tiles(L.v, tiles, L.tv, L.vb, kPage, m.cfg.head_dim, seed + 2 * l + 1, m.stream));
    if (L.sinks > 0) {
      const int64_t st = static_cast<int64_t>(m.opt.max_seqs) * m.cfg.n_head_kv;
      TQKV_RETURN_IF_ERROR(gpu::fill_random_tiles(L.sk, st, L.sink_tile, kF16Bits, L.sinks, m.cfg.head_dim, ~seed - 2 * l, m.stream));
      TQKV_RETURN_IF_ERROR(gpu::fill_random_tiles(L.sv, st, L.sink_tile, kF16Bits, L.sinks, m.cfg.head_dim, ~seed - 2 * l - 1, m.stream));
    }
  }
  CK(cudaStreamSynchronize(m.stream));
  std::fill(m.lens.begin(), m.lens.end(), len);
  return Status::ok();
}

Result<double> GpuContext::time_decode_steps(int batch, int steps, int32_t first_token) {
  Impl& m = *impl_;
  if (batch < 1 || batch > m.opt.max_seqs) return out_of_range("time_decode_steps: bad batch");
  for (int b = 0; b < batch; ++b)
    if (m.lens[b] + steps + 2 > m.opt.max_tokens) return out_of_range("time_decode_steps: context too small for the steps");
  std::vector<int32_t> toks(static_cast<size_t>(batch), first_token), seqs(static_cast<size_t>(batch)), pos(static_cast<size_t>(batch));
  for (int b = 0; b < batch; ++b) {
    seqs[b] = b;
    pos[b] = static_cast<int32_t>(m.lens[b]);
  }
  // One eager warm-up step (cuBLAS picks its kernels; nothing is captured cold).
  TQKV_RETURN_IF_ERROR(m.stage(batch, toks.data(), seqs.data(), pos.data()));
  TQKV_RETURN_IF_ERROR(m.enqueue_forward(batch, true, 0));
  CK(cudaMemcpyAsync(m.d_tok(), m.d_argmax, batch * sizeof(int32_t), cudaMemcpyDeviceToDevice, m.stream));
  TQKV_RETURN_IF_ERROR(gpu::advance_positions(m.d_pos(), batch, m.stream));
  CK(cudaStreamSynchronize(m.stream));
  cudaGraphExec_t ge = nullptr;
  TQKV_RETURN_IF_ERROR(m.capture(batch, true, &ge));
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  CK(cudaGraphLaunch(ge, m.stream));  // one more warm step (graph upload)
  CK(cudaEventRecord(e0, m.stream));
  for (int i = 0; i < steps; ++i) CK(cudaGraphLaunch(ge, m.stream));
  CK(cudaEventRecord(e1, m.stream));
  CK(cudaEventSynchronize(e1));
  float ms = 0;
  CK(cudaEventElapsedTime(&ms, e0, e1));
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  cudaGraphExecDestroy(ge);
  for (int b = 0; b < batch; ++b) m.lens[b] += steps + 2;
  return ms * 1e-3;
}

Result<double> GpuContext::time_attention_step(int batch, int iters, int reps) {
  Impl& m = *impl_;
  if (batch < 1 || batch > m.opt.max_seqs) return out_of_range("time_attention_step: bad batch");
  std::vector<int32_t> toks(static_cast<size_t>(batch), 0), seqs(static_cast<size_t>(batch)), pos(static_cast<size_t>(batch));
  for (int b = 0; b < batch; ++b) {
    seqs[b] = b;
    pos[b] = static_cast<int32_t>(std::max<int64_t>(0, m.lens[b] - 1));  // attend over the held tokens
  }
  TQKV_RETURN_IF_ERROR(m.stage(batch, toks.data(), seqs.data(), pos.data()));
  gpu::PrepareArgs pa;
  pa.T = batch;
  pa.G = m.G;
  pa.seq = m.d_seq();
  pa.pos = m.d_pos();
  pa.vlen = m.d_vlen;
  for (int g = 0; g < m.G; ++g) {
    pa.table[g] = m.table[g];
    pa.max_pages[g] = m.max_pages[g];
    pa.slots[g] = m.d_slots[g];
    pa.vtable[g] = m.d_vtable[g];
  }
  TQKV_RETURN_IF_ERROR(gpu::prepare_step(pa, m.stream));
  // Queries: random fp16 (never zeros).
  TQKV_RETURN_IF_ERROR(gpu::fill_uniform_f16(m.h16, static_cast<int64_t>(batch) * m.cfg.q_dim(), 1.0f, 12345, m.stream));
  auto enqueue = [&]() -> Status {
    for (int l = 0; l < m.cfg.n_layer; ++l) {
      TQKV_ASSIGN_OR_RETURN(cuda::DecodePlan pl, m.plan(batch, l));
      TQKV_RETURN_IF_ERROR(cuda::attention_decode(m.view(l, batch), m.params(l), pl, m.h16, cuda::DType::kF16, m.att16,
                                                  cuda::DType::kF16, m.ws, m.ws_bytes, m.stream));
    }
    return Status::ok();
  };
  TQKV_RETURN_IF_ERROR(enqueue());
  CK(cudaStreamSynchronize(m.stream));
  cudaGraph_t graph = nullptr;
  CK(cudaStreamBeginCapture(m.stream, cudaStreamCaptureModeThreadLocal));
  Status st = Status::ok();
  for (int i = 0; i < iters && st.is_ok(); ++i) st = enqueue();
  const cudaError_t ce = cudaStreamEndCapture(m.stream, &graph);
  TQKV_RETURN_IF_ERROR(st);
  CK(ce);
  cudaGraphExec_t ge = nullptr;
  const cudaError_t ie = cudaGraphInstantiate(&ge, graph, 0);
  cudaGraphDestroy(graph);
  CK(ie);
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  std::vector<float> ms;
  for (int r = 0; r < reps + 1; ++r) {
    CK(cudaEventRecord(e0, m.stream));
    CK(cudaGraphLaunch(ge, m.stream));
    CK(cudaEventRecord(e1, m.stream));
    CK(cudaEventSynchronize(e1));
    float t = 0;
    CK(cudaEventElapsedTime(&t, e0, e1));
    if (r > 0) ms.push_back(t);
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  cudaGraphExecDestroy(ge);
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2] * 1e-3 / iters;
}

int64_t GpuContext::attention_bytes_per_step(int batch) const {
  const Impl& m = *impl_;
  int64_t total = 0;
  for (int l = 0; l < m.cfg.n_layer; ++l) {
    const Impl::LayerKv& L = m.lkv[l];
    for (int b = 0; b < batch; ++b) {
      const int64_t len = m.lens[b];
      int64_t lo = L.window > 0 ? std::max<int64_t>(0, len - L.window) : 0;
      const int64_t pages = (len + kPage - 1) / kPage - lo / kPage;
      total += pages * m.cfg.n_head_kv * (L.tk + L.tv);
      total += std::min<int64_t>(len, L.sinks) * m.cfg.n_head_kv * 2 * m.cfg.head_dim * 2;  // sink rows (fp16 K, V)
    }
    total += static_cast<int64_t>(batch) * m.cfg.q_dim() * 4;  // fp16 q in, fp16 out
  }
  return total;
}

int64_t GpuContext::kv_bytes_allocated() const {
  const Impl& m = *impl_;
  int64_t total = 0;
  for (const auto& L : m.lkv)
    total += L.pages * m.cfg.n_head_kv * (L.tk + L.tv) + 2ll * m.opt.max_seqs * m.cfg.n_head_kv * L.sink_tile;
  return total;
}

int64_t GpuContext::kv_bytes_per_seq(int64_t len) const {
  const Impl& m = *impl_;
  return gpu_kv_bytes_per_seq(m.cfg, m.opt.format, m.opt.f16_layers, len, m.opt.max_chunk, m.opt.sink_tokens);
}

std::string GpuContext::describe() const {
  const Impl& m = *impl_;
  std::string s = kv_format_name(m.opt.format) + " paged on the GPU (16-token pages)";
  int sliding = 0, f16 = 0;
  for (int l = 0; l < m.cfg.n_layer; ++l) {
    sliding += layer_is_sliding(m.cfg, l) ? 1 : 0;
    f16 += !layer_is_sliding(m.cfg, l) && m.lkv[l].kb == kF16Bits && m.opt.format.k_bits != kF16Bits ? 1 : 0;
  }
  if (sliding > 0) s += ", " + std::to_string(sliding) + " sliding-window layers in f16";
  if (f16 > 0) s += ", " + std::to_string(f16) + " layers kept in f16";
  int sink_layers = 0;
  for (const auto& L : m.lkv) sink_layers += L.sinks > 0 ? 1 : 0;
  if (sink_layers > 0)
    s += ", first " + std::to_string(m.opt.sink_tokens) + " tokens kept in f16 in " + std::to_string(sink_layers) +
         " layers (attention sinks)";
  if (m.mu_k != nullptr)
    s += ", keys centered (when the first write has >= " + std::to_string(KvOptions::kCenterMinTokens) + " tokens)";
  if (m.s_k != nullptr) s += ", keys smoothed";
  return s;
}

}  // namespace tqkv
