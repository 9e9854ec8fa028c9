// The generation loop (include/tqkv/generate.h).
#include <chrono>

#include "tqkv/generate.h"

namespace tqkv {

namespace {
double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
}  // namespace

Result<GenerateStats> run_generation_loop(const Tokenizer& tok, int n_vocab, const std::vector<int32_t>& prompt,
                                          const GenerateOptions& opt, const std::function<Status(float*)>& prefill,
                                          const std::function<Status(int32_t, int64_t, float*)>& step,
                                          const std::function<void(int32_t)>& on_token) {
  TQKV_ASSIGN_OR_RETURN(Sampler sampler, Sampler::create(opt.sampler));
  std::vector<float> logits(static_cast<size_t>(n_vocab));
  std::vector<int32_t> context = prompt;
  GenerateStats st;
  st.prompt_tokens = static_cast<int>(prompt.size());
  st.stop_reason = "length";

  double t0 = now_s();
  TQKV_RETURN_IF_ERROR(prefill(logits.data()));
  st.prefill_seconds = now_s() - t0;
  t0 = now_s();
  for (int i = 0; i < opt.max_new_tokens; ++i) {
    const int32_t id = sampler.sample(logits, context);
    if (opt.stop_at_eog && tok.is_eog(id)) {
      st.stop_reason = "eog";
      break;
    }
    context.push_back(id);
    st.ids.push_back(id);
    ++st.generated;
    if (on_token) on_token(id);
    if (i + 1 == opt.max_new_tokens) break;
    TQKV_RETURN_IF_ERROR(step(id, static_cast<int64_t>(context.size()) - 1, logits.data()));
  }
  st.decode_seconds = now_s() - t0;
  return st;
}

Result<GenerateStats> generate(const Model& model, const Tokenizer& tok, KvBackend& kv,
                               const std::vector<int32_t>& prompt, const GenerateOptions& opt,
                               const std::function<void(int32_t)>& on_token) {
  if (prompt.empty()) return invalid_argument("generate: empty prompt");
  if (kv.tokens() != 0) return invalid_argument("generate: the KV cache must start empty");
  auto prefill = [&](float* logits) {
    return model.forward(prompt.data(), static_cast<int>(prompt.size()), 0, kv, logits, LogitsMode::kLast);
  };
  auto step = [&](int32_t id, int64_t pos, float* logits) {
    return model.forward(&id, 1, pos, kv, logits, LogitsMode::kLast);
  };
  TQKV_ASSIGN_OR_RETURN(GenerateStats st,
                        run_generation_loop(tok, model.config().n_vocab, prompt, opt, prefill, step, on_token));
  st.kv_bytes = kv.bytes_in_use();
  st.kv_f16_bytes = kv.f16_bytes_for(kv.tokens());
  return st;
}

}  // namespace tqkv
