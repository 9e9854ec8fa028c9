// GpuContext's benchmark helpers (include/tqkv/gpu_model.h): random but valid pages without a
// prefill, timed decode steps (one CUDA graph replay each) and attention-only steps, and the bytes
// an attention step reads. Used by `tqkv bench decode --backend cuda`.
#include "gpu/gpu_context_impl.h"

namespace tqkv {

Status GpuContext::fill_random(int64_t len, uint64_t seed) {
  Impl& m = *impl_;
  if (len < 0 || len > m.opt.max_tokens) return out_of_range("fill_random: length beyond the context");
  for (int b = 0; b < m.opt.max_seqs; ++b) TQKV_RETURN_IF_ERROR(m.ensure_pages(b, len));  // (a shared pool)
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
    if (L.recent > 0) {
      const int64_t st = static_cast<int64_t>(m.opt.max_seqs) * m.cfg.n_head_kv;
      TQKV_RETURN_IF_ERROR(gpu::fill_random_tiles(L.rk, st, L.ring_tile, kF16Bits, L.recent, m.cfg.head_dim, ~seed - 3 * l - 7, m.stream));
      TQKV_RETURN_IF_ERROR(gpu::fill_random_tiles(L.rv, st, L.ring_tile, kF16Bits, L.recent, m.cfg.head_dim, ~seed - 3 * l - 8, m.stream));
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
  for (int b = 0; b < batch; ++b) TQKV_RETURN_IF_ERROR(m.ensure_pages(b, m.lens[b] + steps + 2));
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
      total += std::min<int64_t>(len, L.recent) * m.cfg.n_head_kv * 2 * m.cfg.head_dim * 2;  // ring rows (fp16 K, V)
    }
    total += static_cast<int64_t>(batch) * m.cfg.q_dim() * 4;  // fp16 q in, fp16 out
  }
  return total;
}

}  // namespace tqkv
