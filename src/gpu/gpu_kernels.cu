// Small kernels of the GPU model runtime (gpu_kernels.h). Plain and memory-bound: one block per
// row (token) for the row operations, grid-stride loops for the element-wise ones.
#include <cuda_fp16.h>

#include "cuda/cuda_check.h"
#include "gpu/gpu_kernels.h"
#include "tqkv/fp16.h"
#include "tqkv/kv_layout.h"

namespace tqkv::gpu {

namespace {

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Block-wide sum; every thread gets the result. `red` holds >= 32 floats.
__device__ float block_sum(float v, float* red) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
  v = warp_sum(v);
  __syncthreads();
  if (lane == 0) red[warp] = v;
  __syncthreads();
  float t = lane < nw ? red[lane] : 0.f;
  t = warp_sum(t);
  return t;
}

__device__ __forceinline__ uint64_t mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}
__device__ __forceinline__ float u01(uint64_t h) { return static_cast<float>(h >> 40) * (1.0f / 16777216.0f); }

__global__ void embed_kernel(const uint16_t* emb, const int32_t* tokens, int E, float scale, float* x) {
  const int t = blockIdx.x;
  const uint16_t* row = emb + static_cast<int64_t>(tokens[t]) * E;
  for (int i = threadIdx.x; i < E; i += blockDim.x) x[static_cast<int64_t>(t) * E + i] = fp16_to_float(row[i]) * scale;
}

__global__ void rms_norm_kernel(const float* x, const float* w, int d, float eps, void* out, bool out_f16) {
  __shared__ float red[32];
  const int r = blockIdx.x;
  const float* xr = x + static_cast<int64_t>(r) * d;
  float ss = 0.f;
  for (int i = threadIdx.x; i < d; i += blockDim.x) ss += xr[i] * xr[i];
  ss = block_sum(ss, red);
  const float inv = rsqrtf(ss / d + eps);
  if (out_f16) {
    __half* o = static_cast<__half*>(out) + static_cast<int64_t>(r) * d;
    for (int i = threadIdx.x; i < d; i += blockDim.x) o[i] = __float2half_rn(xr[i] * inv * w[i]);
  } else {
    float* o = static_cast<float*>(out) + static_cast<int64_t>(r) * d;
    for (int i = threadIdx.x; i < d; i += blockDim.x) o[i] = xr[i] * inv * w[i];
  }
}

// grid (T, HQ + 2 HKV), block = head_dim rounded up to whole warps (threads j >= head_dim only
// take part in the reductions and barriers).
__global__ void qkv_post_kernel(QkvPostArgs a) {
  extern __shared__ float sh[];  // [head_dim] + 32
  float* hv = sh;
  float* red = sh + a.head_dim;
  const int t = blockIdx.x, h = blockIdx.y, D = a.head_dim;
  const bool live = static_cast<int>(threadIdx.x) < D;
  const int j = live ? static_cast<int>(threadIdx.x) : 0;
  const int Q = a.n_head * D, KV = a.n_head_kv * D;
  int kind, hh;  // 0 q, 1 k, 2 v
  if (h < a.n_head) { kind = 0; hh = h; }
  else if (h < a.n_head + a.n_head_kv) { kind = 1; hh = h - a.n_head; }
  else { kind = 2; hh = h - a.n_head - a.n_head_kv; }
  const int64_t row = static_cast<int64_t>(t) * (Q + 2 * KV);
  const int off = kind == 0 ? hh * D : (kind == 1 ? Q + hh * D : Q + KV + hh * D);
  float x = live ? a.qkv[row + off + j] : 0.f;
  const float* b = kind == 0 ? a.bq : (kind == 1 ? a.bk : a.bv);
  if (b && live) x += b[hh * D + j];
  const float* nw = kind == 0 ? a.q_norm : (kind == 1 ? a.k_norm : nullptr);
  if (nw) {
    const float ss = block_sum(x * x, red);
    x = x * rsqrtf(ss / D + a.eps) * nw[j];
  }
  if (kind < 2 && a.n_rot > 0) {
    if (live) hv[j] = x;
    __syncthreads();
    const int half = a.n_rot / 2;
    if (live && j < a.n_rot) {
      int i, pa, pb;
      bool first;
      if (a.rope_half) { i = j < half ? j : j - half; pa = i; pb = i + half; first = j < half; }
      else { i = j >> 1; pa = 2 * i; pb = 2 * i + 1; first = (j & 1) == 0; }
      // Angles in double, as the CPU runtime computes them (the phase at long positions).
      const double ang = static_cast<double>(a.pos[t]) * static_cast<double>(a.inv_freq[i]);
      double sd, cd;
      sincos(ang, &sd, &cd);
      const float c = static_cast<float>(cd), s = static_cast<float>(sd);
      const float x0 = hv[pa], x1 = hv[pb];
      x = first ? x0 * c - x1 * s : x0 * s + x1 * c;
    }
  }
  float* dst = kind == 0 ? a.q + static_cast<int64_t>(t) * Q : (kind == 1 ? a.k : a.v) + static_cast<int64_t>(t) * KV;
  if (live) dst[hh * D + j] = x;
}

