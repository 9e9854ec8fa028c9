// GGUF reader: a pure, bounds-checked parse of a GGUF (version 2 or 3, little-endian) file held in
// memory, plus a thin read-only mmap wrapper. docs/formats.md ("GGUF subset we read") describes
// the format and every check.
//
//   TQKV_ASSIGN_OR_RETURN(auto model, tqkv::open_gguf("models/x.gguf"));
//   const tqkv::GgufFile& g = model.gguf;
//   TQKV_ASSIGN_OR_RETURN(uint32_t layers, g.get_u32(g.arch_key("block_count")));
//   const tqkv::GgufTensorInfo* t = g.find_tensor("token_embd.weight");  // t->data, t->dims[0..]
//
// Ownership: a GgufFile owns its metadata (copied out of the bytes) but its tensors' `data`
// pointers point INTO the parsed buffer, which must outlive it. GgufMappedFile keeps the two
// together. Threads: everything here is immutable after parsing and safe to read from many threads.
//
// Bad input never aborts or throws: parse_gguf returns kCorruptData (malformed bytes) or
// kUnsupported (well-formed but not for us: version 1, unknown tensor type), each with a message
// that names the byte offset and the field.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "tqkv/ggml_types.h"
#include "tqkv/status.h"

namespace tqkv {

// Metadata value types, with the ids GGUF stores.
enum class GgufValueType : uint32_t {
  kUint8 = 0,
  kInt8 = 1,
  kUint16 = 2,
  kInt16 = 3,
  kUint32 = 4,
  kInt32 = 5,
  kFloat32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kUint64 = 10,
  kInt64 = 11,
  kFloat64 = 12,
};
const char* gguf_value_type_name(GgufValueType t);
bool gguf_is_unsigned(GgufValueType t);  // uint8/16/32/64 and bool
bool gguf_is_signed(GgufValueType t);    // int8/16/32/64
bool gguf_is_float(GgufValueType t);     // float32/64

// An array value. Exactly one of the vectors is filled, chosen by elem_type:
//   unsigned ints and bool -> uints, signed ints -> ints, float32/64 -> floats,
//   string -> strings, array -> arrays (nested arrays; each element has its own elem_type).
struct GgufArray {
  GgufValueType elem_type = GgufValueType::kUint8;
  std::vector<uint64_t> uints;
  std::vector<int64_t> ints;
  std::vector<double> floats;
  std::vector<std::string> strings;
  std::vector<GgufArray> arrays;

  size_t size() const;
};

// One metadata value. `type` says which field holds it (the others stay zero/empty):
//   unsigned ints and bool -> u64, signed ints -> i64, float32/64 -> f64 (float32 widened
//   exactly), string -> str, array -> arr.
struct GgufValue {
  GgufValueType type = GgufValueType::kUint8;
  uint64_t u64 = 0;
  int64_t i64 = 0;
  double f64 = 0.0;
  std::string str;
  GgufArray arr;
};

struct GgufKeyValue {
  std::string key;
  GgufValue value;
};

inline constexpr int kGgufMaxDims = 4;

struct GgufTensorInfo {
  std::string name;
  int n_dims = 0;
  // dims[0] is the fastest-varying (row length, ggml "ne0"); dims past n_dims are 1.
  // A 2-D weight of shape [rows][cols] in row-major terms has dims = {cols, rows, 1, 1}.
  std::array<int64_t, kGgufMaxDims> dims{1, 1, 1, 1};
  GgmlType type = GgmlType::kF32;
  uint64_t offset = 0;           // from the start of the data section; a multiple of alignment
  uint64_t nbytes = 0;           // bytes of the whole tensor
  const uint8_t* data = nullptr; // points into the parsed buffer (file start + data_offset + offset)

