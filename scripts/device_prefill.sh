#!/usr/bin/env bash
# The tiled prefill kernel on the GPU machine: its tests, compute-sanitizer, its benchmark and the
# GPU runtime tests, from binaries built here. Two steps:
#
#   scripts/device_prefill.sh prepare   (here: nvcc, no GPU needed)
#       builds test_cuda, tqkv_prefill_bench and test_gpu in build-pre (TQKV_CUDA=ON, sm_90) and
#       puts them, stripped and xz-compressed, with the shared libraries test_gpu needs (PCRE2,
#       libgomp) into .carry/pre (git-ignored; name it in the device tool's `carry`).
#   scripts/device_prefill.sh run [what]   (on the GPU machine, from the repository root)
#       what = all (default) | tests | sanitize | bench | gpu. Logs to $OUT (default ./device-out).
set -uo pipefail
cd "$(dirname "$0")/.."
step=${1:-run}
what=${2:-all}
C=.carry/pre

if [[ $step == prepare ]]; then
  set -e
  cmake -S . -B build-pre -G Ninja -DCMAKE_BUILD_TYPE=Release -DTQKV_CUDA=ON -DTQKV_CUDA_ARCH=90 \
    -DTQKV_BUILD_BENCH=OFF -DCMAKE_DISABLE_FIND_PACKAGE_BLAS=ON >/dev/null
  cmake --build build-pre -j "${JOBS:-2}" --target test_cuda tqkv_prefill_bench test_gpu
  mkdir -p "$C/lib"
  for b in tests/test_cuda src/cuda/tqkv_prefill_bench tests/test_gpu; do
    n=$(basename "$b")
    cp "build-pre/$b" "$C/$n"
    strip "$C/$n"
    xz -9 -f -T2 "$C/$n"
  done
  for lib in libpcre2-8.so.0 libgomp.so.1; do
    cp -L "$(ldconfig -p | awk -v l="$lib" '$1 == l {print $NF; exit}')" "$C/lib/"
  done
  du -ab "$C"
  exit 0
fi

OUT=${OUT:-device-out}
mkdir -p "$OUT"
for f in "$C"/*.xz; do
  [[ -f $f ]] || continue
  xz -dkf "$f" 2>/dev/null || python3 -c "import lzma,sys; open(sys.argv[1][:-3],'wb').write(lzma.open(sys.argv[1]).read())" "$f"
  chmod +x "${f%.xz}"
done
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,memory.used --format=csv >"$OUT/nvidia-smi.txt" 2>&1
cat "$OUT/nvidia-smi.txt"
note() { echo "== $1"; }

pf='AllFormats/PrefillFormat.*:CudaPrefill.*:CudaVsCpu.PrefillAttentionMatchesCpuReferencePrefill'
if [[ $what == all || $what == tests ]]; then
  timeout "${TEST_TIMEOUT:-240}" "$C/test_cuda" --gtest_brief=1 --gtest_filter="${TEST_FILTER:-*}" >"$OUT/tests.log" 2>&1
  note "test_cuda (${TEST_FILTER:-*}): rc=$? $(grep -E '^\[  PASSED|^\[  FAILED|tests? ran' "$OUT/tests.log" | tr '\n' ' ')"
  grep -E 'Failure|error|FAILED' "$OUT/tests.log" | head -20
fi
if [[ $what == all || $what == bench ]]; then
  timeout 120 "$C/tqkv_prefill_bench" --context 8192 --chunks 512,2048 --formats "${FORMATS:-f16,k8v8,k4v4,k3v3}" \
    >"$OUT/bench_prefill.txt" 2>&1
  note "bench rc=$?"
  cat "$OUT/bench_prefill.txt"
fi
if [[ $what == all || $what == sanitize ]]; then
  mfilt='AllFormats/PrefillFormat.*/d128_k4_v4:AllFormats/PrefillFormat.*/d80_k3_v3:AllFormats/PrefillFormat.*/d256_kf16_vf16:AllFormats/PrefillFormat.*/d64_k8_v4:CudaPrefill.*'
  rfilt='AllFormats/PrefillFormat.*/d128_k4_v4:AllFormats/PrefillFormat.*/d96_k8_v4:AllFormats/PrefillFormat.*/d128_kf16_vf16:CudaPrefill.InconsistentRowsGetZeros'
  for tool in ${TOOLS:-memcheck racecheck}; do
    filt=$mfilt; [[ $tool == racecheck ]] && filt=$rfilt
    timeout "${SAN_TIMEOUT:-150}" compute-sanitizer --tool "$tool" --error-exitcode 17 "$C/test_cuda" --gtest_brief=1 \
      --gtest_filter="$filt" >"$OUT/$tool.log" 2>&1
    note "$tool: rc=$? $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/$tool.log" | tail -1) $(grep -E '^\[  PASSED|^\[  FAILED' "$OUT/$tool.log" | tr '\n' ' ')"
  done
fi
if [[ $what == all || $what == gpu ]]; then
  source scripts/device_env.sh
  device_library_path "$PWD/$C/lib"
  timeout 200 "$C/test_gpu" >"$OUT/test_gpu.log" 2>&1
  note "test_gpu rc=$? $(grep -E '^\[  PASSED|^\[  FAILED|SKIPPED|tests? ran' "$OUT/test_gpu.log" | tr '\n' ' ')"
fi
