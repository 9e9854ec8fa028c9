// AVX2/FMA/F16C build of the fused attention chunk loop (see fused_chunk.inc); call only when
// cpu_has_avx2_fma_f16c() says yes.
#define TQKV_CHUNK_FN process_chunk_avx2
#include "attention/fused_chunk.inc"
