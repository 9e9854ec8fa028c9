// GgufWriter / GgufBytes: see gguf_writer.h.
#include "gguf/gguf_writer.h"

#include <cstdio>
#include <cstring>

namespace tqkv {

void GgufBytes::raw(const void* p, size_t n) {
  const auto* b = static_cast<const uint8_t*>(p);
  bytes.insert(bytes.end(), b, b + n);
}

void GgufBytes::pad_to(uint64_t alignment) {
  while (bytes.size() % alignment != 0) bytes.push_back(0);
}

namespace {

// One element of a non-array type; the value sits in u64 / i64 / f64 / str as GgufValue says.
void encode_scalar(GgufBytes* out, GgufValueType t, uint64_t u, int64_t i, double f, const std::string* s) {
  switch (t) {
    case GgufValueType::kUint8: case GgufValueType::kBool: out->u8(static_cast<uint8_t>(u)); break;
    case GgufValueType::kInt8: out->u8(static_cast<uint8_t>(static_cast<int8_t>(i))); break;
    case GgufValueType::kUint16: out->u16(static_cast<uint16_t>(u)); break;
    case GgufValueType::kInt16: out->u16(static_cast<uint16_t>(static_cast<int16_t>(i))); break;
    case GgufValueType::kUint32: out->u32(static_cast<uint32_t>(u)); break;
    case GgufValueType::kInt32: out->i32(static_cast<int32_t>(i)); break;
    case GgufValueType::kUint64: out->u64(u); break;
    case GgufValueType::kInt64: out->u64(static_cast<uint64_t>(i)); break;
    case GgufValueType::kFloat32: out->f32(static_cast<float>(f)); break;
    case GgufValueType::kFloat64: out->raw(&f, 8); break;
    case GgufValueType::kString: out->str(s ? *s : std::string()); break;
    case GgufValueType::kArray: break;  // handled by gguf_encode_array
  }
}

}  // namespace

void gguf_encode_array(GgufBytes* out, const GgufArray& a) {
  out->u32(static_cast<uint32_t>(a.elem_type));
  out->u64(a.size());
  const GgufValueType t = a.elem_type;
  if (t == GgufValueType::kArray) {
    for (const GgufArray& sub : a.arrays) gguf_encode_array(out, sub);
  } else if (t == GgufValueType::kString) {
    for (const std::string& s : a.strings) out->str(s);
  } else if (gguf_is_float(t)) {
    for (double f : a.floats) encode_scalar(out, t, 0, 0, f, nullptr);
  } else if (gguf_is_signed(t)) {
    for (int64_t i : a.ints) encode_scalar(out, t, 0, i, 0, nullptr);
  } else {
    for (uint64_t u : a.uints) encode_scalar(out, t, u, 0, 0, nullptr);
  }
}

void gguf_encode_value(GgufBytes* out, const GgufValue& v) {
  if (v.type == GgufValueType::kArray) {
    gguf_encode_array(out, v.arr);
  } else {
    encode_scalar(out, v.type, v.u64, v.i64, v.f64, &v.str);
  }
}

Status GgufWriter::set_alignment(uint32_t alignment) {
  if (alignment < 8 || (alignment & (alignment - 1)) != 0) {
    return invalid_argument("GGUF alignment must be a power of two >= 8, got " + std::to_string(alignment));
  }
  alignment_ = alignment;
  return Status::ok();
}

void GgufWriter::add_value(std::string key, GgufValue value) {
  kv_.push_back({std::move(key), std::move(value)});
}
void GgufWriter::add_u32(std::string key, uint32_t v) {
  GgufValue x; x.type = GgufValueType::kUint32; x.u64 = v; add_value(std::move(key), std::move(x));
}
void GgufWriter::add_i32(std::string key, int32_t v) {
  GgufValue x; x.type = GgufValueType::kInt32; x.i64 = v; add_value(std::move(key), std::move(x));
}
void GgufWriter::add_u64(std::string key, uint64_t v) {
  GgufValue x; x.type = GgufValueType::kUint64; x.u64 = v; add_value(std::move(key), std::move(x));
}
void GgufWriter::add_f32(std::string key, float v) {
  GgufValue x; x.type = GgufValueType::kFloat32; x.f64 = v; add_value(std::move(key), std::move(x));
}
void GgufWriter::add_bool(std::string key, bool v) {
  GgufValue x; x.type = GgufValueType::kBool; x.u64 = v ? 1 : 0; add_value(std::move(key), std::move(x));
}
void GgufWriter::add_string(std::string key, std::string v) {
  GgufValue x; x.type = GgufValueType::kString; x.str = std::move(v); add_value(std::move(key), std::move(x));
}
void GgufWriter::add_string_array(std::string key, std::vector<std::string> v) {
  GgufValue x; x.type = GgufValueType::kArray; x.arr.elem_type = GgufValueType::kString;
  x.arr.strings = std::move(v);
  add_value(std::move(key), std::move(x));
}
void GgufWriter::add_i32_array(std::string key, const std::vector<int32_t>& v) {
  GgufValue x; x.type = GgufValueType::kArray; x.arr.elem_type = GgufValueType::kInt32;
  x.arr.ints.assign(v.begin(), v.end());
  add_value(std::move(key), std::move(x));
}
void GgufWriter::add_f32_array(std::string key, const std::vector<float>& v) {
  GgufValue x; x.type = GgufValueType::kArray; x.arr.elem_type = GgufValueType::kFloat32;
  x.arr.floats.assign(v.begin(), v.end());
  add_value(std::move(key), std::move(x));
}

Status GgufWriter::add_tensor(std::string name, GgmlType type, std::vector<int64_t> dims,
                              std::span<const uint8_t> data) {
  if (dims.empty() || dims.size() > static_cast<size_t>(kGgufMaxDims)) {
    return invalid_argument("tensor '" + name + "': 1 to 4 dimensions, got " + std::to_string(dims.size()));
  }
  int64_t rows = 1;
  for (size_t d = 1; d < dims.size(); ++d) rows *= dims[d];
  const int64_t row_bytes = ggml_row_bytes(type, dims[0]);
  if (row_bytes < 0) return invalid_argument("tensor '" + name + "': row length not a whole number of blocks");
  if (static_cast<uint64_t>(row_bytes * rows) != data.size()) {
    return invalid_argument("tensor '" + name + "': needs " + std::to_string(row_bytes * rows) +
                            " bytes, got " + std::to_string(data.size()));
  }
  tensors_.push_back({std::move(name), type, std::move(dims), {data.begin(), data.end()}});
  return Status::ok();
}

std::vector<uint8_t> GgufWriter::finish() const {
  GgufBytes b;
  b.u32(0x46554747u);  // "GGUF"
  b.u32(3);
  b.u64(tensors_.size());
  b.u64(kv_.size() + (alignment_ != 32 ? 1 : 0));
  if (alignment_ != 32) {
    b.str("general.alignment");
    b.u32(static_cast<uint32_t>(GgufValueType::kUint32));
    b.u32(alignment_);
  }
  for (const GgufKeyValue& kv : kv_) {
    b.str(kv.key);
    b.u32(static_cast<uint32_t>(kv.value.type));
    gguf_encode_value(&b, kv.value);
  }
  uint64_t offset = 0;
  for (const Tensor& t : tensors_) {
    b.str(t.name);
    b.u32(static_cast<uint32_t>(t.dims.size()));
    for (int64_t d : t.dims) b.u64(static_cast<uint64_t>(d));
    b.u32(static_cast<uint32_t>(t.type));
    b.u64(offset);
    offset = (offset + t.data.size() + alignment_ - 1) / alignment_ * alignment_;
  }
  b.pad_to(alignment_);
  for (const Tensor& t : tensors_) {
    b.raw(t.data.data(), t.data.size());
    b.pad_to(alignment_);
  }
  return std::move(b.bytes);
}

Status GgufWriter::write_file(const std::string& path) const {
  const std::vector<uint8_t> bytes = finish();
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) return io_error("cannot create '" + path + "'");
  const size_t n = std::fwrite(bytes.data(), 1, bytes.size(), f);
  const bool closed = std::fclose(f) == 0;
  if (n != bytes.size() || !closed) return io_error("cannot write '" + path + "'");
  return Status::ok();
}

}  // namespace tqkv
