// The sampler (include/tqkv/sampler.h).
#include "tqkv/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <unordered_set>

namespace tqkv {

Result<Sampler> Sampler::create(const SamplerOptions& opt) {
  if (!std::isfinite(opt.temperature)) return invalid_argument("temperature must be finite");
  if (!(opt.top_p > 0.0f)) return invalid_argument("top-p must be > 0");
  if (opt.min_p < 0.0f || opt.min_p > 1.0f) return invalid_argument("min-p must be in [0, 1]");
  if (!(opt.repeat_penalty > 0.0f)) return invalid_argument("repeat penalty must be > 0");
  if (opt.repeat_last_n < 0) return invalid_argument("repeat-last-n must be >= 0");
  return Sampler(opt);
}

int32_t Sampler::sample(std::span<const float> logits, std::span<const int32_t> recent) {
  const int n = static_cast<int>(logits.size());
  if (n == 0) return -1;
  work_.assign(logits.begin(), logits.end());
  for (float& x : work_)
    if (std::isnan(x)) x = -std::numeric_limits<float>::infinity();
  if (opt_.repeat_penalty != 1.0f && opt_.repeat_last_n > 0) {
    const size_t from = recent.size() > static_cast<size_t>(opt_.repeat_last_n) ? recent.size() - opt_.repeat_last_n : 0;
    std::unordered_set<int32_t> seen(recent.begin() + from, recent.end());
    for (int32_t t : seen) {
      if (t < 0 || t >= n) continue;
      work_[t] = work_[t] > 0 ? work_[t] / opt_.repeat_penalty : work_[t] * opt_.repeat_penalty;
    }
  }
  if (opt_.temperature <= 0.0f) {
    return static_cast<int32_t>(std::max_element(work_.begin(), work_.end()) - work_.begin());
  }
  // Candidates sorted by logit, descending (partial sort when top-k limits them).
  order_.resize(n);
  std::iota(order_.begin(), order_.end(), 0);
  int keep = n;
  auto by_logit = [&](int32_t a, int32_t b) { return work_[a] > work_[b] || (work_[a] == work_[b] && a < b); };
  if (opt_.top_k > 0 && opt_.top_k < n) {
    keep = opt_.top_k;
    std::partial_sort(order_.begin(), order_.begin() + keep, order_.end(), by_logit);
  } else {
    std::sort(order_.begin(), order_.end(), by_logit);
  }
  // Softmax at temperature over the kept candidates.
  std::vector<double> p(static_cast<size_t>(keep));
  const double mx = work_[order_[0]];
  double sum = 0.0;
  for (int i = 0; i < keep; ++i) {
    p[i] = std::exp((work_[order_[i]] - mx) / opt_.temperature);
    sum += p[i];
  }
  for (double& x : p) x /= sum;
  // Top-p: the smallest prefix whose mass reaches top_p.
  if (opt_.top_p < 1.0f) {
    double cum = 0.0;
    for (int i = 0; i < keep; ++i) {
      cum += p[i];
      if (cum >= opt_.top_p) {
        keep = i + 1;
        break;
      }
    }
  }
  // Min-p: drop candidates below min_p times the most likely one.
  if (opt_.min_p > 0.0f) {
    int m = 1;
    while (m < keep && p[m] >= opt_.min_p * p[0]) ++m;
    keep = m;
  }
  double total = 0.0;
  for (int i = 0; i < keep; ++i) total += p[i];
  std::uniform_real_distribution<double> u(0.0, total);
  double r = u(rng_), cum = 0.0;
  for (int i = 0; i < keep; ++i) {
    cum += p[i];
    if (r < cum) return order_[i];
  }
  return order_[keep - 1];
}

}  // namespace tqkv
