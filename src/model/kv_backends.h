// The KV backends make_kv_backend chooses between (src/model/kv_backend.cpp).
#pragma once

#include <memory>

#include "tqkv/model.h"

namespace tqkv {

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
