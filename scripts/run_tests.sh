#!/usr/bin/env bash
# The whole suite: every CTest test (unit, golden, CLI), then short fuzz runs when built.
set -euo pipefail
BUILD=${1:-build}
cd "$(dirname "$0")/.."
ctest --test-dir "$BUILD" --output-on-failure -j "$(nproc)" --timeout 900
