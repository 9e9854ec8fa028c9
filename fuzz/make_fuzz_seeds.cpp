// Writes a small seed corpus for fuzz_gguf into DIR: valid GGUF files made with GgufWriter that
// cover every metadata value type, nested arrays, a custom alignment and tensors of several types.
//   make_fuzz_seeds DIR
#include <cstdio>
#include <string>
#include <vector>

#include "gguf/gguf_writer.h"

namespace {

std::vector<uint8_t> bytes_for(tqkv::GgmlType t, std::vector<int64_t> dims, uint8_t fill) {
  int64_t rows = 1;
  for (size_t d = 1; d < dims.size(); ++d) rows *= dims[d];
  std::vector<uint8_t> b(static_cast<size_t>(tqkv::ggml_row_bytes(t, dims[0]) * rows));
  for (size_t i = 0; i < b.size(); ++i) b[i] = static_cast<uint8_t>(fill + i * 7);
  return b;
}

int write(const std::string& path, const tqkv::GgufWriter& w) {
  tqkv::Status s = w.write_file(path);
  if (!s.is_ok()) {
    std::fprintf(stderr, "make_fuzz_seeds: %s\n", s.to_string().c_str());
    return 1;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: make_fuzz_seeds DIR\n");
    return 2;
  }
  const std::string dir = argv[1];
  using tqkv::GgmlType;
  int rc = 0;
  {  // metadata only, every scalar type
    tqkv::GgufWriter w;
    w.add_string("general.architecture", "llama");
    w.add_u32("llama.block_count", 2);
    w.add_i32("i32", -5);
    w.add_u64("u64", 1ull << 40);
    w.add_f32("llama.rope.freq_base", 10000.0f);
    w.add_bool("b", true);
    tqkv::GgufValue v;
    v.type = tqkv::GgufValueType::kInt8; v.i64 = -3; w.add_value("i8", v);
    v = {}; v.type = tqkv::GgufValueType::kUint16; v.u64 = 65535; w.add_value("u16", v);
    v = {}; v.type = tqkv::GgufValueType::kFloat64; v.f64 = 0.25; w.add_value("f64", v);
    v = {}; v.type = tqkv::GgufValueType::kInt64; v.i64 = -1; w.add_value("i64", v);
    rc |= write(dir + "/scalars.gguf", w);
  }
  {  // tokenizer-like arrays and a nested array
    tqkv::GgufWriter w;
    w.add_string("tokenizer.ggml.model", "gpt2");
    w.add_string_array("tokenizer.ggml.tokens", {"<s>", "</s>", "a", "b", "ab", "\xc4\xa0"});
    w.add_f32_array("tokenizer.ggml.scores", {0, 0, -1, -2, -3, -4});
    w.add_i32_array("tokenizer.ggml.token_type", {3, 3, 1, 1, 1, 1});
    w.add_string_array("tokenizer.ggml.merges", {"a b"});
    tqkv::GgufValue nested;
    nested.type = tqkv::GgufValueType::kArray;
    nested.arr.elem_type = tqkv::GgufValueType::kArray;
    nested.arr.arrays.resize(2);
    nested.arr.arrays[0].elem_type = tqkv::GgufValueType::kUint8;
    nested.arr.arrays[0].uints = {1, 2, 3};
    nested.arr.arrays[1].elem_type = tqkv::GgufValueType::kString;
    nested.arr.arrays[1].strings = {"x", ""};
    w.add_value("nested", nested);
    rc |= write(dir + "/arrays.gguf", w);
  }
  {  // tensors of several types, default alignment
    tqkv::GgufWriter w;
    w.add_string("general.architecture", "llama");
    const std::vector<std::pair<GgmlType, std::vector<int64_t>>> ts = {
        {GgmlType::kF32, {4, 2}},   {GgmlType::kF16, {8}},        {GgmlType::kQ8_0, {32, 2}},
        {GgmlType::kQ4_0, {32}},    {GgmlType::kQ4_K, {256}},     {GgmlType::kQ6_K, {256, 1, 1}},
        {GgmlType::kBF16, {2, 2, 2, 2}}};
    int i = 0;
    for (const auto& [t, dims] : ts) {
      tqkv::Status s = w.add_tensor("t" + std::to_string(i), t, dims, bytes_for(t, dims, static_cast<uint8_t>(i)));
      if (!s.is_ok()) return 1;
      ++i;
    }
    rc |= write(dir + "/tensors.gguf", w);
  }
  {  // custom alignment
    tqkv::GgufWriter w;
    if (!w.set_alignment(64).is_ok()) return 1;
    w.add_string("general.name", "aligned");
    if (!w.add_tensor("a", GgmlType::kQ5_1, {32}, bytes_for(GgmlType::kQ5_1, {32}, 1)).is_ok()) return 1;
    if (!w.add_tensor("b", GgmlType::kQ5_K, {256}, bytes_for(GgmlType::kQ5_K, {256}, 2)).is_ok()) return 1;
    rc |= write(dir + "/aligned.gguf", w);
  }
  return rc;
}
