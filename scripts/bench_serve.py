#!/usr/bin/env python3
"""Throughput of `tqkv serve` under concurrent clients (stdlib only).

  scripts/bench_serve.py --model M [--kv k4v4] [--clients 8] [--tokens 64] [--batches 1,8]

For each --max-batch value, starts `tqkv serve` on a free port, sends --clients greedy completion
requests at once (each --tokens long, different prompts), and prints the wall time, the generated
tokens per second over all clients, and the server's mean decode batch (/health). The first value
is the baseline of the same run (batch 1 = one sequence at a time).
"""
import argparse, json, os, socket, subprocess, sys, threading, time, urllib.error, urllib.request

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

def post(port, body):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.load(r)

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--tqkv", default="build/src/cli/tqkv")
    ap.add_argument("--kv", default="k4v4")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--kv-budget-mib", type=float, default=0, help="pass --kv-budget-mib (shared page pool)")
    ap.add_argument("--ctx", type=int, default=512)
    a = ap.parse_args()
    base = None
    for mb in [int(x) for x in a.batches.split(",")]:
        port = free_port()
        srv = subprocess.Popen([a.tqkv, "serve", "-m", a.model, "--kv", a.kv, "--port", str(port), "--ctx", str(a.ctx),
                                "--max-batch", str(mb), "--kv-budget-mib", str(a.kv_budget_mib)], stderr=subprocess.DEVNULL)
        try:
            for _ in range(300):
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1); break
                except Exception:
                    time.sleep(0.1)
            out = [None] * a.clients
            def one(i):
                try:
                    out[i] = post(port, {"prompt": f"Story number {i}: once upon a time", "max_tokens": a.tokens,
                                         "temperature": 0, "stop": []})
                except urllib.error.HTTPError as e:  # e.g. 503: the shared KV pool was full
                    out[i] = {"usage": {"completion_tokens": 0}, "error": json.load(e)}
            t0 = time.time()
            th = [threading.Thread(target=one, args=(i,)) for i in range(a.clients)]
            for t in th: t.start()
            for t in th: t.join()
            dt = time.time() - t0
            toks = sum(o["usage"]["completion_tokens"] for o in out)
            failed = sum(1 for o in out if "error" in o)
            health = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/health"))
            tps = toks / dt
            base = base or tps
            print(f"kv {a.kv} max-batch {mb:3d}: {a.clients} clients, {toks} tokens in {dt:6.2f} s = {tps:7.1f} tok/s "
                  f"({tps / base:.2f}x), mean decode batch {health['mean_batch']:.2f}, {failed} failed, "
                  f"{health['kv_exhausted']} ended for want of KV pages")
        finally:
            srv.terminate(); srv.wait()

if __name__ == "__main__":
    main()
