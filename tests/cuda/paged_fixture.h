// A randomly filled paged KV cache on the host, its device copy, and a plain-loop fp64 reference
// for decode attention, shared by the CUDA decode tests.
//
// Pages are placed at random in a pool that is larger than needed; every byte that no valid
// token owns (the tail of each sequence's last page, unused pages) is 0xFF, i.e. NaN in fp16,
// so a kernel that reads past the sequence shows up as NaN.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

#include "cuda_test_util.h"
#include "tqkv/fp16.h"
#include "tqkv/kv_layout.h"

namespace tqkv::cuda::testing {

// Random orthogonal matrix (Gram-Schmidt on a Gaussian matrix), row-major [d][d].
inline std::vector<float> random_orthogonal(int d, std::mt19937_64& rng) {
  std::normal_distribution<double> n(0, 1);
  std::vector<double> m(static_cast<size_t>(d) * d);
  for (auto& x : m) x = n(rng);
  for (int i = 0; i < d; ++i) {
    double* r = &m[static_cast<size_t>(i) * d];
    for (int k = 0; k < i; ++k) {
      const double* q = &m[static_cast<size_t>(k) * d];
      double dot = 0;
      for (int j = 0; j < d; ++j) dot += r[j] * q[j];
      for (int j = 0; j < d; ++j) r[j] -= dot * q[j];
    }
    double nn = 0;
    for (int j = 0; j < d; ++j) nn += r[j] * r[j];
    nn = std::sqrt(nn);
    for (int j = 0; j < d; ++j) r[j] /= nn;
  }
  return std::vector<float>(m.begin(), m.end());
}

// P = H diag(signs) / sqrt(d), H the Sylvester Hadamard matrix (d a power of two).
inline std::vector<float> hadamard_matrix(int d, const std::vector<float>& signs) {
  std::vector<float> p(static_cast<size_t>(d) * d);
  const double s = 1.0 / std::sqrt(static_cast<double>(d));
  for (int i = 0; i < d; ++i)
    for (int j = 0; j < d; ++j)
      p[static_cast<size_t>(i) * d + j] = static_cast<float>(((__builtin_popcount(i & j) & 1) ? -s : s) * signs[j]);
  return p;
}

struct PagedFixture {
  int d = 128, kb = 4, vb = 4, num_kv_heads = 2, page_size = 16;
  std::vector<int32_t> lens, first_page;  // per sequence
  int max_pages = 0, pool_pages = 0;
  std::vector<int32_t> page_table;        // [num_seqs][max_pages]
  std::vector<uint8_t> kp, vp;            // pools
  std::vector<float> ck, cv, rotation, signs;
  int64_t tk = 0, tv = 0;

  DeviceBuffer d_kp, d_vp, d_pt, d_lens, d_first, d_ck, d_cv, d_rot, d_signs;

  int num_seqs() const { return static_cast<int>(lens.size()); }

  // Centroids: ascending, roughly the Lloyd-Max spread for a unit vector (exact values do not
  // matter for kernel tests: the reference uses the same table).
  static std::vector<float> make_centroids(int bits, int d, std::mt19937_64& rng) {
    const int L = 1 << bits;
    std::uniform_real_distribution<double> jit(-0.2, 0.2);
    std::vector<float> c(L);
    for (int i = 0; i < L; ++i)
      c[i] = static_cast<float>((2.0 * (i + 0.5 + jit(rng)) / L - 1.0) * 2.5 / std::sqrt(static_cast<double>(d)));
    std::sort(c.begin(), c.end());
    return c;
  }

