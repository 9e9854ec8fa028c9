#!/usr/bin/env bash
# GPU logits against CPU logits on the real models at full depth: the whole SmolLM2-135M file and
# Gemma-3-270M with all 18 layers (its vocabulary cut to the first 8192 rows: the 262144-row
# embedding is most of the file). scripts/device_runtime.sh checks reduced models (4 and 6 layers)
# because the working tree that travels to the device is limited to 64 MiB; these files (~200 MB
# with the binaries) travel in parts over several device calls made back to back, while the
# machine stays warm (it keeps ignored files between calls; it goes back after ~30 s idle).
#
#   scripts/device_full_models.sh prepare      here: builds tqkv and test_gpu (build-gpu, as
#       scripts/device_runtime.sh prepare), writes the CPU references (logits fixtures with
#       tools/slice_gguf, `tqkv perplexity` and `tqkv generate --chat` JSON with the CLI defaults),
#       packs everything into one tar and splits it into .carry/full1 ... .carry/fullN (< 60 MB each).
#   scripts/device_full_models.sh stash        on the device, one call per part, in order, each
#       carrying [".carry/fullK"]: copies the part into .carry/keep (an ignored folder that stays).
#   scripts/device_full_models.sh run          on the device, in the call that carries the last part
#       (it stashes that part first): joins and checks the parts (sha256), runs test_gpu's
#       GpuRealModel.* tests and the CLI comparisons. Logs: $OUT/full_models.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/device_env.sh
step=${1:-run}
B=${B:-build-gpu}
S=.carry/full-stage
PART_BYTES=${PART_BYTES:-58000000}
PROMPTS=("What is the capital of France?" "Write a haiku about the sea." "Explain photosynthesis in two sentences.")

if [[ $step == prepare ]]; then
  set -e
  cmake -S . -B "$B" -G Ninja -DCMAKE_BUILD_TYPE=Release -DTQKV_CUDA=ON -DTQKV_CUDA_ARCH=90 \
    -DTQKV_BUILD_BENCH=OFF -DCMAKE_DISABLE_FIND_PACKAGE_BLAS=ON >/dev/null
  cmake --build "$B" -j "${JOBS:-2}" --target tqkv test_gpu tqkv_slice_gguf
  rm -rf "$S" .carry/full[0-9]*
  mkdir -p "$S/lib"
  cp "$B/src/cli/tqkv" "$B/tests/test_gpu" "$S/"
  strip "$S/tqkv" "$S/test_gpu"
  xz -9 -T2 -f "$S/tqkv" "$S/test_gpu"
  for lib in libpcre2-8.so.0 libgomp.so.1; do
    cp -L "$(ldconfig -p | awk -v l="$lib" '$1 == l {print $NF; exit}')" "$S/lib/"
  done
  cp models/smollm2-135m-instruct-q4_1.gguf "$S/smollm2-full.gguf"
  "$B/src/gpu/tqkv_slice_gguf" slice models/gemma3-270m-q4_k_m.gguf "$S/gemma3-18l.gguf" --layers 18 --vocab 8192
  "$B/src/gpu/tqkv_slice_gguf" logits "$S/smollm2-full.gguf" "$S/smollm2-full"
  "$B/src/gpu/tqkv_slice_gguf" logits "$S/gemma3-18l.gguf" "$S/gemma3-18l"
  cp data/pride_and_prejudice.txt "$S/"
  T=$B/src/cli/tqkv
  M=$S/smollm2-full.gguf
  # CLI references with the CLI's defaults (keys centered and smoothed, 4 sink tokens, scale search).
  $T perplexity --model $M --text "$S/pride_and_prejudice.txt" --ctx 512 --chunks 8 --kv k4v4 --json >"$S/ppl_cpu_k4v4.json"
  for kv in f16 k4v4; do
    for p in "${PROMPTS[@]}"; do
      $T generate --model $M --chat "$p" -n 32 --kv $kv --greedy --json 2>/dev/null
    done >"$S/gen_cpu_$kv.jsonl"
  done
  tar cf .carry/full.tar -C "$S" .
  sha256sum .carry/full.tar | awk '{print $1}' >.carry/full.sha256
  n=$(( ($(stat -c %s .carry/full.tar) + PART_BYTES - 1) / PART_BYTES ))
  for ((k = 1; k <= n; ++k)); do
    mkdir -p ".carry/full$k"
    dd if=.carry/full.tar of=".carry/full$k/part$k" bs=1000000 skip=$(( (k - 1) * PART_BYTES / 1000000 )) \
      count=$(( PART_BYTES / 1000000 )) status=none
  done
  cp .carry/full.sha256 ".carry/full$n/"
  rm .carry/full.tar
  du -sh .carry/full[0-9]*
  echo "parts: $n (carry each in its own call, in order; the last one with 'run')"
  exit 0