__global__ void act_mul_kernel(const float* gu, int T, int F, bool gelu, __half* out) {
  const int64_t n = static_cast<int64_t>(T) * F;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = i / F, j = i % F;
    const float g = gu[t * 2 * F + j], u = gu[t * 2 * F + F + j];
    float a;
    if (gelu) {
      const float k = 0.7978845608028654f;
      a = 0.5f * g * (1.0f + tanhf(k * (g + 0.044715f * g * g * g)));
    } else {
      a = g / (1.0f + expf(-g));
    }
    out[i] = __float2half_rn(a * u);
  }
}

__global__ void residual_kernel(float* x, const float* o, const float* w, int d, float eps) {
  __shared__ float red[32];
  const int r = blockIdx.x;
  const float* orow = o + static_cast<int64_t>(r) * d;
  float* xr = x + static_cast<int64_t>(r) * d;
  float inv = 1.f;
  if (w) {
    float ss = 0.f;
    for (int i = threadIdx.x; i < d; i += blockDim.x) ss += orow[i] * orow[i];
    ss = block_sum(ss, red);
    inv = rsqrtf(ss / d + eps);
  }
  for (int i = threadIdx.x; i < d; i += blockDim.x) xr[i] += w ? orow[i] * inv * w[i] : orow[i];
}

__global__ void softcap_kernel(float* x, int64_t n, float cap) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    x[i] = cap * tanhf(x[i] / cap);
}

__global__ void argmax_kernel(const float* x, int V, int32_t* out) {
  __shared__ float bv[32];
  __shared__ int bi[32];
  const float* row = x + static_cast<int64_t>(blockIdx.x) * V;
  float best = -INFINITY;
  int idx = 0x7fffffff;
  for (int i = threadIdx.x; i < V; i += blockDim.x) {
    const float v = row[i];
    if (v > best || (v == best && i < idx)) { best = v; idx = i; }  // NaN never wins
  }
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, best, o);
    const int oi = __shfl_xor_sync(0xffffffffu, idx, o);
    if (ov > best || (ov == best && oi < idx)) { best = ov; idx = oi; }
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  if (lane == 0) { bv[warp] = best; bi[warp] = idx; }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < nw; ++w)
      if (bv[w] > best || (bv[w] == best && bi[w] < idx)) { best = bv[w]; idx = bi[w]; }
    out[blockIdx.x] = idx == 0x7fffffff ? 0 : idx;
  }
}

__global__ void prepare_kernel(PrepareArgs a) {
  const int t = blockIdx.x;
  const int s = a.seq[t], p = a.pos[t];
  // The row whose page table and length this block writes: token t (decode), sequence t (prefill).
  const bool rows = a.S > 0 ? t < a.S : true;
  const int rt = a.S > 0 && rows ? a.seq_last[t] : t;
  const int rs = a.seq[rt], rp = a.pos[rt];
  if (threadIdx.x == 0 && rows) a.vlen[t] = rp + 1;
  for (int g = 0; g < a.G; ++g) {
    const int mp = a.max_pages[g];
    const int32_t* row = a.table[g] + static_cast<int64_t>(s) * mp;
    if (threadIdx.x == 0)
      a.slots[g][t] = static_cast<int64_t>(row[p / kDefaultPageSize]) * kDefaultPageSize + p % kDefaultPageSize;
    if (!rows) continue;
    const int32_t* src = a.table[g] + static_cast<int64_t>(rs) * mp;
    int32_t* dst = a.vtable[g] + static_cast<int64_t>(t) * mp;
    for (int i = threadIdx.x; i < mp; i += blockDim.x) dst[i] = src[i];
  }
}

