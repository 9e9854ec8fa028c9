#!/usr/bin/env bash
# Everything the GPU machine checks: build here, then on the device the kernel tests,
# compute-sanitizer memcheck + racecheck on them, the kernel benchmarks, the GPU model runtime tests
# (GPU logits against CPU logits) and the end-to-end decode benchmark.
#
#   scripts/device_all.sh prepare     here (nvcc, no GPU needed): builds both sets of binaries
#       (scripts/device_run.sh prepare, scripts/device_runtime.sh prepare) and packs what the device
#       needs, xz-compressed, into two git-ignored folders:
#         .device-gpu/kernels   test_cuda, tqkv_cuda_bench and the standalone quantize / prefill /
#                               sink benchmarks                                   (~35 MB)
#         .device-gpu/runtime   tqkv, test_gpu, two libraries, the reduced SmolLM2, CPU fixtures (~41 MB)
#         .device-gpu/runtime-gemma  the reduced Gemma 3 (~28 MB): both packs together pass the 64 MiB,
#                               so its one test (GpuRealModel.Gemma3Reduced) skips in the runtime call;
#                               scripts/device_runtime.sh says how to run it on its own
#   scripts/device_all.sh run         on the device, from the repository root. Runs the kernel steps
#       when .device-gpu/kernels travelled and the runtime steps when .device-gpu/runtime did.
#       Logs: $OUT/summary.txt and $OUT/logs.tgz.
#
# The working tree that travels (carried folders included) is limited to 64 MiB, and the two packs
# together are ~78 MB, so a full check is two device calls, one per pack:
#   carry [".device-gpu/kernels"]  command: scripts/device_all.sh run
#   carry [".device-gpu/runtime"]  command: scripts/device_all.sh run
# (back to back, the second finds the machine warm).
#
# Environment: WHAT="tests sanitize bench runtime" (the default; add "smoke" for a short run of the
# standalone benchmarks), SDPA=0 skips PyTorch SDPA,
# FORMATS for the runtime bench (default "k4v4 k3v3").
set -uo pipefail
cd "$(dirname "$0")/.."
step=${1:-run}
K=.device-gpu/kernels
R=.device-gpu/runtime

if [[ $step == prepare ]]; then
  set -e
  scripts/device_run.sh prepare
  mkdir -p "$K"
  for b in test_cuda tqkv_cuda_bench tqkv_quant_bench tqkv_prefill_bench tqkv_sink_bench; do
    rm -f "$K/$b.gz" "$K/$b.xz"
    strip -o "$K/$b" ".device/$b"
    xz -9 -T2 -f "$K/$b"
  done
  D=$R XZ=1 scripts/device_runtime.sh prepare
  du -sh "$K" "$R"
  exit 0
fi

OUT=${OUT:-device-out}
mkdir -p "$OUT"
LOGS=$(mktemp -d)
WHAT=${WHAT:-tests sanitize bench runtime}
source scripts/device_env.sh
{
  echo "device_all.sh run, $(date -u +%FT%TZ), WHAT='$WHAT'"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
} | tee "$OUT/summary.txt"

if [[ -d $K ]]; then
  mkdir -p .device
  for b in test_cuda tqkv_cuda_bench tqkv_quant_bench tqkv_prefill_bench tqkv_sink_bench; do
    [[ -f $K/$b.xz ]] && unxz_py "$K/$b.xz" ".device/$b" && chmod +x ".device/$b"
  done
  for w in tests sanitize bench smoke; do
    [[ " $WHAT " == *" $w "* ]] || continue
    echo "== kernels: $w" | tee -a "$OUT/summary.txt"
    OUT="$LOGS/kernels" SDPA=${SDPA:-0} scripts/device_run.sh run "$w" 2>&1 | tail -40 | tee -a "$OUT/summary.txt"
  done
else
  echo "== kernels: skipped ($K did not travel)" | tee -a "$OUT/summary.txt"
fi
if [[ " $WHAT " == *" runtime "* ]]; then
  if [[ -d $R ]]; then
    echo "== runtime" | tee -a "$OUT/summary.txt"
    OUT="$LOGS/runtime" D=$R FORMATS="${FORMATS:-k4v4 k3v3}" scripts/device_runtime.sh run 2>&1 | tail -60 | tee -a "$OUT/summary.txt"
  else
    echo "== runtime: skipped ($R did not travel)" | tee -a "$OUT/summary.txt"
  fi
fi
tar czf "$OUT/logs.tgz" -C "$LOGS" .
echo "logs: $OUT/logs.tgz" | tee -a "$OUT/summary.txt"