  int64_t num_elements() const { return dims[0] * dims[1] * dims[2] * dims[3]; }
  int64_t row_length() const { return dims[0]; }
  int64_t num_rows() const { return dims[1] * dims[2] * dims[3]; }
  uint64_t row_bytes() const { return static_cast<uint64_t>(ggml_row_bytes(type, dims[0])); }
};

// Caps on what a file may ask us to allocate. Every count is also checked against the bytes left
// in the buffer before anything is reserved, so a hostile count cannot trigger a huge allocation.
struct GgufLimits {
  uint64_t max_metadata_entries = 1u << 16;
  uint64_t max_tensors = 1u << 20;
  uint64_t max_array_elements = 1u << 26;  // per array (largest real vocabularies are ~262k)
  uint64_t max_string_bytes = 1u << 26;    // per string
  int max_array_depth = 8;                 // nested arrays
};

struct GgufFile {
  uint32_t version = 0;
  uint64_t alignment = 32;    // general.alignment, default 32
  uint64_t data_offset = 0;   // absolute byte offset of the data section
  uint64_t data_size = 0;     // bytes from data_offset to the end of the buffer
  std::vector<GgufKeyValue> metadata;     // in file order
  std::vector<GgufTensorInfo> tensors;    // in file order

  // --- metadata lookup ---------------------------------------------------------------------
  const GgufValue* find(std::string_view key) const;  // nullptr if absent
  bool has(std::string_view key) const { return find(key) != nullptr; }

  // Typed accessors. The plain form fails (kCorruptData) when the key is absent; the _or form
  // returns `fallback` when it is absent. Both fail when the key holds the wrong type.
  // Integers: any integer type whose value fits is accepted (files differ: u32 vs u64 vs i32).
  // Floats: float32 or float64; get_f32 also accepts integers (some writers store e.g. 10000).
  Result<uint32_t> get_u32(std::string_view key) const;
  Result<uint32_t> get_u32_or(std::string_view key, uint32_t fallback) const;
  Result<uint64_t> get_u64(std::string_view key) const;
  Result<uint64_t> get_u64_or(std::string_view key, uint64_t fallback) const;
  Result<int64_t> get_i64(std::string_view key) const;
  Result<int64_t> get_i64_or(std::string_view key, int64_t fallback) const;
  Result<float> get_f32(std::string_view key) const;
  Result<float> get_f32_or(std::string_view key, float fallback) const;
  Result<bool> get_bool(std::string_view key) const;
  Result<bool> get_bool_or(std::string_view key, bool fallback) const;
  Result<std::string> get_string(std::string_view key) const;
  Result<std::string> get_string_or(std::string_view key, std::string fallback) const;

  // Arrays. get_string_array returns a view of the stored strings (valid while this GgufFile
  // lives); the numeric forms copy and convert (any integer / float element type that fits).
  Result<std::span<const std::string>> get_string_array(std::string_view key) const;
  Result<std::vector<int64_t>> get_int_array(std::string_view key) const;
  Result<std::vector<float>> get_float_array(std::string_view key) const;
  const GgufArray* find_array(std::string_view key) const;  // nullptr if absent or not an array

  // "general.architecture" ("llama", "gemma3", ...), or "" when absent.
  std::string architecture() const;
  // architecture() + "." + suffix, e.g. arch_key("block_count") -> "llama.block_count".
  std::string arch_key(std::string_view suffix) const;

  // --- tensors -------------------------------------------------------------------------------
  const GgufTensorInfo* find_tensor(std::string_view name) const;  // nullptr if absent
  Result<const GgufTensorInfo*> get_tensor(std::string_view name) const;

  // Built by parse_gguf; maps name -> index into metadata / tensors.
  std::unordered_map<std::string, size_t> metadata_index;
  std::unordered_map<std::string, size_t> tensor_index;
};

// Parses `size` bytes at `data`. Pure: no I/O, no global state. The returned tensors point into
// `data`, which must stay alive and unchanged while they are used.
Result<GgufFile> parse_gguf(const uint8_t* data, size_t size, const GgufLimits& limits = {});

// A read-only memory mapping of a whole file. Move-only; unmaps on destruction. Moving does not
// move the mapping, so pointers into data() stay valid across moves.
class MappedFile {
 public:
  static Result<MappedFile> open(const std::string& path);

  MappedFile() = default;
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile();

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  void reset();
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
  std::string path_;
};

// A mapped file and its parse, kept together so that tensor pointers stay valid.
struct GgufMappedFile {
  MappedFile file;
  GgufFile gguf;
};

// open + parse; errors name the path.
Result<GgufMappedFile> open_gguf(const std::string& path, const GgufLimits& limits = {});

}  // namespace tqkv
