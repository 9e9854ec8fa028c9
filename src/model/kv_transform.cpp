// Exact transforms of K and V in front of a KV backend (include/tqkv/model.h, KvOptions):
//  - centering: per layer and KV head, a mean vector mu is subtracted from keys and/or values
//    before the backend quantizes them. For keys every score of a query moves by -q.mu, so the
//    softmax (without soft-capping) is unchanged; for values mu is added back to the output
//    (sum_i p_i (v_i - mu) + mu = sum_i p_i v_i). Only the quantization error changes: the codec
//    spends its bits on the part of the vectors that differs from token to token.
//  - key smoothing: per layer, KV head and channel a factor s; keys are divided by s before the
//    backend quantizes them and the queries of that KV head multiplied by s (q.k unchanged, so the
//    softmax, soft-capped or not, is too). The codec's error is spread evenly over the rotated
//    coordinates with a size set by |k|; smoothing moves key energy out of channels the queries
//    barely use (the usual key outlier channels) so less error lands where it counts.
//  - emulate "q4_0h" (evaluation only): llama.cpp's rotated q4_0 KV cache, emulated by rounding
//    K and V through a randomized Hadamard rotation and q4_0 (32-element blocks, one fp16 absmax
//    scale each: 4.5 bits per element), rotating back, and storing the result in an f16 cache.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <vector>

#include "model/kv_backends.h"
#include "tqkv/codec.h"
#include "tqkv/fp16.h"

namespace tqkv {

// q4_0 round trip of one block of 32 (ggml's quantize_row_q4_0_ref, then dequantize).
void q4_0_round_trip(const float* x, float* y) {
  float amax = 0.0f, mx = 0.0f;
  for (int j = 0; j < 32; ++j) {
    if (amax < std::fabs(x[j])) {
      amax = std::fabs(x[j]);
      mx = x[j];
    }
  }
  const float d = mx / -8.0f;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  const float dh = fp16_to_float(float_to_fp16(d));
  for (int j = 0; j < 32; ++j) {
    int q = static_cast<int>(static_cast<int8_t>(x[j] * id + 8.5f));
    q = q < 0 ? 0 : (q > 15 ? 15 : q);
    y[j] = static_cast<float>(q - 8) * dh;
  }
}

namespace {

class TransformKv final : public KvBackend {
 public:
  TransformKv(const ModelConfig& cfg, const KvOptions& opt, std::unique_ptr<KvBackend> inner,
              std::shared_ptr<const Rotation> rot)
      : cfg_(cfg), opt_(opt), inner_(std::move(inner)), rot_(std::move(rot)) {
    const int L = cfg.n_layer;
    compressed_.assign(L, 0);
    for (int l = 0; l < L; ++l) {
      bool f16 = cfg.is_sliding(l) && cfg.sliding_window > 0;
      for (int fl : opt.f16_layers) f16 |= (fl >= 0 ? fl : L + fl) == l;
      compressed_[l] = f16 ? 0 : 1;
    }
    const size_t hd = static_cast<size_t>(cfg.n_head_kv) * cfg.head_dim;
    mu_k_.assign(L, std::vector<float>(hd, 0.0f));
    mu_v_.assign(L, std::vector<float>(hd, 0.0f));
    state_.assign(L, kUnset);
    s_k_.assign(L, {});
  }

