#!/usr/bin/env bash
# The one script for the GPU machine. Two steps:
#
#   scripts/device_run.sh prepare      (here, on the build machine: nvcc, no GPU needed)
#       builds test_cuda and tqkv_cuda_bench in build-cuda (TQKV_CUDA=ON, arch 90) and copies
#       them into .device/ (git-ignored) so they can travel with the device tool's `carry`.
#   scripts/device_run.sh run [what]   (on the GPU machine, from the repository root)
#       what = all (default) | tests | sanitize | bench | ncu (Nsight Compute on a few cases) |
#       smoke (the standalone quantize / prefill / sink benchmarks on small shapes; not in all)
#       runs the CUDA tests, compute-sanitizer memcheck + racecheck on the kernel tests, the
#       kernel benchmark and PyTorch SDPA on the same shape; logs go to $OUT (default
#       ./device-out): nvidia-smi.txt, tests.log, memcheck.log, racecheck.log, bench.txt,
#       bench.json, sdpa.txt. A summary is printed last.
#
# The binaries link the CUDA runtime statically and need only glibc/libstdc++ on the device.
set -uo pipefail
cd "$(dirname "$0")/.."
step=${1:-run}
what=${2:-all}

if [[ $step == prepare ]]; then
  set -e
  cmake -S . -B build-cuda -G Ninja -DCMAKE_BUILD_TYPE=Release -DTQKV_CUDA=ON -DTQKV_CUDA_ARCH=90 \
    -DTQKV_BUILD_BENCH=OFF >/dev/null
  cmake --build build-cuda -j "${JOBS:-2}" --target test_cuda tqkv_cuda_bench tqkv_quant_bench tqkv_prefill_bench tqkv_sink_bench
  mkdir -p .device
  cp build-cuda/tests/test_cuda build-cuda/src/cuda/tqkv_cuda_bench build-cuda/src/cuda/tqkv_quant_bench \
    build-cuda/src/cuda/tqkv_prefill_bench build-cuda/src/cuda/tqkv_sink_bench .device/
  ls -la .device
  exit 0
fi

OUT=${OUT:-device-out}
mkdir -p "$OUT"
BIN=.device
summary=()
note() { summary+=("$1"); echo "== $1"; }

nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1 || true
head -15 "$OUT/nvidia-smi.txt"

if [[ $what == all || $what == tests ]]; then
  timeout 300 "$BIN/test_cuda" --gtest_brief=1 >"$OUT/tests.log" 2>&1
  rc=$?
  tail -5 "$OUT/tests.log"
  note "tests: rc=$rc, $(grep -E '^\[  PASSED|^\[  FAILED|tests? ran' "$OUT/tests.log" | tr '\n' ' ')"
fi

if [[ $what == all || $what == sanitize ]]; then
  # Kernel tests at one head size per path (dense / Hadamard, every decode instantiation family),
  # small enough for the sanitizers' slowdown.
  mfilt='AllFormats/DecodeFormat.*/d80_*:AllFormats/DecodeFormat.*/d128_*:CudaDecode.*:Formats/QuantizeOnWrite.*d96*:Formats/QuantizeOnWrite.*d128*:CudaDequantize.*:CudaVsCpu.GpuQuantizeOnWriteMatchesCpuCacheBytes:CudaVsCpu.CpuEncodedPagesDequantizeIdenticallyOnGpu:CudaVsCpu.PrefillAttentionMatchesCpuReferencePrefill:CudaVsCpu.DecodeAttentionWindowEvictionAndSoftcapMatchCpuReference:CudaSinks.DecodeEverySinkCount:CudaSinks.SinkTilesNotPagesAreReadAndIgnoringThemFails:CudaSinks.StoreSinkTokensMatchesCpuCacheTiles:CudaRecent.RingNotPagesIsReadAndIgnoringItFails:CudaRecent.StoreWritesTheRingTheCpuCacheWrites:QuantizeOnWriteTc.*'
  # racecheck instruments every shared-memory access: one head size per kernel family.
  rfilt='AllFormats/DecodeFormat.*/d128_k4_v4:AllFormats/DecodeFormat.*/d128_k8_v4:AllFormats/DecodeFormat.*/d96_k3_v3:AllFormats/DecodeFormat.*/d96_k4_v4:AllFormats/DecodeFormat.*/d128_kf16_vf16:CudaDecode.SplitCounts*:CudaDecode.DenseRotation*:Formats/QuantizeOnWrite.*d128_k4_v4*:Formats/QuantizeOnWrite.*d96_k4_v4*:CudaVsCpu.GpuQuantizeOnWriteMatchesCpuCacheBytes:CudaSinks.SinkTilesNotPagesAreReadAndIgnoringThemFails:CudaSinks.DecodeEverySinkCount:CudaRecent.RingNotPagesIsReadAndIgnoringItFails:QuantizeOnWriteTc.*'
  for tool in memcheck racecheck; do
    filt=$mfilt; [[ $tool == racecheck ]] && filt=$rfilt
    timeout 200 compute-sanitizer --tool "$tool" --error-exitcode 17 "$BIN/test_cuda" --gtest_brief=1 \
      --gtest_filter="$filt" >"$OUT/$tool.log" 2>&1
    rc=$?
    tail -4 "$OUT/$tool.log"
    note "$tool: rc=$rc, $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/$tool.log" | tail -1) $(grep -E '^\[  PASSED|^\[  FAILED' "$OUT/$tool.log" | tr '\n' ' ')"
  done
