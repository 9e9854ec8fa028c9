// libFuzzer target for the GGUF parser: any byte string must parse or fail cleanly (no crash, no
// out-of-bounds read, no UB, no huge allocation). On success we touch what a model loader would:
// every metadata value through the typed accessors, every byte range a tensor claims, and the
// first row of each tensor through the weight decoders.
#include <cstddef>
#include <cstdint>

#include <vector>

#include "tqkv/gguf.h"
#include "tqkv/weights.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  tqkv::Result<tqkv::GgufFile> r = tqkv::parse_gguf(data, size);
  if (!r.is_ok()) {
    // Errors are values with a message; an OK code would be a parser bug.
    if (r.status().message().empty()) __builtin_trap();
    return 0;
  }
  const tqkv::GgufFile& g = r.value();
  volatile uint64_t sink = 0;
  for (const tqkv::GgufKeyValue& kv : g.metadata) {
    (void)g.get_u32(kv.key);
    (void)g.get_f32(kv.key);
    (void)g.get_string(kv.key);
    (void)g.get_int_array(kv.key);
    (void)g.get_float_array(kv.key);
    auto s = g.get_string_array(kv.key);
    if (s.is_ok()) sink = sink + s.value().size();
  }
  (void)g.architecture();
  for (const tqkv::GgufTensorInfo& t : g.tensors) {
    if (g.find_tensor(t.name) != &t) __builtin_trap();
    // The whole claimed range must lie inside the input: ASan flags any byte outside it.
    if (t.nbytes > 0) sink = sink + t.data[0] + t.data[t.nbytes - 1];
    if (t.data < data || t.data + t.nbytes > data + size) __builtin_trap();
    // Decode the first row the way the runtime would (weights of any bit pattern must not crash
    // or trip UBSan); bounded so that huge rows stay cheap.
    if (tqkv::weight_type_supported(t.type) && t.row_length() <= 4096 && t.row_bytes() <= t.nbytes) {
      std::vector<float> row(static_cast<size_t>(t.row_length()));
      if (!tqkv::dequantize_row(t.type, t.data, row.data(), t.row_length()).is_ok()) __builtin_trap();
      std::vector<float> x(row.size(), 1.0f);
      volatile float d = tqkv::dot_row(t.type, t.data, x.data(), t.row_length());
      (void)d;
    }
  }
  (void)sink;
  return 0;
}