  void build(uint64_t seed, bool use_hadamard) {
    std::mt19937_64 rng(seed);
    if (first_page.empty()) first_page.assign(lens.size(), 0);
    max_pages = 1;
    int needed = 0;
    for (size_t s = 0; s < lens.size(); ++s) {
      const int pages = (lens[s] + page_size - 1) / page_size - first_page[s];
      max_pages = std::max(max_pages, std::max(pages, 1));
      needed += std::max(pages, 0);
    }
    pool_pages = needed + 7;  // a few pages nobody owns
    std::vector<int32_t> perm(pool_pages);
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng);
    page_table.assign(lens.size() * max_pages, -1);
    int next = 0;
    for (size_t s = 0; s < lens.size(); ++s) {
      const int pages = (lens[s] + page_size - 1) / page_size - first_page[s];
      for (int p = 0; p < pages; ++p) page_table[s * max_pages + p] = perm[next++];
    }
    tk = tile_bytes(page_size, d, kb);
    tv = tile_bytes(page_size, d, vb);
    kp.assign(static_cast<size_t>(pool_pages) * num_kv_heads * tk, 0xff);
    vp.assign(static_cast<size_t>(pool_pages) * num_kv_heads * tv, 0xff);
    if (kb != kF16Bits) ck = make_centroids(kb, d, rng);
    if (vb != kF16Bits) cv = make_centroids(vb, d, rng);
    if (kb != kF16Bits || vb != kF16Bits) {
      if (use_hadamard) {
        signs.resize(d);
        for (auto& x : signs) x = (rng() & 1) ? 1.f : -1.f;
        rotation = hadamard_matrix(d, signs);
      } else {
        rotation = random_orthogonal(d, rng);
      }
    }
    std::normal_distribution<float> nd(0.f, 1.f);
    std::uniform_real_distribution<float> sc(0.5f, 2.f);
    for (size_t s = 0; s < lens.size(); ++s) {
      for (int pos = first_page[s] * page_size; pos < lens[s]; ++pos) {
        const int phys = page_table[s * max_pages + pos / page_size - first_page[s]];
        const int row = pos % page_size;
        for (int h = 0; h < num_kv_heads; ++h) {
          for (int side = 0; side < 2; ++side) {
            const int bits = side == 0 ? kb : vb;
            uint8_t* tile = (side == 0 ? kp.data() + (static_cast<size_t>(phys) * num_kv_heads + h) * tk
                                       : vp.data() + (static_cast<size_t>(phys) * num_kv_heads + h) * tv);
            if (bits == kF16Bits) {
              auto* v = reinterpret_cast<uint16_t*>(tile) + static_cast<size_t>(row) * d;
              for (int j = 0; j < d; ++j) v[j] = float_to_fp16(nd(rng));
            } else {
              const int64_t ib = index_bytes(d, bits);
              for (int64_t b = 0; b < ib; ++b) tile[row * ib + b] = static_cast<uint8_t>(rng());
              auto* scales = reinterpret_cast<uint16_t*>(tile + tile_scales_offset(page_size, d, bits));
              scales[row] = float_to_fp16(sc(rng) * std::sqrt(static_cast<float>(d)));
            }
          }
        }
      }
    }
  }

  // x~ of token `pos` of sequence s, head h, side (0 = K, 1 = V), in the original space (fp64).
  void decode_token(int s, int pos, int h, int side, double* out) const {
    const int bits = side == 0 ? kb : vb;
    const int phys = page_table[s * max_pages + pos / page_size - first_page[s]];
    const int row = pos % page_size;
    const uint8_t* tile = side == 0 ? kp.data() + (static_cast<size_t>(phys) * num_kv_heads + h) * tk
                                    : vp.data() + (static_cast<size_t>(phys) * num_kv_heads + h) * tv;
    if (bits == kF16Bits) {
      const auto* v = reinterpret_cast<const uint16_t*>(tile) + static_cast<size_t>(row) * d;
      for (int j = 0; j < d; ++j) out[j] = fp16_to_float(v[j]);
      return;
    }
    const std::vector<float>& c = side == 0 ? ck : cv;
    const int64_t ib = index_bytes(d, bits);
    const double scale = fp16_to_float(reinterpret_cast<const uint16_t*>(tile + tile_scales_offset(page_size, d, bits))[row]);
    std::vector<double> y(d);
    for (int j = 0; j < d; ++j) y[j] = c[unpack_index(tile + row * ib, bits, j)];
    for (int i = 0; i < d; ++i) {  // x = P^T y
      double acc = 0;
      for (int j = 0; j < d; ++j) acc += static_cast<double>(rotation[static_cast<size_t>(j) * d + i]) * y[j];
      out[i] = scale * acc;
    }
  }

