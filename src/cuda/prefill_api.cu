// attention_prefill: a chunk of new query rows per sequence against its cached pages (the chunk's
// own K/V already written), causal inside the chunk. Host checks and plan; the kernel chain of
// decode_api.cu (query rotation, attention kernel, merge + un-rotation) with either
//   - the tiled prefill kernel (prefill_kernel.cuh, the default): each K/V page read and
//     dequantized once per tile of (query row, head) columns, or
//   - the decode kernel with one grid row per query row (the fallback: formats without a tiled
//     instantiation, or TQKV_CUDA_PREFILL=rows / set_prefill_path for comparisons).
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "cuda/attention_internal.h"
#include "cuda/cuda_check.h"
#include "cuda/prefill_internal.h"
#include "cuda/prefill_launch.cuh"
#include "tqkv/cuda_attention.h"

namespace tqkv::cuda {
namespace {

using detail::align_up;

// Prefill rows: row r of sequence s (rows grouped by sequence in order) sits at position
// seq_lens[s] - q_lens[s] + i and sees positions [0, that + 1). Rows past sum(q_lens) and rows of
// an inconsistent q_lens (q_lens[s] > seq_lens[s]) get length 0 (zeros out).
// With a recent ring (view.recent_tokens > 0) also page_end[r] = min(row_len[r], recent_from of its
// sequence): where the row's pages end, the length the split kernels see (launch_chain).
__global__ void prefill_rows_kernel(const int32_t* q_lens, const PagedKVView view, int total_q, int32_t* row_seq,
                                    int32_t* row_len, int32_t* page_end) {
  const int32_t* seq_lens = view.seq_lens;
  const int num_seqs = view.num_seqs;
  for (int r = blockIdx.x * blockDim.x + threadIdx.x; r < total_q; r += gridDim.x * blockDim.x) {
    int start = 0, s = 0, len = 0;
    for (; s < num_seqs; ++s) {
      const int ql = max(q_lens[s], 0);
      if (r < start + ql) break;
      start += ql;
    }
    if (s < num_seqs && q_lens[s] <= seq_lens[s]) len = seq_lens[s] - q_lens[s] + (r - start) + 1;
    row_seq[r] = s < num_seqs ? s : 0;
    row_len[r] = len;
    if (view.recent_tokens > 0)
      page_end[r] = static_cast<int32_t>(min(static_cast<int64_t>(len), s < num_seqs ? view.recent_from(s) : 0));
  }
}

size_t prefill_extra_bytes(int total_q) { return 2 * align_up(static_cast<size_t>(total_q) * 4); }

// Tile table: the rows of each sequence (then the rows past sum(q_lens), which get zeros) cut
// into tiles of `nc` flattened (row, head) columns; entries past the last tile get seq = -1.
__global__ void prefill_tiles_kernel(const int32_t* q_lens, int num_seqs, int total_q, int group, int nc,
                                     int max_tiles, detail::PrefillTile* tiles) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < max_tiles; i += gridDim.x * blockDim.x) {
    detail::PrefillTile out{-1, 0, 0, 0};
    int row_start = 0, tile_base = 0;
    for (int s = 0; s <= num_seqs; ++s) {
      int nrows = s < num_seqs ? max(q_lens[s], 0) : total_q - row_start;
      nrows = max(0, min(nrows, total_q - row_start));
      const int f = nrows * group, n = (f + nc - 1) / nc;
      if (i < tile_base + n) {
        out = detail::PrefillTile{s, row_start, (i - tile_base) * nc, f};
        break;
      }
      tile_base += n;
      row_start += nrows;
    }
    tiles[i] = out;
  }
}

std::atomic<int> g_path{-1};  // PrefillPath, -1: not read from the environment yet

bool tiles_built(int d, int kb, int vb) {
  // The (k, v) pairs that prefill_*.cu instantiate, at every head size check_view accepts.
  static constexpr int kBuilt[][2] = {{16, 16}, {8, 8}, {4, 4}, {3, 3}, {2, 2}, {8, 4}, {4, 3}};
  bool built = false;
  for (const auto& kv : kBuilt) built |= kv[0] == kb && kv[1] == vb;
  return built && (d == 64 || d == 80 || d == 96 || d == 128 || d == 256);
}

