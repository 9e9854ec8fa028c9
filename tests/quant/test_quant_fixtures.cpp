// Dequantization checked against values computed independently by gguf-py (ggml's Python
// reader): tests/fixtures/quant/, written once by tools/make_quant_fixtures.py. Both the reference
// and the AVX2 path must reproduce every value bit for bit (zero tolerance).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "tqkv/gguf.h"
#include "tqkv/weights.h"

namespace tqkv {
namespace {

std::string fixture_dir() { return std::string(TQKV_SOURCE_DIR) + "/tests/fixtures/quant/"; }

std::vector<uint8_t> read_all(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(f), {});
}

uint32_t bits_of(float v) {
  uint32_t b;
  std::memcpy(&b, &v, 4);
  return b;
}

// Compares bit patterns; counts mismatches and reports the first few.
void expect_bits_equal(const std::vector<float>& got, const std::vector<uint32_t>& want, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  int bad = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (bits_of(got[i]) != want[i]) {
      float w;
      std::memcpy(&w, &want[i], 4);
      if (++bad <= 5) ADD_FAILURE() << what << " [" << i << "]: got " << got[i] << " want " << w;
    }
  }
  EXPECT_EQ(bad, 0) << what;
}

struct FormatCase {
  GgmlType type;
  const char* file;
};
class QuantFixture : public ::testing::TestWithParam<FormatCase> {};

TEST_P(QuantFixture, MatchesGgufPyBitForBit) {
  const FormatCase c = GetParam();
  const std::vector<uint8_t> blocks = read_all(fixture_dir() + c.file + ".blocks");
  const std::vector<uint8_t> values = read_all(fixture_dir() + c.file + ".values");
  ASSERT_FALSE(blocks.empty()) << "missing fixture " << c.file << ".blocks";
  ASSERT_EQ(values.size() % 4, 0u);
  const GgmlTypeTraits tr = ggml_type_traits(c.type);
  const int64_t n = static_cast<int64_t>(values.size() / 4);
  ASSERT_EQ(static_cast<int64_t>(blocks.size()), n / tr.block_size * tr.block_bytes);
  std::vector<uint32_t> want(static_cast<size_t>(n));
  std::memcpy(want.data(), values.data(), values.size());
  // Copy into 16-aligned storage, as blocks sit in a mapped file.
  std::vector<uint16_t> aligned((blocks.size() + 1) / 2);
  std::memcpy(aligned.data(), blocks.data(), blocks.size());

  std::vector<float> got(static_cast<size_t>(n), -12345.0f);
  ASSERT_TRUE(dequantize_row_reference(c.type, aligned.data(), got.data(), n).is_ok());
  expect_bits_equal(got, want, std::string(c.file) + " reference");
  for (KernelChoice k : {KernelChoice::kScalar, KernelChoice::kAvx2}) {
    Result<WeightRowKernels> kern = weight_row_kernels(c.type, k);
    if (!kern.is_ok()) {
      ASSERT_EQ(k, KernelChoice::kAvx2) << kern.status().to_string();
      continue;  // no AVX2 on this machine
    }
    std::fill(got.begin(), got.end(), -12345.0f);
    kern->dequantize(aligned.data(), got.data(), n);
    expect_bits_equal(got, want, std::string(c.file) + " " + kern->path);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Formats, QuantFixture,
    ::testing::Values(FormatCase{GgmlType::kF32, "f32"}, FormatCase{GgmlType::kF16, "f16"},
                      FormatCase{GgmlType::kBF16, "bf16"}, FormatCase{GgmlType::kQ8_0, "q8_0"},
                      FormatCase{GgmlType::kQ4_0, "q4_0"}, FormatCase{GgmlType::kQ4_1, "q4_1"},
                      FormatCase{GgmlType::kQ5_0, "q5_0"}, FormatCase{GgmlType::kQ5_1, "q5_1"},
                      FormatCase{GgmlType::kQ4_K, "q4_k"}, FormatCase{GgmlType::kQ5_K, "q5_k"},
                      FormatCase{GgmlType::kQ6_K, "q6_k"}),
    [](const ::testing::TestParamInfo<FormatCase>& i) { return std::string(i.param.file); });

// Reference quantizers against gguf.quants.quantize: identical bytes, blocks with ties, zeros,
// constants and tiny values included.
class QuantizeFixture : public ::testing::TestWithParam<FormatCase> {};

TEST_P(QuantizeFixture, MatchesGgufPyBytes) {
  const FormatCase c = GetParam();
  const std::vector<uint8_t> in = read_all(fixture_dir() + c.file + ".qin");
  const std::vector<uint8_t> want = read_all(fixture_dir() + c.file + ".qout");
  ASSERT_FALSE(in.empty()) << "missing fixture " << c.file << ".qin";
  const int64_t n = static_cast<int64_t>(in.size() / 4);
  std::vector<float> x(static_cast<size_t>(n));
  std::memcpy(x.data(), in.data(), in.size());
  ASSERT_EQ(static_cast<int64_t>(want.size()), ggml_row_bytes(c.type, n));
  std::vector<uint8_t> got(want.size() + 1, 0xAB);  // +1: odd destination address is allowed
  ASSERT_TRUE(quantize_row_reference(c.type, x.data(), got.data() + 1, n).is_ok());
  int bad = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    if (got[i + 1] != want[i] && ++bad <= 5) ADD_FAILURE() << c.file << " byte " << i << ": " << int(got[i + 1]) << " vs " << int(want[i]);
  }
  EXPECT_EQ(bad, 0);
}

