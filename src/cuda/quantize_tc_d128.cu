// Tensor-core quantize-on-write, head size 128 (randomized Hadamard rotation). See quantize_tc.cuh.
#include "cuda/quantize_tc_impl.cuh"

namespace tqkv::cuda::tc {

Status quantize_tc_d128(const QuantArgs& a, cudaStream_t stream, bool* launched) {
  return dispatch_tc<128, true>(a, stream, launched);
}

}  // namespace tqkv::cuda::tc
