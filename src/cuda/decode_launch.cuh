// Host side of one decode-kernel instantiation; included by the decode_*.cu files, each of which
// compiles only the (head_dim, k bits, v bits) combinations it lists.
#pragma once

#include <cstdlib>
#include <string>

#include "cuda/cuda_check.h"
#include "cuda/decode_kernel.cuh"

namespace tqkv::cuda::detail {

// Fused merge of the splits inside the decode kernel (decode_fused_merge.cuh) for decode calls
// of at most kMaxFusedSplits splits (the portable cluster size); environment
// TQKV_CUDA_DECODE_MERGE=kernel (read once) keeps merge_splits_kernel for every call instead.
inline constexpr int kMaxFusedSplits = 8;
static_assert(FusedMergeSmem<128>::kMaxSplits == kMaxFusedSplits, "the fused merge maps the shared memory of every split in the cluster");
bool fused_merge_enabled();

// The MODE that launches run (environment TQKV_CUDA_DECODE_KERNEL, read once): 5 (unset or
// "fusedq": the kernel rotates its own queries where launch_chain hands it the raw ones, else 6)
// or 6 ("v3": always after rotate_query_kernel).
inline int decode_mode_selected() {
  static const int mode = [] {
    const char* e = std::getenv("TQKV_CUDA_DECODE_KERNEL");
    return e != nullptr && std::string(e) == "v3" ? 6 : 5;
  }();
  return mode;
}

// With `occupancy` non-null: only reports how many CTAs fit on one SM (for plan_decode).
template <int D, int KB, int VB, int MODE>
Status launch_decode_mode(const DecodeArgs* args, cudaStream_t stream, int* occupancy) {
  using Cfg = DecodeConfig<D, KB, VB>;
  auto* kernel = &decode_split_kernel<D, KB, VB, MODE>;
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
  cudaLaunchAttribute attr[2];
  int na = 0;
  if (MODE != 5) {  // MODE 5 is the chain's first kernel: it reads q at once
    attr[na].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[na++].val.programmaticStreamSerializationAllowed = 1;
  }
  // Fused merge: the splits of one (sequence, head chunk) form one cluster. One split needs no
  // attribute (every launch is a cluster of one CTA; cluster barriers then act as CTA barriers).
  if (args->out && args->num_splits > 1) {
    attr[na].id = cudaLaunchAttributeClusterDimension;
    attr[na].val.clusterDim.x = static_cast<unsigned>(args->num_splits);
    attr[na].val.clusterDim.y = 1;
    attr[na++].val.clusterDim.z = 1;
  }
  cfg.attrs = attr;
  cfg.numAttrs = na;
  TQKV_CUDA_RETURN_IF_ERROR(cudaLaunchKernelEx(&cfg, kernel, *args));
  TQKV_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return Status::ok();
}

template <int D, int KB, int VB>
Status launch_decode_split(const DecodeArgs* args, cudaStream_t stream, int* occupancy) {
  // MODE 5 only where launch_chain handed over the raw queries (and the occupancy query, which
  // is the same for both).
  if (decode_mode_selected() == 5 && (!args || args->q_in)) return launch_decode_mode<D, KB, VB, 5>(args, stream, occupancy);
  return launch_decode_mode<D, KB, VB, 6>(args, stream, occupancy);
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
