#!/usr/bin/env python3
"""Pairs tinylm_<shape>_<round>.json with torch_<shape>_<round>.json: the table rows."""
import glob, json, os, re, statistics, sys
here = os.path.dirname(os.path.abspath(__file__))
rows = {}
for f in sorted(glob.glob(os.path.join(here, "tinylm_*_*.json"))):
    shape, rnd = re.match(r"tinylm_(.+)_(\d+)\.json", os.path.basename(f)).groups()
    g = os.path.join(here, f"torch_{shape}_{rnd}.json")
    if not os.path.exists(g) or os.path.getsize(g) == 0 or os.path.getsize(f) == 0:
        continue
    a, b = json.load(open(f))[0], json.load(open(g))
    assert a["params"] == b["params"], (shape, a["params"], b["params"])
    rows.setdefault(shape, []).append((rnd, a, b))
for shape in ["bench-ref", "default", "bench-8l", "bench-gpt2s"]:
    rs = rows.get(shape, [])
    if not rs:
        continue
    ratios = []
    for rnd, a, b in rs:
        r = a["tokens_per_s"] / b["tokens_per_s_median"]
        ratios.append(r)
        print(f"{shape:12s} r{rnd} B{a['batch_size']} P{a['params']:,} tinylm {a['tokens_per_s']:7.0f} tok/s "
              f"{a['median_ms']:8.1f} ms ({a['forward_ms']:.0f}/{a['backward_ms']:.0f}/{a['optimizer_ms']:.1f}) "
              f"{a['peak_rss_bytes']/1e6:6.0f} MB MFU {100*a['mfu']:.1f}% ceil {a['matmul_gflops']:.0f} | "
              f"torch {b['tokens_per_s_median']:7.0f} tok/s {b['median_ms']:8.1f} ms "
              f"({b['phase_median_ms']['fwd']:.0f}/{b['phase_median_ms']['bwd']:.0f}/{b['phase_median_ms']['opt']:.1f}) "
              f"{b['peak_delta_bytes']/1e6:6.0f} MB | ratio {r:.3f}")
    print(f"{shape:12s} median ratio {statistics.median(ratios):.3f} range {min(ratios):.3f}-{max(ratios):.3f} n={len(ratios)}")
