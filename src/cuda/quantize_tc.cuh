// Tensor-core quantize-on-write (quantize.cu: the entry point; quantize_old.cu: the earlier kernels).
//
// One warp encodes 8 (token, head) items at a time as one 16-row MMA tile: row g holds the K
// vector of item g, row g + 8 its V vector (K and V share the rotation P). Lane (g = lane / 4,
// t = lane % 4) loads the contiguous quarter [t*D/4, (t+1)*D/4) of both vectors (16-byte loads);
// the MMA contraction index is permuted so that those registers are the lane's A fragments as
// loaded, and the output columns so that the lane ends up holding the contiguous quarter of the
// rotated vectors, ready to pack and store without any exchange.
//
// Rotation
// - Hadamard (D = 128, power of two): P = H diag(s) / sqrt(D), H = H16 (x) H8 over the bits of the
//   coordinate index: signs by XOR on the fp16 operands, H16 on the tensor cores (products of +-1
//   and an fp16 input are exact; fp32 accumulation), H8 as three in-register butterfly stages in
//   fp32. fp32 inputs are split x = hi + lo (two fp16 MMAs) after scaling by a power of two that
//   brings |x| near 2^8 (so lo keeps 11 more bits even for tiny vectors).
// - Dense (D = 96): y = P x as an MMA over D/16 k-steps and D/8 n-tiles with P (times 16) split
//   into fp16 hi + lo parts (2 MMAs; 3 for fp32 inputs: + x_lo * P_hi), fragments pre-arranged in
//   shared memory (one 16-byte load per k-step and n-tile; the kernel template can reuse them
//   for MT m-tiles, built with MT = 1).
// The norm |x|^2 comes from a Gram MMA of the fp16 operands with themselves (exact products, fp32
// accumulation) or, for fp32 inputs, from fp32 FMAs.
//
// Inputs: by default each warp stages its next tile into a per-warp shared buffer by cp.async
// (coalesced copy, swizzled so that the lanes' quarter reads are conflict-free at D = 128) while
// it encodes the current one (TcStage in quantize_tc_impl.cuh); variant 0 loads the quarters from
// global memory directly. Slot ids are loaded one tile ahead; token / head and page / row come from
// multiply-high divisions (FastDiv, quantize_internal.h).
//
// Index search (cheaper than a binary search): u = t * S (S = cells/2 - 2, t = y / |x| in
// [-1, 1]) picks a cell of a uniform grid by one float add of a magic constant (the integer part
// lands in the low mantissa bits); the cell's table entry is 4 * (number of boundaries below the
// cell), and one comparison with the next boundary finishes the count. Each CTA builds the table
// from the side's boundaries and checks that no cell (closed interval) holds more than one
// boundary and that the boundaries ascend; if the check fails the CTA uses the binary search
// instead (same result: the number of boundaries strictly below t, as the CPU encoder).
//
// Scale search (PagedKVView::scale_search; docs/formats.md): the Hadamard kernel with staged
// inputs (SEARCH instantiations) scores the CPU encoder's 7 pre-scales on the rotated values the
// lane already holds (search_alpha: index passes on u * alpha, J from quad sums), then quantizes
// u * alpha with the first best one. The searched sides' tables hold the signed centroids too and
// use a 4/5 grid scale so that u * 1.25 stays on the grid. The dense d = 96 kernel and variant 0
// launch nothing for searching calls (the generic kernel searches).
#pragma once

#include <cstdint>

#include "cuda/quantize_internal.h"
#include "tqkv/cuda_attention.h"

namespace tqkv::cuda::tc {

// Launches the tensor-core kernel for head size 128 (Hadamard) or 96 (dense) when the format pair
// is one it is built for; *launched = false (nothing enqueued) otherwise.
Status quantize_tc_d128(const QuantArgs& a, cudaStream_t stream, bool* launched);
Status quantize_tc_d96(const QuantArgs& a, cudaStream_t stream, bool* launched);

// For same-process old/new comparisons (bench/cuda/bench_quantize.cu): 1 = the pre-tensor-core
// kernels, 0 = the tensor-core kernels where they apply, -1 = environment TQKV_CUDA_QUANT
// (=old selects the previous kernels). Not thread-safe; not for library users.
void set_quantize_kernel_old(int old);
// Tensor-core kernel variant: 0 = inputs read from global memory by the encoding lanes, 1 = inputs
// staged by cp.async (per-warp buffer, next tile in flight; the default). -1 = environment
// (TQKV_CUDA_QUANT=nostage -> 0). Same caveats as above.
void set_quantize_tc_variant(int v);
int quantize_tc_variant();

}  // namespace tqkv::cuda::tc
