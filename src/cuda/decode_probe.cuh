// Timeline probe of the decode kernel, for probe builds only (CMake -DTQKV_CUDA_PROBE=ON defines
// TQKV_DECODE_PROBE; the default build compiles none of it). With DecodeArgs::probe set, thread 0
// of every CTA (lane 0 of every warp for the loop ends) writes the GPU's global nanosecond timer
// at the end of each phase into probe[cta * kProbeSlots + slot]; tqkv_cuda_bench --probe prints
// where a call's time goes (set-up, first page, streaming, the two merges, the spread of CTAs).
#pragma once

#include <cstdint>

namespace tqkv::cuda::detail {

inline constexpr int kProbeSlots = 32;
enum ProbeSlot : int {
  kProbeEntry = 0,      // thread 0 starts
  kProbeTables = 1,     // first pages issued, lookup tables written (before the grid dependency)
  kProbeReady = 2,      // after the barrier: tables and query fragments ready
  kProbeFirstPage = 3,  // warp 0's first page has landed
  kProbeLoopsDone = 4,  // every warp has left the page loop (after the barrier)
  kProbeWarpMerge = 5,  // thread 0 has merged its outputs of the warps
  kProbeEnd = 6,        // after the fused merge (or the partial's write)
  kProbeSm = 7,         // SM id
  kProbeCtaPages = 8,   // pages of this CTA
  kProbeStarted = 9,    // thread 0: its warp's first pages issued
  kProbeRotated = 10,   // thread 0: its query row rotated (fused query rotation)
  kProbeLastWarpTables = 11,  // the last warp: tables written and its row rotated
  kProbeRowsStored = 12,      // thread 0: every warp's rows stored for the warp merge
  kProbeClusterIn = 13,       // thread 0: the cluster's partials may be read (fused merge)
  kProbeMerged = 14,          // thread 0: this CTA's merged rows y complete (fused merge)
  kProbeWarpEnd = 16,   // + warp: the warp left the page loop (up to 16 warps)
};

#ifdef TQKV_DECODE_PROBE
// Set by the bench around a probed call; launch_chain copies it into DecodeArgs::probe.
extern unsigned long long* g_decode_probe;
__device__ __forceinline__ unsigned long long probe_clock() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}
__device__ __forceinline__ unsigned long long* probe_row(unsigned long long* probe) {
  const unsigned cta = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  return probe + static_cast<size_t>(cta) * kProbeSlots;
}
#define TQKV_PROBE(slot, cond)                                                   \
  do {                                                                           \
    if (args.probe && (cond)) probe_row(args.probe)[(slot)] = probe_clock();     \
  } while (0)
#define TQKV_PROBE_CTA_INFO(pages)                                               \
  do {                                                                           \
    if (args.probe && threadIdx.x == 0) {                                        \
      unsigned sm;                                                               \
      asm volatile("mov.u32 %0, %%smid;" : "=r"(sm));                            \
      probe_row(args.probe)[kProbeSm] = sm;                                      \
      probe_row(args.probe)[kProbeCtaPages] = static_cast<unsigned long long>(pages); \
    }                                                                            \
  } while (0)
#else
#define TQKV_PROBE(slot, cond) do {} while (0)
#define TQKV_PROBE_CTA_INFO(pages) do {} while (0)
#endif

}  // namespace tqkv::cuda::detail
