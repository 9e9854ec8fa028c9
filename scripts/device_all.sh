#!/usr/bin/env bash
# Everything the GPU machine checks, in one call: build here, then on the device run the kernel
# tests, compute-sanitizer memcheck + racecheck on them, the kernel benchmarks, the GPU model
# runtime tests (GPU logits against CPU logits) and the end-to-end decode benchmark.
#
#   scripts/device_all.sh prepare     here (nvcc, no GPU needed): builds both sets of binaries
#       (scripts/device_run.sh prepare, scripts/device_runtime.sh prepare) and packs everything the
#       device needs into .device-gpu/ (git-ignored; binaries stripped and gzipped, because the
#       working tree that travels is limited to 64 MiB).
#   scripts/device_all.sh run         on the device, from the repository root (device tool:
#       carry [".device-gpu"]). Logs: $OUT/summary.txt and $OUT/logs.tgz (the device tool brings
#       back at most 8 files, so the per-step logs travel as one archive).
#
# Environment: WHAT="tests sanitize bench runtime" (default: all four), SDPA=0 skips PyTorch SDPA.
set -uo pipefail
cd "$(dirname "$0")/.."
step=${1:-run}
D=.device-gpu

if [[ $step == prepare ]]; then
  set -e
  scripts/device_run.sh prepare
  scripts/device_runtime.sh prepare
  mkdir -p "$D/kernels"
  for b in test_cuda tqkv_cuda_bench; do
    strip -o "$D/kernels/$b" ".device/$b"
    gzip -9 -f "$D/kernels/$b"
  done
  du -sh "$D"
  exit 0
fi

OUT=${OUT:-device-out}
mkdir -p "$OUT"
LOGS=$(mktemp -d)
WHAT=${WHAT:-tests sanitize bench runtime}
mkdir -p .device
for b in test_cuda tqkv_cuda_bench; do gunzip -c "$D/kernels/$b.gz" >".device/$b" && chmod +x ".device/$b"; done
{
  echo "device_all.sh run, $(date -u +%FT%TZ), WHAT='$WHAT'"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
} | tee "$OUT/summary.txt"

for w in tests sanitize bench; do
  [[ " $WHAT " == *" $w "* ]] || continue
  echo "== kernels: $w" | tee -a "$OUT/summary.txt"
  OUT="$LOGS/kernels" SDPA=${SDPA:-0} scripts/device_run.sh run "$w" 2>&1 | tail -40 | tee -a "$OUT/summary.txt"
done
if [[ " $WHAT " == *" runtime "* ]]; then
  echo "== runtime" | tee -a "$OUT/summary.txt"
  OUT="$LOGS/runtime" FORMATS="${FORMATS:-k4v4 k3v3}" scripts/device_runtime.sh run 2>&1 | tail -60 | tee -a "$OUT/summary.txt"
fi
tar czf "$OUT/logs.tgz" -C "$LOGS" .
echo "logs: $OUT/logs.tgz" | tee -a "$OUT/summary.txt"