  // Decoded K and V of every visible token, [seq][pos][head][d] flattened per sequence.
  std::vector<std::vector<double>> kx, vx;
  void decode_all() {
    kx.assign(lens.size(), {});
    vx.assign(lens.size(), {});
    for (size_t s = 0; s < lens.size(); ++s) {
      kx[s].assign(static_cast<size_t>(std::max(lens[s], 0)) * num_kv_heads * d, 0.0);
      vx[s].assign(kx[s].size(), 0.0);
      for (int pos = first_page[s] * page_size; pos < lens[s]; ++pos)
        for (int h = 0; h < num_kv_heads; ++h) {
          decode_token(static_cast<int>(s), pos, h, 0, &kx[s][(static_cast<size_t>(pos) * num_kv_heads + h) * d]);
          decode_token(static_cast<int>(s), pos, h, 1, &vx[s][(static_cast<size_t>(pos) * num_kv_heads + h) * d]);
        }
    }
  }

  // fp64 attention of one query row of sequence s over the decoded tokens at positions [lo, len):
  // the G = hq / num_kv_heads heads of every KV head. q_row: [hq][d]; adds into out_row [hq][d]
  // (left as is when nothing is visible).
  void attend_row(size_t s, const float* q_row, int lo, int len, int hq, double scale, double softcap,
                  double* out_row) const {
    const int group = hq / num_kv_heads;
    for (int h = 0; h < hq; ++h) {
      const int kvh = h / group;
      const float* qv = q_row + static_cast<size_t>(h) * d;
      std::vector<double> logit;
      double mx = -INFINITY;
      for (int pos = lo; pos < len; ++pos) {
        const double* k = &kx[s][(static_cast<size_t>(pos) * num_kv_heads + kvh) * d];
        double dot = 0;
        for (int j = 0; j < d; ++j) dot += qv[j] * k[j];
        dot *= scale;
        if (softcap > 0) dot = softcap * std::tanh(dot / softcap);
        logit.push_back(dot);
        mx = std::max(mx, dot);
      }
      if (logit.empty()) continue;
      double den = 0;
      for (double& l : logit) { l = std::exp(l - mx); den += l; }
      double* o = out_row + static_cast<size_t>(h) * d;
      for (int pos = lo; pos < len; ++pos) {
        const double w = logit[pos - lo] / den;
        const double* v = &vx[s][(static_cast<size_t>(pos) * num_kv_heads + kvh) * d];
        for (int j = 0; j < d; ++j) o[j] += w * v[j];
      }
    }
  }

  // fp64 decode attention over the decoded tokens: out [num_seqs][hq][d].
  std::vector<double> reference(const std::vector<float>& q, int hq, double scale, double softcap, int window) const {
    std::vector<double> out(lens.size() * hq * d, 0.0);
    for (size_t s = 0; s < lens.size(); ++s) {
      int lo = first_page[s] * page_size;
      if (window > 0) lo = std::max(lo, lens[s] - window);
      attend_row(s, &q[s * hq * d], lo, lens[s], hq, scale, softcap, &out[s * hq * d]);
    }
    return out;
  }

  // Uploads everything and returns the device view.
  PagedKVView upload() {
    d_kp = to_device(kp);
    d_vp = to_device(vp);
    d_pt = to_device(page_table);
    d_lens = to_device(lens);
    d_first = to_device(first_page);
    if (!ck.empty()) d_ck = to_device(ck);
    if (!cv.empty()) d_cv = to_device(cv);
    if (!rotation.empty()) d_rot = to_device(rotation);
    if (!signs.empty()) d_signs = to_device(signs);
    PagedKVView v;
    v.k = {d_kp.get<uint8_t>(), kb, tk, d_ck.get<const float>()};
    v.v = {d_vp.get<uint8_t>(), vb, tv, d_cv.get<const float>()};
    v.num_kv_heads = num_kv_heads;
    v.head_dim = d;
    v.page_size = page_size;
    v.num_seqs = num_seqs();
    v.page_table = d_pt.get<const int32_t>();
    v.max_pages_per_seq = max_pages;
    v.seq_lens = d_lens.get<const int32_t>();
    v.first_page = d_first.get<const int32_t>();
    v.rotation = d_rot.get<const float>();
    v.hadamard_signs = d_signs.get<const float>();
    return v;
  }
};

}  // namespace tqkv::cuda::testing
