#!/usr/bin/env python3
"""Writes the weight-format fixtures in tests/fixtures/quant/, computed independently of tqkv by
gguf-py (the `gguf` package on PyPI, ggml's own Python reader) and numpy:

  <type>.blocks   a few blocks of random bytes with valid, varied fp16 scales (raw GGUF layout)
  <type>.values   their dequantized float32 values, little-endian, from gguf.quants.dequantize
  <type>.qin/.qout float32 inputs and gguf.quants.quantize's bytes, for the reference quantizers
  real_tensors.txt  rows of real tensors of the two models in models/, dequantized by gguf-py:
                    "model tensor type row first count" then `count` float32 bit patterns in hex

Run once by hand (pip install gguf numpy; make models); the outputs are committed, so neither the
build nor the tests need Python. tests/quant/test_quant_fixtures.cpp compares bit for bit.
"""
import os
import sys

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import GGUFReader
from gguf.quants import dequantize, quantize
from gguf.constants import GGML_QUANT_SIZES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "quant")
rng = np.random.default_rng(20261128)

# (type, number of blocks, byte offsets of fp16 scale fields inside one block)
FORMATS = [
    (T.F32, 96, []),
    (T.F16, 96, []),
    (T.BF16, 96, []),
    (T.Q8_0, 8, [0]),
    (T.Q4_0, 8, [0]),
    (T.Q4_1, 8, [0, 2]),
    (T.Q5_0, 8, [0]),
    (T.Q5_1, 8, [0, 2]),
    (T.Q4_K, 4, [0, 2]),
    (T.Q5_K, 4, [0, 2]),
    (T.Q6_K, 4, [208]),
]


def scale_f16(i):
    """Varied but finite fp16 scales: typical magnitudes, a negative, a subnormal, zero."""
    special = [np.float16(0.0), np.float16(-0.0123), np.float16(6.0e-8), np.float16(1.5)]
    if i < len(special):
        return special[i]
    return np.float16(rng.normal(0.0, 0.02))


def make_blocks(qtype, n_blocks, scale_offsets):
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    if qtype == T.F32:
        v = rng.normal(0, 1, n_blocks).astype(np.float32)
        v[:4] = [0.0, -0.0, 1e-40, 3.4e38]  # zero, negative zero, subnormal, near max
        return v.view(np.uint8)
    if qtype == T.F16:
        v = rng.normal(0, 1, n_blocks).astype(np.float16)
        v[:5] = [0.0, -0.0, 6.0e-8, 65504.0, np.inf]  # subnormal, max, infinity
        return v.view(np.uint8)
    if qtype == T.BF16:
        bits = rng.integers(0, 1 << 16, n_blocks, dtype=np.uint16)
        bits[(bits & 0x7F80) == 0x7F80] &= 0xBFFF  # no NaN/Inf from the random part
        bits[:3] = [0x0000, 0x8000, 0x7F80]  # +0, -0, +inf
        return bits.view(np.uint8)
    raw = rng.integers(0, 256, (n_blocks, type_size), dtype=np.uint8)
    for b in range(n_blocks):
        for k, off in enumerate(scale_offsets):
            raw[b, off:off + 2] = np.array([scale_f16(b * len(scale_offsets) + k)], dtype=np.float16).view(np.uint8)
    return raw.reshape(-1)


def write_formats():
    for qtype, n_blocks, scale_offsets in FORMATS:
        raw = make_blocks(qtype, n_blocks, scale_offsets)
        block_size, type_size = GGML_QUANT_SIZES[qtype]
        values = dequantize(raw.reshape(-1, type_size), qtype).astype(np.float32).reshape(-1)
        assert values.size == n_blocks * block_size, (qtype.name, values.size)
        name = qtype.name.lower()
        raw.tofile(os.path.join(OUT, name + ".blocks"))
        values.astype("<f4").tofile(os.path.join(OUT, name + ".values"))
        print(f"{name}: {n_blocks} blocks, {raw.size} bytes -> {values.size} values")


QUANTIZE = [T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1]


def write_quantize():
    """Inputs with awkward blocks (all zero, constant, one spike, tiny values) plus random ones."""
    for qtype in QUANTIZE:
        x = rng.normal(0, 1, (8, 32)).astype(np.float32)
        x[0] = 0.0
        x[1] = 0.75
        x[2] = 0.0
        x[2, 5] = -3.0
        x[3] *= np.float32(1e-3)
        x[4, ::2] = -x[4, 1::2]  # ties in magnitude: the first one sets the sign
        x = x.reshape(-1)
        q = np.ascontiguousarray(quantize(x.reshape(1, -1), qtype)).view(np.uint8).reshape(-1)
        name = qtype.name.lower()
        x.astype("<f4").tofile(os.path.join(OUT, name + ".qin"))
        q.tofile(os.path.join(OUT, name + ".qout"))
        print(f"{name}: quantized {x.size} values -> {q.size} bytes")


# (model file, tensor, row, first column, count): one of each type the two models use
REAL = [
    ("smollm2-135m-instruct-q4_1.gguf", "token_embd.weight", 1234, 0, 256),
    ("smollm2-135m-instruct-q4_1.gguf", "blk.0.ffn_down.weight", 5, 1024, 256),
    ("smollm2-135m-instruct-q4_1.gguf", "blk.3.attn_norm.weight", 0, 0, 192),
    ("gemma3-270m-q4_k_m.gguf", "token_embd.weight", 200000, 64, 256),
    ("gemma3-270m-q4_k_m.gguf", "blk.0.attn_k.weight", 7, 0, 256),
    ("gemma3-270m-q4_k_m.gguf", "blk.0.attn_output.weight", 3, 512, 256),
    ("gemma3-270m-q4_k_m.gguf", "blk.0.ffn_down.weight", 11, 1536, 256),
]


def write_real():
    lines = ["# model tensor type row first count, then count float32 bit patterns (hex); from gguf-py"]
    readers = {}
    for model, tensor, row, first, count in REAL:
        path = os.path.join(ROOT, "models", model)
        if model not in readers:
            readers[model] = GGUFReader(path)
        t = next(t for t in readers[model].tensors if t.name == tensor)
        data = np.asarray(t.data)
        if t.tensor_type in (T.F32, T.F16):  # gguf-py already returns the values
            row_vals = data.reshape(-1, int(t.shape[0]))[row].astype(np.float32)
        else:  # raw block bytes, one row per line
            row_vals = dequantize(data.reshape(-1, data.shape[-1])[row], t.tensor_type).reshape(-1)
        vals = np.ascontiguousarray(row_vals[first:first + count], dtype=np.float32)
        assert vals.size == count
        lines.append(f"{model} {tensor} {t.tensor_type.name} {row} {first} {count}")
        lines.append(" ".join(f"{b:08x}" for b in vals.view(np.uint32)))
        print(f"{model} {tensor} {t.tensor_type.name} row {row}: {count} values")
    with open(os.path.join(OUT, "real_tensors.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    write_formats()
    write_quantize()
    if all(os.path.exists(os.path.join(ROOT, "models", m)) for m, *_ in REAL):
        write_real()
    else:
        print("models/ incomplete (run `make models`): real_tensors.txt not rewritten", file=sys.stderr)
