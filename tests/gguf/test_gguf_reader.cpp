// GGUF reader on valid files: every value type and nested arrays survive a write/parse round
// trip, the typed accessors convert and refuse as documented, tensors land where they were
// written, and the two real models (when models/ has them) parse.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "gguf/gguf_writer.h"
#include "tqkv/gguf.h"

namespace tqkv {
namespace {

GgufValue scalar(GgufValueType t, uint64_t u, int64_t i, double f) {
  GgufValue v;
  v.type = t;
  v.u64 = u;
  v.i64 = i;
  v.f64 = f;
  return v;
}

GgufWriter every_type_writer() {
  GgufWriter w;
  w.add_value("u8", scalar(GgufValueType::kUint8, 200, 0, 0));
  w.add_value("i8", scalar(GgufValueType::kInt8, 0, -100, 0));
  w.add_value("u16", scalar(GgufValueType::kUint16, 60000, 0, 0));
  w.add_value("i16", scalar(GgufValueType::kInt16, 0, -30000, 0));
  w.add_u32("u32", 4000000000u);
  w.add_i32("i32", -2000000000);
  w.add_f32("f32", 0.1f);
  w.add_bool("bool", true);
  w.add_string("str", std::string("h\0llo \xe4\xb8\xad", 10));  // embedded NUL and UTF-8 kept
  w.add_u64("u64", 1ull << 63);
  w.add_value("i64", scalar(GgufValueType::kInt64, 0, -(1ll << 62), 0));
  w.add_value("f64", scalar(GgufValueType::kFloat64, 0, 0, 1e300));
  w.add_string_array("strs", {"a", "", "ccc"});
  w.add_i32_array("ints", {-1, 0, 7});
  w.add_f32_array("floats", {0.5f, -2.0f});
  GgufValue nested;
  nested.type = GgufValueType::kArray;
  nested.arr.elem_type = GgufValueType::kArray;
  nested.arr.arrays.resize(3);
  nested.arr.arrays[0].elem_type = GgufValueType::kUint16;
  nested.arr.arrays[0].uints = {1, 2};
  nested.arr.arrays[1].elem_type = GgufValueType::kString;
  nested.arr.arrays[1].strings = {"x"};
  nested.arr.arrays[2].elem_type = GgufValueType::kArray;
  nested.arr.arrays[2].arrays.resize(1);
  nested.arr.arrays[2].arrays[0].elem_type = GgufValueType::kFloat64;
  nested.arr.arrays[2].arrays[0].floats = {3.25};
  w.add_value("nested", nested);
  GgufValue empty;
  empty.type = GgufValueType::kArray;
  empty.arr.elem_type = GgufValueType::kInt64;
  w.add_value("empty", empty);
  return w;
}

TEST(GgufReader, EveryValueTypeRoundTrips) {
  const std::vector<uint8_t> bytes = every_type_writer().finish();
  Result<GgufFile> r = parse_gguf(bytes.data(), bytes.size());
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  const GgufFile& g = *r;
  EXPECT_EQ(g.version, 3u);
  EXPECT_EQ(g.metadata.size(), 17u);
  EXPECT_EQ(g.metadata[0].key, "u8");  // file order kept
  EXPECT_EQ(g.find("u8")->u64, 200u);
  EXPECT_EQ(g.find("i8")->i64, -100);
  EXPECT_EQ(g.find("u16")->u64, 60000u);
  EXPECT_EQ(g.find("i16")->i64, -30000);
  EXPECT_EQ(g.get_u32("u32").value(), 4000000000u);
  EXPECT_EQ(g.get_i64("i32").value(), -2000000000);
  EXPECT_EQ(g.get_f32("f32").value(), 0.1f);
  EXPECT_EQ(g.get_bool("bool").value(), true);
  EXPECT_EQ(g.get_string("str").value(), std::string("h\0llo \xe4\xb8\xad", 10));
  EXPECT_EQ(g.get_u64("u64").value(), 1ull << 63);
  EXPECT_EQ(g.get_i64("i64").value(), -(1ll << 62));
  EXPECT_EQ(g.find("f64")->f64, 1e300);
  auto strs = g.get_string_array("strs");
  ASSERT_TRUE(strs.is_ok());
  ASSERT_EQ(strs->size(), 3u);
  EXPECT_EQ((*strs)[2], "ccc");
  EXPECT_EQ(g.get_int_array("ints").value(), (std::vector<int64_t>{-1, 0, 7}));
  EXPECT_EQ(g.get_float_array("floats").value(), (std::vector<float>{0.5f, -2.0f}));
  const GgufArray* n = g.find_array("nested");
  ASSERT_NE(n, nullptr);
  ASSERT_EQ(n->size(), 3u);
  EXPECT_EQ(n->arrays[0].uints, (std::vector<uint64_t>{1, 2}));
  EXPECT_EQ(n->arrays[1].strings, (std::vector<std::string>{"x"}));
  ASSERT_EQ(n->arrays[2].arrays.size(), 1u);
  EXPECT_EQ(n->arrays[2].arrays[0].floats, (std::vector<double>{3.25}));
  EXPECT_EQ(g.find_array("empty")->size(), 0u);
  EXPECT_TRUE(g.tensors.empty());
}

TEST(GgufReader, AccessorsConvertAndRefuse) {
  const std::vector<uint8_t> bytes = every_type_writer().finish();
  Result<GgufFile> r = parse_gguf(bytes.data(), bytes.size());
  ASSERT_TRUE(r.is_ok());
  const GgufFile& g = *r;
  EXPECT_EQ(g.get_u32("u8").value(), 200u);             // widening is fine
  EXPECT_EQ(g.get_f32("u16").value(), 60000.0f);        // integers read as float
  EXPECT_FALSE(g.get_u32("u64").is_ok());               // 2^63 does not fit in u32
  EXPECT_FALSE(g.get_u32("i8").is_ok());                // negative
  EXPECT_FALSE(g.get_i64("u64").is_ok());               // 2^63 does not fit in i64
  EXPECT_FALSE(g.get_string("u32").is_ok());
  EXPECT_FALSE(g.get_bool("u8").is_ok());
  EXPECT_FALSE(g.get_u32("bool").is_ok());
  EXPECT_FALSE(g.get_string_array("ints").is_ok());
  EXPECT_FALSE(g.get_int_array("strs").is_ok());
  EXPECT_FALSE(g.get_float_array("str").is_ok());
  Result<uint32_t> missing = g.get_u32("no.such.key");
  ASSERT_FALSE(missing.is_ok());
  EXPECT_NE(missing.status().message().find("missing metadata key 'no.such.key'"), std::string::npos);
  EXPECT_EQ(g.get_u32_or("no.such.key", 7).value(), 7u);
  EXPECT_EQ(g.get_u32_or("u32", 7).value(), 4000000000u);
  EXPECT_FALSE(g.get_u32_or("str", 7).is_ok());  // present with the wrong type is still an error
  EXPECT_EQ(g.get_f32_or("nope", 1.5f).value(), 1.5f);
  EXPECT_EQ(g.get_string_or("nope", "dflt").value(), "dflt");
  EXPECT_EQ(g.get_bool_or("nope", false).value(), false);
  EXPECT_EQ(g.architecture(), "");
}

TEST(GgufReader, TensorsLandWhereWritten) {
  GgufWriter w;
  ASSERT_TRUE(w.set_alignment(64).is_ok());
  EXPECT_FALSE(w.set_alignment(12).is_ok());
  w.add_string("general.architecture", "llama");
  std::vector<uint8_t> a(4 * 3 * 4), b(2 * 34), c(5 * 2);
  for (size_t i = 0; i < a.size(); ++i) a[i] = static_cast<uint8_t>(i);
  for (size_t i = 0; i < b.size(); ++i) b[i] = static_cast<uint8_t>(100 + i);
  for (size_t i = 0; i < c.size(); ++i) c[i] = static_cast<uint8_t>(200 + i);
  ASSERT_TRUE(w.add_tensor("a", GgmlType::kF32, {4, 3}, a).is_ok());
  ASSERT_TRUE(w.add_tensor("b", GgmlType::kQ8_0, {64}, b).is_ok());
  ASSERT_TRUE(w.add_tensor("c", GgmlType::kBF16, {5, 1, 1, 1}, c).is_ok());
  EXPECT_FALSE(w.add_tensor("bad", GgmlType::kQ8_0, {64}, a).is_ok());  // wrong byte count
  const std::vector<uint8_t> bytes = w.finish();
  Result<GgufFile> r = parse_gguf(bytes.data(), bytes.size());
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  const GgufFile& g = *r;
  EXPECT_EQ(g.alignment, 64u);
  EXPECT_EQ(g.data_offset % 64, 0u);
  EXPECT_EQ(g.architecture(), "llama");
  EXPECT_EQ(g.arch_key("block_count"), "llama.block_count");
  ASSERT_EQ(g.tensors.size(), 3u);
  const GgufTensorInfo* ta = g.find_tensor("a");
  ASSERT_NE(ta, nullptr);
  EXPECT_EQ(ta->n_dims, 2);
  EXPECT_EQ(ta->dims[0], 4);
  EXPECT_EQ(ta->dims[1], 3);
  EXPECT_EQ(ta->num_rows(), 3);
  EXPECT_EQ(ta->nbytes, a.size());
  EXPECT_EQ(ta->row_bytes(), 16u);
  EXPECT_EQ(std::vector<uint8_t>(ta->data, ta->data + ta->nbytes), a);
  const GgufTensorInfo* tb = g.get_tensor("b").value();
  EXPECT_EQ(tb->type, GgmlType::kQ8_0);
  EXPECT_EQ(tb->nbytes, 68u);
  EXPECT_EQ(tb->offset % 64, 0u);
  EXPECT_EQ(std::vector<uint8_t>(tb->data, tb->data + tb->nbytes), b);
  const GgufTensorInfo* tc = g.find_tensor("c");
  EXPECT_EQ(tc->n_dims, 4);
  EXPECT_EQ(std::vector<uint8_t>(tc->data, tc->data + tc->nbytes), c);
  EXPECT_EQ(g.find_tensor("zzz"), nullptr);
  EXPECT_FALSE(g.get_tensor("zzz").is_ok());
}

TEST(GgufReader, MappedFileRoundTrip) {
  const std::string path = (std::filesystem::temp_directory_path() /
                            ("tqkv_gguf_test_" + std::to_string(::getpid()) + ".gguf")).string();
  GgufWriter w = every_type_writer();
  std::vector<uint8_t> t(8 * 4, 0x3f);
  ASSERT_TRUE(w.add_tensor("t", GgmlType::kF32, {8}, t).is_ok());
  ASSERT_TRUE(w.write_file(path).is_ok());
  Result<GgufMappedFile> m = open_gguf(path);
  std::remove(path.c_str());  // the mapping keeps the data alive
  ASSERT_TRUE(m.is_ok()) << m.status().to_string();
  GgufMappedFile moved = std::move(m).value();  // moving keeps tensor pointers valid
  const GgufTensorInfo* ti = moved.gguf.find_tensor("t");
  ASSERT_NE(ti, nullptr);
  EXPECT_EQ(ti->data, moved.file.data() + moved.gguf.data_offset + ti->offset);
  EXPECT_EQ(ti->data[0], 0x3f);
  EXPECT_EQ(moved.gguf.get_u32("u32").value(), 4000000000u);
}

// The real models, when `make models` has fetched them.
void check_real_model(const char* file, const char* arch, size_t min_tensors) {
  const std::string path = std::string(TQKV_SOURCE_DIR) + "/models/" + file;
  if (!std::filesystem::exists(path)) GTEST_SKIP() << path << " absent: run `make models`";
  Result<GgufMappedFile> m = open_gguf(path);
  ASSERT_TRUE(m.is_ok()) << m.status().to_string();
  const GgufFile& g = m->gguf;
  EXPECT_EQ(g.architecture(), arch);
  EXPECT_GE(g.tensors.size(), min_tensors);
  EXPECT_TRUE(g.get_u32(g.arch_key("block_count")).is_ok());
  EXPECT_TRUE(g.get_string_array("tokenizer.ggml.tokens").is_ok());
  uint64_t total = 0;
  for (const GgufTensorInfo& t : g.tensors) {
    EXPECT_GE(t.data, m->file.data() + g.data_offset);
    EXPECT_LE(t.data + t.nbytes, m->file.data() + m->file.size());
    total += t.nbytes;
  }
  EXPECT_LE(total, g.data_size);
  EXPECT_GT(total, g.data_size / 2);  // tensors fill the data section (padding aside)
}

TEST(GgufReader, RealSmolLM2) { check_real_model("smollm2-135m-instruct-q4_1.gguf", "llama", 30); }
TEST(GgufReader, RealGemma3) { check_real_model("gemma3-270m-q4_k_m.gguf", "gemma3", 30); }

}  // namespace
}  // namespace tqkv
