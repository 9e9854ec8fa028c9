// Tiled-prefill instantiations for the formats listed below (see prefill_launch.cuh).
#include "cuda/prefill_launch.cuh"

namespace tqkv::cuda::detail {

Status prefill_tiles_f16(int d, int kb, int vb, const DecodeArgs* args, const PrefillExtra* ex, dim3 grid,
                       cudaStream_t stream, int* occupancy) {
  TQKV_PREFILL_CASES(16, 16)
  return unsupported("prefill kernel not built for this format");
}

}  // namespace tqkv::cuda::detail
