// Page dequantization (dequantize_pages): the rows of given pages back to fp32 in the original
// space. For tests and debugging; attention reads the pages directly.
#include <cuda_fp16.h>

#include <cstdint>

#include "cuda/cuda_check.h"
#include "cuda/quantize_internal.h"
#include "tqkv/kv_layout.h"

namespace tqkv::cuda {
namespace {

constexpr int kWarpsPerBlock = 8;
constexpr int kMaxD = 256;

// One warp per (page, head, token row): x = scale * P^T c[idx] (dense P^T), or fp16 copy.
__global__ void dequantize_kernel(const PagedKVView v, int side_id, const int32_t* pages, int num_pages,
                                  float* out) {
  __shared__ float ys[kWarpsPerBlock][kMaxD];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int D = v.head_dim, P = v.page_size, H = v.num_kv_heads;
  const KVSideView& side = side_id == 0 ? v.k : v.v;
  const long long total = static_cast<long long>(num_pages) * H * P;
  for (long long item = static_cast<long long>(blockIdx.x) * kWarpsPerBlock + warp; item < total;
       item += static_cast<long long>(gridDim.x) * kWarpsPerBlock) {
    const int row = static_cast<int>(item % P);
    const int head = static_cast<int>((item / P) % H);
    const int pi = static_cast<int>(item / (static_cast<long long>(P) * H));
    const uint8_t* tile = side_id == 0 ? v.k_tile(pages[pi], head) : v.v_tile(pages[pi], head);
    float* dst = out + static_cast<size_t>(item) * D;
    if (side.bits == kF16Bits) {
      const uint16_t* src = reinterpret_cast<const uint16_t*>(tile) + static_cast<size_t>(row) * D;
      for (int j = lane; j < D; j += 32) dst[j] = __half2float(__ushort_as_half(src[j]));
      continue;
    }
    const int nbytes = D * side.bits / 8;
    const uint8_t* idx = tile + static_cast<size_t>(row) * nbytes;
    const float scale = __half2float(__ushort_as_half(
        reinterpret_cast<const uint16_t*>(tile + tile_scales_offset(P, D, side.bits))[row]));
    for (int j = lane; j < D; j += 32) ys[warp][j] = side.centroids[unpack_index(idx, side.bits, j)];
    __syncwarp();
    for (int i = lane; i < D; i += 32) {
      float acc = 0.f;
      for (int j = 0; j < D; ++j) acc = fmaf(v.rotation[static_cast<size_t>(j) * D + i], ys[warp][j], acc);
      dst[i] = scale * acc;
    }
    __syncwarp();
  }
}

}  // namespace

Status dequantize_pages(const PagedKVView& view, int side, const int32_t* pages, int32_t num_pages,
                        float* out, cudaStream_t stream) {
  TQKV_RETURN_IF_ERROR(check_quant_view(view));
  if (side != 0 && side != 1) return invalid_argument("side must be 0 (K) or 1 (V)");
  if (num_pages < 0) return invalid_argument("negative num_pages");
  if (num_pages == 0) return Status::ok();
  if (!pages || !out) return invalid_argument("null pages or out");
  const long long items = static_cast<long long>(num_pages) * view.num_kv_heads * view.page_size;
  // Enough resident blocks to fill the device; the kernel loops over the rest (grid-stride).
  int dev = 0, sms = 132;
  TQKV_CUDA_RETURN_IF_ERROR(cudaGetDevice(&dev));
  TQKV_CUDA_RETURN_IF_ERROR(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  const long long blocks = (items + kWarpsPerBlock - 1) / kWarpsPerBlock;
  const int grid = static_cast<int>(blocks < 3LL * sms ? blocks : 3LL * sms);
  dequantize_kernel<<<grid, kWarpsPerBlock * 32, 0, stream>>>(view, side, pages, num_pages, out);
  TQKV_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return Status::ok();
}

}  // namespace tqkv::cuda
