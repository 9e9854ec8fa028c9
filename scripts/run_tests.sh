#!/usr/bin/env bash
# The whole suite: every CTest test (unit, golden, CLI), then short fuzz runs when built.
set -euo pipefail
BUILD=${1:-build}
cd "$(dirname "$0")/.."
# Tests run as many at a time as there are cores (2 on CI) and most use OpenMP: idle workers that
# spin (GNU OpenMP's default) take the cores the other test needs. The serving tests, whose engine
# threads open many short parallel regions, ran 20x slower side by side than alone (9.5 s -> 210 s
# in a fresh-clone run); sleeping workers keep them near their solo time.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
ctest --test-dir "$BUILD" --output-on-failure -j "$(nproc)" --timeout 900
# Short libFuzzer runs (GGUF parser, tokenizer) under ASan/UBSan, in their own build dir; skipped
# without clang. `make fuzz-long` runs them for 10M executions each.
scripts/fuzz.sh --seconds "${TQKV_FUZZ_SECONDS:-20}" build-fuzz
