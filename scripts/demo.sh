#!/usr/bin/env bash
# make demo: what tqkv does, on the default model.
set -euo pipefail
BUILD=${1:-build}
cd "$(dirname "$0")/.."
TQKV="$BUILD/src/cli/tqkv"
echo "== TurboQuant codec, head size 64 (SmolLM2's), 4 bits"
"$TQKV" codec --bits 4 --head-dim 64 --vectors 20000
