// The GPU runtime's attention probe (GpuContext::set_attention_probe, include/tqkv/gpu_model.h):
// per-layer attention fidelity of the GPU run, for `tqkv verify --device cuda`. Each measured
// prefill chunk copies every layer's q, k, v (before key centering and smoothing: both leave the
// attention output unchanged in exact arithmetic) and its attention output (fp16, the output
// projection's input) to the host; the host runs dense fp32 attention (double accumulation) over
// the same q and the sequence's k, v so far, with the layer's window and soft-cap, as the CPU's
// dense reference backend does (src/model/kv_contiguous.cpp, dense_fp32), and sums the squared
// error and the reference's energy per layer.
#include <limits>

#include "gpu/gpu_context_impl.h"

namespace tqkv {

Status GpuContext::Impl::probe_copy_qkv(int l, int T) {
  const size_t Q = static_cast<size_t>(cfg.q_dim()), KV = static_cast<size_t>(cfg.kv_dim());
  probe.q[l].resize(T * Q);
  probe.k[l].resize(T * KV);
  probe.v[l].resize(T * KV);
  CK(cudaMemcpyAsync(probe.q[l].data(), q, T * Q * sizeof(float), cudaMemcpyDeviceToHost, stream));
  CK(cudaMemcpyAsync(probe.k[l].data(), k, T * KV * sizeof(float), cudaMemcpyDeviceToHost, stream));
  CK(cudaMemcpyAsync(probe.v[l].data(), v, T * KV * sizeof(float), cudaMemcpyDeviceToHost, stream));
  return Status::ok();
}

Status GpuContext::Impl::probe_copy_out(int l, int T) {
  const size_t Q = static_cast<size_t>(cfg.q_dim());
  probe.out[l].resize(T * Q);
  CK(cudaMemcpyAsync(probe.out[l].data(), att16, T * Q * sizeof(uint16_t), cudaMemcpyDeviceToHost, stream));
  return Status::ok();
}

Status GpuContext::Impl::probe_measure(int64_t pos0, int n) {
  const int HQ = cfg.n_head, H = cfg.n_head_kv, D = cfg.head_dim, group = HQ / H;
  const int64_t KV = cfg.kv_dim();
  const float scale = cfg.attn_scale, cap = cfg.attn_softcap;
  for (int l = 0; l < cfg.n_layer; ++l) {
    std::vector<float>& kh = probe.k_hist[l];
    std::vector<float>& vh = probe.v_hist[l];
    if (pos0 == 0) kh.clear(), vh.clear();  // the sequence starts over
    if (static_cast<int64_t>(kh.size()) != pos0 * KV)
      return internal_error("attention probe: history of layer " + std::to_string(l) + " out of step");
    kh.insert(kh.end(), probe.k[l].begin(), probe.k[l].begin() + n * KV);
    vh.insert(vh.end(), probe.v[l].begin(), probe.v[l].begin() + n * KV);
    const int window = lkv[l].window;
    const float* qs = probe.q[l].data();
    const uint16_t* os = probe.out[l].data();
    double eo = 0, no = 0;
    const int64_t total = static_cast<int64_t>(n) * HQ;
#pragma omp parallel reduction(+ : eo, no)
    {
      std::vector<double> sc, acc(static_cast<size_t>(D));
#pragma omp for schedule(dynamic, 4)
      for (int64_t t = 0; t < total; ++t) {
        const int i = static_cast<int>(t / HQ), h = static_cast<int>(t % HQ), g = h / group;
        const int64_t pos = pos0 + i;
        const int64_t first = window > 0 ? std::max<int64_t>(0, pos - window + 1) : 0;
        const float* qh = qs + (static_cast<int64_t>(i) * HQ + h) * D;
        sc.resize(static_cast<size_t>(pos - first + 1));
        double mx = -std::numeric_limits<double>::infinity();
        for (int64_t j = first; j <= pos; ++j) {
          const float* kj = kh.data() + j * KV + static_cast<int64_t>(g) * D;
          double s = 0;
          for (int d = 0; d < D; ++d) s += static_cast<double>(qh[d]) * kj[d];
          s *= scale;
          if (cap > 0.0f) s = cap * std::tanh(s / cap);
          sc[j - first] = s;
          mx = std::max(mx, s);
        }
        double sum = 0;
        for (double& s : sc) sum += (s = std::exp(s - mx));
        std::fill(acc.begin(), acc.end(), 0.0);
        for (int64_t j = first; j <= pos; ++j) {
          const float* vj = vh.data() + j * KV + static_cast<int64_t>(g) * D;
          const double p = sc[j - first] / sum;
          for (int d = 0; d < D; ++d) acc[d] += p * vj[d];
        }
        const uint16_t* oh = os + (static_cast<int64_t>(i) * HQ + h) * D;
        for (int d = 0; d < D; ++d) {
          const double e = static_cast<double>(fp16_to_float(oh[d])) - acc[d];
          eo += e * e;
          no += acc[d] * acc[d];
        }
      }
    }
    probe.eo[l] += eo;
    probe.no[l] += no;
  }
  probe.rows += n;
  return Status::ok();
}

Status GpuContext::set_attention_probe(int seq) {
  Impl& m = *impl_;
  if (seq < -1 || seq >= m.opt.max_seqs) return out_of_range("set_attention_probe: bad sequence slot");
  Impl::Probe& p = m.probe;
  p = Impl::Probe{};
  p.seq = seq;
  if (seq < 0) return Status::ok();
  const size_t L = static_cast<size_t>(m.cfg.n_layer);
  p.q.resize(L), p.k.resize(L), p.v.resize(L), p.k_hist.resize(L), p.v_hist.resize(L), p.out.resize(L);
  p.eo.assign(L, 0.0), p.no.assign(L, 0.0);
  p.valid = m.lens[seq] == 0;
  return Status::ok();
}

std::vector<LayerKvError> GpuContext::attention_probe_result() const {
  const Impl& m = *impl_;
  std::vector<LayerKvError> r;
  if (m.probe.seq < 0) return r;
  const double nan = std::numeric_limits<double>::quiet_NaN();
  for (int l = 0; l < m.cfg.n_layer; ++l) {
    LayerKvError e;
    e.layer = l;
    e.compressed = m.lkv[l].kb != kF16Bits || m.lkv[l].vb != kF16Bits;
    e.k_rel_mse = e.v_rel_mse = e.k_rel_mse_vec = e.v_rel_mse_vec = e.k_mean_energy = e.v_mean_energy = nan;
    e.att_rel_err = m.probe.no[l] > 0 ? m.probe.eo[l] / m.probe.no[l] : 0;
    r.push_back(e);
  }
  return r;
}

int64_t GpuContext::attention_probe_rows() const { return impl_->probe.rows; }

}  // namespace tqkv
