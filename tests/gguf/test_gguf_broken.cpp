// One deliberately broken file per kind of damage; each must be rejected with its own message.
// The files are written byte by byte (gguf_test_util.h) so that exactly one thing is wrong.
#include <gtest/gtest.h>

#include <limits>
#include <string>
#include <vector>

#include "gguf_test_util.h"
#include "tqkv/gguf.h"

namespace tqkv {
namespace {

using testing::RawFile;
using testing::RawTensor;
using testing::string_value;
using testing::u32_value;

constexpr uint32_t kF32 = static_cast<uint32_t>(GgmlType::kF32);
constexpr uint32_t kQ8_0 = static_cast<uint32_t>(GgmlType::kQ8_0);

// A valid file: two metadata entries and two F32 tensors (4x2 and 8 floats) in 64 data bytes.
RawFile good_file() {
  RawFile f;
  f.kv = {{"general.architecture", string_value("llama")}, {"llama.block_count", u32_value(2)}};
  f.tensors = {{"a", {4, 2}, kF32, 0}, {"b", {8}, kF32, 32}};
  f.data_bytes = 64;
  return f;
}

void expect_rejected(const std::vector<uint8_t>& bytes, StatusCode code, const std::string& needle) {
  Result<GgufFile> r = parse_gguf(bytes.data(), bytes.size());
  ASSERT_FALSE(r.is_ok()) << "expected an error containing '" << needle << "'";
  EXPECT_EQ(r.status().code(), code) << r.status().to_string();
  EXPECT_NE(r.status().message().find(needle), std::string::npos)
      << "message '" << r.status().message() << "' lacks '" << needle << "'";
}

TEST(GgufBroken, GoodFileParses) {  // the baseline the other cases damage
  const std::vector<uint8_t> bytes = good_file().build();
  Result<GgufFile> r = parse_gguf(bytes.data(), bytes.size());
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  EXPECT_EQ(r->tensors.size(), 2u);
}

TEST(GgufBroken, BadMagic) {
  RawFile f = good_file();
  f.magic = 0x46554746u;  // "FGUF"
  expect_rejected(f.build(), StatusCode::kCorruptData, "bad magic");
}

TEST(GgufBroken, EmptyFile) {
  expect_rejected({}, StatusCode::kCorruptData, "truncated file: need 4 bytes for the magic number");
}

TEST(GgufBroken, UnsupportedVersion) {
  RawFile f = good_file();
  f.version = 1;
  expect_rejected(f.build(), StatusCode::kUnsupported, "unsupported GGUF version 1");
  f.version = 4;
  expect_rejected(f.build(), StatusCode::kUnsupported, "unsupported GGUF version 4");
  f.version = 0x03000000u;  // version 3 written big-endian
  expect_rejected(f.build(), StatusCode::kUnsupported, "big-endian");
}

// Every proper prefix of a valid file must fail: in the header/metadata/tensor infos with
// "truncated", inside the data section with "past the end".
TEST(GgufBroken, TruncatedAnywhere) {
  const std::vector<uint8_t> full = good_file().build();
  int truncated = 0, past_end = 0;
  for (size_t n = 0; n < full.size(); ++n) {
    std::vector<uint8_t> prefix(full.begin(), full.begin() + static_cast<std::ptrdiff_t>(n));
    Result<GgufFile> r = parse_gguf(prefix.data(), prefix.size());
    ASSERT_FALSE(r.is_ok()) << "prefix of " << n << " bytes parsed";
    ASSERT_EQ(r.status().code(), StatusCode::kCorruptData) << n;
    const std::string& m = r.status().message();
    if (m.find("truncated") != std::string::npos) ++truncated;
    else if (m.find("past the end") != std::string::npos) ++past_end;
    else ADD_FAILURE() << "prefix " << n << ": unexpected message " << m;
  }
  EXPECT_GT(truncated, 0);
  EXPECT_GT(past_end, 0);
}

TEST(GgufBroken, MetadataCountOverflows) {
  RawFile f = good_file();
  f.override_counts = true;
  f.n_tensors = 2;
  f.n_kv = std::numeric_limits<uint64_t>::max() / 2;
  expect_rejected(f.build(), StatusCode::kCorruptData, "over the limit");
  f.n_kv = 1000;  // under the limit but more than the bytes left could hold
  expect_rejected(f.build(), StatusCode::kCorruptData, "metadata count 1000 cannot fit");
}

TEST(GgufBroken, TensorCountOverflows) {
  RawFile f = good_file();
  f.override_counts = true;
  f.n_kv = 2;
  f.n_tensors = std::numeric_limits<uint64_t>::max();
  expect_rejected(f.build(), StatusCode::kCorruptData, "tensor count");
  f.n_tensors = 100;
  expect_rejected(f.build(), StatusCode::kCorruptData, "tensor count 100 cannot fit");
}

TEST(GgufBroken, StringLengthOverflows) {
  GgufBytes b;
  b.u32(0x46554747u); b.u32(3); b.u64(0); b.u64(1);
  b.u64(std::numeric_limits<uint64_t>::max());  // key length
  b.raw("abcdefghijklmnopq", 17);
  expect_rejected(b.bytes, StatusCode::kCorruptData, "over the limit");
  GgufBytes c;
  c.u32(0x46554747u); c.u32(3); c.u64(0); c.u64(1);
  c.u64(1000);  // under the limit, past the end
  c.raw("abcdefghijklmnopq", 17);
  expect_rejected(c.bytes, StatusCode::kCorruptData, "has length 1000 but only 17 bytes are left");
}

TEST(GgufBroken, ArrayLengthOverflows) {
  RawFile f = good_file();
  GgufValue a;
  a.type = GgufValueType::kArray;
  a.arr.elem_type = GgufValueType::kUint32;
  a.arr.uints = {1, 2, 3};
  f.kv.push_back({"arr", a});
  std::vector<uint8_t> bytes = f.build();
  // Find the array's count (u64 3 right after the element type u32 4) and make it huge.
  const std::string key = "arr";
  auto it = std::search(bytes.begin(), bytes.end(), key.begin(), key.end());
  ASSERT_NE(it, bytes.end());
  const size_t count_at = static_cast<size_t>(it - bytes.begin()) + 3 + 4 + 4;
  ASSERT_EQ(bytes[count_at], 3);
  for (int i = 0; i < 8; ++i) bytes[count_at + i] = (i == 7) ? 0x10 : 0;  // 2^60
  expect_rejected(bytes, StatusCode::kCorruptData, "over the limit");
  bytes[count_at + 7] = 0;
  bytes[count_at + 2] = 0x10;  // 2^20: under the limit, but 4 MiB of uint32 are not there
  expect_rejected(bytes, StatusCode::kCorruptData, "claims 1048576 elements");
}

TEST(GgufBroken, UnknownValueType) {
  RawFile f = good_file();
  GgufValue v = u32_value(7);
  v.type = static_cast<GgufValueType>(13);
  f.kv.push_back({"weird", v});
  expect_rejected(f.build(), StatusCode::kCorruptData, "unknown value type 13");
}

TEST(GgufBroken, UnknownArrayElementType) {
  GgufBytes b;
  b.u32(0x46554747u); b.u32(3); b.u64(0); b.u64(1);
  b.str("arr"); b.u32(static_cast<uint32_t>(GgufValueType::kArray));
  b.u32(99); b.u64(1); b.u32(0);
  expect_rejected(b.bytes, StatusCode::kCorruptData, "unknown element type 99");
}

TEST(GgufBroken, BoolOutOfRange) {
  RawFile f = good_file();
  GgufValue v;
  v.type = GgufValueType::kBool;
  v.u64 = 2;
  f.kv.push_back({"flag", v});
  expect_rejected(f.build(), StatusCode::kCorruptData, "not 0 or 1");
}

TEST(GgufBroken, ArraysNestedTooDeep) {
  RawFile f = good_file();
  GgufValue v;
  v.type = GgufValueType::kArray;
  GgufArray* a = &v.arr;
  for (int depth = 0; depth < 12; ++depth) {  // 12 levels > limit of 8
    a->elem_type = GgufValueType::kArray;
    a->arrays.resize(1);
    a = &a->arrays[0];
  }
  a->elem_type = GgufValueType::kUint8;
  f.kv.push_back({"deep", v});
  expect_rejected(f.build(), StatusCode::kCorruptData, "nested deeper than 8");
}

TEST(GgufBroken, DuplicateMetadataKey) {
  RawFile f = good_file();
  f.kv.push_back({"llama.block_count", u32_value(3)});
  expect_rejected(f.build(), StatusCode::kCorruptData, "duplicate metadata key 'llama.block_count'");
}

TEST(GgufBroken, EmptyKeyAndName) {
  RawFile f = good_file();
  f.kv.push_back({"", u32_value(3)});
  expect_rejected(f.build(), StatusCode::kCorruptData, "empty key");
  RawFile g = good_file();
  g.tensors[1].name = "";
  expect_rejected(g.build(), StatusCode::kCorruptData, "empty name");
}

TEST(GgufBroken, DuplicateTensorName) {
  RawFile f = good_file();
  f.tensors[1].name = "a";
  expect_rejected(f.build(), StatusCode::kCorruptData, "duplicate tensor name 'a'");
}

TEST(GgufBroken, TooManyDimensions) {
  RawFile f = good_file();
  f.tensors[1].dims = {2, 1, 1, 2, 2};
  expect_rejected(f.build(), StatusCode::kCorruptData, "has 5 dimensions; at most 4");
}

TEST(GgufBroken, ZeroDimensions) {
  RawFile f = good_file();
  f.tensors[1].dims = {};
  expect_rejected(f.build(), StatusCode::kCorruptData, "has 0 dimensions");
  RawFile g = good_file();
  g.tensors[1].dims = {8, 0};
  expect_rejected(g.build(), StatusCode::kCorruptData, "dimension 1 equal to 0");
}

TEST(GgufBroken, DimensionsOverflow) {
  RawFile f = good_file();
  f.tensors[1].dims = {1ull << 32, 1ull << 32};
  expect_rejected(f.build(), StatusCode::kCorruptData, "dimensions overflow");
  f.tensors[1].dims = {std::numeric_limits<uint64_t>::max()};
  expect_rejected(f.build(), StatusCode::kCorruptData, "dimensions overflow");
}

TEST(GgufBroken, UnknownTensorType) {
  RawFile f = good_file();
  f.tensors[1].type = 4;  // retired Q4_2
  expect_rejected(f.build(), StatusCode::kUnsupported, "unknown ggml type 4");
  f.tensors[1].type = 1000;
  expect_rejected(f.build(), StatusCode::kUnsupported, "unknown ggml type 1000");
}

TEST(GgufBroken, RowNotWholeBlocks) {
  RawFile f = good_file();
  f.tensors[1] = {"b", {16}, kQ8_0, 32};  // Q8_0 blocks hold 32 values
  expect_rejected(f.build(), StatusCode::kCorruptData, "not a multiple of the Q8_0 block size 32");
}

TEST(GgufBroken, TensorPastEnd) {
  RawFile f = good_file();
  f.tensors[1].offset = 64;  // 32 bytes starting at the end of 64 data bytes
  expect_rejected(f.build(), StatusCode::kCorruptData, "past the end of the data section");
  f.tensors[1].offset = std::numeric_limits<uint64_t>::max() - 31;  // offset + size overflows u64
  expect_rejected(f.build(), StatusCode::kCorruptData, "past the end of the data section");
  RawFile g = good_file();
  g.tensors[1].dims = {8, 1000};
  expect_rejected(g.build(), StatusCode::kCorruptData, "past the end of the data section");
}

TEST(GgufBroken, DataSectionMissing) {
  RawFile f = good_file();
  f.data_bytes = 0;
  std::vector<uint8_t> bytes = f.build();
  bytes.resize(bytes.size() - 1);  // the padding before the data section is cut short
  expect_rejected(bytes, StatusCode::kCorruptData, "the data section would start at byte");
}

TEST(GgufBroken, OverlappingTensors) {
  RawFile f = good_file();
  f.tensors[1].offset = 0;
  expect_rejected(f.build(), StatusCode::kCorruptData, "overlap");
  RawFile g = good_file();
  g.tensors[0].dims = {4, 4};  // a now covers [0, 64) and b starts at 32
  expect_rejected(g.build(), StatusCode::kCorruptData, "tensors 'a' [0, 64) and 'b' [32, 64) overlap");
}

TEST(GgufBroken, MisalignedTensor) {
  RawFile f = good_file();
  f.tensors[1].offset = 36;
  expect_rejected(f.build(), StatusCode::kCorruptData, "offset 36, not a multiple of the alignment 32");
}

TEST(GgufBroken, BadAlignment) {
  RawFile f = good_file();
  f.kv.insert(f.kv.begin(), {"general.alignment", u32_value(48)});
  expect_rejected(f.build(), StatusCode::kCorruptData, "power of two >= 8, got 48");
  RawFile g = good_file();
  g.kv.insert(g.kv.begin(), {"general.alignment", u32_value(0)});
  expect_rejected(g.build(), StatusCode::kCorruptData, "power of two >= 8, got 0");
  g.kv[0].second = u32_value(4);  // a power of two, but the spec wants a multiple of 8
  expect_rejected(g.build(), StatusCode::kCorruptData, "power of two >= 8, got 4");
  RawFile h = good_file();
  h.kv.insert(h.kv.begin(), {"general.alignment", string_value("32")});
  expect_rejected(h.build(), StatusCode::kCorruptData, "general.alignment must be uint32, got string");
}

TEST(GgufBroken, CustomAlignmentIsHonoured) {  // 16-aligned offset that is fine under alignment 16
  RawFile f = good_file();
  f.kv.insert(f.kv.begin(), {"general.alignment", u32_value(16)});
  f.alignment = 16;
  f.tensors[1].offset = 32;
  f.tensors.push_back({"c", {4}, kF32, 64});
  f.data_bytes = 80;
  const std::vector<uint8_t> ok = f.build();
  Result<GgufFile> r = parse_gguf(ok.data(), ok.size());
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  EXPECT_EQ(r->alignment, 16u);
  f.tensors[2].offset = 72;  // 72 % 16 != 0
  expect_rejected(f.build(), StatusCode::kCorruptData, "offset 72, not a multiple of the alignment 16");
}

TEST(GgufBroken, LimitsAreEnforced) {
  RawFile f = good_file();
  GgufValue a;
  a.type = GgufValueType::kArray;
  a.arr.elem_type = GgufValueType::kString;
  a.arr.strings = {"a", "b", "c", "dddddd"};
  f.kv.push_back({"tokens", a});
  const std::vector<uint8_t> bytes = f.build();
  GgufLimits lim;
  lim.max_array_elements = 3;
  Result<GgufFile> r = parse_gguf(bytes.data(), bytes.size(), lim);
  ASSERT_FALSE(r.is_ok());
  EXPECT_NE(r.status().message().find("4 elements, over the limit of 3"), std::string::npos) << r.status().message();
  lim = {};
  lim.max_string_bytes = 5;
  r = parse_gguf(bytes.data(), bytes.size(), lim);
  ASSERT_FALSE(r.is_ok());
  EXPECT_NE(r.status().message().find("over the limit of 5"), std::string::npos) << r.status().message();
}

TEST(GgufBroken, MissingFileIsIoError) {
  Result<GgufMappedFile> r = open_gguf("/nonexistent/dir/model.gguf");
  ASSERT_FALSE(r.is_ok());
  EXPECT_EQ(r.status().code(), StatusCode::kIoError);
  EXPECT_NE(r.status().message().find("/nonexistent/dir/model.gguf"), std::string::npos);
}

}  // namespace
}  // namespace tqkv
