#!/usr/bin/env python3
"""Compares the token ids of two files of `tqkv generate --json` outputs (one JSON object per
generate call, concatenated): GPU first, CPU second. Prints both id lists per prompt and whether
they are identical, or the first position where they differ. Used by scripts/device_runtime.sh
and scripts/device_full_models.sh on the device."""
import json
import sys


def load(path):
    text, dec, i, out = open(path).read(), json.JSONDecoder(), 0, []
    while text[i:].strip():
        i += len(text[i:]) - len(text[i:].lstrip())
        obj, i = dec.raw_decode(text, i)
        out.append(obj)
    return out


def main(gpu_path, cpu_path):
    for g, c in zip(load(gpu_path), load(cpu_path)):
        first = next((k for k, (a, b) in enumerate(zip(g['ids'], c['ids'])) if a != b),
                     min(len(g['ids']), len(c['ids'])))
        print(' gpu', g['ids'], f"decode {g['decode_tok_s']:.0f} tok/s")
        print(' cpu', c['ids'], 'identical' if g['ids'] == c['ids'] else f'DIFFERENT from token {first}')


if __name__ == '__main__':
    main(sys.argv[1], sys.argv[2])
