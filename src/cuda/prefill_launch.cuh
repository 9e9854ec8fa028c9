// Host side of one tiled-prefill instantiation; included by the prefill_*.cu files, each of which
// compiles only the (head_dim, k bits, v bits) combinations it lists.
#pragma once

#include "cuda/cuda_check.h"
#include "cuda/prefill_kernel.cuh"

namespace tqkv::cuda::detail {

// grid = (tiles, num_kv_heads, num_splits). `occupancy` non-null: only report CTAs per SM.
template <int D, int KB, int VB>
Status launch_prefill_tiles(const DecodeArgs* args, const PrefillExtra* ex, dim3 grid, cudaStream_t stream,
                            int* occupancy) {
  using Cfg = PrefillConfig<D, KB, VB>;
  auto* kernel = &prefill_tile_kernel<D, KB, VB>;
  TQKV_CUDA_RETURN_IF_ERROR(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Cfg::kSmem));
  if (occupancy) {
    TQKV_CUDA_RETURN_IF_ERROR(
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(occupancy, kernel, Cfg::kWarps * 32, Cfg::kSmem));
    return Status::ok();
  }
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = dim3(Cfg::kWarps * 32);
  cfg.dynamicSmemBytes = Cfg::kSmem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  TQKV_CUDA_RETURN_IF_ERROR(cudaLaunchKernelEx(&cfg, kernel, *args, *ex));
  TQKV_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return Status::ok();
}

#define TQKV_PREFILL_CASES(KB, VB)                                                          \
  if (kb == KB && vb == VB) {                                                               \
    switch (d) {                                                                            \
      case 64: return launch_prefill_tiles<64, KB, VB>(args, ex, grid, stream, occupancy);   \
      case 80: return launch_prefill_tiles<80, KB, VB>(args, ex, grid, stream, occupancy);   \
      case 96: return launch_prefill_tiles<96, KB, VB>(args, ex, grid, stream, occupancy);   \
      case 128: return launch_prefill_tiles<128, KB, VB>(args, ex, grid, stream, occupancy); \
      case 256: return launch_prefill_tiles<256, KB, VB>(args, ex, grid, stream, occupancy); \
      default: break;                                                                       \
    }                                                                                       \
  }

// One per prefill_*.cu file; kUnsupported when the file does not hold the combination.
Status prefill_tiles_f16(int d, int kb, int vb, const DecodeArgs* args, const PrefillExtra* ex, dim3 grid,
                         cudaStream_t stream, int* occupancy);
Status prefill_tiles_b8(int d, int kb, int vb, const DecodeArgs* args, const PrefillExtra* ex, dim3 grid,
                        cudaStream_t stream, int* occupancy);
Status prefill_tiles_b4(int d, int kb, int vb, const DecodeArgs* args, const PrefillExtra* ex, dim3 grid,
                        cudaStream_t stream, int* occupancy);
Status prefill_tiles_b3(int d, int kb, int vb, const DecodeArgs* args, const PrefillExtra* ex, dim3 grid,
                        cudaStream_t stream, int* occupancy);
Status prefill_tiles_b2(int d, int kb, int vb, const DecodeArgs* args, const PrefillExtra* ex, dim3 grid,
                        cudaStream_t stream, int* occupancy);

}  // namespace tqkv::cuda::detail
