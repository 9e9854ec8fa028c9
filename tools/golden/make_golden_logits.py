#!/usr/bin/env python3
"""Writes tests/fixtures/golden/<model>.json: reference next-token logits for a few prompts, computed
by Hugging Face transformers from the same GGUF files our engine loads. Run once by hand; the JSON is
committed and the C++ golden tests compare against it (no Python is needed to build or test tqkv).

    python3 -m venv .venv-golden && .venv-golden/bin/pip install -r tools/golden/requirements.txt
    .venv-golden/bin/python tools/golden/make_golden_logits.py [--models models]
        [--out tests/fixtures/golden] [--data data/pride_and_prejudice.txt]

Why this is an independent reference: transformers' GGUF loader dequantizes every tensor with the
`gguf` package's numpy code (Q4_1, Q4_K, Q5_0, Q6_K, Q8_0 -> fp32), undoes llama.cpp's conversions
(the Q/K row permutation for llama; Gemma's "norm weight + 1" is stored in the file and subtracted
on load, because HF's Gemma RMSNorm multiplies by (1 + w)), and then runs transformers' own PyTorch
LlamaForCausalLM / Gemma3ForCausalLM. Nothing is shared with our C++ code but the file.

The forward pass runs in float64 (the fp32 dequantized weights widened exactly), so the stored logits
are as close to the exact function of those weights as we can get; every error budget then belongs
to the engine under test. The same prompts are also run in float32 and the largest difference is
recorded (checks.fp32_vs_fp64_max_abs): a floor for how well any fp32 engine can agree.

Per prompt the fixture holds (P = number of prompt tokens, all arrays indexed by position 0..P-1,
the logits at position p predict token p+1):
  ids            the token ids fed to the model (feed these, not the text: it makes the test
                 independent of the tokenizer)
  argmax[P]      top-1 token id;   logsumexp[P]  log(sum(exp(logits)))
  top_ids[P][10], top_logits[P][10]   the ten largest logits, descending
  sample_logits[P][S]  logits at the fixture-wide sample_ids (S = 512, strided over the vocabulary)
                 (absent for the long sliding-window prompt, to keep the file small)
  full_rows      [{pos, logits[V]}] for a couple of positions of one prompt (SmolLM2 only)
  greedy         32 greedy tokens after the prompt (pure argmax, EOS not treated specially), as
                 ids and decoded text, computed with transformers' KV cache
  nll_mean, ppl  mean negative log-likelihood of the prompt's own tokens (a sanity check)
"""
import argparse
import datetime
import hashlib
import importlib.metadata
import json
import math
import os
import platform
import sys

import numpy as np
import torch

TOPK = 10
N_SAMPLE = 512
N_GREEDY = 32
LONG_TOKENS = 600  # > Gemma 3's sliding window (512): positions 512.. see a truncated window

PLAIN = (
    "The Great Barrier Reef, off the coast of Queensland in north-eastern Australia, is the largest "
    "coral reef system in the world. It is made up of"
)
CODE = (
    "def is_prime(n):\n"
    "    if n < 2:\n"
    "        return False\n"
    "    for d in range(2, int(n ** 0.5) + 1):\n"
)
NUMBERS = (
    "In July 1969, Apollo 11 landed on the Moon. Neil Armstrong and Buzz Aldrin spent about 21 hours "
    "on the surface, while Michael Collins"
)
CHAT_USER = "Explain in two sentences why the sky is blue."

# Gemma 3's GGUF file carries no tokenizer.chat_template; this is Gemma's documented turn format.
GEMMA_CHAT = "<start_of_turn>user\n{}<end_of_turn>\n<start_of_turn>model\n"

MODELS = [
    # (file stem, full-row prompt name, positions with a full logits row)
    ("smollm2-135m-instruct-q4_1", "plain", "middle_last"),
    ("gemma3-270m-q4_k_m", None, None),
]


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fix_smollm2_pretokenizer(tok):
    """transformers maps GGUF pre-tokenizer "smollm" to plain GPT-2 ByteLevel; the original SmolLM2
    tokenizer (and llama.cpp's "smollm") first splits every digit on its own. Restore that so the ids
    are the ones the model was trained on (only matters for prompts with numbers)."""
    from tokenizers import pre_tokenizers

    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )


def build_prompts(stem, tok):
    """Returns [(name, kind, text, ids)]. HF adds BOS exactly when the file says add_bos_token."""
    out = []
    for name, text in (("plain", PLAIN), ("code", CODE), ("numbers", NUMBERS)):
        out.append((name, "text", text, tok.encode(text, add_special_tokens=True)))
    if stem.startswith("smollm2"):
        # The file's own template (tokenizer.chat_template), rendered by transformers' jinja.
        text = tok.apply_chat_template(
            [{"role": "user", "content": CHAT_USER}], tokenize=False, add_generation_prompt=True
        )
        ids = tok.encode(text, add_special_tokens=True)
        out.append(("chat", "chat (file's tokenizer.chat_template)", text, ids))
    else:
        text = GEMMA_CHAT.format(CHAT_USER)
        ids = tok.encode(text, add_special_tokens=True)  # BOS first, then the turn markers
        out.append(("chat", "chat (Gemma turn format; the file has no chat_template)", text, ids))
    return out


def long_prompt(tok, data_path):
    """The first LONG_TOKENS tokens of a real text (Pride and Prejudice from docs/data.md)."""
    with open(data_path, encoding="utf-8") as f:
        text = f.read(20000)
    ids = tok.encode(text, add_special_tokens=True)[:LONG_TOKENS]
    if len(ids) < LONG_TOKENS:
        sys.exit(f"golden: {data_path} gives only {len(ids)} tokens")
    return ("long", "text longer than the sliding window (first 600 tokens of the data text)",
            tok.decode(ids, skip_special_tokens=False), ids)


@torch.no_grad()
def logits_of(model, ids):
    out = model(torch.tensor([ids]), use_cache=False)
    return out.logits[0].double()  # [P, V]


@torch.no_grad()
def greedy(model, ids, n):
    """Pure argmax decoding with transformers' KV cache; EOS is just another token here."""
    out = model(torch.tensor([ids]), use_cache=True)
    pkv = out.past_key_values
    nxt = int(out.logits[0, -1].argmax())
    gen = [nxt]
    for _ in range(n - 1):
        out = model(torch.tensor([[nxt]]), past_key_values=pkv, use_cache=True)
        pkv = out.past_key_values
        nxt = int(out.logits[0, -1].argmax())
        gen.append(nxt)
    return gen


def r(x, nd=5):
    return [round(float(v), nd) for v in x]


