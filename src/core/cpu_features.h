// Run-time CPU feature checks; *_avx2.cpp code may only run when these say yes.
#pragma once

namespace tqkv {
bool cpu_has_avx2();
bool cpu_has_fma();
bool cpu_has_f16c();
// All three: the set our *_avx2.cpp files are compiled for. TQKV_FORCE_SCALAR=1 turns it off.
bool cpu_has_avx2_fma_f16c();
// That set plus AVX-512 F and BW (usable: the OS saves the registers): what *_avx512.cpp files are
// compiled for. TQKV_FORCE_SCALAR=1 or TQKV_NO_AVX512=1 turns it off.
bool cpu_has_avx512bw_kernels();
}  // namespace tqkv
