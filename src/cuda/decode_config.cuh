// What the decode kernel (decode_kernel.cuh) and its launchers share: the call's arguments
// (DecodeArgs), the shared-memory plan of each instantiation (decode_shape, also evaluated on the
// host by plan_decode) and its compile-time form (DecodeConfig).
#pragma once

#include <cstdint>

#include "cuda/decode_fused_merge.cuh"
#include "cuda/kv_fetch.cuh"
#include "tqkv/kv_layout.h"

namespace tqkv::cuda::detail {

struct DecodeArgs {
  PagedKVView view;
  const float* q_rot;   // [num_seqs][num_q_heads][D]: scale * P q (or scale * q for fp16 K)
  float* part_o;        // [num_splits][num_seqs][num_q_heads][D] normalised partial outputs
  float* part_lse;      // [num_splits][num_seqs][num_q_heads] log2-sum-exp2 (-inf: empty)
  int32_t num_q_heads;
  int32_t group;        // num_q_heads / num_kv_heads
  int32_t head_chunks;  // ceil(group / 8)
  int32_t num_splits;
  float softcap;        // 0 = off
  int32_t window;       // 0 = off
  // Prefill (attention_prefill): grid z runs over query rows, view.num_seqs is the row count;
  // row r belongs to sequence row_seq[r] and sees positions [0, row_len[r]). Null for decode.
  const int32_t* row_seq = nullptr;
  const int32_t* row_len = nullptr;
  // MODE 5 (fused query rotation): the raw queries [rows][num_q_heads][D], rotated and scaled by
  // the decode kernel itself (q_rot = q_scale * P q, P by the fast Walsh-Hadamard transform with
  // q_signs, or the dense q_dense below; both null: fp16 K, q_rot = q_scale * q); it also writes
  // q_rot for the merge's sink split. Null: q_rot comes from rotate_query_kernel.
  const void* q_in = nullptr;
  int32_t q_f32 = 1;  // q_in is fp32 (else fp16)
  const float* q_signs = nullptr;
  // MODE 5 with a dense rotation (head sizes 80 and 96): P row-major [D][D], q_rot = q_scale * P q
  // computed by all warps of the CTA in pieces of 16 outputs (rotate_dense in decode_kernel.cuh); null with q_signs or
  // fp16 K.
  const float* q_dense = nullptr;
  float q_scale = 1.f;
  // Fused merge (decode_fused_merge.cuh; decode, launched as clusters of num_splits <= 8
  // CTAs along x): non-null `out` = the CTAs combine their partials in the cluster and write
  // out[num_seqs][num_q_heads][D] (fp32 or fp16) rotated back by x = P^T y; part_o / part_lse and
  // merge_splits_kernel are not used. out_rotation: V's rotation (null: fp16 V, no rotation);
  // out_signs: its Hadamard signs (P^T y by the fast transform), null for a dense P.
  void* out = nullptr;
  int32_t out_f32 = 1;
  const float* out_rotation = nullptr;
  const float* out_signs = nullptr;
#ifdef TQKV_DECODE_PROBE
  unsigned long long* probe = nullptr;  // decode_probe.cuh: the timeline of every CTA (probe builds only)
#endif
};

// Shared-memory plan of one instantiation; also evaluated on the host by plan_decode.
struct DecodeShape {
  int warps, stages, lut_bytes, ring_bytes, merge_bytes, smem_bytes;
};
inline constexpr int kSmemBudget = 225 * 1024;
inline constexpr int kScratchBytes = 2 * 256 * 4;  // centroids staged while building tables
// 512 bytes that held the removed bulk-copy variant's mbarriers: kept, so that the shared-memory
// layout and the ring depths stay the ones measured on the device.
inline constexpr int kMbarBytes = 16 * 4 * 8;
constexpr DecodeShape decode_shape(int d, int kb, int vb) {
  const int stage = static_cast<int>(tile_bytes(kPage, d, kb) + tile_bytes(kPage, d, vb));
  const int lut = lut_bytes_of(kb, vb);
  int warps = 4, stages = 2;
  if (kb == 16 && vb == 16) {
    warps = 4;
    stages = stage <= 8192 ? 3 : 2;
  } else {
    warps = d <= 128 ? 16 : 8;  // 16 warps need <= 128 registers per thread
    stages = 3;
    while (lut + kScratchBytes + kMbarBytes + warps * stages * stage > kSmemBudget) {
      if (stages > 2) --stages; else warps /= 2;
    }
  }
  const int ring = warps * stages * stage;
  // per warp: m[8], l[8], O[8][d + 12] (padded rows); then the fused merge's area
  const int merge = warps * (16 + 8 * (d + 12)) * 4 + fused_merge_bytes(d);
  return {warps, stages, lut, ring, merge, lut + kScratchBytes + kMbarBytes + (ring > merge ? ring : merge)};
}

template <int D, int KB, int VB>
struct DecodeConfig {
  static constexpr DecodeShape kShape = decode_shape(D, KB, VB);
  static constexpr int kWarps = kShape.warps;
  static constexpr int kStages = kShape.stages;
  static constexpr int kTileK = static_cast<int>(tile_bytes(kPage, D, KB));
  static constexpr int kTileV = static_cast<int>(tile_bytes(kPage, D, VB));
  static constexpr int kStageBytes = kTileK + kTileV;
  static constexpr int kLut = kShape.lut_bytes;
  static constexpr int kSmem = kShape.smem_bytes;
  static_assert(kSmem <= 227 * 1024, "decode kernel shared memory over the sm_90 limit");
};

// Head sizes whose queries the decode kernel may rotate by a dense P (DecodeArgs::q_dense).
template <int D>
constexpr bool q_dense_possible() { return D == 80 || D == 96; }

}  // namespace tqkv::cuda::detail
