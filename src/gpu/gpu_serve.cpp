// The GPU runtime as a serving backend (include/tqkv/serve.h, gpu_serve_backend in gpu_model.h).
#include <algorithm>
#include <vector>

#include "tqkv/gpu_model.h"

namespace tqkv {
namespace {

constexpr int kPoolPage = 16;  // the GPU cache's page size (GpuContext)

class GpuServeBackend final : public ServeBackend {
 public:
  GpuServeBackend(std::unique_ptr<GpuContext> ctx, const ModelConfig& cfg, const KvOptions& kv, int slots)
      : ctx_(std::move(ctx)), cfg_(cfg), kv_(kv), busy_(static_cast<size_t>(slots), 0) {}
  int slots() const override { return static_cast<int>(busy_.size()); }
  int64_t context() const override { return kv_.max_tokens; }
  int n_vocab() const override { return cfg_.n_vocab; }
  Status prefill(int slot, const std::vector<int32_t>& prompt, float* logits) override {
    TQKV_RETURN_IF_ERROR(ctx_->reset(slot));
    busy_[slot] = 1;
    return ctx_->prefill(slot, prompt.data(), static_cast<int>(prompt.size()), logits, LogitsMode::kLast);
  }
  // GpuContext::decode steps a slot prefix 0 .. n-1, n rounded up to a few sizes (1, 2, 4, 8, then
  // multiples of 8) so that few CUDA graphs are captured; idle slots in it are inactive (emptied,
  // their token goes to a scratch page, their output is dropped).
  Status step(const int* slots, const int32_t* tokens, int count, float* logits) override {
    const int n = stage(slots, tokens, count);
    all_.resize(static_cast<size_t>(n) * cfg_.n_vocab);
    TQKV_RETURN_IF_ERROR(ctx_->decode(toks_.data(), n, all_.data(), nullptr, busy_.data()));
    for (int i = 0; i < count; ++i)
      std::copy_n(all_.data() + static_cast<size_t>(slots[i]) * cfg_.n_vocab, cfg_.n_vocab,
                  logits + static_cast<size_t>(i) * cfg_.n_vocab);
    return Status::ok();
  }
  // The decode step's own argmax rows (GpuContext computes them on the device every step).
  bool argmax_steps() const override { return true; }
  Status step_argmax(const int* slots, const int32_t* tokens, int count, int32_t* ids) override {
    const int n = stage(slots, tokens, count);
    ids_.resize(static_cast<size_t>(n));
    TQKV_RETURN_IF_ERROR(ctx_->decode(toks_.data(), n, nullptr, ids_.data(), busy_.data()));
    for (int i = 0; i < count; ++i) ids[i] = ids_[slots[i]];
    return Status::ok();
  }
  // The slot prefix a step runs (toks_ [n], idle slots token 0); returns n.
  int stage(const int* slots, const int32_t* tokens, int count) {
    int n = 0;
    for (int i = 0; i < count; ++i) n = std::max(n, slots[i] + 1);
    n = std::min(this->slots(), n <= 8 ? (n <= 1 ? 1 : n <= 2 ? 2 : n <= 4 ? 4 : 8) : (n + 7) / 8 * 8);
    toks_.assign(static_cast<size_t>(n), 0);
    for (int i = 0; i < count; ++i) toks_[slots[i]] = tokens[i];
    return n;
  }
  void release(int slot) override {
    busy_[slot] = 0;
    (void)ctx_->reset(slot);  // its pages go back to the pool
  }
  // A step's new tokens against the pool's free pages (only with a pool; prompts arrive whole through
  // prefill(), whose pages the engine's admission accounts for).
  bool fits(const StepItem* items, int count) const override {
    if (ctx_->pool_tokens() == 0) return true;
    int64_t need = 0;
    for (int i = 0; i < count; ++i) {
      const int64_t len = items[i].first ? 0 : ctx_->seq_len(items[i].slot);
      const int64_t held = items[i].first ? 0 : ctx_->pool_held_tokens(items[i].slot);
      need += std::max<int64_t>(0, pool_tokens_for(len + items[i].n) - held);
    }
    int64_t freed = 0;  // first chunks give their slot's pages back before taking new ones
    for (int i = 0; i < count; ++i)
      if (items[i].first) freed += ctx_->pool_held_tokens(items[i].slot);
    return need <= ctx_->pool_free_tokens() + freed;
  }
  int64_t pool_tokens() const override { return ctx_->pool_tokens(); }
  int64_t pool_tokens_for(int64_t len) const override { return (len + kPoolPage - 1) / kPoolPage * kPoolPage; }
  int64_t kv_bytes(int slot) const override { return ctx_->kv_bytes_per_seq(ctx_->seq_len(slot)); }
  int64_t kv_f16_bytes(int slot) const override {
    return gpu_kv_bytes_per_seq(cfg_, KvFormat{16, 16}, {}, ctx_->seq_len(slot));
  }
  std::string describe() const override {
    std::string s = "GPU, " + ctx_->describe();
    if (ctx_->pool_tokens() > 0)
      s += "; " + std::to_string(slots()) + " slots sharing a page pool of " + std::to_string(ctx_->pool_tokens()) +
           " tokens (" + std::to_string(ctx_->kv_bytes_allocated() >> 20) + " MiB of KV in all)";
    return s;
  }

 private:
  std::unique_ptr<GpuContext> ctx_;
  ModelConfig cfg_;
  KvOptions kv_;
  std::vector<uint8_t> busy_;
  std::vector<int32_t> toks_;
  std::vector<float> all_;
  std::vector<int32_t> ids_;
};

}  // namespace

Result<std::unique_ptr<ServeBackend>> gpu_serve_backend(const GpuModel& model, const KvOptions& kv, int slots,
                                                        int64_t kv_budget_bytes) {
  if (slots < 1 || slots > 1024) return invalid_argument("max_batch must be in 1..1024");
  if (!kv.k8_layers.empty()) return unsupported("serve: per-layer 8-bit keys are implemented by the CPU runtime only");
  if (kv.center_values) return unsupported("serve: value centering is implemented by the CPU runtime only");
  if (!kv.emulate.empty()) return unsupported("serve: --emulate is implemented by the CPU runtime only");
  if (kv_budget_bytes < 0) return invalid_argument("the KV budget must be >= 0");
  GpuContextOptions o = gpu_context_options(kv, slots);
  if (kv_budget_bytes > 0) {
    const int64_t tokens = GpuContext::pool_tokens_for_budget(model.config(), o, kv_budget_bytes);
    if (tokens < kPoolPage)
      return invalid_argument("a KV budget of " + std::to_string(kv_budget_bytes >> 20) + " MiB does not cover " +
                              std::to_string(slots) + " slots' fixed parts and one page; raise it or lower max_batch");
    // More than every slot's full context would never be used.
    o.pool_tokens = std::min<int64_t>(tokens, static_cast<int64_t>(slots) * ((kv.max_tokens + kPoolPage - 1) / kPoolPage * kPoolPage));
  }
  TQKV_ASSIGN_OR_RETURN(auto ctx, GpuContext::create(model, o));
  return std::unique_ptr<ServeBackend>(new GpuServeBackend(std::move(ctx), model.config(), kv, slots));
}

}  // namespace tqkv
