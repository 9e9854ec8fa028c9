#!/usr/bin/env bash
# make demo: SmolLM2-135M-Instruct answering on a TurboQuant k4v4 KV cache, the memory that saves,
# and how far its next-token distribution moves from an f16 cache (KL divergence, top-1 agreement)
# on a slice of Pride and Prejudice. About a minute on 2 cores.
set -euo pipefail
BUILD=${1:-build}
cd "$(dirname "$0")/.."
TQKV="$BUILD/src/cli/tqkv"
MODEL=models/smollm2-135m-instruct-q4_1.gguf
TEXT=data/pride_and_prejudice.txt
for f in "$MODEL" "$TEXT"; do
  [ -f "$f" ] || { echo "demo: $f is missing (run: make models)" >&2; exit 1; }
done

echo "== 1. Chat with SmolLM2-135M-Instruct, KV cache k4v4 (4-bit keys and values), greedy"
"$TQKV" generate --model "$MODEL" --kv k4v4 -n 64 \
  --chat "Write one sentence about why the ocean is salty."

echo
echo "== 2. The same question with an f16 cache, for comparison"
"$TQKV" generate --model "$MODEL" --kv f16 -n 64 \
  --chat "Write one sentence about why the ocean is salty."

echo
echo "== 3. Quality: perplexity of $TEXT (4 chunks of 512 tokens), k4v4 and k8v4 against f16 in the same run"
for kv in k4v4 k8v4; do
  "$TQKV" perplexity --model "$MODEL" --text "$TEXT" --ctx 512 --chunks 4 --kv "$kv"
done
