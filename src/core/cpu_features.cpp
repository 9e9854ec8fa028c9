#include "core/cpu_features.h"

#include <cstdlib>

namespace tqkv {

bool cpu_has_avx2() { return __builtin_cpu_supports("avx2"); }
bool cpu_has_fma() { return __builtin_cpu_supports("fma"); }
bool cpu_has_f16c() {
#if defined(__x86_64__)
  unsigned a, b, c, d;
  __asm__("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(1), "c"(0));
  return (c >> 29) & 1u;
#else
  return false;
#endif
}
bool cpu_has_avx2_fma_f16c() {
  static const bool ok = [] {
    const char* force = std::getenv("TQKV_FORCE_SCALAR");
    if (force && force[0] == '1') return false;
    return cpu_has_avx2() && cpu_has_fma() && cpu_has_f16c();
  }();
  return ok;
}

bool cpu_has_avx512bw_kernels() {
  static const bool ok = [] {
    const char* off = std::getenv("TQKV_NO_AVX512");
    if (off && off[0] == '1') return false;
    // (libgcc sets the AVX-512 bits only when XGETBV says the OS saves the mask and zmm state)
    return cpu_has_avx2_fma_f16c() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
  }();
  return ok;
}

}  // namespace tqkv
