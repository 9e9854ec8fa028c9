#!/usr/bin/env python3
"""PyTorch SDPA decode time on the Llama-3.1-8B attention shape (32 query heads, 8 KV heads,
head size 128, one query token), for comparison with tqkv's CUDA decode kernels on the same GPU.

Times F.scaled_dot_product_attention(q[B,32,1,128], k/v[B,8,L,128], enable_gqa=True) in fp16
with CUDA events after warm-up (median of 7 repetitions of 20 calls); KV working set > L2 at
every shape measured. Tries the FlashAttention backend first, then whatever SDPA picks."""
import argparse
import json

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


def time_call(fn, iters=20, reps=7):
    fn(); fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(iters):
            fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) * 1000.0 / iters)
    times.sort()
    return times[len(times) // 2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", default="8,32")
    ap.add_argument("--context", default="8192,16384,32768")
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    rows = []
    for b in [int(x) for x in args.batch.split(",")]:
        for l in [int(x) for x in args.context.split(",")]:
            q = torch.randn(b, 32, 1, 128, device="cuda", dtype=torch.float16)
            k = torch.randn(b, 8, l, 128, device="cuda", dtype=torch.float16)
            v = torch.randn(b, 8, l, 128, device="cuda", dtype=torch.float16)
            for name, backends in (("flash", [SDPBackend.FLASH_ATTENTION]), ("auto", None)):
                def call():
                    return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
                try:
                    if backends:
                        with sdpa_kernel(backends):
                            us = time_call(call)
                    else:
                        us = time_call(call)
                except RuntimeError as e:  # backend refused this shape
                    print(f"sdpa {name} batch={b} context={l}: unavailable ({str(e).splitlines()[0][:80]})")
                    continue
                kv_bytes = 2 * b * 8 * l * 128 * 2
                row = {"op": "sdpa", "backend": name, "batch": b, "context": l, "time_us": us,
                       "bytes": kv_bytes, "gbps": kv_bytes / (us * 1e3)}
                rows.append(row)
                print(f"sdpa {name:5s} batch={b:3d} context={l:6d}: {us:9.2f} us  {row['gbps']:7.0f} GB/s")
            del q, k, v
            torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"torch": torch.__version__, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
