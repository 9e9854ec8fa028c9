// The encoder's scale search (CodecConfig::scale_search; docs/formats.md, "Scale search"): the
// candidate pre-scales, shared by every encoder (CPU reference, scalar and AVX2 in src/codec; the
// generic and tensor-core quantize-on-write kernels in src/cuda), so that they try the same float
// values in the same order.
#pragma once

#include "tqkv/host_device.h"

namespace tqkv {

// The index pass runs on t * alpha for each of these pre-scales and keeps the one whose indices
// maximise (y . c)^2 / |c|^2, i.e. the reconstruction direction closest to the input; the stored
// scale stays |x| / |c| (norm correction), so decoders do not change. Ties keep the earlier one.
inline constexpr int kScaleSearchSteps = 7;
// Pre-scale i (0 <= i < kScaleSearchSteps): 0.8, 0.875, ..., 1.25 as float literals (0.8f + 0.075f * i
// would round differently).
TQKV_HD constexpr float scale_search_alpha(int i) {
  return i == 0 ? 0.8f : i == 1 ? 0.875f : i == 2 ? 0.95f : i == 3 ? 1.025f : i == 4 ? 1.1f : i == 5 ? 1.175f : 1.25f;
}
// Scale search applies to 2-, 3- and 4-bit codes with norm correction (1 and 8 bits gain little).
TQKV_HD constexpr bool scale_search_applies(bool requested, bool norm_correction, int bits) {
  return requested && norm_correction && bits >= 2 && bits <= 4;
}

}  // namespace tqkv
