// The GPU model runtime's per-batch state (GpuContext, include/tqkv/gpu_model.h): the device paged
// KV cache, prefill and decode steps (decode as a CUDA graph), cuBLAS GEMMs, the small kernels of
// gpu_kernels.cu and the paged-cache kernels of include/tqkv/cuda_attention.h. Attention: prefill
// chunks through cuda::attention_prefill (the tiled kernel; S sequences per chunk, q_lens on the
// device), decode steps through cuda::attention_decode; TQKV_GPU_PREFILL=decode sends prefill
// chunks through attention_decode as before (one virtual sequence per token).
#include "gpu/gpu_context_impl.h"

namespace tqkv {

namespace {

// One slot's KV bytes under a per-layer policy, by kind: a 16-token page of every full-attention
// layer together, a page of every sliding layer together (a slot holds at most its ring of those),
// and the fixed fp16 copies of the compressed full-attention layers (attention-sink tiles and the
// ring of recent tokens, K and V, as on the CPU).
struct SlotKvBytes {
  int64_t full_page = 0, sliding_page = 0, exact = 0;
};
SlotKvBytes slot_kv_bytes(const ModelConfig& c, KvFormat fmt, const std::vector<int>& f16_layers, int sink_tokens,
                          int recent_tokens) {
  SlotKvBytes b;
  for (int l = 0; l < c.n_layer; ++l) {
    const bool f16 = layer_is_f16(c, f16_layers, l);
    const int kb = f16 ? kF16Bits : fmt.k_bits, vb = f16 ? kF16Bits : fmt.v_bits;
    const int64_t page = c.n_head_kv * (tile_bytes(kPage, c.head_dim, kb) + tile_bytes(kPage, c.head_dim, vb));
    (layer_is_sliding(c, l) ? b.sliding_page : b.full_page) += page;
    if (kb == kF16Bits && vb == kF16Bits) continue;
    if (sink_tokens > 0) b.exact += 2ll * c.n_head_kv * tile_bytes(sink_tokens, c.head_dim, kF16Bits);
    if (recent_tokens > 0) b.exact += 2ll * c.n_head_kv * tile_bytes(recent_tokens, c.head_dim, kF16Bits);
  }
  return b;
}

}  // namespace

int64_t gpu_kv_bytes_per_seq(const ModelConfig& c, KvFormat fmt, const std::vector<int>& f16_layers, int64_t len,
                             int max_chunk, int sink_tokens, int recent_tokens) {
  const SlotKvBytes b = slot_kv_bytes(c, fmt, f16_layers, sink_tokens, recent_tokens);
  const int64_t pages = (len + kPage - 1) / kPage;
  return pages * b.full_page + std::min(pages, ring_pages_for(c, max_chunk)) * b.sliding_page + b.exact;
}

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
  if (opt.recent_tokens < 0 || opt.recent_tokens > cuda::kMaxRecentTokens)
    return invalid_argument("GpuContext: recent_tokens must be in [0, " + std::to_string(cuda::kMaxRecentTokens) +
                            "] on the GPU (got " + std::to_string(opt.recent_tokens) + ")");
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
  // The per-token decode path gives attention_decode one row per token, each with its own length
  // as the sequence's: the ring's reach (the last recent_tokens positions of the sequence) cannot
  // be told from that, and the ring holds only the chunk's last positions.
  if (opt.recent_tokens > 0 && !m.tiled_prefill)
    return unsupported("GpuContext: recent tokens need the attention_prefill path (not TQKV_GPU_PREFILL=decode)");

