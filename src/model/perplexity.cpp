// Perplexity, and the KL divergence of the next-token distribution against an f16 cache, computed
// in the same run (include/tqkv/generate.h). Both caches see exactly the same tokens; their logits
// are compared batch by batch, so the full distributions are never stored.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <memory>
#include <random>
#include <vector>

#include "tqkv/codec.h"
#include "tqkv/generate.h"

namespace tqkv {

namespace {

// Wraps the backend under test: also runs dense fp32 attention over the same q, k, v and reads
// back what the cache holds, accumulating per-layer errors (PerplexityOptions::per_layer).
class ProbeKv final : public KvBackend {
 public:
  ProbeKv(const ModelConfig& cfg, const KvOptions& ko, std::unique_ptr<KvBackend> inner,
          std::unique_ptr<KvBackend> ref)
      : cfg_(cfg), inner_(std::move(inner)), ref_(std::move(ref)) {
    acc_.resize(cfg.n_layer);
    for (int l = 0; l < cfg.n_layer; ++l) {
      bool f16 = cfg.is_sliding(l) && cfg.sliding_window > 0;
      for (int fl : ko.f16_layers) f16 |= (fl >= 0 ? fl : cfg.n_layer + fl) == l;
      const bool fmt16 = ko.format.k_bits == 16 && ko.format.v_bits == 16 && ko.emulate.empty();
      acc_[l].compressed = !f16 && !fmt16;
    }
    const size_t hd = static_cast<size_t>(cfg.n_head_kv) * cfg.head_dim;
    for (Acc& a : acc_) a.sum_k.assign(hd, 0.0), a.sum_v.assign(hd, 0.0);
  }
  Status attend(const LayerAttention& la, int64_t pos0, int n, const float* q, const float* k,
                const float* v, float* out) override {
    TQKV_RETURN_IF_ERROR(inner_->attend(la, pos0, n, q, k, v, out));
    const int H = cfg_.n_head_kv, D = cfg_.head_dim, HQ = cfg_.n_head;
    const int64_t cnt = static_cast<int64_t>(n) * H * D;
    oref_.resize(static_cast<size_t>(n) * HQ * D);
    TQKV_RETURN_IF_ERROR(ref_->attend(la, pos0, n, q, k, v, oref_.data()));
    kd_.resize(cnt);
    vd_.resize(cnt);
    TQKV_RETURN_IF_ERROR(inner_->read_back(la.layer, pos0, n, kd_.data(), vd_.data()));
    Acc& a = acc_[la.layer];
    for (int64_t i = 0; i < static_cast<int64_t>(n) * H; ++i) {
      double ek = 0, nk = 0, ev = 0, nv = 0;
      for (int j = 0; j < D; ++j) {
        const int64_t x = i * D + j;
        ek += (static_cast<double>(k[x]) - kd_[x]) * (static_cast<double>(k[x]) - kd_[x]);
        nk += static_cast<double>(k[x]) * k[x];
        ev += (static_cast<double>(v[x]) - vd_[x]) * (static_cast<double>(v[x]) - vd_[x]);
        nv += static_cast<double>(v[x]) * v[x];
        a.sum_k[x % (H * D)] += k[x];
        a.sum_v[x % (H * D)] += v[x];
      }
      a.ek += ek, a.nk += nk, a.ev += ev, a.nv += nv;
      a.ek_vec += nk > 0 ? ek / nk : 0;
      a.ev_vec += nv > 0 ? ev / nv : 0;
      a.vecs += 1;
    }
    a.tokens += n;
    for (size_t i = 0; i < oref_.size(); ++i) {
      const double e = static_cast<double>(out[i]) - oref_[i];
      a.eo += e * e;
      a.no += static_cast<double>(oref_[i]) * oref_[i];
    }
    return Status::ok();
  }
  Status reset() override {
    // The mean-vector energy is measured per sequence (chunk), as centering would use it.
    fold_means();
    TQKV_RETURN_IF_ERROR(ref_->reset());
    return inner_->reset();
  }
  int64_t tokens() const override { return inner_->tokens(); }
  int64_t bytes_in_use() const override { return inner_->bytes_in_use(); }
  int64_t f16_bytes_for(int64_t n) const override { return inner_->f16_bytes_for(n); }
  std::string describe() const override { return inner_->describe(); }

  std::vector<LayerKvError> result() {
    fold_means();
    std::vector<LayerKvError> r(acc_.size());
    for (size_t l = 0; l < acc_.size(); ++l) {
      const Acc& a = acc_[l];
      LayerKvError& e = r[l];
      e.layer = static_cast<int>(l);
      e.compressed = a.compressed;
      e.k_rel_mse = a.nk > 0 ? a.ek / a.nk : 0;
      e.v_rel_mse = a.nv > 0 ? a.ev / a.nv : 0;
      e.k_rel_mse_vec = a.vecs > 0 ? a.ek_vec / a.vecs : 0;
      e.v_rel_mse_vec = a.vecs > 0 ? a.ev_vec / a.vecs : 0;
      e.k_mean_energy = a.seqs > 0 ? a.mk / a.seqs : 0;
      e.v_mean_energy = a.seqs > 0 ? a.mv / a.seqs : 0;
      e.att_rel_err = a.no > 0 ? a.eo / a.no : 0;
    }
    return r;
  }

