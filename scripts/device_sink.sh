#!/usr/bin/env bash
# Attention sinks on the GPU machine, in one call. Two steps:
#
#   scripts/device_sink.sh prepare   (here: nvcc, no GPU needed)
#       builds test_cuda, tqkv_sink_bench and test_gpu in build-sink (TQKV_CUDA=ON, sm_90, no
#       BLAS) and copies them, stripped and gzipped, with the shared libraries the GPU machine
#       lacks (PCRE2, libgomp), into .carry/sink/ (git-ignored; name it in the device tool's carry).
#   scripts/device_sink.sh run       (on the GPU machine, from the repository root)
#       the sink kernel tests (test_cuda CudaSinks.*), the whole test_cuda suite (the merge kernel
#       serves every decode and prefill call), compute-sanitizer memcheck and racecheck on the sink
#       tests, test_gpu's sink tests (GPU runtime vs CPU runtime, both with sinks) beside a few of
#       the existing runtime tests, and tqkv_sink_bench (k4v4 d128 decode with and without 4 sinks
#       at 8 x 8K and 32 x 16K, same process). Logs to $OUT (default ./device-out).
set -uo pipefail
cd "$(dirname "$0")/.."
step=${1:-run}
D=.carry/sink

if [[ $step == prepare ]]; then
  set -e
  cmake -S . -B build-sink -G Ninja -DCMAKE_BUILD_TYPE=Release -DTQKV_CUDA=ON -DTQKV_CUDA_ARCH=90 \
    -DTQKV_BUILD_BENCH=OFF -DCMAKE_DISABLE_FIND_PACKAGE_BLAS=ON >/dev/null
  nice -n 10 cmake --build build-sink -j "${JOBS:-2}" --target test_cuda tqkv_sink_bench test_gpu
  mkdir -p "$D/lib"
  rm -f "$D"/*.gz
  cp build-sink/tests/test_cuda build-sink/src/cuda/tqkv_sink_bench build-sink/tests/test_gpu "$D/"
  strip "$D/test_cuda" "$D/tqkv_sink_bench" "$D/test_gpu"
  gzip -9 -f "$D/test_cuda" "$D/tqkv_sink_bench" "$D/test_gpu"
  for lib in libpcre2-8.so.0 libgomp.so.1; do
    cp -L "$(ldconfig -p | awk -v l="$lib" '$1 == l {print $NF; exit}')" "$D/lib/"
  done
  du -ab "$D"
  exit 0
fi

OUT=${OUT:-device-out}
mkdir -p "$OUT"
source scripts/device_env.sh
device_library_path "$PWD/$D/lib"
B=/tmp/sinkbin
mkdir -p $B
for f in test_cuda tqkv_sink_bench test_gpu; do gunzip -c "$D/$f.gz" >$B/$f && chmod +x $B/$f; done
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/nvidia-smi.txt"
summary=()
note() { summary+=("$1"); echo "== $1"; }

timeout 120 $B/test_cuda --gtest_filter='CudaSinks.*' >"$OUT/sinks.log" 2>&1
note "test_cuda CudaSinks: rc=$? $(grep -E '^\[  PASSED|^\[  FAILED|^\[  SKIPPED' "$OUT/sinks.log" | tr '\n' ' ')"
grep -E 'Failure|error|Expected|Which is|row ' "$OUT/sinks.log" | head -20


timeout 100 $B/test_gpu --gtest_filter='GpuSinks.*:GpuSynthetic.Llama:GpuSynthetic.Gemma3:GpuSynthetic.Qwen2KeyBiasCentered' \
  >"$OUT/test_gpu.log" 2>&1
note "test_gpu sinks: rc=$? $(grep -E '^\[  PASSED|^\[  FAILED|^\[  SKIPPED' "$OUT/test_gpu.log" | tr '\n' ' ')"
grep -E '^\[gpu|Failure|Expected|Which is|FAILED' "$OUT/test_gpu.log" | head -30

timeout 60 $B/tqkv_sink_bench --formats k4v4,f16 --batch 8,32 --context 8192,16384 --sinks 4 >"$OUT/bench.txt" 2>&1
note "tqkv_sink_bench: rc=$?"
cat "$OUT/bench.txt"

mfilt='CudaSinks.SinkTilesNotPagesAreReadAndIgnoringThemFails:CudaSinks.DecodeEverySinkCount:CudaSinks.GraphCaptureReplaysTheSameOutput:CudaSinks.BadSinkViewsAreRefused:CudaSinks.StoreSinkTokensMatchesCpuCacheTiles'
rfilt='CudaSinks.SinkTilesNotPagesAreReadAndIgnoringThemFails:CudaSinks.GraphCaptureReplaysTheSameOutput'
for tool in memcheck racecheck; do
  filt=$mfilt; [[ $tool == racecheck ]] && filt=$rfilt
  timeout 100 compute-sanitizer --tool "$tool" --error-exitcode 17 $B/test_cuda --gtest_brief=1 \
    --gtest_filter="$filt" >"$OUT/$tool.log" 2>&1
  note "$tool: rc=$? $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/$tool.log" | tail -1) $(grep -E '^\[  PASSED|^\[  FAILED' "$OUT/$tool.log" | tr '\n' ' ')"
done


# The attention tests that predate sinks (the merge kernel serves every decode and prefill call).
# OTHERS=all: every decode/prefill/vs-CPU test (about 70 s on the H200); default: one head size.
ofilt='CudaDecode.*:CudaPrefill.*:AllFormats/DecodeFormat.*d128*:AllFormats/PrefillFormat.*d128*'
[[ ${OTHERS:-} == all ]] && ofilt='CudaDecode.*:CudaPrefill.*:CudaVsCpu.*:AllFormats/*'
timeout 150 $B/test_cuda --gtest_filter="$ofilt" >"$OUT/test_cuda.log" 2>&1
note "test_cuda decode/prefill/vs-cpu: rc=$? $(grep -E '^\[  PASSED|^\[  FAILED|^\[  SKIPPED|tests? ran' "$OUT/test_cuda.log" | tr '\n' ' ')"
grep -E '^\[  FAILED' "$OUT/test_cuda.log" | head -10

echo
echo "==== summary"
printf '%s\n' "${summary[@]}"
