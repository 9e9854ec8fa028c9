// GGML tensor element types: the ids GGUF files store, and the block geometry of each type.
// Shared by the GGUF reader (to size tensors) and the weight-format code in src/quant (to decode
// them). Header-only so that neither library depends on the other.
//
// A tensor row of n elements of type t takes  n / block_size(t) * block_bytes(t)  bytes;
// n must be a multiple of block_size(t).
#pragma once

#include <cstdint>
#include <string_view>

namespace tqkv {

// Values are the ids written in GGUF files (ggml.h `enum ggml_type`). Gaps are ids ggml retired.
enum class GgmlType : uint32_t {
  kF32 = 0,
  kF16 = 1,
  kQ4_0 = 2,
  kQ4_1 = 3,
  kQ5_0 = 6,
  kQ5_1 = 7,
  kQ8_0 = 8,
  kQ8_1 = 9,
  kQ2_K = 10,
  kQ3_K = 11,
  kQ4_K = 12,
  kQ5_K = 13,
  kQ6_K = 14,
  kQ8_K = 15,
  kI8 = 24,
  kI16 = 25,
  kI32 = 26,
  kI64 = 27,
  kF64 = 28,
  kBF16 = 30,
};

// Elements in one super-block of the K-quants.
inline constexpr int64_t kQK_K = 256;

struct GgmlTypeTraits {
  const char* name = nullptr;  // nullptr: an id we do not know (the reader rejects it)
  int64_t block_size = 0;      // elements per block
  int64_t block_bytes = 0;     // bytes per block
};

// Geometry of every type whose size we know, whether or not src/quant can decode it.
constexpr GgmlTypeTraits ggml_type_traits(GgmlType t) {
  switch (t) {
    case GgmlType::kF32: return {"F32", 1, 4};
    case GgmlType::kF16: return {"F16", 1, 2};
    case GgmlType::kQ4_0: return {"Q4_0", 32, 2 + 16};
    case GgmlType::kQ4_1: return {"Q4_1", 32, 2 + 2 + 16};
    case GgmlType::kQ5_0: return {"Q5_0", 32, 2 + 4 + 16};
    case GgmlType::kQ5_1: return {"Q5_1", 32, 2 + 2 + 4 + 16};
    case GgmlType::kQ8_0: return {"Q8_0", 32, 2 + 32};
    case GgmlType::kQ8_1: return {"Q8_1", 32, 2 + 2 + 32};
    case GgmlType::kQ2_K: return {"Q2_K", kQK_K, 16 + 64 + 2 + 2};
    case GgmlType::kQ3_K: return {"Q3_K", kQK_K, 32 + 64 + 12 + 2};
    case GgmlType::kQ4_K: return {"Q4_K", kQK_K, 2 + 2 + 12 + 128};
    case GgmlType::kQ5_K: return {"Q5_K", kQK_K, 2 + 2 + 12 + 32 + 128};
    case GgmlType::kQ6_K: return {"Q6_K", kQK_K, 128 + 64 + 16 + 2};
    case GgmlType::kQ8_K: return {"Q8_K", kQK_K, 4 + 256 + 32};
    case GgmlType::kI8: return {"I8", 1, 1};
    case GgmlType::kI16: return {"I16", 1, 2};
    case GgmlType::kI32: return {"I32", 1, 4};
    case GgmlType::kI64: return {"I64", 1, 8};
    case GgmlType::kF64: return {"F64", 1, 8};
    case GgmlType::kBF16: return {"BF16", 1, 2};
  }
  return {};
}

constexpr bool ggml_type_known(uint32_t id) {
  return ggml_type_traits(static_cast<GgmlType>(id)).name != nullptr;
}
constexpr std::string_view ggml_type_name(GgmlType t) {
  const char* n = ggml_type_traits(t).name;
  return n ? std::string_view(n) : std::string_view("unknown");
}
// Bytes of a row of n elements; -1 when n is not a whole number of blocks or the type is unknown.
constexpr int64_t ggml_row_bytes(GgmlType t, int64_t n) {
  const GgmlTypeTraits tr = ggml_type_traits(t);
  if (tr.name == nullptr || n < 0 || n % tr.block_size != 0) return -1;
  return n / tr.block_size * tr.block_bytes;
}

}  // namespace tqkv
