// Helpers shared by the GGUF tests: hand-assembled files whose tensor infos we control exactly
// (offsets, dims, types), so that every kind of broken file can be made on purpose.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "gguf/gguf_writer.h"

namespace tqkv::testing {

struct RawTensor {
  std::string name;
  std::vector<uint64_t> dims;
  uint32_t type = 0;  // ggml type id
  uint64_t offset = 0;
};

// A version-3 file: header, `kv` (written by `write_kv` into the bytes), tensor infos, zero
// padding to `alignment`, then `data_bytes` bytes of data (value i % 251).
struct RawFile {
  uint32_t magic = 0x46554747u;
  uint32_t version = 3;
  std::vector<std::pair<std::string, GgufValue>> kv;
  std::vector<RawTensor> tensors;
  uint64_t alignment = 32;
  uint64_t data_bytes = 0;
  // When set, replace the counts written in the header (for overflow tests).
  bool override_counts = false;
  uint64_t n_tensors = 0, n_kv = 0;

  std::vector<uint8_t> build() const {
    GgufBytes b;
    b.u32(magic);
    b.u32(version);
    b.u64(override_counts ? n_tensors : tensors.size());
    b.u64(override_counts ? n_kv : kv.size());
    for (const auto& [key, value] : kv) {
      b.str(key);
      b.u32(static_cast<uint32_t>(value.type));
      gguf_encode_value(&b, value);
    }
    for (const RawTensor& t : tensors) {
      b.str(t.name);
      b.u32(static_cast<uint32_t>(t.dims.size()));
      for (uint64_t d : t.dims) b.u64(d);
      b.u32(t.type);
      b.u64(t.offset);
    }
    b.pad_to(alignment);
    for (uint64_t i = 0; i < data_bytes; ++i) b.u8(static_cast<uint8_t>(i % 251));
    return std::move(b.bytes);
  }
};

inline GgufValue u32_value(uint32_t v) {
  GgufValue x;
  x.type = GgufValueType::kUint32;
  x.u64 = v;
  return x;
}
inline GgufValue string_value(std::string s) {
  GgufValue x;
  x.type = GgufValueType::kString;
  x.str = std::move(s);
  return x;
}

}  // namespace tqkv::testing
