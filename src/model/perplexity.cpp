// Perplexity, and the KL divergence of the next-token distribution against an f16 cache, computed
// in the same run (include/tqkv/generate.h). Both caches see exactly the same tokens; their logits
// are compared batch by batch, so the full distributions are never stored.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <vector>

#include "tqkv/generate.h"

namespace tqkv {

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

Result<PerplexityResult> evaluate_perplexity(const Model& model, const std::vector<int32_t>& tokens,
                                             const PerplexityOptions& opt,
                                             const std::function<void(int, int)>& progress) {
  if (opt.ctx < 16) return invalid_argument("perplexity: --ctx must be at least 16");
  const int64_t avail = static_cast<int64_t>(tokens.size()) / opt.ctx;
  if (avail < 1)
    return invalid_argument("perplexity: the text has " + std::to_string(tokens.size()) +
                            " tokens, fewer than one chunk of " + std::to_string(opt.ctx));
  const int chunks = static_cast<int>(opt.max_chunks > 0 ? std::min<int64_t>(opt.max_chunks, avail) : avail);
  const bool compare = opt.compare_f16 && !(opt.format.k_bits == 16 && opt.format.v_bits == 16);
  const int V = model.config().n_vocab;

  KvOptions ko;
  ko.format = opt.format;
  ko.max_tokens = opt.ctx;
  ko.f16_layers = opt.f16_layers;
  TQKV_ASSIGN_OR_RETURN(auto kv, make_kv_backend(model.config(), ko));
  std::unique_ptr<KvBackend> kv_ref;
  if (compare) {
    KvOptions kr = ko;
    kr.format = KvFormat{16, 16};
    TQKV_ASSIGN_OR_RETURN(kv_ref, make_kv_backend(model.config(), kr));
  }

  const auto t0 = std::chrono::steady_clock::now();
  PerplexityResult r;
  double nll = 0, nll_ref = 0;
  int64_t agree = 0;
  std::vector<double> klds;
  std::vector<float> la(static_cast<size_t>(Model::kMaxChunk) * V), lb(compare ? la.size() : 0);
  std::vector<double> lpa, lpb;
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
        const int32_t next = ids[p + 1];
        const float* ra = la.data() + static_cast<int64_t>(i) * V;
        log_softmax(ra, V, lpa);
        nll -= lpa[next];
        ++r.scored;
        if (compare) {
          const float* rb = lb.data() + static_cast<int64_t>(i) * V;
          log_softmax(rb, V, lpb);
          nll_ref -= lpb[next];
          double kl = 0;
          for (int t = 0; t < V; ++t) kl += std::exp(lpb[t]) * (lpb[t] - lpa[t]);
          klds.push_back(std::max(0.0, kl));
          agree += argmax(ra, V) == argmax(rb, V) ? 1 : 0;
        }
      }
    }
    r.kv_bytes = kv->bytes_in_use();
    r.kv_f16_bytes = kv->f16_bytes_for(kv->tokens());
    if (progress) progress(c + 1, chunks);
  }
  r.chunks = chunks;
  r.nll_mean = nll / static_cast<double>(r.scored);
  r.ppl = std::exp(r.nll_mean);
  if (compare) {
    r.compared = true;
    r.f16_ppl = std::exp(nll_ref / static_cast<double>(r.scored));
    double s = 0;
    for (double k : klds) s += k;
    r.kld_mean = s / static_cast<double>(klds.size());
    std::vector<double> sorted = klds;
    std::sort(sorted.begin(), sorted.end());
    r.kld_p99 = sorted[std::min(sorted.size() - 1, static_cast<size_t>(0.99 * static_cast<double>(sorted.size())))];
    r.kld_max = sorted.back();
    r.top1_agreement = static_cast<double>(agree) / static_cast<double>(klds.size());
  }
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

}  // namespace tqkv
