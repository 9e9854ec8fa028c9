// Decode-kernel instantiations for the formats listed below (see decode_launch.cuh).
#include "cuda/decode_launch.cuh"

namespace tqkv::cuda::detail {

Status decode_split_b8(int d, int kb, int vb, const DecodeArgs* args, cudaStream_t stream,
                          int* occupancy) {
  TQKV_DECODE_CASES(8, 8)
  TQKV_DECODE_CASES(8, 4)
  return unsupported("decode kernel not built for this format");
}

}  // namespace tqkv::cuda::detail