  Status attend(const LayerAttention& la, int64_t pos0, int n, const float* q, const float* k,
                const float* v, float* out) override {
    const int l = la.layer;
    if (l < 0 || l >= cfg_.n_layer) return out_of_range("attend: bad layer");
    const bool comp = compressed_[l] != 0;
    const bool emu = comp && !opt_.emulate.empty();
    const bool ck = comp && opt_.center_keys && (opt_.format.k_bits != kF16Bits || emu) && la.softcap <= 0.0f;
    const bool cv = comp && opt_.center_values && (opt_.format.v_bits != kF16Bits || emu);
    const bool sk = comp && opt_.smooth_keys && (opt_.format.k_bits != kF16Bits || emu);
    if (!ck && !cv && !sk && !emu) return inner_->attend(la, pos0, n, q, k, v, out);
    const int H = cfg_.n_head_kv, D = cfg_.head_dim;
    const int64_t cnt = static_cast<int64_t>(n) * H * D;
    kb_.assign(k, k + cnt);
    vb_.assign(v, v + cnt);
    if (state_[l] == kUnset) {
      state_[l] = n >= KvOptions::kCenterMinTokens ? kOn : kOff;
      if (state_[l] == kOn) {
        mean_of(k, n, mu_k_[l]);
        mean_of(v, n, mu_v_[l]);
      }
    }
    const bool on = state_[l] == kOn;
    if (ck && on)
      for (int64_t i = 0; i < cnt; ++i) kb_[i] -= mu_k_[l][i % (H * D)];
    if (cv && on)
      for (int64_t i = 0; i < cnt; ++i) vb_[i] -= mu_v_[l][i % (H * D)];
    const float* qin = q;
    if (sk && on) {
      if (s_k_[l].empty()) smoothing_of(kb_.data(), q, n, s_k_[l]);  // the first write
      const std::vector<float>& sl = s_k_[l];
      for (int64_t i = 0; i < cnt; ++i) kb_[i] /= sl[i % (H * D)];
      const int HQ = cfg_.n_head, G = HQ / H;
      qb_.assign(q, q + static_cast<int64_t>(n) * HQ * D);
      for (int64_t t = 0; t < n; ++t)
        for (int hq = 0; hq < HQ; ++hq) {
          float* qr = qb_.data() + (t * HQ + hq) * D;
          const float* f = sl.data() + static_cast<int64_t>(hq / G) * D;
          for (int j = 0; j < D; ++j) qr[j] *= f[j];
        }
      qin = qb_.data();
    }
    if (emu) {  // attention-sink positions stay exact, as the real cache keeps them in f16
      const int64_t skip = std::clamp<int64_t>(opt_.sink_tokens - pos0, 0, n) * H * D;
      round_q4_0h(kb_, skip);
      round_q4_0h(vb_, skip);
    }
    TQKV_RETURN_IF_ERROR(inner_->attend(la, pos0, n, qin, kb_.data(), vb_.data(), out));
    if (cv && on) {
      const int HQ = cfg_.n_head, G = HQ / H;
      for (int64_t t = 0; t < n; ++t)
        for (int hq = 0; hq < HQ; ++hq) {
          float* o = out + (t * HQ + hq) * D;
          const float* m = mu_v_[l].data() + static_cast<int64_t>(hq / G) * D;
          for (int j = 0; j < D; ++j) o[j] += m[j];
        }
    }
    return Status::ok();
  }

  // What the inner cache holds, mapped back to the model's space (mu added back). For keys this is
  // the vector whose scores equal the cached ones up to the per-query constant.
  Status read_back(int layer, int64_t pos0, int n, float* k, float* v) const override {
    TQKV_RETURN_IF_ERROR(inner_->read_back(layer, pos0, n, k, v));
    if (state_[layer] != kOn || !compressed_[layer]) return Status::ok();
    const int HD = cfg_.n_head_kv * cfg_.head_dim;
    const bool emu = !opt_.emulate.empty();
    const bool ck = opt_.center_keys && (opt_.format.k_bits != kF16Bits || emu) && cfg_.attn_softcap <= 0.0f;
    const bool cv = opt_.center_values && (opt_.format.v_bits != kF16Bits || emu);
    const bool sk = !s_k_[layer].empty();
    for (int64_t i = 0; i < static_cast<int64_t>(n) * HD; ++i) {
      if (sk) k[i] *= s_k_[layer][i % HD];
      if (ck) k[i] += mu_k_[layer][i % HD];
      if (cv) v[i] += mu_v_[layer][i % HD];
    }
    return Status::ok();
  }

  Status reset() override {
    state_.assign(cfg_.n_layer, kUnset);
    for (auto& f : s_k_) f.clear();
    return inner_->reset();
  }
  int64_t tokens() const override { return inner_->tokens(); }
  int64_t bytes_in_use() const override { return inner_->bytes_in_use(); }
  int64_t f16_bytes_for(int64_t n) const override { return inner_->f16_bytes_for(n); }
  std::string describe() const override {
    std::string s = inner_->describe();
    if (!opt_.emulate.empty()) s = opt_.emulate + " (emulated, stored as " + s + ")";
    const bool emu = !opt_.emulate.empty();
    if (opt_.center_keys && (opt_.format.k_bits != kF16Bits || emu))
      s += ", keys centered (when the first write has >= " + std::to_string(KvOptions::kCenterMinTokens) + " tokens)";
    if (opt_.center_values && (opt_.format.v_bits != kF16Bits || emu)) s += ", values centered";
    if (opt_.smooth_keys && (opt_.format.k_bits != kF16Bits || emu)) s += ", keys smoothed";
    return s;
  }

