// Host side of one decode-kernel instantiation; included by the decode_*.cu files, each of which
// compiles only the (head_dim, k bits, v bits) combinations it lists.
#pragma once

#include "cuda/cuda_check.h"
#include "cuda/decode_kernel.cuh"

namespace tqkv::cuda::detail {

// Tile copy of the decode kernel: "cpasync" (16-byte cp.async by every lane, the default) or
// "bulk" (one bulk copy per tile on an mbarrier); environment TQKV_CUDA_DECODE_COPY, read once.
bool decode_copy_bulk();

// Which 4-bit operands are dequantized in registers instead of the shared-memory table (DQ bits
// of decode_kernel.cuh: 1 = K, 2 = V, 4 = half of K, 8 = half of V). Default per format:
// default_dq; environment TQKV_CUDA_DECODE_DQ = lut | k | v | kv | kh | vh | kh+v | k+vh | kh+vh
// overrides it (read once; for measurements and tests).
constexpr int default_dq(int kb, int vb) { return (kb == 4 ? 0 : 0) | (vb == 4 ? 0 : 0); }
int decode_dq_override();  // -1: none

// With `occupancy` non-null: only reports how many CTAs fit on one SM (for plan_decode).
template <int D, int KB, int VB>
Status launch_decode_split(const DecodeArgs* args, cudaStream_t stream, int* occupancy) {
  using Cfg = DecodeConfig<D, KB, VB>;
  constexpr int kMask = (KB == 4 ? 5 : 0) | (VB == 4 ? 10 : 0);  // variants that exist for this format
  constexpr int kDefault = default_dq(KB, VB) & kMask;
  const int over = decode_dq_override();
  const int dq = (over < 0 ? kDefault : over) & kMask;
  void (*kernel)(const DecodeArgs) = nullptr;
  if (decode_copy_bulk()) {
    kernel = &decode_split_kernel<D, KB, VB, true, kDefault>;
  } else {
    switch (dq) {
      case 1: kernel = &decode_split_kernel<D, KB, VB, false, 1 & kMask>; break;
      case 2: kernel = &decode_split_kernel<D, KB, VB, false, 2 & kMask>; break;
      case 3: kernel = &decode_split_kernel<D, KB, VB, false, 3 & kMask>; break;
      case 4: kernel = &decode_split_kernel<D, KB, VB, false, 4 & kMask>; break;
      case 6: kernel = &decode_split_kernel<D, KB, VB, false, 6 & kMask>; break;
      case 8: kernel = &decode_split_kernel<D, KB, VB, false, 8 & kMask>; break;
      case 9: kernel = &decode_split_kernel<D, KB, VB, false, 9 & kMask>; break;
      case 12: kernel = &decode_split_kernel<D, KB, VB, false, 12 & kMask>; break;
      default: kernel = &decode_split_kernel<D, KB, VB, false, 0>; break;
    }
  }
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