__global__ void advance_kernel(int32_t* pos, int T) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < T) pos[i] += 1;
}

__global__ void fill_f16_kernel(uint16_t* w, int64_t n, float amp, uint64_t seed) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    w[i] = __half_as_ushort(__float2half_rn((2.f * u01(mix64(seed ^ (static_cast<uint64_t>(i) * 0x2545f4914f6cdd1dull))) - 1.f) * amp));
}

__global__ void fill_f32_kernel(float* w, int64_t n, float v) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    w[i] = v;
}

// One block per tile.
__global__ void fill_tiles_kernel(uint8_t* pages, int64_t tile_bytes, int bits, int page_size, int d, uint64_t seed) {
  uint8_t* tile = pages + blockIdx.x * tile_bytes;
  const uint64_t base = seed ^ (static_cast<uint64_t>(blockIdx.x) * 0x9e3779b97f4a7c15ull);
  if (bits == kF16Bits) {
    auto* v = reinterpret_cast<uint16_t*>(tile);
    for (int i = threadIdx.x; i < page_size * d; i += blockDim.x)
      v[i] = __half_as_ushort(__float2half_rn(4.f * u01(mix64(base + i)) - 2.f));
    return;
  }
  const int64_t ib = static_cast<int64_t>(page_size) * index_bytes(d, bits);
  for (int64_t i = threadIdx.x; i < ib; i += blockDim.x) tile[i] = static_cast<uint8_t>(mix64(base + i) >> 24);
  auto* sc = reinterpret_cast<uint16_t*>(tile + ib);
  const float sd = sqrtf(static_cast<float>(d));
  for (int i = threadIdx.x; i < page_size; i += blockDim.x)
    sc[i] = __half_as_ushort(__float2half_rn((0.5f + 1.5f * u01(mix64(base + ib + i))) * sd));
  for (int64_t i = ib + 2 * page_size + threadIdx.x; i < tile_bytes; i += blockDim.x) tile[i] = 0;
}

__global__ void copy16_kernel(const uint4* src, uint4* dst, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    dst[i] = src[i];
}

int grid_for(int64_t n, int threads) {
  const int64_t b = (n + threads - 1) / threads;
  return static_cast<int>(b < 1 ? 1 : (b > 65536 ? 65536 : b));
}

}  // namespace

#define LAUNCH_CHECK() TQKV_CUDA_RETURN_IF_ERROR(cudaGetLastError())

Status embed_rows(const uint16_t* emb, const int32_t* tokens, int T, int E, float scale, float* x, cudaStream_t s) {
  embed_kernel<<<T, 256, 0, s>>>(emb, tokens, E, scale, x);
  LAUNCH_CHECK();
  return Status::ok();
}

Status rms_norm(const float* x, const float* w, int rows, int d, float eps, void* out, bool out_f16, cudaStream_t s) {
  if (rows <= 0) return Status::ok();
  rms_norm_kernel<<<rows, d >= 1024 ? 1024 : 256, 0, s>>>(x, w, d, eps, out, out_f16);
  LAUNCH_CHECK();
  return Status::ok();
}

Status qkv_post(const QkvPostArgs& a, cudaStream_t s) {
  if (a.head_dim < 1 || a.head_dim > 1024) return unsupported("qkv_post: head_dim must be 1..1024");
  dim3 grid(a.T, a.n_head + 2 * a.n_head_kv);
  const int threads = (a.head_dim + 31) / 32 * 32;
  qkv_post_kernel<<<grid, threads, (a.head_dim + 32) * sizeof(float), s>>>(a);
  LAUNCH_CHECK();
  return Status::ok();
}

