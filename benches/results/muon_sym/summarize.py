#!/usr/bin/env python3
"""Pairs PRESET-X-r.json with PRESET-Y-r.json: step and optimizer ms, X/Y speed-ups.
Usage: summarize.py [PRESET [X Y]]"""
import json, os, statistics, sys
os.chdir(os.path.dirname(os.path.abspath(__file__)))
preset = sys.argv[1] if len(sys.argv) > 1 else "default"
x, y = (sys.argv[2], sys.argv[3]) if len(sys.argv) > 3 else ("A", "B")
rs = []
r = 1
while os.path.exists(f"{preset}-{x}-{r}.json") and os.path.exists(f"{preset}-{y}-{r}.json"):
    a, b = (json.load(open(f"{preset}-{s}-{r}.json"))[0] for s in (x, y))
    step, opt = a["median_ms"] / b["median_ms"], a["optimizer_ms"] / b["optimizer_ms"]
    print(f"{preset} r{r}: {x} {a['median_ms']:.1f} ms (opt {a['optimizer_ms']:.1f}), "
          f"{y} {b['median_ms']:.1f} ms (opt {b['optimizer_ms']:.1f}); step {step:.3f}x, opt {opt:.3f}x")
    rs.append((step, opt))
    r += 1
for i, what in enumerate(["step", "optimizer"]):
    v = [p[i] for p in rs]
    print(f"{preset} {what} speed-up {y} over {x}: median {statistics.median(v):.3f} "
          f"[{min(v):.3f}-{max(v):.3f}] over {len(v)} pairs")