 private:
  enum State : uint8_t { kUnset, kOn, kOff };
  void mean_of(const float* x, int n, std::vector<float>& mu) const {
    const int HD = cfg_.n_head_kv * cfg_.head_dim;
    std::vector<double> acc(HD, 0.0);
    for (int64_t t = 0; t < n; ++t)
      for (int i = 0; i < HD; ++i) acc[i] += x[t * HD + i];
    for (int i = 0; i < HD; ++i) mu[i] = static_cast<float>(acc[i] / n);
  }
  // Key smoothing factors from the first write: k [n][H][D] (already centered when that is on),
  // q [n][HQ][D]. s = sqrt(rms_k / rms_q) per KV head and channel (the queries of the G heads
  // sharing a KV head pooled), which makes the two rms equal after k / s and q * s; scaled to a
  // geometric mean of 1 per head (only ratios matter) and clamped to [1/64, 64].
  void smoothing_of(const float* k, const float* q, int n, std::vector<float>& s) const {
    const int H = cfg_.n_head_kv, D = cfg_.head_dim, HQ = cfg_.n_head, G = HQ / H;
    std::vector<double> ek(static_cast<size_t>(H) * D, 0.0), eq(static_cast<size_t>(H) * D, 0.0);
    for (int64_t t = 0; t < n; ++t) {
      for (int i = 0; i < H * D; ++i) ek[i] += static_cast<double>(k[t * H * D + i]) * k[t * H * D + i];
      for (int hq = 0; hq < HQ; ++hq)
        for (int j = 0; j < D; ++j) {
          const double x = q[(t * HQ + hq) * D + j];
          eq[static_cast<size_t>(hq / G) * D + j] += x * x;
        }
    }
    s.assign(static_cast<size_t>(H) * D, 1.0f);
    for (int h = 0; h < H; ++h) {
      std::vector<double> f(D);
      double log_sum = 0;
      for (int j = 0; j < D; ++j) {
        const double rk = std::sqrt(ek[h * D + j] / n) + 1e-6, rq = std::sqrt(eq[h * D + j] / (static_cast<double>(n) * G)) + 1e-6;
        f[j] = std::sqrt(rk / rq);
        log_sum += std::log(f[j]);
      }
      const double g = std::exp(log_sum / D);
      for (int j = 0; j < D; ++j) s[h * D + j] = static_cast<float>(std::clamp(f[j] / g, 1.0 / 64, 64.0));
    }
  }
  // Hadamard-rotate each head vector, q4_0 round trip per 32 elements, rotate back; the first
  // `skip` floats (the attention-sink tokens of this write) are left as they are.
  void round_q4_0h(std::vector<float>& x, int64_t skip) const {
    const int D = cfg_.head_dim;
    std::vector<float> y(D), z(D);
    for (size_t off = static_cast<size_t>(skip); off + D <= x.size(); off += D) {
      rot_->forward(x.data() + off, y.data());
      for (int b = 0; b + 32 <= D; b += 32) q4_0_round_trip(y.data() + b, z.data() + b);
      rot_->inverse(z.data(), x.data() + off);
    }
  }

  ModelConfig cfg_;
  KvOptions opt_;
  std::unique_ptr<KvBackend> inner_;
  std::shared_ptr<const Rotation> rot_;
  std::vector<uint8_t> compressed_;
  std::vector<std::vector<float>> mu_k_, mu_v_;
  std::vector<State> state_;
  std::vector<std::vector<float>> s_k_;  // key smoothing factors per layer ([H][D]; empty = none yet)
  std::vector<float> kb_, vb_, qb_;
};

}  // namespace

Result<std::unique_ptr<KvBackend>> wrap_kv_transform(const ModelConfig& cfg, const KvOptions& opt,
                                                     std::unique_ptr<KvBackend> inner) {
  std::shared_ptr<const Rotation> rot;
  if (!opt.emulate.empty()) {
    if (opt.emulate != "q4_0h") return invalid_argument("emulate: only q4_0h is known (got '" + opt.emulate + "')");
    if (opt.format.k_bits != kF16Bits || opt.format.v_bits != kF16Bits)
      return invalid_argument("emulate q4_0h stores into an f16 cache: use it with format f16");
    if (cfg.head_dim % 32 != 0) return unsupported("emulate q4_0h: head size must be a multiple of 32");
    TQKV_ASSIGN_OR_RETURN(rot, Rotation::create(cfg.head_dim, default_rotation(cfg.head_dim), 0x71345f30ull));
  }
  return std::unique_ptr<KvBackend>(new TransformKv(cfg, opt, std::move(inner), std::move(rot)));
}

}  // namespace tqkv
