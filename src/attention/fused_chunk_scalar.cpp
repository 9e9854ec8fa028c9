// Baseline-ISA build of the fused attention chunk loop (see fused_chunk.inc).
#define TQKV_CHUNK_FN process_chunk_scalar
#include "attention/fused_chunk.inc"
