// How the decode kernel turns one page tile (staged in shared memory) into tensor-core operands.
//
// Lanes: g = lane / 4 (0..7), t = lane % 4.
// K side (A operand of S^T = K Q^T, pairs along coordinates): the lane reads token rows g and
//   g + 8 and, in each, the contiguous chunk of D/4 coordinates [t*D/4, (t+1)*D/4); pair j of
//   the chunk is coordinates t*D/4 + 2j, +1.
// V side (A operand of O^T = V^T P^T, pairs along TOKENS): the lane reads token rows 2t, 2t+1,
//   2t+8, 2t+9 and, in each, the chunk of D/8 coordinates [g*D/8, (g+1)*D/8); an operand
//   register holds (V[2t][c], V[2t+1][c]) for one coordinate c, built from the two rows' index
//   fields joined into one table entry. No transposition is needed.
// A joined entry e = lo | hi << B (B <= 4) indexes a per-lane-replicated table in shared memory.
// K and V tables are interleaved, 256 bytes per entry: bytes [e*256 + 4L] hold lane L's copy of
// K entry e and [e*256 + 128 + 4L] its copy of V entry e. So 32 lanes looking up 32 random
// entries hit 32 different banks, and the byte offset (e << 8) | (4L [+128]) comes out of ONE
// byte-permute when e is a byte of the packed data (B = 4, 8). Entry e = half2(c[e & m], c[e >> B])
// with m = 2^B - 1; for B == 8 a table entry is one value (low half) and a pair takes two
// lookups; B == 16 needs no table.
#pragma once

#include <cstdint>

#include "cuda/device_utils.cuh"
#include "tqkv/kv_layout.h"

namespace tqkv::cuda::detail {

inline constexpr int kPage = 16;  // tokens per page the decode kernels are built for

template <int B>
struct LutTraits {
  static constexpr int kEntries = B == 16 ? 0 : (B == 8 ? 256 : (1 << (2 * B)));
};
// Bytes of the interleaved K/V table for a (k bits, v bits) pair.
constexpr int lut_bytes_of(int kb, int vb) {
  const int ek = kb == 16 ? 0 : (kb == 8 ? 256 : (1 << (2 * kb)));
  const int ev = vb == 16 ? 0 : (vb == 8 ? 256 : (1 << (2 * vb)));
  return (ek > ev ? ek : ev) * 256;
}

// Fills one side's half of the interleaved table (side 0 = K at +0, 1 = V at +128) from its
// centroids (global, [1 << B] floats). All threads take part; the caller synchronises afterwards.
template <int B>
__device__ __forceinline__ void build_lut(uint8_t* lut, int side, const float* centroids, float* scratch) {
  constexpr int L = B == 16 ? 1 : (1 << B);
  constexpr int E = LutTraits<B>::kEntries;
  for (int i = threadIdx.x; i < L; i += blockDim.x) scratch[i] = centroids[i];
  __syncthreads();
  for (int i = threadIdx.x; i < E * 8; i += blockDim.x) {  // entry e, copies of lanes 4q .. 4q + 3
    const int e = i >> 3, q = i & 7;
    uint32_t v;
    if constexpr (B == 8) {
      v = static_cast<uint32_t>(__half_as_ushort(__float2half_rn(scratch[e])));
    } else {
      constexpr int m = (1 << B) - 1;
      v = pack_half2(scratch[e & m], scratch[e >> B]);
    }
    *reinterpret_cast<uint4*>(lut + e * 256 + side * 128 + q * 16) = make_uint4(v, v, v, v);
  }
}

// Like build_lut for B <= 4 (at most 16 centroids), without staging through shared memory: lane
// `src_lane0 + i` of every warp holds centroid i in `held` (loaded straight from global memory at
// kernel entry, so that load overlaps the others), and entries are joined by shuffles. All
// threads take part; the E * 8 stores per side are a multiple of 32, so a warp runs each of its
// iterations whole (full-mask shuffles). The caller synchronises afterwards.
// Both builders write four lanes' copies of an entry with one 16-byte store: a quarter of the
// stores and shuffles of one copy per thread (a CTA writes 16K words of table before its first
// page can be scored, and the pages in flight wait meanwhile).
template <int B>
__device__ __forceinline__ void build_lut_shfl(uint8_t* lut, int side, float held, int src_lane0) {
  static_assert(B <= 4, "16 centroids at most");
  constexpr int E = LutTraits<B>::kEntries;
  static_assert(E * 8 % 32 == 0, "whole warps");
  constexpr int m = (1 << B) - 1;
  for (int i = threadIdx.x; i < E * 8; i += blockDim.x) {  // entry e, copies of lanes 4q .. 4q + 3
    const int e = i >> 3, q = i & 7;
    const float lo = __shfl_sync(0xffffffffu, held, src_lane0 + (e & m));
    const float hi = __shfl_sync(0xffffffffu, held, src_lane0 + (e >> B));
    const uint32_t v = pack_half2(lo, hi);
    *reinterpret_cast<uint4*>(lut + e * 256 + side * 128 + q * 16) = make_uint4(v, v, v, v);
  }
}

__device__ __forceinline__ uint32_t lut_at(const uint8_t* lut, uint32_t off) {
  return *reinterpret_cast<const uint32_t*>(lut + off);
}
// (byte i of w) << 8 | (low byte of lane4): the table offset of entry "byte i" for this lane.
__device__ __forceinline__ uint32_t entry_off(uint32_t w, int i, uint32_t lane4) {
  return __byte_perm(w, lane4, 0x5504u | (static_cast<uint32_t>(i) << 4));
}

constexpr int low_bit(int x) { return x & -x; }

// NC consecutive coordinates (B bits each) of one row, held in registers. ALIGN: a power of two
// that the chunk's bit offset inside the tile is known to be a multiple of (compile time).
template <int B, int NC, int ALIGN>
struct Chunk {
  static constexpr int kBits = NC * B;
  static constexpr int kWords = (kBits + 31) / 32;
  uint32_t w[kWords];

