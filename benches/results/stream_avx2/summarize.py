#!/usr/bin/env python3
"""ab.sh rounds: per (case, impl), A's and B's median ms, B/A time median and range."""
import glob, json, os, re, statistics
here = os.path.dirname(os.path.abspath(__file__))
rounds = sorted({int(re.search(r"_(\d+)\.json$", f).group(1)) for f in glob.glob(os.path.join(here, "A_*.json"))})
data = {}
for r in rounds:
    for x in "AB":
        p = os.path.join(here, f"{x}_{r}.json")
        if not os.path.exists(p) or not os.path.getsize(p):
            continue
        for e in json.load(open(p)):
            data.setdefault((e["case"], e["impl"]), {}).setdefault(r, {})[x] = e["median_ms"]
for (case, impl), per in data.items():
    pairs = [(v["A"], v["B"]) for v in per.values() if "A" in v and "B" in v]
    if not pairs or impl in ("reference", "fused_autograd"):
        continue
    ratios = [b / a for a, b in pairs]
    print(f"{case:28s} {impl:16s} n={len(pairs)} A {min(a for a,_ in pairs):8.2f}-{max(a for a,_ in pairs):8.2f} ms "
          f"B {min(b for _,b in pairs):8.2f}-{max(b for _,b in pairs):8.2f} ms  B/A time {statistics.median(ratios):.3f} "
          f"[{min(ratios):.3f}-{max(ratios):.3f}]")