Status dispatch_tiles(int d, int kb, int vb, const detail::DecodeArgs* args, const detail::PrefillExtra* ex, dim3 grid,
                      cudaStream_t stream, int* occupancy) {
  for (auto* fn : {&detail::prefill_tiles_f16, &detail::prefill_tiles_b8, &detail::prefill_tiles_b4,
                   &detail::prefill_tiles_b3, &detail::prefill_tiles_b2}) {
    Status st = fn(d, kb, vb, args, ex, grid, stream, occupancy);
    if (st.code() != StatusCode::kUnsupported) return st;
  }
  return unsupported("no tiled prefill kernel for head_dim " + std::to_string(d));
}

bool use_tiles(const PagedKVView& view) {
  return detail::prefill_path() == detail::PrefillPath::kTiles &&
         tiles_built(view.head_dim, view.k.bits, view.v.bits);
}

int max_tiles(const PagedKVView& view, const DecodeParams& params, int total_q) {
  const int group = params.num_q_heads / view.num_kv_heads;
  const long long nc = 8LL * detail::prefill_ntiles(view.head_dim);
  return static_cast<int>((static_cast<long long>(total_q) * group + nc - 1) / nc + view.num_seqs + 1);
}

size_t tiles_bytes(const PagedKVView& view, const DecodeParams& params, int total_q) {
  return align_up(static_cast<size_t>(max_tiles(view, params, total_q)) * sizeof(detail::PrefillTile));
}

struct TilesCtx {
  const detail::PrefillTile* tiles;
  int max_tiles;
};

Status tiles_middle(const detail::DecodeArgs& args, const void* ctx, cudaStream_t stream) {
  const auto* c = static_cast<const TilesCtx*>(ctx);
  const detail::PrefillExtra ex{c->tiles};
  const dim3 grid(c->max_tiles, args.view.num_kv_heads, args.num_splits);
  return dispatch_tiles(args.view.head_dim, args.view.k.bits, args.view.v.bits, &args, &ex, grid, stream, nullptr);
}

}  // namespace

namespace detail {
PrefillPath prefill_path() {
  int p = g_path.load();
  if (p < 0) {
    const char* e = std::getenv("TQKV_CUDA_PREFILL");
    p = static_cast<int>(e != nullptr && std::string(e) == "rows" ? PrefillPath::kRows : PrefillPath::kTiles);
    int expected = -1;
    g_path.compare_exchange_strong(expected, p);
    p = g_path.load();
  }
  return static_cast<PrefillPath>(p);
}
void set_prefill_path(PrefillPath path) { g_path.store(static_cast<int>(path)); }
}  // namespace detail

