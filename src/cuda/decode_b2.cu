// Decode-kernel instantiations for the formats listed below (see decode_launch.cuh).
#include "cuda/decode_launch.cuh"

namespace tqkv::cuda::detail {

Status decode_split_b2(int d, int kb, int vb, const DecodeArgs* args, cudaStream_t stream,
                          int* occupancy) {
  TQKV_DECODE_CASES(2, 2)
  return unsupported("decode kernel not built for this format");
}

}  // namespace tqkv::cuda::detail
