#!/usr/bin/env python3
"""A (before), B (after) and PyTorch per shape and round: B/A and B/torch, median and range."""
import glob, json, os, re, statistics
here = os.path.dirname(os.path.abspath(__file__))
def load(p):
    return json.load(open(p)) if os.path.exists(p) and os.path.getsize(p) else None
for shape in ["bench-ref", "default", "bench-8l", "bench-gpt2s"]:
    rounds = sorted({int(re.search(r"_(\d+)\.json$", f).group(1))
                     for f in glob.glob(os.path.join(here, f"A_{shape}_*.json"))})
    ba, bt, at = [], [], []
    for r in rounds:
        a, b, t = (
            load(os.path.join(here, f"A_{shape}_{r}.json")),
            load(os.path.join(here, f"B_{shape}_{r}.json")),
            load(os.path.join(here, f"torch_{shape}_{r}.json")))
        if not (a and b and t):
            continue
        a, b = a[0], b[0]
        ta, tb, tt = a["tokens_per_s"], b["tokens_per_s"], t["tokens_per_s_median"]
        ba.append(tb / ta); bt.append(tb / tt); at.append(ta / tt)
        print(f"{shape:12s} r{r} A {ta:7.0f} tok/s ({a['forward_ms']:.0f}/{a['backward_ms']:.0f}) "
              f"B {tb:7.0f} tok/s ({b['forward_ms']:.0f}/{b['backward_ms']:.0f}) "
              f"torch {tt:7.0f} ({t['phase_median_ms']['fwd']:.0f}/{t['phase_median_ms']['bwd']:.0f}) | "
              f"B/A {tb/ta:.3f} B/torch {tb/tt:.3f} A/torch {ta/tt:.3f} | peak B {b['peak_rss_bytes']/1e6:.0f} MB torch {t['peak_delta_bytes']/1e6:.0f} MB")
    if ba:
        f = lambda xs: f"{statistics.median(xs):.3f} [{min(xs):.3f}-{max(xs):.3f}]"
        print(f"{shape:12s} n={len(ba)} B/A {f(ba)}  B/torch {f(bt)}  A/torch {f(at)}")
