// parse_gguf: the bounds-checked GGUF parser. Layout (docs/formats.md, "GGUF subset we read"):
//
//   u32 magic "GGUF" | u32 version | u64 n_tensors | u64 n_kv
//   n_kv      x { string key | u32 value_type | value }
//   n_tensors x { string name | u32 n_dims | u64 dims[n_dims] | u32 ggml_type | u64 offset }
//   zero padding to general.alignment | data section (tensor offsets are relative to its start)
//
//   string = u64 length | bytes (no terminator);  array = u32 elem_type | u64 count | elements
//
// Every read goes through Cursor, which checks the bytes left first; every count is checked
// against the bytes left (times the smallest encoding of one element) before anything is reserved.
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <limits>
#include <string>

#include "tqkv/gguf.h"

namespace tqkv {
namespace {

constexpr uint32_t kGgufMagic = 0x46554747u;  // "GGUF" read as little-endian u32
// Smallest encodings, used to bound counts before reserving: a metadata entry is at least an
// empty key (8) + type (4) + a 1-byte value; a tensor info at least an empty name (8) + n_dims
// (4) + one dim (8) + type (4) + offset (8).
constexpr uint64_t kMinKvBytes = 8 + 4 + 1;
constexpr uint64_t kMinTensorInfoBytes = 8 + 4 + 8 + 4 + 8;

std::string num(uint64_t v) { return std::to_string(v); }

class Cursor {
 public:
  Cursor(const uint8_t* data, size_t size) : data_(data), size_(size) {}
  size_t pos() const { return pos_; }
  uint64_t left() const { return size_ - pos_; }

  // `what` names the field for the error message.
  Status read(void* out, size_t n, const char* what) {
    if (n > left()) {
      return corrupt_data("truncated file: need " + num(n) + " bytes for " + what + " at byte " +
                          num(pos_) + ", only " + num(left()) + " left");
    }
    std::memcpy(out, data_ + pos_, n);
    pos_ += n;
    return Status::ok();
  }
  template <typename T>
  Status get(T* out, const char* what) { return read(out, sizeof(T), what); }

  Status get_string(std::string* out, const char* what, const GgufLimits& lim) {
    uint64_t len = 0;
    const size_t at = pos_;
    TQKV_RETURN_IF_ERROR(get(&len, what));
    if (len > lim.max_string_bytes) {
      return corrupt_data(std::string(what) + " at byte " + num(at) + " has length " + num(len) +
                          ", over the limit of " + num(lim.max_string_bytes));
    }
    if (len > left()) {
      return corrupt_data("truncated file: " + std::string(what) + " at byte " + num(at) +
                          " has length " + num(len) + " but only " + num(left()) +
                          " bytes are left");
    }
    out->assign(reinterpret_cast<const char*>(data_ + pos_), len);
    pos_ += len;
    return Status::ok();
  }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
};

// Bytes one element of `t` takes at least in the file (strings: the 8-byte length; arrays: type
// + count). 0 for an invalid type.
uint64_t min_encoded_bytes(uint32_t t) {
  switch (static_cast<GgufValueType>(t)) {
    case GgufValueType::kUint8: case GgufValueType::kInt8: case GgufValueType::kBool: return 1;
    case GgufValueType::kUint16: case GgufValueType::kInt16: return 2;
    case GgufValueType::kUint32: case GgufValueType::kInt32: case GgufValueType::kFloat32: return 4;
    case GgufValueType::kUint64: case GgufValueType::kInt64: case GgufValueType::kFloat64: return 8;
    case GgufValueType::kString: return 8;
    case GgufValueType::kArray: return 4 + 8;
  }
  return 0;
}

class Parser {
 public:
  Parser(const uint8_t* data, size_t size, const GgufLimits& lim) : cur_(data, size), lim_(lim) {}

  Result<GgufFile> run(const uint8_t* data, size_t size);

