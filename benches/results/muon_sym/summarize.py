#!/usr/bin/env python3
"""Pairs PRESET-A-r.json with PRESET-B-r.json: step and optimizer ms, A/B speed-ups."""
import json, os, statistics, sys
os.chdir(os.path.dirname(os.path.abspath(__file__)))
preset = sys.argv[1] if len(sys.argv) > 1 else "default"
rs = []
r = 1
while os.path.exists(f"{preset}-A-{r}.json") and os.path.exists(f"{preset}-B-{r}.json"):
    a, b = (json.load(open(f"{preset}-{s}-{r}.json"))[0] for s in "AB")
    step, opt = a["median_ms"] / b["median_ms"], a["optimizer_ms"] / b["optimizer_ms"]
    print(f"{preset} r{r}: A {a['median_ms']:.1f} ms (opt {a['optimizer_ms']:.1f}), "
          f"B {b['median_ms']:.1f} ms (opt {b['optimizer_ms']:.1f}); step {step:.3f}x, opt {opt:.3f}x")
    rs.append((step, opt))
    r += 1
for i, what in enumerate(["step", "optimizer"]):
    v = [x[i] for x in rs]
    print(f"{preset} {what} speed-up B over A: median {statistics.median(v):.3f} "
          f"[{min(v):.3f}-{max(v):.3f}] over {len(v)} pairs")