Status act_mul(const float* gu, int T, int F, bool gelu, uint16_t* out, cudaStream_t s) {
  act_mul_kernel<<<grid_for(static_cast<int64_t>(T) * F, 256), 256, 0, s>>>(gu, T, F, gelu, reinterpret_cast<__half*>(out));
  LAUNCH_CHECK();
  return Status::ok();
}

Status residual_add(float* x, const float* o, const float* w, int rows, int d, float eps, cudaStream_t s) {
  residual_kernel<<<rows, d >= 1024 ? 1024 : 256, 0, s>>>(x, o, w, d, eps);
  LAUNCH_CHECK();
  return Status::ok();
}

Status softcap(float* x, int64_t n, float cap, cudaStream_t s) {
  softcap_kernel<<<grid_for(n, 256), 256, 0, s>>>(x, n, cap);
  LAUNCH_CHECK();
  return Status::ok();
}

Status argmax_rows(const float* x, int rows, int V, int32_t* out, cudaStream_t s) {
  argmax_kernel<<<rows, 1024, 0, s>>>(x, V, out);
  LAUNCH_CHECK();
  return Status::ok();
}

Status prepare_step(const PrepareArgs& a, cudaStream_t s) {
  if (a.G < 1 || a.G > 2) return invalid_argument("prepare_step: 1 or 2 groups");
  if (a.S < 0 || a.S > a.T || (a.S > 0 && a.seq_last == nullptr))
    return invalid_argument("prepare_step: prefill needs 1..T sequences and their last rows");
  prepare_kernel<<<a.T, 256, 0, s>>>(a);
  LAUNCH_CHECK();
  return Status::ok();
}

Status advance_positions(int32_t* pos, int T, cudaStream_t s) {
  advance_kernel<<<(T + 255) / 256, 256, 0, s>>>(pos, T);
  LAUNCH_CHECK();
  return Status::ok();
}

namespace {
// One thread per coordinate: the mean over n rows, accumulated in double in row order (as the CPU).
__global__ void key_mean_kernel(const float* __restrict__ k, int n, int kv, float* __restrict__ mu) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= kv) return;
  double acc = 0.0;
  for (int t = 0; t < n; ++t) acc += k[static_cast<int64_t>(t) * kv + i];
  mu[i] = static_cast<float>(acc / n);
}
__global__ void subtract_key_mean_kernel(float* __restrict__ k, const int32_t* __restrict__ seq, int T, int kv,
                                         const float* __restrict__ mu, int64_t seq_stride) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= static_cast<int64_t>(T) * kv) return;
  const int t = static_cast<int>(i / kv), j = static_cast<int>(i % kv);
  k[i] -= mu[seq[t] * seq_stride + j];
}
// One block per KV head, one thread per channel (blockDim.x = D <= 256), fp64 sums as on the CPU.
__global__ void key_smoothing_kernel(const float* __restrict__ k, const float* __restrict__ q, int n, int H, int G,
                                     int D, float* __restrict__ s) {
  __shared__ double logs[256];
  const int h = blockIdx.x, j = threadIdx.x;
  double f = 1.0;
  if (j < D) {
    const int64_t kv = static_cast<int64_t>(H) * D, qd = kv * G;
    double ek = 0.0, eq = 0.0;
    for (int t = 0; t < n; ++t) {
      const double x = k[t * kv + static_cast<int64_t>(h) * D + j];
      ek += x * x;
      for (int g = 0; g < G; ++g) {
        const double y = q[t * qd + (static_cast<int64_t>(h) * G + g) * D + j];
        eq += y * y;
      }
    }
    f = sqrt((sqrt(ek / n) + 1e-6) / (sqrt(eq / (static_cast<double>(n) * G)) + 1e-6));
  }
  logs[j] = j < D ? log(f) : 0.0;
  __syncthreads();
  for (int w = 128; w > 0; w >>= 1) {
    if (j < w && j + w < 256) logs[j] += logs[j + w];
    __syncthreads();
  }
  const double g = exp(logs[0] / D);
  if (j < D) s[static_cast<int64_t>(h) * D + j] = static_cast<float>(fmin(fmax(f / g, 1.0 / 64), 64.0));
}
__global__ void apply_key_smoothing_kernel(float* __restrict__ k, float* __restrict__ q, const int32_t* __restrict__ seq,
                                           int T, int H, int G, int D, const float* __restrict__ s, int64_t seq_stride) {
  const int64_t kv = static_cast<int64_t>(H) * D, qd = kv * G;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < T * kv) {
    const int64_t t = i / kv, c = i % kv;
    k[i] /= s[seq[t] * seq_stride + c];
  }
  if (i < T * qd) {
    const int64_t t = i / qd, c = i % qd;  // c = (h * G + g) * D + j
    const int64_t h = c / (static_cast<int64_t>(G) * D), j = c % D;
    q[i] *= s[seq[t] * seq_stride + h * D + j];
  }
}
}  // namespace

