// KV format names and the choice of backend.
#include <string>

#include "model/kv_backends.h"
#include "tqkv/kv_cache.h"
#include "tqkv/kv_layout.h"

namespace tqkv {

// The cache's own parser and names (include/tqkv/kv_cache.h), so every command spells formats alike.
Result<KvFormat> parse_kv_format(const std::string& s) {
  KvFormat f;
  TQKV_RETURN_IF_ERROR(parse_kv_format(s, &f.k_bits, &f.v_bits));
  return f;
}

std::string kv_format_name(const KvFormat& f) { return kv_format_name(f.k_bits, f.v_bits); }

Status check_kv_options(const ModelConfig& cfg, const KvOptions& opt) {
  if (opt.max_tokens <= 0) return invalid_argument("KV cache: max_tokens must be positive");
  if (!is_valid_kv_bits(opt.format.k_bits) || !is_valid_kv_bits(opt.format.v_bits))
    return invalid_argument("KV cache: bits must be 2, 3, 4, 8 or 16");
  if (cfg.head_dim % 8 != 0) return unsupported("KV cache: head size must be a multiple of 8");
  return Status::ok();
}

bool kv_transform_needed(const KvOptions& opt) {
  const bool compressed = opt.format.k_bits != kF16Bits || opt.format.v_bits != kF16Bits;
  return !opt.dense_fp32 && ((compressed && (opt.center_keys || opt.center_values || opt.smooth_keys)) ||
                             !opt.emulate.empty());
}

Result<std::unique_ptr<KvBackend>> make_kv_backend(const ModelConfig& cfg, const KvOptions& opt) {
  TQKV_RETURN_IF_ERROR(check_kv_options(cfg, opt));
  std::unique_ptr<KvBackend> kv;
  if (opt.paged && !opt.dense_fp32 && is_valid_head_dim(cfg.head_dim)) {
    TQKV_ASSIGN_OR_RETURN(kv, make_paged_kv(cfg, opt));
  } else {
    TQKV_ASSIGN_OR_RETURN(kv, make_contiguous_kv(cfg, opt));
  }
  if (!kv_transform_needed(opt)) return kv;
  return wrap_kv_transform(cfg, opt, std::move(kv));
}

}  // namespace tqkv
