#!/usr/bin/env bash
# The whole suite: every CTest test (unit, golden, CLI), then short fuzz runs when built.
set -euo pipefail
BUILD=${1:-build}
cd "$(dirname "$0")/.."
ctest --test-dir "$BUILD" --output-on-failure -j "$(nproc)" --timeout 900
# Short libFuzzer runs (GGUF parser, tokenizer) under ASan/UBSan, in their own build dir; skipped
# without clang. `make fuzz-long` runs them for 10M executions each.
scripts/fuzz.sh --seconds "${TQKV_FUZZ_SECONDS:-20}" build-fuzz