fi

if [[ $what == ncu ]]; then
  # Per-kernel durations and issue/stall statistics (Nsight Compute, clocks left alone) for the
  # three kernels of one decode call and for quantize-on-write. One small case each.
  sec='--section SpeedOfLight --section LaunchStats --section Occupancy --section SchedulerStats --section WarpStateStats --section MemoryWorkloadAnalysis'
  for case in "f16 8 8192" "k4v4 8 8192" "k4v4 32 16384" "k3v3 32 16384"; do
    set -- $case
    timeout 150 ncu --clock-control none $sec -k regex:'decode_split|rotate_query|merge_splits' -c 3 \
      "$BIN/tqkv_cuda_bench" --formats "$1" --batch "$2" --context "$3" --no-quantize --reps 1 --iters 2 \
      >"$OUT/ncu_$1_$2_$3.txt" 2>&1
    note "ncu $case: rc=$? $(grep -E '^  [a-z_].*\(|Duration|Issue Slots Busy|DRAM Throughput' "$OUT/ncu_$1_$2_$3.txt" | tr -s ' ' | tr '\n' ';' | head -c 900)"
  done
  timeout 150 ncu --clock-control none $sec -k regex:'quantize_kernel' -c 1 \
    "$BIN/tqkv_cuda_bench" --formats none --batch 8 --context 16 --reps 1 >"$OUT/ncu_quantize.txt" 2>&1
  note "ncu quantize: rc=$? $(grep -E 'Duration|Issue Slots Busy|DRAM Throughput|Achieved Occupancy' "$OUT/ncu_quantize.txt" | tr -s ' ' | tr '\n' ';')"
fi

if [[ $what == all || $what == bench ]]; then
  # CONTEXTS (default 8192,16384,32768); FULL=0 skips the prefill and quantize-on-write rows.
  ctx=${CONTEXTS:-8192,16384,32768}
  extra=(); [[ ${FULL:-1} == 0 ]] && extra=(--no-prefill --no-quantize)
  timeout 300 "$BIN/tqkv_cuda_bench" --head-dim 128 --context "$ctx" "${extra[@]}" --json "$OUT/bench.json" \
    >"$OUT/bench.txt" 2>"$OUT/bench_progress.txt"
  note "bench d=128: rc=$?"
  timeout 120 "$BIN/tqkv_cuda_bench" --head-dim 96 --formats f16,k4v4,k3v3 --batch 8,32 --context "$ctx" \
    --no-quantize --no-prefill >>"$OUT/bench.txt" 2>>"$OUT/bench_progress.txt"
  note "bench d=96: rc=$?"
  cat "$OUT/bench_progress.txt" >>"$OUT/bench.txt"; rm -f "$OUT/bench_progress.txt"
  if [[ ${SDPA:-1} != 0 ]] && python3 -c 'import torch; assert torch.cuda.is_available()' 2>/dev/null; then
    timeout 180 python3 bench/cuda/sdpa_bench.py --json "$OUT/sdpa.json" >"$OUT/sdpa.txt" 2>&1
    note "sdpa: rc=$?"
    cat "$OUT/sdpa.json" >>"$OUT/sdpa.txt" 2>/dev/null; rm -f "$OUT/sdpa.json"
  else
    note "sdpa: skipped (SDPA=0 or no torch with CUDA)"
  fi
  cat "$OUT/bench.txt" "$OUT/sdpa.txt" 2>/dev/null | grep -v '^ *[{}\[]' | head -120
fi

# The standalone benchmarks (bench/cuda: quantize-on-write, tiled prefill, sinks), each on a small
# shape: do they run and print rows (their full runs are in docs/benchmarks.md).
if [[ $what == smoke ]]; then
  for b in tqkv_quant_bench tqkv_prefill_bench tqkv_sink_bench; do
    [[ -x $BIN/$b ]] || { note "$b: not packed"; continue; }
    case $b in
      tqkv_quant_bench) args=(--tokens 4096 --head-dim 128 --formats k4v4 --input f32 --reps 3 --iters 5) ;;
      tqkv_prefill_bench) args=(--context 2048 --chunks 512 --formats f16,k4v4 --reps 3 --iters 4) ;;
      tqkv_sink_bench) args=(--formats k4v4 --batch 8 --context 4096 --reps 3 --iters 5) ;;
    esac
    timeout 120 "$BIN/$b" "${args[@]}" >"$OUT/smoke_$b.txt" 2>&1
    note "$b ${args[*]}: rc=$?"
    tail -4 "$OUT/smoke_$b.txt"
  done
fi

echo
echo "==== summary"
printf '%s\n' "${summary[@]}"