 private:
  struct Acc {
    bool compressed = false;
    double ek = 0, nk = 0, ev = 0, nv = 0, ek_vec = 0, ev_vec = 0, eo = 0, no = 0;
    int64_t vecs = 0, tokens = 0;
    // Per sequence: sums of the vectors and norms, folded into mk/mv at reset.
    std::vector<double> sum_k, sum_v;
    double nk_seq = 0, nv_seq = 0, mk = 0, mv = 0;
    int64_t tokens_seq = 0;
    int seqs = 0;
  };
  void fold_means() {
    const int H = cfg_.n_head_kv, D = cfg_.head_dim;
    for (Acc& a : acc_) {
      const int64_t t = a.tokens - a.tokens_seq;
      const double nk = a.nk - a.nk_seq, nv = a.nv - a.nv_seq;
      if (t > 0 && nk > 0 && nv > 0) {
        double mk = 0, mv = 0;
        for (int i = 0; i < H * D; ++i) {
          mk += (a.sum_k[i] / t) * (a.sum_k[i] / t);
          mv += (a.sum_v[i] / t) * (a.sum_v[i] / t);
        }
        // |mean|^2 per head, over the mean |x|^2 per vector (t * H vectors).
        a.mk += (mk / H) / (nk / (static_cast<double>(t) * H));
        a.mv += (mv / H) / (nv / (static_cast<double>(t) * H));
        a.seqs += 1;
      }
      a.tokens_seq = a.tokens;
      a.nk_seq = a.nk;
      a.nv_seq = a.nv;
      std::fill(a.sum_k.begin(), a.sum_k.end(), 0.0);
      std::fill(a.sum_v.begin(), a.sum_v.end(), 0.0);
    }
  }
  ModelConfig cfg_;
  std::unique_ptr<KvBackend> inner_, ref_;
  std::vector<Acc> acc_;
  std::vector<float> oref_, kd_, vd_;
};

// Relative MSE of a codec (the cache's configuration) on random Gaussian vectors.
double codec_rel_mse(int head_dim, int bits) {
  if (bits == 16) return 0;
  auto codec = TurboQuantCodec::create(CodecConfig{head_dim, bits, default_rotation(head_dim), kDefaultRotationSeed});
  if (!codec.is_ok()) return -1;
  const int n = 4096;
  std::mt19937_64 rng(7);
  std::normal_distribution<float> nd;
  std::vector<float> x(static_cast<size_t>(n) * head_dim), y(x.size());
  for (float& e : x) e = nd(rng);
  std::vector<uint8_t> idx(static_cast<size_t>(n * codec->index_bytes()));
  std::vector<uint16_t> sc(n);
  if (!codec->encode(x.data(), n, idx.data(), sc.data()).is_ok()) return -1;
  codec->decode(idx.data(), sc.data(), n, y.data());
  double s = 0;
  for (int i = 0; i < n; ++i) {
    double e = 0, m = 0;
    for (int j = 0; j < head_dim; ++j) {
      const size_t a = static_cast<size_t>(i) * head_dim + j;
      e += (x[a] - y[a]) * static_cast<double>(x[a] - y[a]);
      m += static_cast<double>(x[a]) * x[a];
    }
    s += e / m;
  }
  return s / n;
}

}  // namespace

namespace {

// log-softmax of one row, in double.
void log_softmax(const float* x, int n, std::vector<double>& out) {
  out.resize(static_cast<size_t>(n));
  double mx = x[0];
  for (int i = 1; i < n; ++i) mx = std::max(mx, static_cast<double>(x[i]));
  double s = 0;
  for (int i = 0; i < n; ++i) s += std::exp(x[i] - mx);
  const double lse = mx + std::log(s);
  for (int i = 0; i < n; ++i) out[i] = x[i] - lse;
}

int argmax(const float* x, int n) { return static_cast<int>(std::max_element(x, x + n) - x); }

}  // namespace

void NextTokenScorer::add(const float* logits, const float* ref_logits, int32_t next) {
  log_softmax(logits, n_vocab_, lp_);
  nll_ -= lp_[next];
  ++scored_;
  if (ref_logits == nullptr) return;
  log_softmax(ref_logits, n_vocab_, lp_ref_);
  nll_ref_ -= lp_ref_[next];
  double kl = 0;
  for (int t = 0; t < n_vocab_; ++t) kl += std::exp(lp_ref_[t]) * (lp_ref_[t] - lp_[t]);
  klds_.push_back(std::max(0.0, kl));
  agree_ += argmax(logits, n_vocab_) == argmax(ref_logits, n_vocab_) ? 1 : 0;
}

void NextTokenScorer::finish(PerplexityResult& r) const {
  r.scored = scored_;
  r.nll_mean = nll_ / static_cast<double>(scored_);
  r.ppl = std::exp(r.nll_mean);
  if (klds_.empty()) return;
  r.compared = true;
  r.f16_ppl = std::exp(nll_ref_ / static_cast<double>(scored_));
  double s = 0;
  for (double k : klds_) s += k;
  r.kld_mean = s / static_cast<double>(klds_.size());
  std::vector<double> sorted = klds_;
  std::sort(sorted.begin(), sorted.end());
  r.kld_p99 = sorted[std::min(sorted.size() - 1, static_cast<size_t>(0.99 * static_cast<double>(sorted.size())))];
  r.kld_max = sorted.back();
  r.top1_agreement = static_cast<double>(agree_) / static_cast<double>(klds_.size());
}

Result<PerplexityResult> evaluate_perplexity(const Model& model, const std::vector<int32_t>& tokens,
                                             const PerplexityOptions& opt,
                                             const std::function<void(int, int)>& progress) {
  if (opt.ctx < 16) return invalid_argument("perplexity: --ctx must be at least 16");
  const int64_t avail = static_cast<int64_t>(tokens.size()) / opt.ctx;
  if (avail < 1)
    return invalid_argument("perplexity: the text has " + std::to_string(tokens.size()) +
                            " tokens, fewer than one chunk of " + std::to_string(opt.ctx));
  const int chunks = static_cast<int>(opt.max_chunks > 0 ? std::min<int64_t>(opt.max_chunks, avail) : avail);
  const bool compare =
      opt.compare_f16 && (!(opt.format.k_bits == 16 && opt.format.v_bits == 16) || !opt.emulate.empty());
  const int V = model.config().n_vocab;

  KvOptions ko;
  ko.format = opt.format;
  ko.max_tokens = opt.ctx;
  ko.f16_layers = opt.f16_layers;
  ko.k8_layers = opt.k8_layers;
  ko.center_keys = opt.center_keys;
  ko.sink_tokens = opt.sink_tokens;
  ko.recent_tokens = opt.recent_tokens;
  ko.center_values = opt.center_values;
  ko.smooth_keys = opt.smooth_keys;
  ko.scale_search = opt.scale_search;
  ko.emulate = opt.emulate;
  TQKV_ASSIGN_OR_RETURN(auto kv, make_kv_backend(model.config(), ko));
  ProbeKv* probe = nullptr;
  if (opt.per_layer) {
    KvOptions kd;
    kd.dense_fp32 = true;
    kd.max_tokens = opt.ctx;
    TQKV_ASSIGN_OR_RETURN(auto dense, make_kv_backend(model.config(), kd));
    probe = new ProbeKv(model.config(), ko, std::move(kv), std::move(dense));
    kv.reset(probe);
  }
  std::unique_ptr<KvBackend> kv_ref;
  if (compare) {
    KvOptions kr = ko;
    kr.emulate.clear();
    kr.format = KvFormat{16, 16};
    TQKV_ASSIGN_OR_RETURN(kv_ref, make_kv_backend(model.config(), kr));
  }

  const auto t0 = std::chrono::steady_clock::now();
  PerplexityResult r;
  NextTokenScorer scorer(V);
  std::vector<float> la(static_cast<size_t>(Model::kMaxChunk) * V), lb(compare ? la.size() : 0);
  const int first_scored = opt.ctx / 2;
  for (int c = 0; c < chunks; ++c) {
    std::vector<int32_t> ids(tokens.begin() + static_cast<int64_t>(c) * opt.ctx,
                             tokens.begin() + static_cast<int64_t>(c + 1) * opt.ctx);
    if (opt.bos_id >= 0) ids[0] = opt.bos_id;
    TQKV_RETURN_IF_ERROR(kv->reset());
    if (compare) TQKV_RETURN_IF_ERROR(kv_ref->reset());
    for (int b = 0; b < opt.ctx; b += Model::kMaxChunk) {
      const int m = std::min(Model::kMaxChunk, opt.ctx - b);
      TQKV_RETURN_IF_ERROR(model.forward(ids.data() + b, m, b, *kv, la.data(), LogitsMode::kAll));
      if (compare) TQKV_RETURN_IF_ERROR(model.forward(ids.data() + b, m, b, *kv_ref, lb.data(), LogitsMode::kAll));
      // Logits at position p predict token p + 1; score p in [ctx/2, ctx-2].
      for (int i = 0; i < m; ++i) {
        const int p = b + i;
        if (p < first_scored || p + 1 >= opt.ctx) continue;
        scorer.add(la.data() + static_cast<int64_t>(i) * V, compare ? lb.data() + static_cast<int64_t>(i) * V : nullptr,
                   ids[p + 1]);
      }
    }
    r.kv_bytes = kv->bytes_in_use();
    r.kv_f16_bytes = kv->f16_bytes_for(kv->tokens());
    if (progress) progress(c + 1, chunks);
  }
  r.chunks = chunks;
  scorer.finish(r);
  if (probe != nullptr) {
    r.layers = probe->result();
    const int D = model.config().head_dim;
    r.codec_k_rel_mse = codec_rel_mse(D, opt.format.k_bits);
    r.codec_v_rel_mse = codec_rel_mse(D, opt.format.v_bits);
  }
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

}  // namespace tqkv
