// The KV backends make_kv_backend chooses between (src/model/kv_backend.cpp).
#pragma once

#include <memory>

#include "tqkv/model.h"

namespace tqkv {

// Contiguous arrays per layer: fp32 reference, fp16, or TurboQuant (src/model/kv_contiguous.cpp).
Result<std::unique_ptr<KvBackend>> make_contiguous_kv(const ModelConfig& cfg, const KvOptions& opt);

// The paged TurboQuant cache with the fused CPU attention (src/model/kv_paged.cpp).
Result<std::unique_ptr<KvBackend>> make_paged_kv(const ModelConfig& cfg, const KvOptions& opt);

}  // namespace tqkv
