#!/usr/bin/env bash
# Same-run A/B of a CUDA kernel change on the GPU machine: the kernel benchmark built from a base
# commit against the one built from the working tree, in one device call, alternating, plus the
# working tree's kernel tests. This is how every decode change since session 7 was judged
# (docs/benchmarks.md: "A/B, same binary or same call"); machine-to-machine and run-to-run drift
# (up to 5% at batch 32 x 32K) makes numbers from two calls unfit for a few-percent decision.
#
#   scripts/device_ab.sh prepare [BASE]   (here: nvcc, no GPU) BASE defaults to HEAD. Builds
#       tqkv_cuda_bench at BASE (a temporary git worktree, its own build folder build-ab-base) and
#       test_cuda + tqkv_cuda_bench from the working tree (build-cuda), strips and xz-packs them
#       into the git-ignored folder .device-ab (~40 MB: name it in the device tool's `carry`).
#       PROBE=1 also builds the working tree's bench with the decode timeline probe
#       (-DTQKV_CUDA_PROBE=ON, src/cuda/decode_probe.cuh; ~13 MB more), which `run` then runs
#       over PROBE_CASES and prints where each call's time goes (phase times per CTA).
#   scripts/device_ab.sh run              (on the device, from the repository root) runs test_cuda
#       (TESTS, a gtest filter; default: every decode, sink, prefill and GPU-vs-CPU test; within
#       TESTS_TIMEOUT seconds, default 200), then
#       ROUNDS (default 2) rounds of base and new over CASES, and prints per row the medians of
#       both and new / base. Logs under $OUT/ab (default ./device-out/ab).
#
# CASES: one tqkv_cuda_bench argument list per line (default below: d128 f16/k4v4/k3v3 at batch 8
# and 32, 256 tokens to 32K, and k4v4 at head sizes 64, 96, 256).
set -uo pipefail
cd "$(dirname "$0")/.."
step=${1:-run}
A=.device-ab

if [[ $step == prepare ]]; then
  set -e
  base=${2:-HEAD}
  rev=$(git rev-parse --short "$base")
  wt=$(mktemp -d)
  git worktree add --detach "$wt" "$rev" >/dev/null
  trap 'git worktree remove --force "$wt"' EXIT
  # (the worktree's path is new each time: a cache from an earlier one would refuse the source)
  rm -f build-ab-base/CMakeCache.txt
  cmake -S "$wt" -B build-ab-base -G Ninja -DCMAKE_BUILD_TYPE=Release -DTQKV_CUDA=ON -DTQKV_CUDA_ARCH=90 \
    -DTQKV_BUILD_BENCH=OFF >/dev/null
  cmake --build build-ab-base -j "${JOBS:-2}" --target tqkv_cuda_bench
  cmake -S . -B build-cuda -G Ninja -DCMAKE_BUILD_TYPE=Release -DTQKV_CUDA=ON -DTQKV_CUDA_ARCH=90 \
    -DTQKV_BUILD_BENCH=OFF >/dev/null
  cmake --build build-cuda -j "${JOBS:-2}" --target tqkv_cuda_bench test_cuda
  mkdir -p "$A"
  rm -f "$A"/*  # (also binaries a local `run` unpacked: they would not fit the carry)
  strip -o "$A/base_bench" build-ab-base/src/cuda/tqkv_cuda_bench
  strip -o "$A/new_bench" build-cuda/src/cuda/tqkv_cuda_bench
  strip -o "$A/test_cuda" build-cuda/tests/test_cuda
  xz -9 -T2 -f "$A/base_bench" "$A/new_bench" "$A/test_cuda"
  if [[ -n ${PROBE:-} ]]; then  # the working tree's bench with the decode timeline probe
    cmake -S . -B build-probe -G Ninja -DCMAKE_BUILD_TYPE=Release -DTQKV_CUDA=ON -DTQKV_CUDA_ARCH=90 \
      -DTQKV_BUILD_BENCH=OFF -DTQKV_CUDA_PROBE=ON >/dev/null
    cmake --build build-probe -j "${JOBS:-2}" --target tqkv_cuda_bench
    strip -o "$A/probe_bench" build-probe/src/cuda/tqkv_cuda_bench
    xz -9 -T2 -f "$A/probe_bench"
  fi
  echo "base $rev ($(git log -1 --format=%s "$rev" | cut -c1-60)); new: working tree of $(git rev-parse --short HEAD)$(git diff --quiet || echo ' + changes')" | tee "$A/what.txt"
  du -sh "$A"
  exit 0
fi

OUT=${OUT:-device-out}
O=$OUT/ab
mkdir -p "$O"
source scripts/device_env.sh
for b in base_bench new_bench test_cuda probe_bench; do
  [[ -f $A/$b.xz ]] && unxz_py "$A/$b.xz" "$A/$b" && chmod +x "$A/$b"
done
cat "$A/what.txt" | tee "$O/what.txt"
tests=${TESTS:-'AllFormats/*:CudaDecode.*:CudaSinks.*:CudaRecent.*:CudaVsCpu.*:*Prefill*'}
timeout "${TESTS_TIMEOUT:-200}" "$A/test_cuda" --gtest_brief=1 --gtest_filter="$tests" >"$O/tests.log" 2>&1
echo "tests rc=$? $(grep -E '^\[  (PASSED|FAILED)' "$O/tests.log" | tr '\n' ' ')"
grep -E "Failure" -A6 "$O/tests.log" | head -12
default_cases='--formats f16,k4v4,k3v3 --head-dim 128 --batch 8,32 --context 256,8192,16384,32768
--formats k4v4 --head-dim 64,96,256 --batch 8,32 --context 8192,32768'
cases=${CASES:-$default_cases}
for r in $(seq 1 "${ROUNDS:-2}"); do
  for m in base_bench new_bench; do
    echo "== $m $r"
    while IFS= read -r c; do
      [[ -z $c ]] && continue
      # shellcheck disable=SC2086
      timeout 120 "$A/$m" $c --no-quantize --no-prefill --reps 5 --iters 20 2>/dev/null | grep -E "^decode"
    done <<<"$cases"
  done
done >"$O/ab.txt"
python3 - "$O/ab.txt" <<'EOF'
import statistics, sys
rows, cur = {}, None
for line in open(sys.argv[1]):
    if line.startswith('=='):
        cur = line.split()[1]
        continue
    f = line.split()  # op kv d batch context splits time_us ...
    rows.setdefault(tuple(f[1:5]), {}).setdefault(cur, []).append(float(f[6]))
print(f"{'kv':6} {'d':>4} {'batch':>5} {'context':>7} {'base us':>9} {'new us':>9} {'new/base':>8}")
for (kv, d, b, c), v in rows.items():
    base, new = v.get('base_bench', []), v.get('new_bench', [])
    if not base or not new:
        continue
    mb, mn = statistics.median(base), statistics.median(new)
    print(f"{kv:6} {d:>4} {b:>5} {c:>7} {mb:9.2f} {mn:9.2f} {mn / mb:8.3f}")
EOF
if [[ -x $A/probe_bench ]]; then  # PROBE_CASES: one argument list (default: f16 and k4v4, d128, 8 x 256 and 8 x 8K)
  # shellcheck disable=SC2086
  timeout 120 "$A/probe_bench" ${PROBE_CASES:---formats f16,k4v4 --head-dim 128 --batch 8 --context 256,8192} \
    --no-quantize --no-prefill --reps 3 --iters 20 2>&1 | grep -E "^probe" | tee "$O/probe.txt"
fi
