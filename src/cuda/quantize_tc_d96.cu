// Tensor-core quantize-on-write, head size 96 (dense rotation). See quantize_tc.cuh.
#include "cuda/quantize_tc_impl.cuh"

namespace tqkv::cuda::tc {

Status quantize_tc_d96(const QuantArgs& a, cudaStream_t stream, bool* launched) {
  return dispatch_tc<96, false>(a, stream, launched);
}

}  // namespace tqkv::cuda::tc
