// The byte layout of the paged KV cache, defined once for the CPU and CUDA code alike.
// docs/formats.md describes the same layout in prose; keep the two in step.
//
// A layer's cache is two arrays of pages, one for K and one for V. A page holds `page_size`
// consecutive tokens of one sequence for every KV head of the layer:
//
//   pages : [num_pages][num_kv_heads] tiles of tile_bytes each (page-major, then head)
//
// A tile (one page, one head, one side) is either
//   bits == 16 (uncompressed):  uint16 fp16 values[page_size][head_dim]
//   bits in {2, 3, 4, 8} (TurboQuant):
//       uint8  indices[page_size][index_bytes]   codebook indices, bitstream (below)
//       uint16 scales[page_size]                 fp16 norm-corrected scale of each token
//       zero padding up to a multiple of 16 bytes
//
// Index bitstream: coordinate j of a vector occupies bits [j*bits, (j+1)*bits) of the vector's
// index_bytes, counting from bit 0 of byte 0 (little-endian, LSB first). For 4 bits the even
// coordinate is the low nibble; for 3 bits 8 coordinates fill 3 bytes. head_dim % 8 == 0, so
// every vector starts on a byte boundary.
//
// A TurboQuant vector decodes to  x~ = scale * P^T c[idx]  where P is the layer's rotation
// (PagedKVView::rotation) and c the Lloyd-Max centroids for (head_dim, bits).
#pragma once

#include <cstdint>

#include "tqkv/host_device.h"

namespace tqkv {

inline constexpr int kF16Bits = 16;          // "bits" value that means fp16, uncompressed
inline constexpr int kTileAlignment = 16;    // every tile starts on a 16-byte boundary
inline constexpr int kDefaultPageSize = 16;  // tokens per page

TQKV_HD constexpr bool is_valid_kv_bits(int bits) {
  return bits == 2 || bits == 3 || bits == 4 || bits == 8 || bits == kF16Bits;
}
TQKV_HD constexpr bool is_valid_head_dim(int head_dim) {
  return head_dim >= 64 && head_dim <= 256 && head_dim % 8 == 0;
}
// Bytes of packed indices for one vector (TurboQuant sides only).
TQKV_HD constexpr int64_t index_bytes(int head_dim, int bits) {
  return static_cast<int64_t>(head_dim) * bits / 8;
}
TQKV_HD constexpr int64_t round_up(int64_t x, int64_t a) { return (x + a - 1) / a * a; }

// Bytes of one (page, head) tile of one side.
TQKV_HD constexpr int64_t tile_bytes(int page_size, int head_dim, int bits) {
  return bits == kF16Bits
             ? round_up(static_cast<int64_t>(page_size) * head_dim * 2, kTileAlignment)
             : round_up(page_size * (index_bytes(head_dim, bits) + 2), kTileAlignment);
}
// Offset of the fp16 scales inside a TurboQuant tile.
TQKV_HD constexpr int64_t tile_scales_offset(int page_size, int head_dim, int bits) {
  return page_size * index_bytes(head_dim, bits);
}
// Bytes one token costs on one side for one head, padding included (for capacity reports).
TQKV_HD constexpr double bytes_per_token_per_head(int page_size, int head_dim, int bits) {
  return static_cast<double>(tile_bytes(page_size, head_dim, bits)) / page_size;
}

// Coordinate j of a packed vector. `p` points at the vector's first index byte.
TQKV_HD uint32_t unpack_index(const uint8_t* p, int bits, int j) {
  const int bit = j * bits;
  const int byte = bit >> 3;
  const int shift = bit & 7;
  uint32_t w = p[byte];
  if (shift + bits > 8) w |= static_cast<uint32_t>(p[byte + 1]) << 8;
  return (w >> shift) & ((1u << bits) - 1u);
}
// Writes coordinate j; the destination bits must be zero beforehand (vectors are cleared first).
TQKV_HD void pack_index(uint8_t* p, int bits, int j, uint32_t idx) {
  const int bit = j * bits;
  const int byte = bit >> 3;
  const int shift = bit & 7;
  const uint32_t w = idx << shift;
  p[byte] = static_cast<uint8_t>(p[byte] | (w & 0xffu));
  if (shift + bits > 8) p[byte + 1] = static_cast<uint8_t>(p[byte + 1] | (w >> 8));
}

// One side (K or V) of one layer.
struct KVSideView {
  uint8_t* pages = nullptr;          // [num_pages][num_kv_heads][tile_bytes]
  int32_t bits = kF16Bits;           // 2, 3, 4, 8 (TurboQuant) or 16 (fp16)
  int64_t tile_bytes = 0;            // tqkv::tile_bytes(page_size, head_dim, bits)
  const float* centroids = nullptr;  // [1 << bits] Lloyd-Max centroids (unit-vector scale); null for fp16
};

// The one description of a layer's paged cache that every attention kernel (CPU or CUDA) takes.
// All pointers are host pointers for CPU kernels and device pointers for CUDA kernels.
struct PagedKVView {
  KVSideView k, v;
  int32_t num_kv_heads = 0;
  int32_t head_dim = 0;
  int32_t page_size = kDefaultPageSize;
  int32_t num_seqs = 0;
  const int32_t* page_table = nullptr;  // [num_seqs][max_pages_per_seq] physical page ids
  int32_t max_pages_per_seq = 0;        // row stride of page_table
  const int32_t* seq_lens = nullptr;    // [num_seqs] tokens in each sequence: positions 0 .. len-1
  // [num_seqs] logical page held in page_table[s][0]; earlier pages were evicted (sliding window).
  // Token at position t lives in row entry (t / page_size - first_page[s]). nullptr means all 0.
  const int32_t* first_page = nullptr;
  // [head_dim][head_dim] row-major rotation P (y = P x) shared by K and V; null when both are fp16.
  const float* rotation = nullptr;
  // [head_dim] +-1 signs when P is the randomized Hadamard P = H diag(signs) / sqrt(head_dim)
  // (H the Sylvester Walsh-Hadamard matrix); lets kernels use a fast transform. Null otherwise.
  const float* hadamard_signs = nullptr;
  // Attention sinks (docs/formats.md, "Attention sinks"): the first `sink_tokens` positions of each
  // sequence are also held exactly, in fp16, in sink tiles [slot][num_kv_heads][sink tile] of
  // tile_bytes(sink_tokens, head_dim, 16) bytes (rows = positions 0 .. sink_tokens-1), each side in
  // its own space: P x when that side is TurboQuant, x when it is fp16. sink_slot[s] is sequence s's
  // slot. Attention takes positions < sink_tokens from the sink tiles and the rest from the pages.
  // 0 = no sinks (the sink pointers are then unused).
  int32_t sink_tokens = 0;
  // quantize_and_store only: the encoder's scale search for 2-4-bit sides (CodecConfig::scale_search,
  // docs/formats.md): the same bytes layout, written by the generic quantize kernel. 0 = off.
  int32_t scale_search = 0;
  uint8_t* sink_k = nullptr;
  uint8_t* sink_v = nullptr;
  // [num_seqs] sequence s's slot in the sink tiles and in the recent rings (both are per slot).
  const int32_t* sink_slot = nullptr;
  // Recent tokens (docs/formats.md, "Recent tokens"): the last `recent_tokens` positions of each
  // sequence, [max(len - recent_tokens, sink_tokens), len), are also held exactly, in fp16, in a
  // ring [slot][num_kv_heads][ring tile] of tile_bytes(recent_tokens, head_dim, 16) bytes: position
  // t in row t % recent_tokens, each side in its own space as for the sinks. Attention takes them
  // from the ring and the older positions from the pages; len is the sequence length at the time
  // of the call, so a decode step's query sees its recent_tokens predecessors exactly.
  // 0 = off (the ring pointers are then unused).
  int32_t recent_tokens = 0;
  uint8_t* recent_k = nullptr;
  uint8_t* recent_v = nullptr;
  // First position attention takes from the recent ring for sequence s (len when the ring is off).
  TQKV_HD int64_t recent_from(int32_t s) const {
    const int64_t len = seq_lens[s];
    if (recent_tokens <= 0) return len;
    const int64_t r = len - recent_tokens;
    return r > sink_tokens ? r : sink_tokens;
  }

