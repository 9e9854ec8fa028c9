#!/usr/bin/env bash
# The numbers of docs/benchmarks.md, "Model quality and CPU decode speed":
#   perplexity + KLD vs f16 + top-1 for each KV format, both models, on data/pride_and_prejudice.txt;
#   decode tokens/s with f16 and k4v4 after a 512- and an 8192-token prompt.
# Usage: scripts/bench_model.sh [BUILD] [quality|speed|defaults|all]. Takes tens of minutes on 2 cores.
# defaults: only the formats with the CLI's defaults and the q4_0 peer (~15 minutes).
set -euo pipefail
BUILD=${1:-build}
WHAT=${2:-all}
cd "$(dirname "$0")/.."
TQKV="$BUILD/src/cli/tqkv"
TEXT=data/pride_and_prejudice.txt
SMOL=models/smollm2-135m-instruct-q4_1.gguf
GEMMA=models/gemma3-270m-q4_k_m.gguf
CHUNKS_SMOL=${CHUNKS_SMOL:-8}
CHUNKS_GEMMA=${CHUNKS_GEMMA:-4}
# One row per run: the default (keys centered), the plain codec (--center none) for comparison,
# and llama.cpp's rotated q4_0 KV cache emulated in an f16 cache (--emulate q4_0h, evaluation only).
ppl() {
  local model=$1 chunks=$2; shift 2
  "$TQKV" perplexity --model "$model" --text "$TEXT" --ctx 512 --chunks "$chunks" --json "$@" 2>/dev/null |
    python3 -c "import json,sys; j=json.load(sys.stdin); print('$(basename "$model")', '$*', 'ppl %.4f f16_ppl %.4f kld_mean %.5f kld_p99 %.5f top1 %.4f kv_bytes %d f16_bytes %d' % (j['ppl'], j['f16_ppl'], j['kld_mean'], j['kld_p99'], j['top1_agreement'], j['kv_bytes'], j['kv_bytes_f16']))"
}
# defaults: every format with the CLI's defaults (keys centered and smoothed, 4 sinks, the last 32 tokens in f16, the scale
# search) and the peer (rotated q4_0, emulated) with the same transforms: the main quality table.
if [ "$WHAT" = defaults ]; then
  for m in "$SMOL:$CHUNKS_SMOL" "$GEMMA:$CHUNKS_GEMMA"; do
    model=${m%%:*}; chunks=${m##*:}
    for kv in k8v4 k4v4 k4v3 k3v3 k2v2; do ppl "$model" "$chunks" --kv "$kv"; done
    ppl "$model" "$chunks" --kv f16 --emulate q4_0h
  done
fi
if [ "$WHAT" = quality ] || [ "$WHAT" = all ]; then
  for m in "$SMOL:$CHUNKS_SMOL" "$GEMMA:$CHUNKS_GEMMA"; do
    model=${m%%:*}; chunks=${m##*:}
    for kv in k8v4 k4v4 k4v3 k3v3 k2v2; do
      ppl "$model" "$chunks" --kv "$kv"
      ppl "$model" "$chunks" --kv "$kv" --center none
    done
    ppl "$model" "$chunks" --kv f16 --emulate q4_0h --center none
    ppl "$model" "$chunks" --kv f16 --emulate q4_0h --center keys
  done
  # Per-layer policy candidates: f16 first and last layer (SmolLM2), 8-bit keys in Gemma 3's layer 11.
  ppl "$SMOL" "$CHUNKS_SMOL" --kv k4v4 --f16-layers 0,-1
  ppl "$GEMMA" "$CHUNKS_GEMMA" --kv k4v4 --f16-layers 11
  ppl "$GEMMA" "$CHUNKS_GEMMA" --kv k4v4 --k8-layers 11
  # Per-layer diagnostics (one chunk): cache reconstruction error, mean-vector energy, attention error.
  for model in "$SMOL" "$GEMMA"; do
    for c in none keys; do
      "$TQKV" perplexity --model "$model" --text "$TEXT" --ctx 512 --chunks 1 --kv k4v4 --center "$c" --per-layer 2>/dev/null
    done
  done
fi
if [ "$WHAT" = speed ] || [ "$WHAT" = all ]; then
  for model in "$SMOL" "$GEMMA"; do
    for ctx in 512 8192; do
      for kv in f16 k4v4; do
        "$TQKV" generate --model "$model" --prompt-file "$TEXT" --prompt-tokens "$ctx" -n 32 --kv "$kv" --json 2>/dev/null |
          python3 -c "import json,sys; j=json.load(sys.stdin); print('$(basename $model)', 'ctx $ctx', j['kv'], 'prefill %.1f tok/s decode %.1f tok/s kv_bytes %d f16_bytes %d' % (j['prefill_tok_s'], j['decode_tok_s'], j['kv_bytes'], j['kv_bytes_f16']))"
      done
    done
  done
fi
