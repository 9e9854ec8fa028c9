#!/usr/bin/env bash
# The GPU model runtime on the GPU machine (the kernels have scripts/device_run.sh). Two steps:
#
#   scripts/device_runtime.sh prepare   (here: nvcc, no GPU needed)
#       builds tqkv and test_gpu in build-gpu (TQKV_CUDA=ON, sm_90, no BLAS), copies them and the
#       shared libraries the GPU machine lacks (PCRE2, libgomp) into .device-gpu/ (git-ignored, name
#       it in the device tool's `carry`), and writes the reduced real models and their CPU logits
#       there: SmolLM2-135M cut to 4 layers and Gemma-3-270M to 6 layers (5 sliding + 1 global), both
#       to the first 8192 vocabulary rows (tools/slice_gguf; the full files are too large to travel).
#   scripts/device_runtime.sh run       (on the GPU machine, from the repository root)
#       runs test_gpu (GPU vs CPU logits), `tqkv generate` / `tqkv perplexity --device cuda` on the
#       reduced SmolLM2 beside the CPU's results, then `tqkv bench decode` on the synthetic
#       Llama-3.1-8B shape (batch 32, context 16K, k4v4 against f16). Logs to $OUT (default ./device-out).
#
# Environment: D = folder of the binaries and fixtures (default .device-gpu; a helper uses its own
# .carry/NAME), B = build folder of `prepare` (default build-gpu), FIXTURES_FROM = a folder whose
# fixtures (reduced models, CPU logits and references) `prepare` copies instead of computing them,
# PREFILL = N adds `--prefill N` (prefill tokens/s, tiled kernel vs decode path) to the bench,
# XZ=1 = binaries packed with xz, not gzip; FORMATS = formats benchmarked against f16 (default k4v4), TEST_TIMEOUT / BENCH_TIMEOUT = seconds
# for test_gpu (300) and each bench (240). BENCH_ARGS = extra flags for the bench (e.g. "--scale-search on").
# TEST_FILTER = a gtest filter for test_gpu; SERVE_ARGS = flags of a `tqkv bench serve` run (below);
# FORMATS=none skips `tqkv bench decode`.
#
# cuBLAS is linked dynamically (libcublasLt is 540 MB, too large to carry): `run` finds the
# device's own libcublas.so.13 (CUDA toolkit or PyTorch's wheel) and puts it on LD_LIBRARY_PATH.
set -uo pipefail
cd "$(dirname "$0")/.."
step=${1:-run}
D=${D:-.device-gpu}
B=${B:-build-gpu}

