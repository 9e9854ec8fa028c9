#!/usr/bin/env bash
# Decode-kernel work on the GPU machine (helper script; scripts/device_run.sh is the full one).
# Binaries come xz-compressed in $CARRY (default .carry/dec; built here with build-dec, stripped). Usage:
#   bench/cuda/decode_device_run.sh [tests] [v1tests] [sanitize] [bench] [profile] [sweep]
# KERNELS (bench; KERNELS96 for head size 96 if set) and TESTKERNELS (v1tests) pick
# TQKV_CUDA_DECODE_KERNEL values: v3 (the rotation kernel first) or fusedq (the default: the
# decode kernel rotates its own queries). v1, v2 and the bulk-copy variant were removed after
# commit f67be94 (which still selects them); v3a existed in commit 096d991.
# TESTKERNEL (tests) and SANKERNEL (sanitize) one such value each (default: the built-in default). SANTIME caps each sanitizer run
# (seconds); TESTTIME the test run, TESTFILTER its gtest filter; SANM / SANR replace the memcheck / racecheck filters.
# Logs go to $OUT; a summary is printed last.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-device-out}
CARRY=${CARRY:-.carry/dec}
mkdir -p "$OUT" /tmp/dec
for b in test_cuda tqkv_cuda_bench; do
  [[ -x /tmp/dec/$b ]] || { xz -dc $CARRY/$b.xz >/tmp/dec/$b 2>/dev/null ||
    python3 -c "import lzma,sys;sys.stdout.buffer.write(lzma.open('$CARRY/$b.xz').read())" >/tmp/dec/$b; chmod +x /tmp/dec/$b; }
done
B=/tmp/dec
summary=()
note() { summary+=("[${SECONDS}s] $1"); echo "== [${SECONDS}s] $1"; }
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv >"$OUT/gpu.txt" 2>&1; cat "$OUT/gpu.txt"
dec='AllFormats/DecodeFormat.*:CudaDecode.*:CudaVsCpu.DecodeAttention*'
kenv() {  # kernel spec (e.g. fusedq, or "" for the default) -> environment assignment
  [[ -n $1 && $1 != default ]] && echo "TQKV_CUDA_DECODE_KERNEL=$1"
}
bench() {  # kernel spec, then bench args
  local k=$1; shift
  env $(kenv $k) timeout 120 $B/tqkv_cuda_bench --no-quantize --no-prefill \
    --reps 5 "$@" 2>/dev/null | grep -E '^ *(decode|copy)' | sed "s/^/$k /" >>"$OUT/bench.txt"
}
for what in "$@"; do
  case $what in
    tests)
      env $(kenv "${TESTKERNEL:-}") timeout ${TESTTIME:-240} $B/test_cuda --gtest_brief=1 --gtest_filter="${TESTFILTER:-*}" >"$OUT/tests_main.log" 2>&1
      note "tests (${TESTKERNEL:-default}): rc=$? $(grep -E '^\[  PASSED|^\[  FAILED' "$OUT/tests_main.log" | tr '\n' ' ')";;
    v1tests)  # the decode tests under the other kernel versions
      for k in ${TESTKERNELS:-v3}; do
        env $(kenv $k) timeout 120 $B/test_cuda --gtest_brief=1 --gtest_filter="$dec" >"$OUT/tests_$k.log" 2>&1
        note "decode tests ($k): rc=$? $(grep -E '^\[  PASSED|^\[  FAILED' "$OUT/tests_$k.log" | tr '\n' ' ')"
      done;;
    sanitize)
      m=${SANM:-'AllFormats/DecodeFormat.*/d80_*:AllFormats/DecodeFormat.*/d128_*:AllFormats/DecodeFormat.*/d64_k2_v2:AllFormats/DecodeFormat.*/d256_k8_v4:CudaDecode.*:CudaVsCpu.DecodeAttentionWindowEvictionAndSoftcapMatchCpuReference'}
      r=${SANR:-'AllFormats/DecodeFormat.*/d128_k4_v4:AllFormats/DecodeFormat.*/d128_kf16_vf16:AllFormats/DecodeFormat.*/d96_k3_v3:AllFormats/DecodeFormat.*/d256_k8_v4:AllFormats/DecodeFormat.*/d80_k8_v4:AllFormats/DecodeFormat.*/d128_k4_v3:AllFormats/DecodeFormat.*/d64_k2_v2:CudaDecode.SplitCounts*:CudaDecode.DenseRotation*:CudaDecode.Window*'}
      for tool in memcheck racecheck; do
        f=$m; [[ $tool == racecheck ]] && f=$r
        env $(kenv "${SANKERNEL:-}") timeout ${SANTIME:-150} compute-sanitizer --tool $tool --error-exitcode 17 $B/test_cuda --gtest_brief=1 --gtest_filter="$f" >"$OUT/$tool.log" 2>&1
        note "$tool (${SANKERNEL:-default}): rc=$? $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/$tool.log" | tail -1) $(grep -E '^\[  PASSED|^\[  FAILED' "$OUT/$tool.log" | tr '\n' ' ')"
      done;;
    bench)
      for d in ${DIMS:-128 96}; do  # kernels interleaved per head size (drift hits each alike)
        ks=${KERNELS:-v3 fusedq}; [[ $d == 96 && -n ${KERNELS96:-} ]] && ks=$KERNELS96
        for k in $ks; do
          bench $k --head-dim $d --formats ${FORMATS:-f16,k4v4,k3v3} --batch 8,32 --context ${CONTEXTS:-8192,16384,32768}
        done
        note "bench d=$d done"
      done
      note "bench: $(wc -l <"$OUT/bench.txt") rows";;
    profile)  # Nsight Compute: per-SASS-instruction stall samples, k4v4 8 x 8K
      for k in ${PROFILE:-fusedq}; do
        TQKV_CUDA_DECODE_KERNEL=$k timeout 120 ncu --clock-control none --section SpeedOfLight --section WarpStateStats \
          --section SourceCounters --section LaunchStats --section Occupancy -k regex:decode_split -c 1 -f -o "$OUT/prof_$k" \
          $B/tqkv_cuda_bench --formats k4v4 --batch 8 --context 8192 --no-quantize --no-prefill --reps 1 --iters 2 \
          >"$OUT/details_$k.txt" 2>&1
        ncu -i "$OUT/prof_$k.ncu-rep" --page source --csv --print-source sass >"$OUT/sass_$k.csv" 2>&1
        ncu -i "$OUT/prof_$k.ncu-rep" --page details >>"$OUT/details_$k.txt" 2>&1
        rm -f "$OUT/prof_$k.ncu-rep"
        note "profile $k: $(grep -E 'Duration|Issue Slots Busy|DRAM Throughput|No Eligible' "$OUT/details_$k.txt" | tr -s ' ' | tr '\n' ';')"
      done;;
    sweep)  # split counts and short contexts at batch 8 (fixed cost per CTA)
      for s in 1 2 3 4 8; do bench v2 --formats k4v4 --batch 8 --context 8192 --splits $s; done
      bench v2 --formats f16,k4v4 --batch 8 --context 2048,4096
      note "sweep done";;
  esac
done
echo; echo "==== bench (kernel kv d batch context splits us MB GB/s frac vs_f16)"
cat "$OUT/bench.txt" 2>/dev/null | grep -v memcpy | awk '{$2=""; print}' | head -120
echo "==== summary"; printf '%s\n' "${summary[@]}"