  __device__ __forceinline__ void load(const uint8_t* tile, int bit_off) {
    const uint32_t* base = reinterpret_cast<const uint32_t*>(tile) + (bit_off >> 5);
    if constexpr (ALIGN % 32 == 0) {
      if constexpr (ALIGN % 128 == 0 && kWords % 4 == 0) {
#pragma unroll
        for (int i = 0; i < kWords / 4; ++i) {
          const uint4 v = reinterpret_cast<const uint4*>(base)[i];
          w[4 * i] = v.x; w[4 * i + 1] = v.y; w[4 * i + 2] = v.z; w[4 * i + 3] = v.w;
        }
      } else if constexpr (ALIGN % 64 == 0 && kWords % 2 == 0) {
#pragma unroll
        for (int i = 0; i < kWords / 2; ++i) {
          const uint2 v = reinterpret_cast<const uint2*>(base)[i];
          w[2 * i] = v.x; w[2 * i + 1] = v.y;
        }
      } else {
#pragma unroll
        for (int i = 0; i < kWords; ++i) w[i] = base[i];
      }
    } else {  // realign once: one extra word, one funnel shift per word
      const int sh = bit_off & 31;
      uint32_t r[kWords + 1];
#pragma unroll
      for (int i = 0; i <= kWords; ++i) r[i] = base[i];  // stays inside the tile (scales follow)
#pragma unroll
      for (int i = 0; i < kWords; ++i) w[i] = __funnelshift_r(r[i], r[i + 1], sh);
    }
  }

