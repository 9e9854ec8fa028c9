// A small GGUF (version 3) writer, for tests: tiny random-weight models for the model runtime,
// seed files for the fuzzer, and (through GgufBytes) hand-made broken files for the reader tests.
// Not a general converter: it writes what it is given, in order, with no checks on key names.
//
//   tqkv::GgufWriter w;
//   w.add_string("general.architecture", "llama");
//   w.add_u32("llama.block_count", 2);
//   w.add_string_array("tokenizer.ggml.tokens", {"<s>", "a"});
//   TQKV_RETURN_IF_ERROR(w.add_tensor("token_embd.weight", tqkv::GgmlType::kF32, {8, 2}, bytes));
//   std::vector<uint8_t> file = w.finish();        // or w.write_file(path)
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "tqkv/gguf.h"

namespace tqkv {

// Little-endian byte builder: the raw primitives of the format (string = u64 length + bytes).
struct GgufBytes {
  std::vector<uint8_t> bytes;

  void raw(const void* p, size_t n);
  void u8(uint8_t v) { raw(&v, 1); }
  void u16(uint16_t v) { raw(&v, 2); }
  void u32(uint32_t v) { raw(&v, 4); }
  void u64(uint64_t v) { raw(&v, 8); }
  void i32(int32_t v) { raw(&v, 4); }
  void f32(float v) { raw(&v, 4); }
  void str(std::string_view s) { u64(s.size()); raw(s.data(), s.size()); }
  void pad_to(uint64_t alignment);  // zero bytes up to the next multiple of alignment
  size_t size() const { return bytes.size(); }
};

// Appends the encoding of a value (without key or type tag: the caller writes those).
void gguf_encode_value(GgufBytes* out, const GgufValue& v);
void gguf_encode_array(GgufBytes* out, const GgufArray& a);

class GgufWriter {
 public:
  // general.alignment is written as the first metadata entry when set to anything but 32.
  // Must be a power of two >= 8 (what the reader accepts).
  Status set_alignment(uint32_t alignment);

  void add_value(std::string key, GgufValue value);
  void add_u32(std::string key, uint32_t v);
  void add_i32(std::string key, int32_t v);
  void add_u64(std::string key, uint64_t v);
  void add_f32(std::string key, float v);
  void add_bool(std::string key, bool v);
  void add_string(std::string key, std::string v);
  void add_string_array(std::string key, std::vector<std::string> v);
  void add_i32_array(std::string key, const std::vector<int32_t>& v);
  void add_f32_array(std::string key, const std::vector<float>& v);

  // dims as in GgufTensorInfo (dims[0] = row length). `data` must hold exactly the tensor's bytes.
  Status add_tensor(std::string name, GgmlType type, std::vector<int64_t> dims,
                    std::span<const uint8_t> data);

  std::vector<uint8_t> finish() const;
  Status write_file(const std::string& path) const;

 private:
  struct Tensor {
    std::string name;
    GgmlType type;
    std::vector<int64_t> dims;
    std::vector<uint8_t> data;
  };
  uint32_t alignment_ = 32;
  std::vector<GgufKeyValue> kv_;
  std::vector<Tensor> tensors_;
};

}  // namespace tqkv
