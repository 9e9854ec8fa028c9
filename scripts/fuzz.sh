#!/usr/bin/env bash
# Builds the libFuzzer targets (fuzz/fuzz_*.cpp) with clang, ASan and UBSan in their own build
# directory and runs each one. Used briefly by scripts/run_tests.sh and at length by `make fuzz-long`.
#   scripts/fuzz.sh --seconds 20 [BUILD_DIR]     each target for 20 s
#   scripts/fuzz.sh --runs 10000000 [BUILD_DIR]  each target for 10M executions
# Corpora live in fuzz-corpus/<target>/ (not committed); crashes are written there as crash-*.
# Exits non-zero on the first crash, leak, timeout or sanitizer report.
set -euo pipefail
cd "$(dirname "$0")/.."
LIMIT=(-max_total_time=20)
case "${1:-}" in
  --seconds) LIMIT=(-max_total_time="$2"); shift 2 ;;
  --runs) LIMIT=(-runs="$2"); shift 2 ;;
esac
BUILD=${1:-build-fuzz}
if ! command -v clang++ >/dev/null; then
  echo "fuzz: clang++ not found, skipping the fuzz targets"
  exit 0
fi
if [ ! -f "$BUILD/build.ninja" ]; then
  CC=clang CXX=clang++ cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTQKV_FUZZ=ON \
    -DTQKV_BUILD_TESTS=OFF -DTQKV_BUILD_BENCH=OFF -DTQKV_CUDA=OFF >/dev/null
fi
targets=$(cd fuzz && ls fuzz_*.cpp | sed 's/\.cpp$//')
# shellcheck disable=SC2086
cmake --build "$BUILD" -j "${FUZZ_JOBS:-2}" --target make_fuzz_seeds $targets
for t in $targets; do
  corpus=fuzz-corpus/$t
  seeds=fuzz-corpus/$t-seed
  mkdir -p "$corpus" "$seeds"
  if [ "$t" = fuzz_gguf ]; then "$BUILD/fuzz/make_fuzz_seeds" "$seeds"; fi
  if [ -d "fuzz/seeds/$t" ]; then cp -n fuzz/seeds/"$t"/* "$seeds"/ 2>/dev/null || true; fi
  echo "fuzz: $t ${LIMIT[*]}"
  "$BUILD/fuzz/$t" "${LIMIT[@]}" -max_len=4096 -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
    -artifact_prefix="$corpus/" "$corpus" "$seeds" 2>"$corpus.log" || {
    tail -50 "$corpus.log"; echo "fuzz: $t FAILED (log: $corpus.log)"; exit 1; }
  grep -E "^Done [0-9]+ runs" "$corpus.log" | sed "s/^/fuzz: $t: /"
done