Status key_smoothing(const float* k, const float* q, int n, int H, int G, int D, float* s, cudaStream_t st) {
  if (D > 256) return invalid_argument("key_smoothing: head size above 256");
  key_smoothing_kernel<<<H, 256, 0, st>>>(k, q, n, H, G, D, s);
  LAUNCH_CHECK();
  return Status::ok();
}

Status apply_key_smoothing(float* k, float* q, const int32_t* seq, int T, int H, int G, int D, const float* s_base,
                           int64_t seq_stride, cudaStream_t st) {
  const int64_t n = static_cast<int64_t>(T) * H * G * D;  // q is the larger of the two (G >= 1)
  apply_key_smoothing_kernel<<<static_cast<unsigned>((n + 255) / 256), 256, 0, st>>>(k, q, seq, T, H, G, D, s_base,
                                                                                      seq_stride);
  LAUNCH_CHECK();
  return Status::ok();
}

Status key_mean(const float* k, int n, int kv, float* mu, cudaStream_t s) {
  key_mean_kernel<<<(kv + 127) / 128, 128, 0, s>>>(k, n, kv, mu);
  LAUNCH_CHECK();
  return Status::ok();
}

Status subtract_key_mean(float* k, const int32_t* seq, int T, int kv, const float* mu, int64_t seq_stride,
                         cudaStream_t s) {
  const int64_t n = static_cast<int64_t>(T) * kv;
  subtract_key_mean_kernel<<<static_cast<unsigned>((n + 255) / 256), 256, 0, s>>>(k, seq, T, kv, mu, seq_stride);
  LAUNCH_CHECK();
  return Status::ok();
}

Status fill_uniform_f16(uint16_t* w, int64_t n, float amplitude, uint64_t seed, cudaStream_t s) {
  fill_f16_kernel<<<grid_for(n, 256), 256, 0, s>>>(w, n, amplitude, seed);
  LAUNCH_CHECK();
  return Status::ok();
}

Status fill_f32(float* w, int64_t n, float value, cudaStream_t s) {
  fill_f32_kernel<<<grid_for(n, 256), 256, 0, s>>>(w, n, value);
  LAUNCH_CHECK();
  return Status::ok();
}

Status fill_random_tiles(uint8_t* pages, int64_t n_tiles, int64_t tile_bytes, int bits, int page_size, int d,
                         uint64_t seed, cudaStream_t s) {
  for (int64_t done = 0; done < n_tiles;) {
    const int64_t m = n_tiles - done < (1 << 30) ? n_tiles - done : (1 << 30);
    fill_tiles_kernel<<<static_cast<unsigned>(m), 256, 0, s>>>(pages + done * tile_bytes, tile_bytes, bits, page_size, d,
                                                                seed + static_cast<uint64_t>(done));
    LAUNCH_CHECK();
    done += m;
  }
  return Status::ok();
}

Status copy_kernel(const void* src, void* dst, int64_t bytes, cudaStream_t s) {
  if (bytes % 16 != 0) return invalid_argument("copy_kernel: bytes must be a multiple of 16");
  copy16_kernel<<<132 * 16, 512, 0, s>>>(static_cast<const uint4*>(src), static_cast<uint4*>(dst), bytes / 16);
  LAUNCH_CHECK();
  return Status::ok();
}

}  // namespace tqkv::gpu
