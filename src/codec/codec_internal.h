// Internals shared by the codec's .cpp files (not part of the public API).
//
// Determinism contract: the scalar and AVX2 paths perform the same IEEE float operations in the same
// order (no FMA contraction: the project builds in ISO C++ mode, where GCC keeps fp-contract off),
// so they produce bit-identical rotations, indices and scales. The reference path works in double.
#pragma once

#include <cstdint>

#include "codec/scale_search.h"
#include "tqkv/codec.h"

namespace tqkv::codec_detail {

// splitmix64 (Steele, Lea, Flood 2014): the one PRNG behind every seeded object in the codec.
inline uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
// Standard normal samples from the stream (Box-Muller, both outputs used), in double.
void fill_gaussian(uint64_t seed, double* out, int64_t count);

// Sum of squares with 8 lane accumulators, reduced as ((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7)).
// d % 8 == 0. The AVX2 version is bit-identical.
float sumsq_lanes_scalar(const float* x, int d);
float sumsq_lanes_avx2(const float* x, int d);
// The same lane order for a dot product (mul then add, no fused multiply-add).
float dot_lanes_scalar(const float* x, const float* y, int d);


// In-place unnormalised Walsh-Hadamard transform (Sylvester order), stages h = 1, 2, 4, ...
void fwht_scalar(float* v, int n);
void fwht_avx2(float* v, int n);  // n % 8 == 0
// y[0..d) = sum_j x[j] * rows[j][0..d)  (j ascending, mul then add).
void axpy_rows_scalar(const float* rows, const float* x, float* y, int d);
void axpy_rows_avx2(const float* rows, const float* x, float* y, int d);

// Packing of one vector's indices (kv_layout.h bitstream), 8 coordinates at a time.
void pack_indices_scalar(const uint32_t* idx, int d, int bits, uint8_t* out);
void unpack_indices_scalar(const uint8_t* in, int d, int bits, uint32_t* idx);

struct CodecKernelArgs {
  const Rotation* rotation;
  const float* centroids;   // [levels]
  const float* boundaries;  // [levels - 1]
  int d, bits;
  bool norm_correction;
  bool scale_search = false;  // already resolved by scale_search_applies
};
// One vector each; the caller has validated the input (finite, norm within range).
void encode_one_scalar(const CodecKernelArgs& a, const float* x, uint8_t* idx_out, uint16_t* scale_out,
                       float* scratch /*[2d]*/);
void decode_one_scalar(const CodecKernelArgs& a, const uint8_t* idx, uint16_t scale, float* out,
                       float* scratch /*[d]*/);
void encode_one_avx2(const CodecKernelArgs& a, const float* x, uint8_t* idx_out, uint16_t* scale_out,
                     float* scratch /*[2d]*/);
void decode_one_avx2(const CodecKernelArgs& a, const uint8_t* idx, uint16_t scale, float* out,
                     float* scratch /*[d]*/);

}  // namespace tqkv::codec_detail
