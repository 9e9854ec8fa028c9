// Which kernel attention_prefill runs (for benchmarks and tests that compare the two in one
// process). Default: the tiled prefill kernel; environment TQKV_CUDA_PREFILL=rows selects the
// per-row decode-kernel path. plan_prefill and attention_prefill must run under the same setting
// (the workspace check rejects a rows-path plan on the tiled path).
#pragma once

namespace tqkv::cuda::detail {

enum class PrefillPath : int { kTiles = 0, kRows = 1 };
PrefillPath prefill_path();
void set_prefill_path(PrefillPath path);  // process-wide

}  // namespace tqkv::cuda::detail
