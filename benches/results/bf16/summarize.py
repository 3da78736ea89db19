#!/usr/bin/env python3
"""The bf16 sitting's table: per shape and round, tinylm f32 / bf16 and PyTorch eager /
autocast-bf16 tokens/s, and the medians (with ranges) of the ratios issue 19 asks for.
Usage: summarize.py [DIR] (default: this folder; first_packing/ holds rounds 1-3)."""
import glob, json, os, re, statistics, sys
here = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
runs = {}
for f in glob.glob(os.path.join(here, "*_*_*_*.json")):
    who, dt, shape, rnd = re.match(r"(tinylm|torch)_(f32|bf16)_(.+)_(\d+)\.json", os.path.basename(f)).groups()
    if os.path.getsize(f) == 0:
        continue
    j = json.load(open(f))
    j = j[0] if isinstance(j, list) else j
    runs.setdefault((shape, int(rnd)), {})[(who, dt)] = j
def tok(j):
    return j.get("tokens_per_s_median", j.get("tokens_per_s"))
def mb(j):
    return j.get("peak_rss_bytes", j.get("peak_delta_bytes", 0)) / 1e6
for shape in ["bench-ref", "default", "bench-8l", "bench-gpt2s"]:
    rounds = sorted(r for (s, r) in runs if s == shape)
    if not rounds:
        continue
    ratios = {"tinylm bf16 / tinylm f32": [], "tinylm bf16 / torch autocast": [],
              "tinylm f32 / torch eager": [], "torch autocast / torch eager": []}
    for r in rounds:
        d = runs[(shape, r)]
        if len(d) < 4:
            continue
        tf, tb, pf, pb = (d[k] for k in [("tinylm", "f32"), ("tinylm", "bf16"), ("torch", "f32"), ("torch", "bf16")])
        assert tf["params"] == pf["params"] == tb["params"] == pb["params"], shape
        print(f"{shape:12s} r{r}: tinylm f32 {tok(tf):7.0f} tok/s {mb(tf):5.0f} MB MFU {100*tf['mfu']:.0f}% | "
              f"bf16 {tok(tb):7.0f} tok/s {mb(tb):5.0f} MB MFU {100*tb['mfu']:.0f}% ({tb.get('dtype')}) | "
              f"torch eager {tok(pf):7.0f} {mb(pf):5.0f} MB | autocast {tok(pb):7.0f} {mb(pb):5.0f} MB")
        ratios["tinylm bf16 / tinylm f32"].append(tok(tb) / tok(tf))
        ratios["tinylm bf16 / torch autocast"].append(tok(tb) / tok(pb))
        ratios["tinylm f32 / torch eager"].append(tok(tf) / tok(pf))
        ratios["torch autocast / torch eager"].append(tok(pb) / tok(pf))
    for k, v in ratios.items():
        if v:
            print(f"{shape:12s} {k:30s} median {statistics.median(v):.2f}x [{min(v):.2f}-{max(v):.2f}] n={len(v)}")
