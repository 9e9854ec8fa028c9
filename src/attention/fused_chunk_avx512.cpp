// AVX2/FMA/F16C + AVX-512 F/BW build of the fused attention chunk loop (see fused_chunk.inc): the
// AVX2 build plus 4-bit lookups in one zmm permute and exact 8-bit lookups by word permutes; call
// only when cpu_has_avx512bw_kernels() says yes.
// Keep every helper of fused_chunk.inc in its anonymous namespace (and out of out-of-line
// templates): a weak symbol compiled here would hold AVX-512 code the linker may pick for every
// other caller, which would fault on CPUs without AVX-512. `nm` on this object shows one global
// symbol, process_chunk_avx512, and no weak ones (checked 2026-11-29).
#define TQKV_CHUNK_FN process_chunk_avx512
#include "attention/fused_chunk.inc"
