// AVX2/FMA/F16C + AVX-512 F/BW build of the fused attention chunk loop (see fused_chunk.inc): the
// AVX2 build plus exact 8-bit codebook lookups by word permutes; call only when
// cpu_has_avx512bw_kernels() says yes.
#define TQKV_CHUNK_FN process_chunk_avx512
#include "attention/fused_chunk.inc"
