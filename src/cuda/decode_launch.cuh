// Host side of one decode-kernel instantiation; included by the decode_*.cu files, each of which
// compiles only the (head_dim, k bits, v bits) combinations it lists.
#pragma once

#include "cuda/cuda_check.h"
#include "cuda/decode_kernel.cuh"

namespace tqkv::cuda::detail {

// With `occupancy` non-null: only reports how many CTAs fit on one SM (for plan_decode).
// Tile copy of the decode kernel: "cpasync" (16-byte cp.async by every lane, the default) or
// "bulk" (one bulk copy per tile on an mbarrier); environment TQKV_CUDA_DECODE_COPY, read once.
bool decode_copy_bulk();
// Kernel version, environment TQKV_CUDA_DECODE_KERNEL (read once): "v2" (default, MODE 2) or "v1"
// (the previous kernel, MODE 0; MODE 1 with TQKV_CUDA_DECODE_COPY=bulk). Returns the MODE.
int decode_kernel_mode();

template <int D, int KB, int VB>
Status launch_decode_split(const DecodeArgs* args, cudaStream_t stream, int* occupancy) {
  using Cfg = DecodeConfig<D, KB, VB>;
  const int mode = decode_kernel_mode();
  auto* kernel = mode == 2 ? &decode_split_kernel<D, KB, VB, 2>
                           : (mode == 1 ? &decode_split_kernel<D, KB, VB, 1> : &decode_split_kernel<D, KB, VB, 0>);
  // Host-side attribute (not a stream operation): safe during graph capture.
  TQKV_CUDA_RETURN_IF_ERROR(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Cfg::kSmem));
  if (occupancy) {
    TQKV_CUDA_RETURN_IF_ERROR(
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(occupancy, kernel, Cfg::kWarps * 32, Cfg::kSmem));
    return Status::ok();
  }
  // Programmatic dependent launch: the kernel's prologue (cp.async prefetch, tables) overlaps
  // the query-rotation kernel; it waits for it (cudaGridDependencySynchronize) before reading q.
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(args->num_splits, args->view.num_kv_heads * args->head_chunks, args->view.num_seqs);
  cfg.blockDim = dim3(Cfg::kWarps * 32);
  cfg.dynamicSmemBytes = Cfg::kSmem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  TQKV_CUDA_RETURN_IF_ERROR(cudaLaunchKernelEx(&cfg, kernel, *args));
  TQKV_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return Status::ok();
}

// Expands to one `case` per head size for a fixed (KB, VB) pair.
#define TQKV_DECODE_CASES(KB, VB)                                                   \
  if (kb == KB && vb == VB) {                                                       \
    switch (d) {                                                                    \
      case 64: return launch_decode_split<64, KB, VB>(args, stream, occupancy);                \
      case 80: return launch_decode_split<80, KB, VB>(args, stream, occupancy);                \
      case 96: return launch_decode_split<96, KB, VB>(args, stream, occupancy);                \
      case 128: return launch_decode_split<128, KB, VB>(args, stream, occupancy);              \
      case 256: return launch_decode_split<256, KB, VB>(args, stream, occupancy);              \
      default: break;                                                               \
    }                                                                               \
  }

// One per decode_*.cu file; each returns kUnsupported when it does not hold the combination,
// so the dispatcher can try the next file. `occupancy` non-null: query CTAs per SM instead.
Status decode_split_f16(int d, int kb, int vb, const DecodeArgs* args, cudaStream_t stream, int* occupancy);
Status decode_split_b8(int d, int kb, int vb, const DecodeArgs* args, cudaStream_t stream, int* occupancy);
Status decode_split_b4(int d, int kb, int vb, const DecodeArgs* args, cudaStream_t stream, int* occupancy);
Status decode_split_b3(int d, int kb, int vb, const DecodeArgs* args, cudaStream_t stream, int* occupancy);
Status decode_split_b2(int d, int kb, int vb, const DecodeArgs* args, cudaStream_t stream, int* occupancy);

}  // namespace tqkv::cuda::detail