fi

mkdir -p .carry/keep
for d in .carry/full[0-9]*; do [[ -d $d ]] && cp "$d"/* .carry/keep/; done
ls -la .carry/keep
[[ $step == stash ]] && exit 0

OUT=${OUT:-device-out}
mkdir -p "$OUT"
L="$OUT/full_models.txt"
K=.carry/keep
X=$K/x
{
  echo "device_full_models.sh run, $(date -u +%FT%TZ)"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  want=$(cat $K/full.sha256)
  got=$(ls $K/part* | sort -V | xargs cat | sha256sum | awk '{print $1}')
  if [[ $want != "$got" ]]; then
    echo "parts do not join to the packed tar (sha256 $got, want $want): a part is missing (machine released between calls?)"
    exit 1
  fi
  rm -rf $X && mkdir -p $X
  ls $K/part* | sort -V | xargs cat | tar xf - -C $X
  for b in tqkv test_gpu; do
    unxz_py "$X/$b.xz" "$X/$b"
    chmod +x "$X/$b"
  done
  device_library_path "$PWD/$X/lib"
  TQKV_GPU_FIXTURES="$PWD/$X" timeout 300 "$X/test_gpu" --gtest_filter='GpuRealModel.*' 2>&1 |
    grep -E '^\[gpu|FAILED|PASSED|SKIPPED|Failure|error|Expected|Which|actual'
  echo "== test_gpu GpuRealModel.* rc=${PIPESTATUS[0]}"
  M=$X/smollm2-full.gguf
  timeout 300 "$X/tqkv" perplexity --model $M --text "$X/pride_and_prejudice.txt" --ctx 512 --chunks 8 --kv k4v4 --json \
    --device cuda >"$OUT/ppl_gpu_k4v4.json" 2>"$OUT/ppl_gpu.err"
  echo "== perplexity --device cuda, full SmolLM2, ctx 512 x 8, k4v4, CLI defaults: rc=$? (GPU, then CPU)"
  for n in "$OUT/ppl_gpu_k4v4.json" "$X/ppl_cpu_k4v4.json"; do
    python3 -c "import json,sys; j=json.load(open(sys.argv[1])); print(' ', {k: j[k] for k in ['ppl','f16_ppl','kld_mean','kld_p99','top1_agreement','kv_bytes','kv_bytes_f16']})" "$n"
  done
  for kv in f16 k4v4; do
    for p in "${PROMPTS[@]}"; do
      timeout 60 "$X/tqkv" generate --model $M --chat "$p" -n 32 --kv $kv --greedy --json --device cuda 2>>"$OUT/gen_gpu.err"
    done >"$OUT/gen_gpu_$kv.jsonl"
    echo "== generate --chat --greedy -n 32 --device cuda --kv $kv, full SmolLM2 (GPU ids, then CPU)"
    python3 scripts/compare_generate_ids.py "$OUT/gen_gpu_$kv.jsonl" "$X/gen_cpu_$kv.jsonl"
  done
  tail -3 "$OUT/gen_gpu.err"
} 2>&1 | tee "$L"