  // Page tables: group 0 full attention, group 1 sliding (when the model has sliding layers).
  bool any_sliding = false;
  for (int l = 0; l < c.n_layer; ++l) any_sliding |= layer_is_sliding(c, l);
  m.G = any_sliding ? 2 : 1;
  m.max_pages[0] = static_cast<int>((opt.max_tokens + kPage - 1) / kPage);
  m.max_pages[1] = m.max_pages[0];
  m.ring = any_sliding ? std::min<int64_t>(ring_pages_for(c, opt.max_chunk), m.max_pages[0]) : 0;
  std::mt19937_64 rng(opt.page_shuffle_seed);
  if (opt.pool_tokens < 0) return invalid_argument("GpuContext: pool_tokens must be >= 0");
  m.pooled = opt.pool_tokens > 0;
  // A shared pool: its pages plus the scratch page of inactive decode slots (the last id).
  const int64_t full_pool =
      m.pooled ? (opt.pool_tokens + kPage - 1) / kPage + 1 : static_cast<int64_t>(opt.max_seqs) * m.max_pages[0];
  if (full_pool > INT32_MAX) return invalid_argument("GpuContext: page pool too large");
  const int64_t slide_pool = static_cast<int64_t>(opt.max_seqs) * m.ring;
  for (int g = 0; g < m.G; ++g) {
    const int64_t pool = g == 0 ? full_pool : slide_pool;
    std::vector<int32_t> perm(static_cast<size_t>(pool));
    std::iota(perm.begin(), perm.end(), 0);
    if (opt.page_shuffle_seed != 0) std::shuffle(perm.begin(), perm.end() - (g == 0 && m.pooled ? 1 : 0), rng);
    std::vector<int32_t> t(static_cast<size_t>(opt.max_seqs) * m.max_pages[g]);
    if (g == 0 && m.pooled) {
      m.scratch_page = static_cast<int32_t>(full_pool - 1);
      std::fill(t.begin(), t.end(), m.scratch_page);
      // Taken from the back: the first pages handed out are perm[0], perm[1], ...
      m.free_pages.assign(perm.rbegin() + 1, perm.rend());
      m.owned.assign(static_cast<size_t>(opt.max_seqs), {});
    } else {
      for (int s = 0; s < opt.max_seqs; ++s)
        for (int p = 0; p < m.max_pages[g]; ++p)
          t[static_cast<size_t>(s) * m.max_pages[g] + p] =
              g == 0 ? perm[static_cast<size_t>(s) * m.max_pages[0] + p] : perm[static_cast<size_t>(s * m.ring + p % m.ring)];
    }
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
    // Exact fp16 copies of a compressed layer (f16 covers sliding layers): the attention-sink tiles
    // and the ring of recent tokens, `rows` rows per (slot, KV head) and side, zeroed.
    auto exact_copies = [&](int rows, int* held, int64_t* tile, uint8_t** k, uint8_t** v) -> Status {
      if (rows <= 0 || (L.kb == kF16Bits && L.vb == kF16Bits)) return Status::ok();
      *held = rows;
      *tile = tile_bytes(rows, D, kF16Bits);
      const size_t b = static_cast<size_t>(opt.max_seqs) * c.n_head_kv * *tile;
      TQKV_ASSIGN_OR_RETURN(*k, a.alloc<uint8_t>(b));
      TQKV_ASSIGN_OR_RETURN(*v, a.alloc<uint8_t>(b));
      CK(cudaMemset(*k, 0, b));
      CK(cudaMemset(*v, 0, b));
      return Status::ok();
    };
    TQKV_RETURN_IF_ERROR(exact_copies(opt.sink_tokens, &L.sinks, &L.sink_tile, &L.sk, &L.sv));
    TQKV_RETURN_IF_ERROR(exact_copies(opt.recent_tokens, &L.recent, &L.ring_tile, &L.rk, &L.rv));
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
  TQKV_RETURN_IF_ERROR(m.ensure_pages(seq, m.lens[seq] + n));
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
    if (seq == m.probe.seq && m.lens[seq] == 0) m.probe.valid = true;  // the probe measures from position 0
    m.probe.armed = seq == m.probe.seq && m.probe.valid;
    const Status fs = m.enqueue_forward(cnt, want, first, S);
    m.first_write = 0;
    const bool measure = m.probe.armed;
    m.probe.armed = false;
    TQKV_RETURN_IF_ERROR(fs);
    float* dst = nullptr;
    if (want) dst = mode == LogitsMode::kAll ? logits + static_cast<int64_t>(done) * m.cfg.n_vocab : logits;
    TQKV_RETURN_IF_ERROR(m.fetch(want ? cnt - first : 0, dst, nullptr));
    if (measure) TQKV_RETURN_IF_ERROR(m.probe_measure(m.lens[seq], cnt));
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
  if (m.probe.seq >= 0) return unsupported("prefill_batch: the attention probe needs prefill() one sequence at a time");
  std::vector<uint8_t> seen(static_cast<size_t>(m.opt.max_seqs), 0);
  for (int i = 0; i < count; ++i) {
    if (seqs[i] < 0 || seqs[i] >= m.opt.max_seqs) return out_of_range("prefill_batch: bad sequence slot");
    if (seen[seqs[i]]++) return invalid_argument("prefill_batch: sequence slot " + std::to_string(seqs[i]) + " given twice");
    if (n[i] <= 0 || tokens[i] == nullptr) return invalid_argument("prefill_batch: no tokens for a sequence");
    for (int j = 0; j < n[i]; ++j)
      if (tokens[i][j] < 0 || tokens[i][j] >= m.cfg.n_vocab) return out_of_range("prefill_batch: token id outside the vocabulary");
    if (m.lens[seqs[i]] + n[i] > m.opt.max_tokens) return out_of_range("GPU KV cache full (raise --ctx)");
  }
  {  // every sequence's pages first (a shared pool): nothing runs unless all of them fit
    int64_t need = 0;
    for (int i = 0; i < count; ++i) need += m.pages_short(seqs[i], m.lens[seqs[i]] + n[i]);
    TQKV_RETURN_IF_ERROR(m.pool_holds(need));
    for (int i = 0; i < count; ++i) TQKV_RETURN_IF_ERROR(m.ensure_pages(seqs[i], m.lens[seqs[i]] + n[i]));
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

Status GpuContext::decode(const int32_t* tokens, int batch, float* logits, int32_t* argmax, const uint8_t* active) {
  Impl& m = *impl_;
  if (batch < 1 || batch > m.opt.max_seqs) return out_of_range("decode: batch must be 1.." + std::to_string(m.opt.max_seqs));
  std::vector<int32_t> seqs(static_cast<size_t>(batch)), pos(static_cast<size_t>(batch));
  for (int b = 0; b < batch; ++b) {
    if (tokens[b] < 0 || tokens[b] >= m.cfg.n_vocab) return out_of_range("decode: token id outside the vocabulary");
    if (m.lens[b] + 1 > m.opt.max_tokens) return out_of_range("GPU KV cache full (raise --ctx)");
  }
  {  // the new tokens' pages first (a shared pool): nothing runs unless all of them fit
    int64_t need = 0;
    for (int b = 0; b < batch; ++b)
      if (active == nullptr || active[b]) need += m.pages_short(b, m.lens[b] + 1);
    TQKV_RETURN_IF_ERROR(m.pool_holds(need));
  }
  for (int b = 0; b < batch; ++b) {
    if (active != nullptr && !active[b]) {
      m.lens[b] = 0;
      TQKV_RETURN_IF_ERROR(m.release_pages(b));  // position 0 lands on the scratch page (pool), or its own page
    } else {
      TQKV_RETURN_IF_ERROR(m.ensure_pages(b, m.lens[b] + 1));
    }
    seqs[b] = b;
    pos[b] = static_cast<int32_t>(m.lens[b]);
    if (b == m.probe.seq) m.probe.valid = false;  // decode steps are not measured: the probe stops
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
  for (int b = 0; b < batch; ++b)
    if (active == nullptr || active[b]) ++m.lens[b];
  return Status::ok();
}

Status GpuContext::reset(int seq) {
  Impl& m = *impl_;
  if (seq < 0 || seq >= m.opt.max_seqs) return out_of_range("reset: bad sequence slot");
  m.lens[seq] = 0;
  return m.release_pages(seq);
}

int64_t GpuContext::pool_tokens() const {
  const Impl& m = *impl_;
  return m.pooled ? static_cast<int64_t>(m.scratch_page) * kPage : 0;  // (the scratch page is the last id)
}

int64_t GpuContext::pool_free_tokens() const {
  const Impl& m = *impl_;
  return m.pooled ? static_cast<int64_t>(m.free_pages.size()) * kPage : 0;
}

int64_t GpuContext::pool_held_tokens(int seq) const {
  const Impl& m = *impl_;
  return m.pooled && seq >= 0 && seq < m.opt.max_seqs ? static_cast<int64_t>(m.owned[seq].size()) * kPage : 0;
}

int64_t GpuContext::pool_tokens_for_budget(const ModelConfig& c, const GpuContextOptions& opt, int64_t bytes) {
  // What create() allocates: per slot the sliding layers' ring (at most the context's pages) and the
  // fixed fp16 copies; for the pool, one page of every full-attention layer per 16 tokens, plus the
  // scratch page.
  const SlotKvBytes b = slot_kv_bytes(c, opt.format, opt.f16_layers, opt.sink_tokens, opt.recent_tokens);
  if (b.full_page == 0) return 0;  // no full-attention layer: nothing to pool
  const int64_t ring = std::min<int64_t>(ring_pages_for(c, opt.max_chunk), (opt.max_tokens + kPage - 1) / kPage);
  const int64_t fixed = opt.max_seqs * (ring * b.sliding_page + b.exact);
  const int64_t pages = (bytes - fixed) / b.full_page - 1;
  return pages > 0 ? pages * kPage : 0;
}

int64_t GpuContext::seq_len(int seq) const {
  const Impl& m = *impl_;
  return seq >= 0 && seq < m.opt.max_seqs ? m.lens[seq] : -1;
}

int64_t GpuContext::kv_bytes_allocated() const {
  const Impl& m = *impl_;
  int64_t total = 0;
  for (const auto& L : m.lkv)
    total += L.pages * m.cfg.n_head_kv * (L.tk + L.tv) + 2ll * m.opt.max_seqs * m.cfg.n_head_kv * (L.sink_tile + L.ring_tile);
  return total;
}

int64_t GpuContext::kv_bytes_per_seq(int64_t len) const {
  const Impl& m = *impl_;
  return gpu_kv_bytes_per_seq(m.cfg, m.opt.format, m.opt.f16_layers, len, m.opt.max_chunk, m.opt.sink_tokens,
                              m.opt.recent_tokens);
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
  int ring_layers = 0;
  for (const auto& L : m.lkv) ring_layers += L.recent > 0 ? 1 : 0;
  if (ring_layers > 0)
    s += ", last " + std::to_string(m.opt.recent_tokens) + " tokens kept in f16 in " + std::to_string(ring_layers) +
         " layers (recent tokens)";
  if (m.mu_k != nullptr)
    s += ", keys centered (when the first write has >= " + std::to_string(KvOptions::kCenterMinTokens) + " tokens)";
  if (m.s_k != nullptr) s += ", keys smoothed";
  return s;
}

}  // namespace tqkv
