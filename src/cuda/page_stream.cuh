// One warp's stream of K/V page tiles into its ring of shared-memory slots, as the decode kernel
// (decode_kernel.cuh) and the tiled prefill kernel (prefill_kernel.cuh) both run it: the warp takes
// the CTA's pages warp, warp + W, ... of one (sequence, KV head), and each lane copies its 16-byte
// pieces of a page's K tile and V tile with cp.async into slot i % kStages.
#pragma once

#include <cstddef>
#include <cstdint>

#include "cuda/device_utils.cuh"

namespace tqkv::cuda::detail {

template <int kTileK, int kTileV, int kStages>
struct PageStream {
  static constexpr int kStageBytes = kTileK + kTileV;
  const int32_t* page_row;  // the sequence's page-table row, indexed by page position
  int first;                // position of this warp's page 0
  int step;                 // positions between two pages of this warp (the CTA's warp count)
  int count;                // this warp's pages
  const uint8_t* k_base;    // this lane's 16 bytes of physical page 0's K tile (of this KV head)
  const uint8_t* v_base;
  size_t k_stride, v_stride;  // bytes between physical pages
  uint8_t* ring_lane;         // this lane's 16 bytes of the warp's slot 0
  int lane;
  // Where the V bytes at tile offset o land, relative to o: vdelta, or vdelta512 when
  // o % 1024 == 512 (a swizzled V tile; both 0 for a plain one).
  int vdelta = 0, vdelta512 = 0;
  // Physical page ids, 32 at a time: lane l holds the id of this warp's page ids_base + l, so the
  // page-table read is off the per-page critical path.
  int ids_base = -1000000;
  int ids = 0;
  int slot = 0;  // ring slot of the next page to issue (= i % kStages, kept incrementally)

  // Issues this warp's i-th page (i = 0, 1, ... in order). Warp-uniform call.
  __device__ __forceinline__ void issue(int i) {
    if (i >= ids_base + 32) {
      ids_base = i;
      const int ii = i + lane;
      ids = ii < count ? page_row[first + ii * step] : 0;
    }
    const int phys = __shfl_sync(0xffffffffu, ids, i - ids_base);
    const uint8_t* ksrc = k_base + static_cast<size_t>(phys) * k_stride;
    const uint8_t* vsrc = v_base + static_cast<size_t>(phys) * v_stride;
    uint8_t* dst = ring_lane + slot * kStageBytes;
    slot = slot + 1 == kStages ? 0 : slot + 1;
#pragma unroll
    for (int o = 0; o < kTileK; o += 32 * 16)
      if (o + lane * 16 < kTileK) cp_async16(dst + o, ksrc + o);
#pragma unroll
    for (int o = 0; o < kTileV; o += 32 * 16)
      if (o + lane * 16 < kTileV) cp_async16(dst + kTileK + o + (o % 1024 == 512 ? vdelta512 : vdelta), vsrc + o);
  }
  // The first kStages - 1 pages, one commit group each (empty groups past the warp's pages).
  __device__ __forceinline__ void start() {
#pragma unroll
    for (int i = 0; i < kStages - 1; ++i) {
      if (i < count) issue(i);
      cp_async_commit();
    }
  }
};

}  // namespace tqkv::cuda::detail