 private:
  Status read_scalar(GgufValueType t, GgufValue* v, const std::string& key);
  Status read_scalar_raw(GgufValueType t, GgufValue* v);
  Status read_array(GgufArray* a, const std::string& key, int depth);
  Status read_metadata(GgufFile* f, uint64_t n_kv);
  Status read_tensor_infos(GgufFile* f, uint64_t n_tensors);
  Status place_tensors(GgufFile* f, const uint8_t* data, size_t size);

  Cursor cur_;
  const GgufLimits& lim_;
};

// Names the key only when something fails: arrays call this once per element (262k for a vocab).
Status Parser::read_scalar(GgufValueType t, GgufValue* v, const std::string& key) {
  Status s = read_scalar_raw(t, v);
  if (s.is_ok()) return s;
  return Status(s.code(), s.message() + " (metadata key '" + key + "')");
}

Status Parser::read_scalar_raw(GgufValueType t, GgufValue* v) {
  const char* what = "a metadata value";
  switch (t) {
    case GgufValueType::kUint8: { uint8_t x; TQKV_RETURN_IF_ERROR(cur_.get(&x, what)); v->u64 = x; break; }
    case GgufValueType::kInt8: { int8_t x; TQKV_RETURN_IF_ERROR(cur_.get(&x, what)); v->i64 = x; break; }
    case GgufValueType::kUint16: { uint16_t x; TQKV_RETURN_IF_ERROR(cur_.get(&x, what)); v->u64 = x; break; }
    case GgufValueType::kInt16: { int16_t x; TQKV_RETURN_IF_ERROR(cur_.get(&x, what)); v->i64 = x; break; }
    case GgufValueType::kUint32: { uint32_t x; TQKV_RETURN_IF_ERROR(cur_.get(&x, what)); v->u64 = x; break; }
    case GgufValueType::kInt32: { int32_t x; TQKV_RETURN_IF_ERROR(cur_.get(&x, what)); v->i64 = x; break; }
    case GgufValueType::kUint64: TQKV_RETURN_IF_ERROR(cur_.get(&v->u64, what)); break;
    case GgufValueType::kInt64: TQKV_RETURN_IF_ERROR(cur_.get(&v->i64, what)); break;
    case GgufValueType::kFloat32: { float x; TQKV_RETURN_IF_ERROR(cur_.get(&x, what)); v->f64 = x; break; }
    case GgufValueType::kFloat64: TQKV_RETURN_IF_ERROR(cur_.get(&v->f64, what)); break;
    case GgufValueType::kBool: {
      const size_t at = cur_.pos();
      uint8_t x;
      TQKV_RETURN_IF_ERROR(cur_.get(&x, what));
      if (x > 1) {
        return corrupt_data("bool value at byte " + num(at) + " is " + num(x) + ", not 0 or 1");
      }
      v->u64 = x;
      break;
    }
    case GgufValueType::kString: TQKV_RETURN_IF_ERROR(cur_.get_string(&v->str, what, lim_)); break;
    case GgufValueType::kArray: return internal_error("read_scalar called for an array");
  }
  return Status::ok();
}

Status Parser::read_array(GgufArray* a, const std::string& key, int depth) {
  if (depth > lim_.max_array_depth) {
    return corrupt_data("array '" + key + "' is nested deeper than " + num(lim_.max_array_depth) +
                        " levels (at byte " + num(cur_.pos()) + ")");
  }
  const size_t at = cur_.pos();
  uint32_t et = 0;
  uint64_t count = 0;
  TQKV_RETURN_IF_ERROR(cur_.get(&et, "array element type"));
  const uint64_t min_bytes = min_encoded_bytes(et);
  if (min_bytes == 0) {
    return corrupt_data("array '" + key + "' at byte " + num(at) + " has unknown element type " + num(et));
  }
  TQKV_RETURN_IF_ERROR(cur_.get(&count, "array length"));
  if (count > lim_.max_array_elements) {
    return corrupt_data("array '" + key + "' at byte " + num(at) + " has " + num(count) +
                        " elements, over the limit of " + num(lim_.max_array_elements));
  }
  if (count > cur_.left() / min_bytes) {
    return corrupt_data("truncated file or bad count: array '" + key + "' at byte " + num(at) + " claims " + num(count) +
                        " elements of at least " + num(min_bytes) + " bytes, but only " +
                        num(cur_.left()) + " bytes are left");
  }
  a->elem_type = static_cast<GgufValueType>(et);
  const GgufValueType t = a->elem_type;
  if (t == GgufValueType::kArray) {
    // Grow as elements are read (not resize(count)): every level of a hostile nest could claim
    // the bytes left, and a GgufArray is much bigger than its 12-byte encoding.
    a->arrays.reserve(std::min<uint64_t>(count, 64));
    for (uint64_t i = 0; i < count; ++i) {
      a->arrays.emplace_back();
      TQKV_RETURN_IF_ERROR(read_array(&a->arrays.back(), key, depth + 1));
    }
    return Status::ok();
  }
  GgufValue v;
  if (t == GgufValueType::kString) {
    a->strings.resize(count);
    for (uint64_t i = 0; i < count; ++i) {
      TQKV_RETURN_IF_ERROR(cur_.get_string(&a->strings[i], "array string", lim_));
    }
  } else if (gguf_is_float(t)) {
    a->floats.resize(count);
    for (uint64_t i = 0; i < count; ++i) {
      TQKV_RETURN_IF_ERROR(read_scalar(t, &v, key));
      a->floats[i] = v.f64;
    }
  } else if (gguf_is_signed(t)) {
    a->ints.resize(count);
    for (uint64_t i = 0; i < count; ++i) {
      TQKV_RETURN_IF_ERROR(read_scalar(t, &v, key));
      a->ints[i] = v.i64;
    }
  } else {
    a->uints.resize(count);
    for (uint64_t i = 0; i < count; ++i) {
      TQKV_RETURN_IF_ERROR(read_scalar(t, &v, key));
      a->uints[i] = v.u64;
    }
  }
  return Status::ok();
}

Status Parser::read_metadata(GgufFile* f, uint64_t n_kv) {
  f->metadata.resize(n_kv);
  for (uint64_t i = 0; i < n_kv; ++i) {
    GgufKeyValue& kv = f->metadata[i];
    const size_t at = cur_.pos();
    TQKV_RETURN_IF_ERROR(cur_.get_string(&kv.key, "metadata key", lim_));
    if (kv.key.empty()) return corrupt_data("metadata entry " + num(i) + " at byte " + num(at) + " has an empty key");
    if (!f->metadata_index.emplace(kv.key, i).second) {
      return corrupt_data("duplicate metadata key '" + kv.key + "' at byte " + num(at));
    }
    uint32_t t = 0;
    const size_t type_at = cur_.pos();
    TQKV_RETURN_IF_ERROR(cur_.get(&t, "metadata value type"));
    if (min_encoded_bytes(t) == 0) {
      return corrupt_data("metadata key '" + kv.key + "' has unknown value type " + num(t) +
                          " at byte " + num(type_at));
    }
    kv.value.type = static_cast<GgufValueType>(t);
    if (kv.value.type == GgufValueType::kArray) {
      TQKV_RETURN_IF_ERROR(read_array(&kv.value.arr, kv.key, 1));
    } else {
      TQKV_RETURN_IF_ERROR(read_scalar(kv.value.type, &kv.value, kv.key));
    }
  }
  // general.alignment: the spec says a uint32 multiple of 8; we also need a power of two. (>= 8
  // keeps tensor data, and so every weight block, at least 2-byte aligned.)
  if (const GgufValue* a = f->find("general.alignment")) {
    if (a->type != GgufValueType::kUint32) {
      return corrupt_data(std::string("general.alignment must be uint32, got ") + gguf_value_type_name(a->type));
    }
    if (a->u64 < 8 || (a->u64 & (a->u64 - 1)) != 0) {
      return corrupt_data("general.alignment must be a power of two >= 8, got " + num(a->u64));
    }
    f->alignment = a->u64;
  }
  return Status::ok();
}

Status Parser::read_tensor_infos(GgufFile* f, uint64_t n_tensors) {
  f->tensors.resize(n_tensors);
  for (uint64_t i = 0; i < n_tensors; ++i) {
    GgufTensorInfo& t = f->tensors[i];
    const size_t at = cur_.pos();
    TQKV_RETURN_IF_ERROR(cur_.get_string(&t.name, "tensor name", lim_));
    const std::string who = "tensor '" + t.name + "' (info at byte " + num(at) + ")";
    if (t.name.empty()) return corrupt_data("tensor " + num(i) + " at byte " + num(at) + " has an empty name");
    if (!f->tensor_index.emplace(t.name, i).second) {
      return corrupt_data("duplicate tensor name '" + t.name + "' at byte " + num(at));
    }
    uint32_t n_dims = 0;
    TQKV_RETURN_IF_ERROR(cur_.get(&n_dims, "tensor n_dims"));
    if (n_dims == 0) return corrupt_data(who + " has 0 dimensions");
    if (n_dims > kGgufMaxDims) {
      return corrupt_data(who + " has " + num(n_dims) + " dimensions; at most " + num(kGgufMaxDims) + " are allowed");
    }
    t.n_dims = static_cast<int>(n_dims);
    // Elements must fit in int64 (with room to spare for byte counts below).
    constexpr uint64_t kMaxElements = uint64_t{1} << 60;
    uint64_t elements = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      uint64_t dim = 0;
      TQKV_RETURN_IF_ERROR(cur_.get(&dim, "tensor dimension"));
      if (dim == 0) return corrupt_data(who + " has dimension " + num(d) + " equal to 0");
      if (dim > kMaxElements || elements > kMaxElements / dim) {
        return corrupt_data(who + ": the dimensions overflow (dimension " + num(d) + " is " + num(dim) + ")");
      }
      elements *= dim;
      t.dims[d] = static_cast<int64_t>(dim);
    }
    uint32_t type = 0;
    TQKV_RETURN_IF_ERROR(cur_.get(&type, "tensor type"));
    if (!ggml_type_known(type)) return unsupported(who + " has unknown ggml type " + num(type));
    t.type = static_cast<GgmlType>(type);
    const GgmlTypeTraits tr = ggml_type_traits(t.type);
    if (t.dims[0] % tr.block_size != 0) {
      return corrupt_data(who + " has row length " + num(t.dims[0]) + ", not a multiple of the " +
                          tr.name + " block size " + num(tr.block_size));
    }
    // elements <= 2^60 and block_bytes / block_size <= 8, so this cannot overflow.
    t.nbytes = elements / tr.block_size * tr.block_bytes;
    TQKV_RETURN_IF_ERROR(cur_.get(&t.offset, "tensor offset"));
    if (t.offset % f->alignment != 0) {
      return corrupt_data(who + " has offset " + num(t.offset) + ", not a multiple of the alignment " +
                          num(f->alignment));
    }
  }
  return Status::ok();
}

Status Parser::place_tensors(GgufFile* f, const uint8_t* data, size_t size) {
  const uint64_t end_of_infos = cur_.pos();
  // The data section starts at the next multiple of the alignment (alignment <= 2^31, no overflow).
  const uint64_t data_offset = (end_of_infos + f->alignment - 1) / f->alignment * f->alignment;
  if (data_offset > size) {
    if (!f->tensors.empty()) {
      return corrupt_data("truncated file: the data section would start at byte " + num(data_offset) +
                          " but the file has " + num(size) + " bytes");
    }
    f->data_offset = size;
    f->data_size = 0;
    return Status::ok();
  }
  f->data_offset = data_offset;
  f->data_size = size - data_offset;
  for (GgufTensorInfo& t : f->tensors) {
    if (t.offset > f->data_size || t.nbytes > f->data_size - t.offset) {
      return corrupt_data("tensor '" + t.name + "' spans data bytes [" + num(t.offset) + ", " +
                          (t.offset > UINT64_MAX - t.nbytes ? std::string("overflow") : num(t.offset + t.nbytes)) +
                          ") past the end of the data section (" + num(f->data_size) + " bytes)");
    }
    t.data = data + data_offset + t.offset;
  }
  // No two tensors may share bytes.
  std::vector<const GgufTensorInfo*> by_offset;
  by_offset.reserve(f->tensors.size());
  for (const GgufTensorInfo& t : f->tensors) by_offset.push_back(&t);
  std::sort(by_offset.begin(), by_offset.end(),
            [](const GgufTensorInfo* a, const GgufTensorInfo* b) { return a->offset < b->offset; });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    const GgufTensorInfo& prev = *by_offset[i - 1];
    const GgufTensorInfo& cur = *by_offset[i];
    if (cur.offset < prev.offset + prev.nbytes) {
      return corrupt_data("tensors '" + prev.name + "' [" + num(prev.offset) + ", " +
                          num(prev.offset + prev.nbytes) + ") and '" + cur.name + "' [" +
                          num(cur.offset) + ", " + num(cur.offset + cur.nbytes) + ") overlap");
    }
  }
  return Status::ok();
}

