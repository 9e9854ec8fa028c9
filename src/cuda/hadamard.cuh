// The fast Walsh-Hadamard transform y = H x (entries +-1, unnormalised), the core of the randomized
// Hadamard rotation P = H diag(signs) / sqrt(d) (docs/formats.md) wherever a CUDA kernel applies
// it: the quantize-on-write encoders, the decode kernel's own query rotation, the rotation of the
// merged output back. The signs and the 1/sqrt(d) stay with the callers (some fold them into
// other factors). Two forms, both the radix-2 stages h = 1, 2, 4, ... of rotation.cpp's fwht, each
// pair (a, b) -> (a + b, a - b):
//   - in registers over a group of kLanes lanes (16: half a warp, 32: a warp): lane l holds the
//     E consecutive coordinates [l E, l E + E); log2(E) stages inside the lane, then log2(kLanes)
//     shuffle stages;
//   - in shared memory, rows of d floats, by a whole block.
#pragma once

namespace tqkv::cuda::detail {

// In registers. `lane` = the lane's index in its group (only bits below kLanes are used); every
// lane of the warp must call it (full-mask shuffles; kLanes = 16 keeps each half to itself).
template <int E, int kLanes>
__device__ __forceinline__ void hadamard_in_lanes(float (&x)[E], int lane) {
  static_assert(E > 0 && (E & (E - 1)) == 0, "E: a power of two");
  static_assert(kLanes == 16 || kLanes == 32, "groups of half a warp or a warp");
#pragma unroll
  for (int h = 1; h < E; h <<= 1) {  // strides inside the lane
#pragma unroll
    for (int e = 0; e < E; ++e) {
      if ((e & h) == 0) {
        const float a = x[e], b = x[e + h];
        x[e] = a + b;
        x[e + h] = a - b;
      }
    }
  }
#pragma unroll
  for (int lm = 1; lm < kLanes; lm <<= 1) {  // strides across lanes: h = lm * E
    const float sgn = (lane & lm) ? -1.f : 1.f;  // upper lane: partner - own; lower: own + partner
#pragma unroll
    for (int e = 0; e < E; ++e) {
      const float u = __shfl_xor_sync(0xffffffffu, x[e], lm);
      x[e] = fmaf(sgn, x[e], u);  // exact: one rounding, like the add or subtract it stands for
    }
  }
}

// In shared memory: rows of d floats at x, x + d, ... (d a power of two), by the whole block; leaves
// the block synchronised.
__device__ __forceinline__ void hadamard_rows_block(float* x, int rows, int d) {
  const int half = d / 2;
  for (int h = 1; h < d; h <<= 1) {
    for (int p = threadIdx.x; p < rows * half; p += blockDim.x) {
      const int r = p / half, q = p - r * half;
      const int i = r * d + (q / h) * 2 * h + (q % h);
      const float a = x[i], b = x[i + h];
      x[i] = a + b;
      x[i + h] = a - b;
    }
    __syncthreads();
  }
}

}  // namespace tqkv::cuda::detail