def summarize(name, kind, text, ids, lg, sample_ids, with_sample):
    """lg: [P, V] float64 logits for the prompt."""
    top = torch.topk(lg, TOPK, dim=-1)
    lse = torch.logsumexp(lg, dim=-1)
    logp = lg - lse[:, None]
    tgt = torch.tensor(ids[1:])
    nll = float(-logp[:-1].gather(1, tgt[:, None]).mean()) if len(ids) > 1 else float("nan")
    gaps = (top.values[:, 0] - top.values[:, 1]).tolist()
    p = {
        "name": name,
        "kind": kind,
        "text": text,
        "n_tokens": len(ids),
        "ids": ids,
        "argmax": [int(v) for v in lg.argmax(-1)],
        "logsumexp": r(lse),
        "top_ids": [[int(v) for v in row] for row in top.indices],
        "top_logits": [r(row) for row in top.values],
        "top1_top2_gap_min": round(min(gaps), 6),
        "nll_mean": round(nll, 6),
        "ppl": round(math.exp(nll), 4),
    }
    if with_sample:
        p["sample_logits"] = [r(row) for row in lg[:, sample_ids]]
    return p


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="models")
    ap.add_argument("--out", default="tests/fixtures/golden")
    ap.add_argument("--data", default="data/pride_and_prejudice.txt",
                    help="real text for Gemma 3's long (sliding-window) prompt; skipped if absent")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", default=None, help="run one model stem only")
    args = ap.parse_args()

    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    for stem, full_prompt, _ in MODELS:
        if args.only and args.only != stem:
            continue
        gguf_file = stem + ".gguf"
        path = os.path.join(args.models, gguf_file)
        print(f"golden: {stem}: loading (dequantizing) {path}", flush=True)
        tok = AutoTokenizer.from_pretrained(args.models, gguf_file=gguf_file)
        notes = []
        if stem.startswith("smollm2"):
            fix_smollm2_pretokenizer(tok)
            notes.append("SmolLM2 ids use the original pre-tokenizer (digits split one by one); "
                         "transformers' GGUF conversion alone uses plain GPT-2 ByteLevel")
        m32 = AutoModelForCausalLM.from_pretrained(args.models, gguf_file=gguf_file,
                                                   dtype=torch.float32).eval()
        cfg = m32.config
        vocab = cfg.vocab_size
        stride = vocab // N_SAMPLE
        sample_ids = [7 + i * stride for i in range(N_SAMPLE)]  # skip the first few control ids
        prompts = build_prompts(stem, tok)
        long_p = None
        if stem.startswith("gemma3") and os.path.exists(args.data):
            long_p = long_prompt(tok, args.data)

        # float32 pass first (only to measure the fp32 floor), then widen the same module to fp64.
        l32 = {name: logits_of(m32, ids) for name, _, _, ids in prompts}
        m64 = m32.double()
        out_prompts = []
        max32 = 0.0
        for name, kind, text, ids in prompts:
            lg = logits_of(m64, ids)
            max32 = max(max32, float((lg - l32[name]).abs().max()))
            p = summarize(name, kind, text, ids, lg, sample_ids, with_sample=True)
            if name == full_prompt:
                P = len(ids)
                p["full_rows"] = [{"pos": pos, "logits": r(lg[pos])} for pos in (P // 2, P - 1)]
            g = greedy(m64, ids, N_GREEDY)
            p["greedy"] = {"n": N_GREEDY, "ids": g, "text": tok.decode(g, skip_special_tokens=False)}
            print(f"  {name:8s} P={len(ids):3d} ppl={p['ppl']:8.3f} gap_min={p['top1_top2_gap_min']:.4f}"
                  f" greedy: {p['greedy']['text']!r}", flush=True)
            out_prompts.append(p)

        checks = {"fp32_vs_fp64_max_abs": round(max32, 7)}
        if long_p is not None:
            name, kind, text, ids = long_p
            lg = logits_of(m64, ids)
            p = summarize(name, kind, text, ids, lg, sample_ids, with_sample=False)
            # Show the fixture really tests the window: the same prompt with every layer global.
            win = m64.config.sliding_window
            m64.config.sliding_window = 1 << 20
            for layer in m64.model.layers:
                if hasattr(layer.self_attn, "sliding_window") and layer.self_attn.sliding_window:
                    layer.self_attn.sliding_window = 1 << 20
            lg_nowin = logits_of(m64, ids)
            m64.config.sliding_window = win
            for layer in m64.model.layers:
                if hasattr(layer.self_attn, "sliding_window") and layer.self_attn.sliding_window:
                    layer.self_attn.sliding_window = win
            d = (lg - lg_nowin).abs().max(dim=-1).values
            am = (lg.argmax(-1) != lg_nowin.argmax(-1))
            checks["long_without_window"] = {
                "max_abs_before_pos_window": round(float(d[:win].max()), 7),
                "max_abs_from_pos_window": round(float(d[win:].max()), 5),
                "argmax_changes_from_pos_window": int(am[win:].sum()),
            }
            print(f"  long     P={len(ids)} ppl={p['ppl']:.3f}; all-global attention instead: "
                  f"{checks['long_without_window']}", flush=True)
            out_prompts.append(p)

        fixture = {
            "format": "tqkv-golden-logits/1",
            "model": gguf_file,
            "model_sha256": sha256_file(path),
            "made_with": {
                "transformers": transformers.__version__,
                "torch": torch.__version__,
                "gguf": importlib.metadata.version("gguf"),
                "accelerate": importlib.metadata.version("accelerate"),
                "numpy": np.__version__,
                "python": platform.python_version(),
                "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
                "command": "tools/golden/make_golden_logits.py",
            },
            "compute_dtype": "float64 (weights dequantized to fp32 by the gguf package, widened exactly)",
            "hf_config": {k: v for k, v in cfg.to_dict().items()
                          if k in ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads",
                                   "num_key_value_heads", "head_dim", "rms_norm_eps", "rope_parameters",
                                   "sliding_window", "layer_types", "query_pre_attn_scalar",
                                   "tie_word_embeddings", "final_logit_softcapping",
                                   "attn_logit_softcapping", "vocab_size")},
            "vocab_size": vocab,
            "topk": TOPK,
            "sample_ids": sample_ids,
            "notes": notes,
            "checks": checks,
            "prompts": out_prompts,
        }
        dst = os.path.join(args.out, stem + ".json")
        with open(dst, "w", encoding="utf-8") as f:
            json.dump(fixture, f, ensure_ascii=False, separators=(",", ":"))
            f.write("\n")
        print(f"golden: wrote {dst} ({os.path.getsize(dst) / 1e6:.2f} MB); checks {checks}", flush=True)
        del m32, m64


if __name__ == "__main__":
    main()