if [[ $step == prepare ]]; then
  set -e
  cmake -S . -B "$B" -G Ninja -DCMAKE_BUILD_TYPE=Release -DTQKV_CUDA=ON -DTQKV_CUDA_ARCH=90 \
    -DTQKV_BUILD_BENCH=OFF -DCMAKE_DISABLE_FIND_PACKAGE_BLAS=ON -DTQKV_HTTP=OFF >/dev/null
  cmake --build "$B" -j "${JOBS:-2}" --target tqkv test_gpu tqkv_slice_gguf
  mkdir -p "$D/lib"
  rm -f "$D/tqkv" "$D/test_gpu"
  cp "$B/src/cli/tqkv" "$B/tests/test_gpu" "$D/"
  strip "$D/tqkv" "$D/test_gpu"
  # Compressed for the trip (the working tree that travels is limited to 64 MiB); `run` unpacks.
  # XZ=1: xz instead (two thirds of gzip's size; `run` unpacks with Python's lzma, no xz needed there).
  rm -f "$D/tqkv.gz" "$D/test_gpu.gz" "$D/tqkv.xz" "$D/test_gpu.xz"
  if [[ -n ${XZ:-} ]]; then xz -9 -T2 -f "$D/tqkv" "$D/test_gpu"; else gzip -9 -f "$D/tqkv" "$D/test_gpu"; fi
  for lib in libpcre2-8.so.0 libgomp.so.1; do
    cp -L "$(ldconfig -p | awk -v l="$lib" '$1 == l {print $NF; exit}')" "$D/lib/"
  done
  # The reduced Gemma 3 travels in a folder of its own (${D}-gemma, below); bring it back first.
  if [[ -d ${D}-gemma ]]; then mv -f "${D}-gemma"/* "$D/" 2>/dev/null || true; fi
  if [[ -n ${FIXTURES_FROM:-} ]]; then
    for f in smollm2-4l.gguf smollm2-4l.f32 smollm2-4l.json gemma3-6l.gguf gemma3-6l.f32 gemma3-6l.json \
             pp_in_vocab.txt gen_cpu_f16.jsonl gen_cpu_k4v4.jsonl ppl_cpu_k4v4.json; do
      [[ -f $D/$f || -f $D/$f.xz ]] || cp "$FIXTURES_FROM/$f" "$D/"
    done
  fi
  # XZ=1 packs the reduced models too (below); unpack them here for the CPU references.
  for m in smollm2-4l gemma3-6l; do
    [[ -f $D/$m.gguf || ! -f $D/$m.gguf.xz ]] || xz -dk "$D/$m.gguf.xz"
  done
  S=$B/src/gpu/tqkv_slice_gguf
  [[ -f $D/smollm2-4l.gguf ]] || $S slice models/smollm2-135m-instruct-q4_1.gguf $D/smollm2-4l.gguf --layers 4 --vocab 8192 --keep-tokenizer
  [[ -f $D/gemma3-6l.gguf ]] || $S slice models/gemma3-270m-q4_k_m.gguf $D/gemma3-6l.gguf --layers 6 --vocab 8192
  [[ -f $D/smollm2-4l.f32 ]] || $S logits $D/smollm2-4l.gguf $D/smollm2-4l
  [[ -f $D/gemma3-6l.f32 ]] || $S logits $D/gemma3-6l.gguf $D/gemma3-6l
  # CPU references for the CLI checks of `run` (generate / perplexity --device cuda).
  T=$B/src/cli/tqkv
  if [[ ! -f $D/pp_in_vocab.txt ]]; then
    # Words of Pride and Prejudice whose SmolLM2 tokens all fall below 8192 (the cut vocabulary).
    python3 - "$T" "$D" <<'EOF'
import json, subprocess, sys
T, D = sys.argv[1], sys.argv[2]
text = open('data/pride_and_prejudice.txt', encoding='utf-8').read()
i = text.find('It is a truth universally acknowledged')
words = text[i:i + 30000].split()
for _ in range(6):
    j = json.loads(subprocess.run([T, 'tokenize', '--model', D + '/smollm2-4l.gguf', '--text', ' '.join(words), '--json'],
                                  capture_output=True, text=True).stdout)
    bad = set(p.replace('\u0120', '') for p, k in zip(j['tokens'], j['ids']) if k >= 8192)
    if not bad:
        break
    words = [w for w in words if not any(b and b in w for b in bad)]
open(D + '/pp_in_vocab.txt', 'w').write(' '.join(words))
EOF
  fi
  # --center none on both sides: these references predate key centering in the GPU runtime
  # (tests/gpu checks centered GPU against centered CPU); --sink-tokens 0 on both sides: these
  # comparisons predate sinks (tests/gpu/test_gpu_sinks.cpp checks GPU sinks against CPU sinks);
  # --recent-tokens 0 likewise (tests/gpu/test_gpu_recent.cpp; the runtimes prefill in other chunks);
  # --smooth-keys off on both sides likewise (tests/gpu/test_gpu_model.cpp checks GPU smoothing);
  # --scale-search off on both sides likewise (tests/cuda and tests/gpu check the GPU's search).
  [[ -n ${FIXTURES_FROM:-} ]] || for kv in f16 k4v4; do
    for p in "The capital of France is" "Once upon a time, there was a little"; do
      $T generate --model $D/smollm2-4l.gguf --prompt "$p" -n 16 --kv $kv --greedy --center none --sink-tokens 0 --recent-tokens 0 --smooth-keys off --scale-search off --json 2>/dev/null
    done >$D/gen_cpu_$kv.jsonl
  done
  [[ -n ${FIXTURES_FROM:-} ]] ||
    $T perplexity --model $D/smollm2-4l.gguf --text $D/pp_in_vocab.txt --ctx 256 --chunks 8 --kv k4v4 --center none --sink-tokens 0 --recent-tokens 0 --smooth-keys off --scale-search off --json >$D/ppl_cpu_k4v4.json
  # XZ=1: the reduced models travel xz-packed as well (saves ~2.5 MB; the working tree that travels,
  # carried folders included, is limited to 64 MiB); `run` unpacks them.
  if [[ -n ${XZ:-} ]]; then
    for m in smollm2-4l gemma3-6l; do xz -6 -T2 -f "$D/$m.gguf"; done
  fi
  # The reduced Gemma 3 (~28 MB packed) goes to ${D}-gemma: with it the runtime pack passed the
  # device tool's 64 MiB once the binaries grew (2026-11-30). GpuRealModel.Gemma3Reduced skips
  # without it; to run it, carry this folder with $D/test_gpu.xz and $D/lib (carry takes files)
  # and run test_gpu with TQKV_GPU_FIXTURES pointing at a folder holding both.
  mkdir -p "${D}-gemma"
  mv -f "$D"/gemma3-6l.* "${D}-gemma/"
  du -ab "$D" "${D}-gemma" | sort -n | tail -14
  exit 0
fi

OUT=${OUT:-device-out}
mkdir -p "$OUT"
source scripts/device_env.sh
device_library_path "$PWD/$D/lib"
if [[ -d ${D}-gemma ]]; then cp -n "${D}-gemma"/* "$D/" 2>/dev/null || true; fi
for m in smollm2-4l gemma3-6l; do
  [[ -f $D/$m.gguf || ! -f $D/$m.gguf.xz ]] || unxz_py "$D/$m.gguf.xz" "$D/$m.gguf"
done
for b in tqkv test_gpu; do
  if [[ -f $D/$b.xz ]]; then
    unxz_py "$D/$b.xz" "$D/$b"
    chmod +x "$D/$b"
  else
    gunzip -kf "$D/$b.gz"
  fi
done
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv | tee "$OUT/nvidia-smi.txt"
ldd "$D/tqkv" | grep -E 'not found|cublas' | tee "$OUT/ldd.txt"

export TQKV_GPU_FIXTURES="$PWD/$D"
# (tail, not head: head would close the pipe early and kill test_gpu with SIGPIPE once its
# summary lines pass the limit)
timeout "${TEST_TIMEOUT:-300}" "$D/test_gpu" ${TEST_FILTER:+--gtest_filter="$TEST_FILTER"} 2>&1 | tee "$OUT/test_gpu.log" | grep -E '^\[gpu|FAILED|PASSED|SKIPPED|Failure|error' | tail -80
echo "== test_gpu rc=${PIPESTATUS[0]}"

# The CLI paths (--device cuda) on the reduced SmolLM2 (its tokenizer kept; the prompts and the
# text use only token ids below 8192), beside the CPU's output on the same file computed by `prepare`.
M=$D/smollm2-4l.gguf
for kv in f16 k4v4; do
  for p in "The capital of France is" "Once upon a time, there was a little"; do
    timeout 60 "$D/tqkv" generate --model $M --prompt "$p" -n 16 --kv $kv --greedy --center none --sink-tokens 0 --recent-tokens 0 --smooth-keys off --scale-search off --json --device cuda 2>>"$OUT/cli.err"
  done >"$OUT/gen_gpu_$kv.jsonl"
  echo "== generate --device cuda --kv $kv (ids: GPU, then CPU)"
  python3 scripts/compare_generate_ids.py "$OUT/gen_gpu_$kv.jsonl" "$D/gen_cpu_$kv.jsonl"
done
timeout 120 "$D/tqkv" perplexity --model $M --text $D/pp_in_vocab.txt --ctx 256 --chunks 8 --kv k4v4 --center none --sink-tokens 0 --recent-tokens 0 --smooth-keys off --scale-search off --json --device cuda \
  >"$OUT/ppl_gpu_k4v4.json" 2>>"$OUT/cli.err"
echo "== perplexity --device cuda rc=$? (GPU, then CPU)"
for n in "$OUT/ppl_gpu_k4v4.json" "$D/ppl_cpu_k4v4.json"; do
  python3 -c "import json,sys; j=json.load(open(sys.argv[1])); print(' ', {k: j[k] for k in ['ppl','f16_ppl','kld_mean','kld_p99','top1_agreement','kv_bytes','kv_bytes_f16','seconds']})" "$n"
done
tail -3 "$OUT/cli.err"

# SERVE_ARGS: the serving engine's throughput from one KV budget, f16 against --kv, on the synthetic
# Llama-3.1-8B shape with the reduced SmolLM2's tokenizer (e.g. "--kv-budget-mib 4096 --requests 128").
if [[ -n ${SERVE_ARGS:-} ]]; then
  read -ra sargs <<<"$SERVE_ARGS"
  timeout "${BENCH_TIMEOUT:-240}" "$D/tqkv" bench serve --device cuda --synthetic llama3-8b --tokenizer $M "${sargs[@]}" --json \
    >"$OUT/bench_serve.json" 2>"$OUT/bench_serve.err"
  echo "== bench serve rc=$?"
  tail -3 "$OUT/bench_serve.err"
  python3 - "$OUT/bench_serve.json" <<'EOF' || cat "$OUT/bench_serve.json"
import json, sys
j = json.load(open(sys.argv[1]))
print(f"{j['model']}: {j['requests']} requests x ({j['prompt_len']} + {j['max_tokens']}), {j['max_batch']} slots, "
      f"budget {j['kv_budget_bytes']/2**20:.0f} MiB, {j['admission']}")
for r in j['rows']:
    print(f"{r['kv']:6} wall {r['wall_s']:7.2f} s {r['tokens_per_s']:8.1f} tok/s ({r['speedup_vs_baseline']:.2f}x) peak {r['peak_active']:4d} "
          f"batch {r['mean_batch']:6.2f} steps {r['steps']:6d} pool {r['pool_tokens']:8d} done {r['requests_done']} failed {r['requests_failed']} "
          f"TTFT p50 {r['ttft_median_s']:.2f} s latency p50 {r['latency_median_s']:.2f} s {r['first_error']}")
    print(f"       {r['backend']}")
EOF
fi

[[ ${FORMATS:-k4v4} == none ]] && exit 0
args=(bench decode --backend cuda --synthetic llama3-8b --batch "${BATCH:-32}" --context "${CONTEXT:-16384}" --steps 20)
[[ -n ${PREFILL:-} ]] && args+=(--prefill "$PREFILL" --prefill-chunk "${PREFILL_CHUNK:-2048}")
# BENCH_ARGS: extra flags for every bench row, e.g. "--scale-search on" (the CLI default of generate).
[[ -n ${BENCH_ARGS:-} ]] && read -ra extra <<<"$BENCH_ARGS" && args+=("${extra[@]}")
for kv in ${FORMATS:-k4v4}; do
  timeout "${BENCH_TIMEOUT:-240}" "$D/tqkv" "${args[@]}" --kv "$kv" --json >"$OUT/bench_decode_$kv.json" 2>"$OUT/bench_decode_$kv.err"
  echo "== bench decode $kv rc=$?"
  cat "$OUT/bench_decode_$kv.err" | tail -8
  python3 - "$OUT/bench_decode_$kv.json" <<'EOF' || cat "$OUT/bench_decode_$kv.json"
import json, sys
j = json.load(open(sys.argv[1]))
print(f"device {j['device']} copy {j['copy_gb_s']:.0f} GB/s weights {j['weight_bytes']/1e9:.2f} GB budget {j['budget_bytes']/2**30:.1f} GiB")
for r in j['rows']:
    print(f"{r['kv']:6} attn {r['attention_us_per_step']:9.1f} us/step {r['attention_bytes_per_step']/1e6:9.1f} MB "
          f"{r['attention_gb_s']:6.0f} GB/s ({100*r['attention_frac_copy_bw']:.0f}% of copy, {r['attention_speedup_vs_f16']:.2f}x f16) | "
          f"step {r['step_ms']:7.2f} ms {r['decode_tok_s']:8.1f} tok/s ({r['decode_speedup_vs_f16']:.2f}x f16) | "
          f"fit {r['seqs_fit_budget']} seqs ({r['capacity_vs_f16']:.2f}x f16)")
for r in j.get('prefill', []):
    print(f"prefill {r['kv']:6} {r['tokens']} tokens (chunks of {r['chunk']}): tiled {r['tiled_tok_s']:8.0f} tok/s "
          f"({r['tiled_s']:.3f} s) | decode path {r['decode_path_tok_s']:8.0f} tok/s ({r['decode_path_s']:.3f} s) | {r['speedup']:.2f}x")
EOF
done
