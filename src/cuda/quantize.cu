// Quantize-on-write entry point (quantize_and_store): checks the arguments and picks the kernel.
//
// The tensor-core kernels (quantize_tc*.cu*) take head size 128 with the Hadamard rotation and
// head size 96, for the format pairs they are built for, with 16-byte aligned inputs (with
// PagedKVView::scale_search: head size 128 only); everything else, and every call when
// TQKV_CUDA_QUANT=old, goes to the earlier kernels (quantize_old.cu).
// TQKV_CUDA_QUANT=nostage keeps the tensor-core kernels without their input staging (quantize_tc.cuh).
// Page dequantization is in dequantize.cu.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

#include "cuda/cuda_check.h"
#include "cuda/quantize_internal.h"
#include "cuda/quantize_tc.cuh"
#include "tqkv/kv_layout.h"

namespace tqkv::cuda {
namespace {

const char* quant_env() {
  static const char* e = std::getenv("TQKV_CUDA_QUANT");
  return e;
}

// Environment TQKV_CUDA_QUANT=old: the pre-tensor-core kernels for every shape (read once).
int g_quant_override = -1;  // set_quantize_kernel_old (benchmarks): -1 = environment
int g_variant_override = -1;  // set_quantize_tc_variant: -1 = environment
bool quantize_old_selected() {
  static const bool env_old = [] {
    const char* e = quant_env();
    return e != nullptr && std::strcmp(e, "old") == 0;
  }();
  return g_quant_override < 0 ? env_old : g_quant_override == 1;
}

}  // namespace

namespace tc {
void set_quantize_kernel_old(int old) { g_quant_override = old < 0 ? -1 : (old ? 1 : 0); }
void set_quantize_tc_variant(int v) { g_variant_override = v < 0 ? -1 : (v > 1 ? 1 : v); }
int quantize_tc_variant() {
  if (g_variant_override >= 0) return g_variant_override;
  static const int env_variant = [] {
    const char* e = quant_env();
    return e != nullptr && std::strcmp(e, "nostage") == 0 ? 0 : 1;
  }();
  return env_variant;
}
}  // namespace tc

Status check_quant_view(const PagedKVView& view) {
  const int d = view.head_dim;
  if (d != 64 && d != 80 && d != 96 && d != 128 && d != 256)
    return unsupported("CUDA quantize supports head_dim 64, 80, 96, 128, 256 (got " + std::to_string(d) + ")");
  if (view.page_size <= 0 || view.num_kv_heads <= 0) return invalid_argument("bad page_size or num_kv_heads");
  for (const KVSideView* s : {&view.k, &view.v}) {
    if (!is_valid_kv_bits(s->bits)) return invalid_argument("bits must be 2, 3, 4, 8 or 16");
    if (s->tile_bytes != tile_bytes(view.page_size, d, s->bits)) return invalid_argument("tile_bytes does not match kv_layout.h");
    if (!s->pages) return invalid_argument("null pages");
    if (s->bits != kF16Bits && (!s->centroids || !view.rotation))
      return invalid_argument("TurboQuant side needs centroids and the rotation");
  }
  return Status::ok();
}

Status quantize_and_store(const PagedKVView& view, const float* boundaries_k, const float* boundaries_v,
                          const void* k_new, const void* v_new, DType in_type, const int64_t* slot_mapping,
                          int32_t num_tokens, cudaStream_t stream) {
  TQKV_RETURN_IF_ERROR(check_quant_view(view));
  if (num_tokens < 0) return invalid_argument("negative num_tokens");
  if (num_tokens == 0) return Status::ok();
  if (static_cast<long long>(num_tokens) * view.num_kv_heads >= (1LL << 31))
    return invalid_argument("num_tokens * num_kv_heads must be < 2^31");
  if (!k_new || !v_new || !slot_mapping) return invalid_argument("null k_new, v_new or slot_mapping");
  if ((view.k.bits != kF16Bits && !boundaries_k) || (view.v.bits != kF16Bits && !boundaries_v))
    return invalid_argument("TurboQuant side without boundaries");
  const QuantArgs a{view, {boundaries_k, boundaries_v}, {k_new, v_new}, in_type, slot_mapping, num_tokens};
  const int d = view.head_dim;
  const bool aligned = reinterpret_cast<uintptr_t>(k_new) % 16 == 0 && reinterpret_cast<uintptr_t>(v_new) % 16 == 0;
  // Scale search: the tensor-core kernel searches at d = 128 with the Hadamard rotation (staged
  // inputs, the default variant); every other searching call goes to the generic kernel of
  // quantize_old.cu.
  // Calls of fewer than kTcMinRows vectors at d = 128 (decode steps: batch x KV heads) go to the
  // one-warp-per-vector kernels of quantize_old.cu, searching or not: the tensor-core tiles spread
  // worse over the SMs there (H200, 32 tokens x 8 heads, tqkv_quant_bench: k4v4 2.9 us against
  // 6.0 us without the search, 10.1 us against 16.1 with it; 8B shape, batch 32: 11.66 ms per
  // step with the tensor-core search, 11.13 with the generic kernel). At d = 96 the tensor-core
  // kernel stays faster at that size (9.7 us against 13.9 us), so it keeps every non-searching call.
  constexpr long long kTcMinRows = 4096;
  const bool small = static_cast<long long>(num_tokens) * view.num_kv_heads < kTcMinRows;
  if (aligned && !quantize_old_selected()) {
    bool launched = false;
    if (d == 128 && view.hadamard_signs && !small) {
      TQKV_RETURN_IF_ERROR(tc::quantize_tc_d128(a, stream, &launched));
    } else if (d == 96 && !view.scale_search) {
      TQKV_RETURN_IF_ERROR(tc::quantize_tc_d96(a, stream, &launched));
    }
    if (launched) return Status::ok();
  }
  return launch_quantize_old(a, stream);
}

}  // namespace tqkv::cuda