  // n bits (n <= 32) at bit `pos` of the chunk. Called from unrolled loops: pos, n constant.
  __device__ __forceinline__ uint32_t bits(int pos, int n) const {
    const int wi = pos >> 5, s = pos & 31;
    uint32_t v;
    if (s + n <= 32 || wi + 1 >= kWords) {
      v = w[wi] >> s;
    } else {
      v = __funnelshift_r(w[wi], w[wi + 1], s);
    }
    return n == 32 ? v : (v & ((1u << n) - 1u));
  }
  // The n bits at `pos`, moved to bits [dst, dst + n) of the result; the other bits are garbage
  // (the caller masks them while joining fields: one shift per field instead of shift + mask +
  // shift). dst <= 32 - n.
  __device__ __forceinline__ uint32_t field_at(int pos, int n, int dst) const {
    const int wi = pos >> 5, s = pos & 31;
    if (s + n <= 32 || wi + 1 >= kWords) return s >= dst ? w[wi] >> (s - dst) : w[wi] << (dst - s);
    return __funnelshift_r(w[wi], w[wi + 1], s - dst);  // a field that crosses a word: s > 32 - n >= dst
  }
};

// A chunk of NC coordinates (B bits each) made of two runs of one row: run A (BA bytes, 4 or 8)
// then run B (BB bytes, 2 or 4), each loaded by one aligned LDS. Words: run A's, then run B's
// (a 2-byte run B fills the low half of the last word; the high half is zero and never read).
// Used for head size 96 with 4-bit indices (v3, MODE 6), where a contiguous D/4- or D/8-
// coordinate chunk starts on a half-word and needs an extra word plus funnel shifts:
//   K (lane t, D/4 = 24 coordinates): [16t, 16t + 16) then [64 + 8t, 64 + 8t + 8)
//   V (lane g, D/8 = 12 coordinates): [8g, 8g + 8) then [64 + 4g, 64 + 4g + 4)
// Any permutation of the contraction coordinates is exact as long as the query fragments use it;
// the V coordinates are mapped back where the CTA merges its warps (decode_kernel.cuh).
template <int B, int NC, int BA, int BB>
struct SplitChunk {
  static_assert((BA == 4 || BA == 8) && (BB == 2 || BB == 4) && (BA + BB) * 8 == NC * B, "run sizes");
  static constexpr int kBits = NC * B;
  static constexpr int kWords = (kBits + 31) / 32;
  uint32_t w[kWords];
  // off_a, off_b: byte offsets of the two runs in the tile (multiples of BA and BB).
  __device__ __forceinline__ void load(const uint8_t* tile, int off_a, int off_b) {
    if constexpr (BA == 8) {
      const uint2 v = *reinterpret_cast<const uint2*>(tile + off_a);
      w[0] = v.x;
      w[1] = v.y;
    } else {
      w[0] = *reinterpret_cast<const uint32_t*>(tile + off_a);
    }
    if constexpr (BB == 4) w[BA / 4] = *reinterpret_cast<const uint32_t*>(tile + off_b);
    else w[BA / 4] = *reinterpret_cast<const uint16_t*>(tile + off_b);
  }
};

// K operand: pair j (coordinates 2j, 2j+1 of the chunk) as half2 bits. lane4 = 4 * lane.
template <int B, typename C>
__device__ __forceinline__ uint32_t k_pair(const C& c, int j, const uint8_t* lut, uint32_t lane4) {
  if constexpr (B == 16) {
    return c.w[j];
  } else if constexpr (B == 8) {  // coordinates 2j, 2j+1 are bytes 2j, 2j+1 of the chunk
    const uint32_t w = c.w[j >> 1];
    const int b0 = (j & 1) * 2;
    return __byte_perm(lut_at(lut, entry_off(w, b0, lane4)), lut_at(lut, entry_off(w, b0 + 1, lane4)), 0x5410);
  } else if constexpr (B == 4 && C::kBits % 8 == 0) {  // the pair is byte j (chunk realigned to bit 0)
    return lut_at(lut, entry_off(c.w[j >> 2], j & 3, lane4));
  } else {
    constexpr uint32_t kField = ((1u << (2 * B)) - 1u) << 8;
    return lut_at(lut, (c.field_at(2 * B * j, 2 * B, 8) & kField) | lane4);
  }
}

// V operands of one pair of token rows: joined table entries for every coordinate of the chunk,
// precomputed word-wise where the bit width allows (B = 4: two LOP3s give 8 entries).
// m ? a : b bit by bit, one LOP3.
__device__ __forceinline__ uint32_t bit_select(uint32_t m, uint32_t a, uint32_t b) {
  uint32_t r;
  asm("lop3.b32 %0, %1, %2, %3, 0xCA;" : "=r"(r) : "r"(m), "r"(a), "r"(b));
  return r;
}

// lane4 = 4 * lane + 128 (the V half of the table); or lane4 = 4 * lane with OFF = 128 (the V
// half by an immediate offset of the lookup). SEL: nibble joins as one shift + one bit select
// each (ptxas otherwise emits shift + two LOP3).
// Bits p of a chunk word q (global bit 32 q + p) with ((32 q + p) mod 6) < 3 (even = true) or >= 3:
// the 3-bit fields of even / odd index k (field k at bit 3k).
constexpr uint32_t triple_mask(int q, bool even) {
  uint32_t m = 0;
  for (int p = 0; p < 32; ++p)
    if ((((32 * q + p) % 6) < 3) == even) m |= 1u << p;
  return m;
}

template <int B, typename C, int OFF = 0, bool SEL = false>
struct VPairs {
  // Whole bytes per chunk (head sizes 80 and 96 give 40- and 48-bit chunks: the unused top bits
  // of the last word are never read).
  static constexpr bool kNibbles = B == 4 && C::kBits % 8 == 0;
  // 3-bit indices: the joined 6-bit entries of every coordinate precomputed word-wise, as for 4
  // bits: row b shifted up by 3 once per word, then one bit select per word joins a_k and b_k at
  // bit 3k for every even k (and one more for the odd k), so a lookup takes one shift and one
  // LOP3 instead of two of each. The page loop of 3-bit V waits on the ALU pipe (run V9), where
  // these shifts and masks execute. Needs the last entry (bits [3 NC, 3 NC + 3) of shifted b) to
  // stay inside the chunk's words: head sizes 64, 96, 128.
  static constexpr bool kTriples = B == 3 && 3 * C::kBits / B + 3 <= 32 * C::kWords;
  static constexpr int kJoined = (kNibbles || kTriples) ? C::kWords : 1;
  uint32_t even[kJoined], odd[kJoined];
  const C* a;
  const C* b;
  __device__ __forceinline__ void init(const C& ra, const C& rb) {
    a = &ra;
    b = &rb;
    if constexpr (kTriples) {
#pragma unroll
      for (int q = 0; q < C::kWords; ++q) {
        const uint32_t b3 = q == 0 ? rb.w[0] << 3 : __funnelshift_l(rb.w[q - 1], rb.w[q], 3);
        even[q] = bit_select(triple_mask(q, true), ra.w[q], b3);
        odd[q] = bit_select(triple_mask(q, false), ra.w[q], b3);
      }
    }
    if constexpr (kNibbles) {
#pragma unroll
      for (int q = 0; q < C::kWords; ++q) {
        // byte i of even = A[2i] | B[2i] << 4 (coordinate 8q + 2i); odd: coordinate 8q + 2i + 1
        if constexpr (SEL) {
          even[q] = bit_select(0x0F0F0F0Fu, ra.w[q], rb.w[q] << 4);
          odd[q] = bit_select(0x0F0F0F0Fu, ra.w[q] >> 4, rb.w[q]);
        } else {
          even[q] = (ra.w[q] & 0x0F0F0F0Fu) | ((rb.w[q] & 0x0F0F0F0Fu) << 4);
          odd[q] = ((ra.w[q] >> 4) & 0x0F0F0F0Fu) | (rb.w[q] & 0xF0F0F0F0u);
        }
      }
    }
  }
  // Coordinate k as half2 bits (low = row a, high = row b).
  __device__ __forceinline__ uint32_t get(int k, const uint8_t* lut_base, uint32_t lane4) const {
    const uint8_t* lut = lut_base + OFF;
    if constexpr (B == 16) {
      return __byte_perm(a->w[k >> 1], b->w[k >> 1], (k & 1) ? 0x7632 : 0x5410);
    } else if constexpr (B == 8) {
      const uint32_t lo = lut_at(lut, entry_off(a->w[k >> 2], k & 3, lane4));
      const uint32_t hi = lut_at(lut, entry_off(b->w[k >> 2], k & 3, lane4));
      return __byte_perm(lo, hi, 0x5410);
    } else if constexpr (kNibbles) {
      const uint32_t* src = (k & 1) ? odd : even;
      return lut_at(lut, entry_off(src[k >> 3], (k & 7) >> 1, lane4));
    } else if constexpr (kTriples) {  // entry (a_k | b_k << 3) at bit 3k of the joined words
      const uint32_t* src = (k & 1) ? odd : even;
      constexpr uint32_t kField = 63u << 8;
      const int pos = 3 * k, wi = pos >> 5, sh = pos & 31;
      uint32_t v;
      if (sh + 6 <= 32 || wi + 1 >= C::kWords) v = sh >= 8 ? src[wi] >> (sh - 8) : src[wi] << (8 - sh);
      else v = __funnelshift_r(src[wi], src[wi + 1], sh - 8);  // an entry across two words
      return lut_at(lut, (v & kField) | lane4);
    } else {  // entry (a_k | b_k << B) << 8: each field shifted once into place, masked while joined
      constexpr uint32_t kLo = ((1u << B) - 1u) << 8, kHi = kLo << B;
      return lut_at(lut, (a->field_at(B * k, B, 8) & kLo) | (b->field_at(B * k, B, 8 + B) & kHi) | lane4);
    }
  }
};

// fp16 scale of token `row` in a TurboQuant tile (1 for fp16 tiles).
template <int D, int B>
__device__ __forceinline__ float token_scale(const uint8_t* tile, int row) {
  if constexpr (B == 16) {
    return 1.f;
  } else {
    constexpr int off = static_cast<int>(tile_scales_offset(kPage, D, B));
    return __half2float(__ushort_as_half(reinterpret_cast<const uint16_t*>(tile + off)[row]));
  }
}

}  // namespace tqkv::cuda::detail