Result<GgufFile> Parser::run(const uint8_t* data, size_t size) {
  GgufFile f;
  uint32_t magic = 0;
  TQKV_RETURN_IF_ERROR(cur_.get(&magic, "the magic number"));
  if (magic != kGgufMagic) {
    char hex[16];
    std::snprintf(hex, sizeof hex, "0x%08x", magic);
    return corrupt_data(std::string("not a GGUF file: bad magic ") + hex + " (expected \"GGUF\")");
  }
  TQKV_RETURN_IF_ERROR(cur_.get(&f.version, "the version"));
  if (f.version != 2 && f.version != 3) {
    if ((f.version & 0xffffu) == 0 && (f.version >> 16) != 0) {
      return unsupported("GGUF version field is " + num(f.version) +
                         ": a big-endian file? only little-endian files are supported");
    }
    return unsupported("unsupported GGUF version " + num(f.version) + " (versions 2 and 3 are supported)");
  }
  uint64_t n_tensors = 0, n_kv = 0;
  TQKV_RETURN_IF_ERROR(cur_.get(&n_tensors, "the tensor count"));
  TQKV_RETURN_IF_ERROR(cur_.get(&n_kv, "the metadata count"));
  if (n_kv > lim_.max_metadata_entries) {
    return corrupt_data("metadata count " + num(n_kv) + " is over the limit of " + num(lim_.max_metadata_entries));
  }
  if (n_tensors > lim_.max_tensors) {
    return corrupt_data("tensor count " + num(n_tensors) + " is over the limit of " + num(lim_.max_tensors));
  }
  if (n_kv > cur_.left() / kMinKvBytes) {
    return corrupt_data("truncated file or bad count: metadata count " + num(n_kv) + " cannot fit in the " + num(cur_.left()) +
                        " bytes left after the header");
  }
  if (n_tensors > cur_.left() / kMinTensorInfoBytes) {
    return corrupt_data("truncated file or bad count: tensor count " + num(n_tensors) + " cannot fit in the " + num(cur_.left()) +
                        " bytes left after the header");
  }
  TQKV_RETURN_IF_ERROR(read_metadata(&f, n_kv));
  if (n_tensors > cur_.left() / kMinTensorInfoBytes) {
    return corrupt_data("truncated file or bad count: tensor count " + num(n_tensors) + " cannot fit in the " + num(cur_.left()) +
                        " bytes left after the metadata");
  }
  TQKV_RETURN_IF_ERROR(read_tensor_infos(&f, n_tensors));
  TQKV_RETURN_IF_ERROR(place_tensors(&f, data, size));
  return f;
}

}  // namespace

Result<GgufFile> parse_gguf(const uint8_t* data, size_t size, const GgufLimits& limits) {
  if (data == nullptr && size != 0) return invalid_argument("parse_gguf: null data with non-zero size");
  Parser p(data, size, limits);
  return p.run(data, size);
}

}  // namespace tqkv
