// The GPU runtime as a serving backend (include/tqkv/serve.h, gpu_serve_backend in gpu_model.h).
#include <algorithm>
#include <vector>

#include "tqkv/gpu_model.h"

namespace tqkv {
namespace {

class GpuServeBackend final : public ServeBackend {
 public:
  GpuServeBackend(std::unique_ptr<GpuContext> ctx, const ModelConfig& cfg, const KvOptions& kv, int slots)
      : ctx_(std::move(ctx)), cfg_(cfg), kv_(kv), busy_(static_cast<size_t>(slots), false) {}
  int slots() const override { return static_cast<int>(busy_.size()); }
  int64_t context() const override { return kv_.max_tokens; }
  int n_vocab() const override { return cfg_.n_vocab; }
  Status prefill(int slot, const std::vector<int32_t>& prompt, float* logits) override {
    TQKV_RETURN_IF_ERROR(ctx_->reset(slot));
    busy_[slot] = true;
    return ctx_->prefill(slot, prompt.data(), static_cast<int>(prompt.size()), logits, LogitsMode::kLast);
  }
  // GpuContext::decode steps the slot prefix 0 .. n-1; idle slots in it are emptied first and take
  // token 0 at position 0 (their output is dropped; the next prefill of the slot resets it again).
  Status step(const int* slots, const int32_t* tokens, int count, float* logits) override {
    int n = 0;
    for (int i = 0; i < count; ++i) n = std::max(n, slots[i] + 1);
    toks_.assign(static_cast<size_t>(n), 0);
    for (int b = 0; b < n; ++b)
      if (!busy_[b]) TQKV_RETURN_IF_ERROR(ctx_->reset(b));
    for (int i = 0; i < count; ++i) toks_[slots[i]] = tokens[i];
    all_.resize(static_cast<size_t>(n) * cfg_.n_vocab);
    TQKV_RETURN_IF_ERROR(ctx_->decode(toks_.data(), n, all_.data(), nullptr));
    for (int i = 0; i < count; ++i)
      std::copy_n(all_.data() + static_cast<size_t>(slots[i]) * cfg_.n_vocab, cfg_.n_vocab,
                  logits + static_cast<size_t>(i) * cfg_.n_vocab);
    return Status::ok();
  }
  void release(int slot) override {
    busy_[slot] = false;
    (void)ctx_->reset(slot);
  }
  int64_t kv_bytes(int slot) const override { return ctx_->kv_bytes_per_seq(ctx_->seq_len(slot)); }
  int64_t kv_f16_bytes(int slot) const override {
    return gpu_kv_bytes_per_seq(cfg_, KvFormat{16, 16}, {}, ctx_->seq_len(slot));
  }
  std::string describe() const override { return "GPU, " + ctx_->describe(); }

 private:
  std::unique_ptr<GpuContext> ctx_;
  ModelConfig cfg_;
  KvOptions kv_;
  std::vector<bool> busy_;
  std::vector<int32_t> toks_;
  std::vector<float> all_;
};

}  // namespace

Result<std::unique_ptr<ServeBackend>> gpu_serve_backend(const GpuModel& model, const KvOptions& kv, int slots) {
  if (slots < 1 || slots > 1024) return invalid_argument("max_batch must be in 1..1024");
  if (!kv.k8_layers.empty()) return unsupported("serve: per-layer 8-bit keys are implemented by the CPU runtime only");
  if (kv.center_values) return unsupported("serve: value centering is implemented by the CPU runtime only");
  if (!kv.emulate.empty()) return unsupported("serve: --emulate is implemented by the CPU runtime only");
  TQKV_ASSIGN_OR_RETURN(auto ctx, GpuContext::create(model, gpu_context_options(kv, slots)));
  return std::unique_ptr<ServeBackend>(new GpuServeBackend(std::move(ctx), model.config(), kv, slots));
}

}  // namespace tqkv
