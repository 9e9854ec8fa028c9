#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "tqkv/fp16.h"

namespace {

// The compiler's own _Float16 is the independent reference for round-to-nearest-even.
TEST(Fp16, EveryHalfRoundTripsExactly) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = tqkv::fp16_to_float(static_cast<uint16_t>(h));
    _Float16 ref;
    uint16_t hb = static_cast<uint16_t>(h);
    memcpy(&ref, &hb, 2);
    if (std::isnan(f)) {
      ASSERT_TRUE(std::isnan(static_cast<float>(ref))) << h;
      continue;
    }
    ASSERT_EQ(f, static_cast<float>(ref)) << h;
    ASSERT_EQ(tqkv::float_to_fp16(f), h) << h;
  }
}

TEST(Fp16, FloatToHalfMatchesCompilerOnStridedFloats) {
  // Every 97th bit pattern covers normals, subnormals, overflow and ties densely enough.
  for (uint64_t bits = 0; bits < (1ull << 32); bits += 97) {
    uint32_t b = static_cast<uint32_t>(bits);
    float f;
    memcpy(&f, &b, 4);
    if (std::isnan(f)) {
      ASSERT_TRUE(std::isnan(tqkv::fp16_to_float(tqkv::float_to_fp16(f))));
      continue;
    }
    _Float16 ref = static_cast<_Float16>(f);
    uint16_t rb;
    memcpy(&rb, &ref, 2);
    ASSERT_EQ(tqkv::float_to_fp16(f), rb) << "bits=" << b << " f=" << f;
  }
}

}  // namespace
