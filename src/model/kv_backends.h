// The KV backends make_kv_backend chooses between (src/model/kv_backend.cpp).
#pragma once

#include <memory>

#include "tqkv/model.h"

namespace tqkv {

// The checks every KV backend of make_kv_backend / KvPool shares (max_tokens, bits, head size).
Status check_kv_options(const ModelConfig& cfg, const KvOptions& opt);
// Whether make_kv_backend / KvPool put wrap_kv_transform in front of the cache (centering,
// smoothing of a compressed format, or the q4_0h emulation).
bool kv_transform_needed(const KvOptions& opt);

// Contiguous arrays per layer: fp32 reference, fp16, or TurboQuant (src/model/kv_contiguous.cpp).
Result<std::unique_ptr<KvBackend>> make_contiguous_kv(const ModelConfig& cfg, const KvOptions& opt);

// The paged TurboQuant cache with the fused CPU attention (src/model/kv_paged.cpp).
Result<std::unique_ptr<KvBackend>> make_paged_kv(const ModelConfig& cfg, const KvOptions& opt);

// Centering and the q4_0h emulation of KvOptions in front of `inner` (src/model/kv_transform.cpp).
Result<std::unique_ptr<KvBackend>> wrap_kv_transform(const ModelConfig& cfg, const KvOptions& opt,
                                                     std::unique_ptr<KvBackend> inner);
// q4_0 quantize + dequantize of 32 floats (ggml's reference rounding; fp16 scale).
void q4_0_round_trip(const float* x, float* y);

}  // namespace tqkv
