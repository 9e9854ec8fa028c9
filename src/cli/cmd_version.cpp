// `tqkv info`: build configuration (CUDA on/off, CPU features) so bug reports say what ran.
#include <cstdio>

#include "cli/command_registry.h"
#include "core/cpu_features.h"

namespace {

tqkv::cli::RunFn setup(CLI::App& sub) {
  (void)sub;
  return [] {
    std::printf("tqkv 0.1.0\n");
#ifdef TQKV_HAVE_CUDA
    std::printf("cuda backend: compiled in\n");
#else
    std::printf("cuda backend: not compiled\n");
#endif
    std::printf("cpu: avx2=%s fma=%s f16c=%s avx512bw=%s\n", tqkv::cpu_has_avx2() ? "yes" : "no",
                tqkv::cpu_has_fma() ? "yes" : "no", tqkv::cpu_has_f16c() ? "yes" : "no",
                tqkv::cpu_has_avx512bw_kernels() ? "yes" : "no");
    return 0;
  };
}

tqkv::cli::CommandRegistrar reg("info", "Show how this tqkv was built and what the CPU supports", &setup);

}  // namespace