Result<DecodePlan> plan_prefill(const PagedKVView& view, const DecodeParams& params, int32_t total_q,
                                int sm_count) {
  if (total_q <= 0 || total_q > 65535) return invalid_argument("total_q must be in [1, 65535]");
  TQKV_RETURN_IF_ERROR(detail::check_view(view, params));
  PagedKVView rows = view;
  rows.num_seqs = total_q;
  if (!use_tiles(view)) {
    TQKV_ASSIGN_OR_RETURN(DecodePlan plan, plan_decode(rows, params, sm_count));
    plan.workspace_bytes += prefill_extra_bytes(total_q);
    return plan;
  }
  const int group = params.num_q_heads / view.num_kv_heads;
  DecodePlan plan;
  plan.head_chunks = (group + 7) / 8;
  const detail::PrefillShape shape = detail::prefill_shape(view.head_dim, view.k.bits, view.v.bits);
  if (params.num_splits > 0) {
    plan.num_splits = params.num_splits;
  } else {
    // As plan_decode: the split count s minimising waves(s) * (1/s + set-up), with the tiles of
    // the chunk (every tile assumed to see max_pages_per_seq pages) as the work units.
    int occ = 0;
    if (!dispatch_tiles(view.head_dim, view.k.bits, view.v.bits, nullptr, nullptr, dim3(1), nullptr, &occ).is_ok() ||
        occ < 1)
      occ = 1;
    const long long slots = static_cast<long long>(std::max(1, sm_count)) * occ;
    const long long nc = 8LL * shape.nt;
    const long long units = (static_cast<long long>(total_q) * group + nc - 1) / nc * view.num_kv_heads;
    const int cap = std::max(1, std::min(256, view.max_pages_per_seq / (2 * shape.warps)));
    const double setup = 4.0 * shape.warps / std::max(1, view.max_pages_per_seq);
    double best = 1e300;
    for (int sp = 1; sp <= cap; ++sp) {
      const double waves = static_cast<double>((units * sp + slots - 1) / slots);
      const double cost = waves * (1.0 / sp + setup);
      if (cost < best * 0.97) { best = cost; plan.num_splits = sp; }
    }
  }
  plan.workspace_bytes = detail::workspace_layout(total_q, params.num_q_heads, view.head_dim, plan.num_splits).total +
                         prefill_extra_bytes(total_q) + tiles_bytes(view, params, total_q);
  return plan;
}

Status attention_prefill(const PagedKVView& view, const DecodeParams& params, const DecodePlan& plan,
                         const int32_t* q_lens, int32_t total_q, const void* q, DType q_type, void* out,
                         DType out_type, void* workspace, size_t workspace_bytes, cudaStream_t stream) {
  if (total_q <= 0 || total_q > 65535) return invalid_argument("total_q must be in [1, 65535]");
  if (!q_lens) return invalid_argument("null q_lens");
  TQKV_RETURN_IF_ERROR(detail::check_view(view, params));  // the sequences themselves
  const bool tiled = use_tiles(view);
  PagedKVView rows = view;
  rows.num_seqs = total_q;
  const size_t extra = prefill_extra_bytes(total_q) + (tiled ? tiles_bytes(view, params, total_q) : 0);
  TQKV_RETURN_IF_ERROR(detail::check_call(rows, params, plan, q, out, workspace, workspace_bytes, extra));
  auto* ws = static_cast<uint8_t*>(workspace);
  const size_t base = detail::workspace_layout(total_q, params.num_q_heads, view.head_dim, plan.num_splits).total;
  auto* row_seq = reinterpret_cast<int32_t*>(ws + base);
  auto* row_len = reinterpret_cast<int32_t*>(ws + base + align_up(static_cast<size_t>(total_q) * 4));
  // (page_end: the layout's slot, sized for total_q rows; launch_chain hands it to the split kernels)
  auto* page_end = reinterpret_cast<int32_t*>(
      ws + detail::workspace_layout(total_q, params.num_q_heads, view.head_dim, plan.num_splits).page_end);
  prefill_rows_kernel<<<(total_q + 255) / 256, 256, 0, stream>>>(q_lens, view, total_q, row_seq, row_len, page_end);
  TQKV_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  if (!tiled) return detail::launch_chain(rows, params, plan, q, q_type, out, out_type, ws, row_seq, row_len, stream);

  auto* tiles = reinterpret_cast<detail::PrefillTile*>(ws + base + prefill_extra_bytes(total_q));
  const TilesCtx ctx{tiles, max_tiles(view, params, total_q)};
  const int group = params.num_q_heads / view.num_kv_heads;
  prefill_tiles_kernel<<<(ctx.max_tiles + 255) / 256, 256, 0, stream>>>(
      q_lens, view.num_seqs, total_q, group, 8 * detail::prefill_ntiles(view.head_dim), ctx.max_tiles, tiles);
  TQKV_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return detail::launch_chain(rows, params, plan, q, q_type, out, out_type, ws, row_seq, row_len, stream,
                              &tiles_middle, &ctx);
}

}  // namespace tqkv::cuda