  // The sink tiles seen as a view of their own: fp16 sides, one "page" of sink_tokens rows per
  // sequence, page table = sink_slot. Kernels run their fp16 path over it.
  TQKV_HD PagedKVView sinks() const { return exact_copies(sink_k, sink_v, sink_tokens); }
  // The recent rings seen as a view of their own: fp16 sides, one "page" of recent_tokens rows per
  // sequence, page table = sink_slot. Position t of the sequence is ring position t % recent_tokens,
  // so a run of keys [t0, t1) (t1 - t0 <= recent_tokens) is at most two runs of ring positions.
  TQKV_HD PagedKVView recent() const { return exact_copies(recent_k, recent_v, recent_tokens); }
  // Where position `pos` of sequence s, KV head h, has its exact fp16 copy (a sink tile row or its
  // ring row; `k_side` picks K or V), in the side's own space; null when it has none. Host code
  // (reference attention, read-back); the kernels find the rows in bulk.
  const uint16_t* exact_row(bool k_side, int32_t s, int32_t h, int64_t pos) const {
    const bool sink = pos < sink_tokens;
    if (!sink && (recent_tokens <= 0 || pos < recent_from(s))) return nullptr;
    const int32_t rows = sink ? sink_tokens : recent_tokens;
    const uint8_t* base = sink ? (k_side ? sink_k : sink_v) : (k_side ? recent_k : recent_v);
    const int64_t tb = tile_bytes(rows, head_dim, kF16Bits);
    return reinterpret_cast<const uint16_t*>(base + (static_cast<int64_t>(sink_slot[s]) * num_kv_heads + h) * tb) +
           (pos % rows) * head_dim;
  }
  // sinks() and recent(): tiles of `rows` fp16 rows per slot, as a view without sinks or ring.
  TQKV_HD PagedKVView exact_copies(uint8_t* tk, uint8_t* tv, int32_t rows) const {
    PagedKVView s = *this;
    const int64_t tb = tile_bytes(rows, head_dim, kF16Bits);
    s.k = KVSideView{tk, kF16Bits, tb, nullptr};
    s.v = KVSideView{tv, kF16Bits, tb, nullptr};
    s.page_size = rows;
    s.page_table = sink_slot;
    s.max_pages_per_seq = 1;
    s.first_page = nullptr;
    s.sink_tokens = 0;
    s.sink_k = s.sink_v = nullptr;
    s.sink_slot = nullptr;
    s.recent_tokens = 0;
    s.recent_k = s.recent_v = nullptr;
    return s;
  }

  TQKV_HD uint8_t* k_tile(int32_t page, int32_t head) const {
    return k.pages + (static_cast<int64_t>(page) * num_kv_heads + head) * k.tile_bytes;
  }
  TQKV_HD uint8_t* v_tile(int32_t page, int32_t head) const {
    return v.pages + (static_cast<int64_t>(page) * num_kv_heads + head) * v.tile_bytes;
  }
};

}  // namespace tqkv