INSTANTIATE_TEST_SUITE_P(
    Formats, QuantizeFixture,
    ::testing::Values(FormatCase{GgmlType::kF16, "f16"}, FormatCase{GgmlType::kBF16, "bf16"},
                      FormatCase{GgmlType::kQ8_0, "q8_0"}, FormatCase{GgmlType::kQ4_0, "q4_0"},
                      FormatCase{GgmlType::kQ4_1, "q4_1"}, FormatCase{GgmlType::kQ5_0, "q5_0"},
                      FormatCase{GgmlType::kQ5_1, "q5_1"}),
    [](const ::testing::TestParamInfo<FormatCase>& i) { return std::string(i.param.file); });

TEST(QuantizeReference, RefusesWhatItCannotDo) {
  float x[256] = {};
  uint8_t out[512];
  EXPECT_EQ(quantize_row_reference(GgmlType::kQ4_K, x, out, 256).code(), StatusCode::kUnsupported);
  EXPECT_EQ(quantize_row_reference(GgmlType::kQ8_0, x, out, 33).code(), StatusCode::kInvalidArgument);
  x[7] = std::nanf("");
  EXPECT_EQ(quantize_row_reference(GgmlType::kQ8_0, x, out, 32).code(), StatusCode::kInvalidArgument);
}

// Rows of the real models, dequantized by gguf-py (real_tensors.txt), against our reader + decoder.
TEST(QuantRealTensors, MatchGgufPy) {
  std::ifstream f(fixture_dir() + "real_tensors.txt");
  ASSERT_TRUE(f.good()) << "missing real_tensors.txt";
  std::string header, hex_line;
  int checked = 0, skipped = 0;
  std::map<std::string, Result<GgufMappedFile>> models;
  while (std::getline(f, header)) {
    if (header.empty() || header[0] == '#') continue;
    ASSERT_TRUE(std::getline(f, hex_line));
    std::istringstream hs(header);
    std::string model, tensor, type_name;
    int64_t row = 0, first = 0, count = 0;
    hs >> model >> tensor >> type_name >> row >> first >> count;
    const std::string path = std::string(TQKV_SOURCE_DIR) + "/models/" + model;
    if (!std::filesystem::exists(path)) {
      ++skipped;
      continue;
    }
    auto it = models.find(model);
    if (it == models.end()) it = models.emplace(model, open_gguf(path)).first;
    ASSERT_TRUE(it->second.is_ok()) << it->second.status().to_string();
    const GgufTensorInfo* t = it->second->gguf.find_tensor(tensor);
    ASSERT_NE(t, nullptr) << tensor;
    EXPECT_EQ(ggml_type_name(t->type), type_name);
    ASSERT_LT(row, t->num_rows());
    std::vector<float> full(static_cast<size_t>(t->row_length()));
    const uint8_t* row_ptr = t->data + static_cast<uint64_t>(row) * t->row_bytes();
    ASSERT_TRUE(dequantize_row(t->type, row_ptr, full.data(), t->row_length()).is_ok());
    std::istringstream vs(hex_line);
    std::vector<uint32_t> want(static_cast<size_t>(count));
    for (auto& w : want) vs >> std::hex >> w;
    ASSERT_FALSE(vs.fail()) << tensor;
    std::vector<float> got(full.begin() + first, full.begin() + first + count);
    expect_bits_equal(got, want, model + " " + tensor);
    ++checked;
  }
  if (checked == 0) GTEST_SKIP() << "models/ absent (" << skipped << " rows skipped): run `make models`";
  EXPECT_EQ(skipped, 0) << "only some models present";
}

}  // namespace
}  // namespace tqkv
