// Typed metadata accessors of GgufFile, and the value-type helpers.
#include <cmath>
#include <limits>
#include <string>

#include "tqkv/gguf.h"

namespace tqkv {

const char* gguf_value_type_name(GgufValueType t) {
  switch (t) {
    case GgufValueType::kUint8: return "uint8";
    case GgufValueType::kInt8: return "int8";
    case GgufValueType::kUint16: return "uint16";
    case GgufValueType::kInt16: return "int16";
    case GgufValueType::kUint32: return "uint32";
    case GgufValueType::kInt32: return "int32";
    case GgufValueType::kFloat32: return "float32";
    case GgufValueType::kBool: return "bool";
    case GgufValueType::kString: return "string";
    case GgufValueType::kArray: return "array";
    case GgufValueType::kUint64: return "uint64";
    case GgufValueType::kInt64: return "int64";
    case GgufValueType::kFloat64: return "float64";
  }
  return "unknown";
}

bool gguf_is_unsigned(GgufValueType t) {
  return t == GgufValueType::kUint8 || t == GgufValueType::kUint16 || t == GgufValueType::kUint32 ||
         t == GgufValueType::kUint64 || t == GgufValueType::kBool;
}
bool gguf_is_signed(GgufValueType t) {
  return t == GgufValueType::kInt8 || t == GgufValueType::kInt16 || t == GgufValueType::kInt32 ||
         t == GgufValueType::kInt64;
}
bool gguf_is_float(GgufValueType t) { return t == GgufValueType::kFloat32 || t == GgufValueType::kFloat64; }

size_t GgufArray::size() const {
  switch (elem_type) {
    case GgufValueType::kString: return strings.size();
    case GgufValueType::kArray: return arrays.size();
    default: break;
  }
  if (gguf_is_float(elem_type)) return floats.size();
  if (gguf_is_signed(elem_type)) return ints.size();
  return uints.size();
}

namespace {

Status missing(std::string_view key) {
  return corrupt_data("missing metadata key '" + std::string(key) + "'");
}
Status wrong_type(std::string_view key, GgufValueType got, const char* want) {
  return corrupt_data("metadata key '" + std::string(key) + "' is " + gguf_value_type_name(got) +
                      ", expected " + want);
}
Status out_of(std::string_view key, const std::string& value, const char* want) {
  return corrupt_data("metadata key '" + std::string(key) + "' = " + value + " does not fit in " + want);
}

// Integer value of any integer type (bool excluded) as int64 / uint64, range-checked.
Result<uint64_t> as_unsigned(std::string_view key, const GgufValue& v, uint64_t max, const char* want) {
  if (gguf_is_unsigned(v.type) && v.type != GgufValueType::kBool) {
    if (v.u64 > max) return out_of(key, std::to_string(v.u64), want);
    return v.u64;
  }
  if (gguf_is_signed(v.type)) {
    if (v.i64 < 0 || static_cast<uint64_t>(v.i64) > max) return out_of(key, std::to_string(v.i64), want);
    return static_cast<uint64_t>(v.i64);
  }
  return wrong_type(key, v.type, want);
}

}  // namespace

const GgufValue* GgufFile::find(std::string_view key) const {
  auto it = metadata_index.find(std::string(key));
  return it == metadata_index.end() ? nullptr : &metadata[it->second].value;
}

Result<uint32_t> GgufFile::get_u32(std::string_view key) const {
  const GgufValue* v = find(key);
  if (!v) return missing(key);
  TQKV_ASSIGN_OR_RETURN(uint64_t x, as_unsigned(key, *v, std::numeric_limits<uint32_t>::max(), "uint32"));
  return static_cast<uint32_t>(x);
}
Result<uint32_t> GgufFile::get_u32_or(std::string_view key, uint32_t fallback) const {
  return has(key) ? get_u32(key) : Result<uint32_t>(fallback);
}

Result<uint64_t> GgufFile::get_u64(std::string_view key) const {
  const GgufValue* v = find(key);
  if (!v) return missing(key);
  return as_unsigned(key, *v, std::numeric_limits<uint64_t>::max(), "uint64");
}
Result<uint64_t> GgufFile::get_u64_or(std::string_view key, uint64_t fallback) const {
  return has(key) ? get_u64(key) : Result<uint64_t>(fallback);
}

Result<int64_t> GgufFile::get_i64(std::string_view key) const {
  const GgufValue* v = find(key);
  if (!v) return missing(key);
  if (gguf_is_signed(v->type)) return v->i64;
  TQKV_ASSIGN_OR_RETURN(uint64_t x, as_unsigned(key, *v, std::numeric_limits<int64_t>::max(), "int64"));
  return static_cast<int64_t>(x);
}
Result<int64_t> GgufFile::get_i64_or(std::string_view key, int64_t fallback) const {
  return has(key) ? get_i64(key) : Result<int64_t>(fallback);
}

Result<float> GgufFile::get_f32(std::string_view key) const {
  const GgufValue* v = find(key);
  if (!v) return missing(key);
  if (gguf_is_float(v->type)) return static_cast<float>(v->f64);
  if (gguf_is_signed(v->type)) return static_cast<float>(v->i64);
  if (gguf_is_unsigned(v->type) && v->type != GgufValueType::kBool) return static_cast<float>(v->u64);
  return wrong_type(key, v->type, "a number");
}
Result<float> GgufFile::get_f32_or(std::string_view key, float fallback) const {
  return has(key) ? get_f32(key) : Result<float>(fallback);
}

Result<bool> GgufFile::get_bool(std::string_view key) const {
  const GgufValue* v = find(key);
  if (!v) return missing(key);
  if (v->type != GgufValueType::kBool) return wrong_type(key, v->type, "bool");
  return v->u64 != 0;
}
Result<bool> GgufFile::get_bool_or(std::string_view key, bool fallback) const {
  return has(key) ? get_bool(key) : Result<bool>(fallback);
}

Result<std::string> GgufFile::get_string(std::string_view key) const {
  const GgufValue* v = find(key);
  if (!v) return missing(key);
  if (v->type != GgufValueType::kString) return wrong_type(key, v->type, "string");
  return v->str;
}
Result<std::string> GgufFile::get_string_or(std::string_view key, std::string fallback) const {
  return has(key) ? get_string(key) : Result<std::string>(std::move(fallback));
}

const GgufArray* GgufFile::find_array(std::string_view key) const {
  const GgufValue* v = find(key);
  return (v && v->type == GgufValueType::kArray) ? &v->arr : nullptr;
}

Result<std::span<const std::string>> GgufFile::get_string_array(std::string_view key) const {
  const GgufValue* v = find(key);
  if (!v) return missing(key);
  if (v->type != GgufValueType::kArray) return wrong_type(key, v->type, "array of string");
  if (v->arr.elem_type != GgufValueType::kString) {
    return corrupt_data("metadata key '" + std::string(key) + "' is an array of " +
                        gguf_value_type_name(v->arr.elem_type) + ", expected array of string");
  }
  return std::span<const std::string>(v->arr.strings);
}

Result<std::vector<int64_t>> GgufFile::get_int_array(std::string_view key) const {
  const GgufValue* v = find(key);
  if (!v) return missing(key);
  if (v->type != GgufValueType::kArray) return wrong_type(key, v->type, "array of integers");
  const GgufArray& a = v->arr;
  if (gguf_is_signed(a.elem_type)) return a.ints;
  if (!gguf_is_unsigned(a.elem_type)) {
    return corrupt_data("metadata key '" + std::string(key) + "' is an array of " +
                        gguf_value_type_name(a.elem_type) + ", expected array of integers");
  }
  std::vector<int64_t> out(a.uints.size());
  for (size_t i = 0; i < out.size(); ++i) {
    if (a.uints[i] > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return out_of(key, std::to_string(a.uints[i]) + " (element " + std::to_string(i) + ")", "int64");
    }
    out[i] = static_cast<int64_t>(a.uints[i]);
  }
  return out;
}

Result<std::vector<float>> GgufFile::get_float_array(std::string_view key) const {
  const GgufValue* v = find(key);
  if (!v) return missing(key);
  if (v->type != GgufValueType::kArray) return wrong_type(key, v->type, "array of numbers");
  const GgufArray& a = v->arr;
  std::vector<float> out;
  if (gguf_is_float(a.elem_type)) {
    out.assign(a.floats.begin(), a.floats.end());
  } else if (gguf_is_signed(a.elem_type)) {
    out.assign(a.ints.begin(), a.ints.end());
  } else if (gguf_is_unsigned(a.elem_type) && a.elem_type != GgufValueType::kBool) {
    out.assign(a.uints.begin(), a.uints.end());
  } else {
    return corrupt_data("metadata key '" + std::string(key) + "' is an array of " +
                        gguf_value_type_name(a.elem_type) + ", expected array of numbers");
  }
  return out;
}

std::string GgufFile::architecture() const {
  const GgufValue* v = find("general.architecture");
  return (v && v->type == GgufValueType::kString) ? v->str : std::string();
}

std::string GgufFile::arch_key(std::string_view suffix) const {
  return architecture() + "." + std::string(suffix);
}

const GgufTensorInfo* GgufFile::find_tensor(std::string_view name) const {
  auto it = tensor_index.find(std::string(name));
  return it == tensor_index.end() ? nullptr : &tensors[it->second];
}

Result<const GgufTensorInfo*> GgufFile::get_tensor(std::string_view name) const {
  const GgufTensorInfo* t = find_tensor(name);
  if (!t) return corrupt_data("missing tensor '" + std::string(name) + "'");
  return t;
}

}  // namespace tqkv
