"""Per case: median ms of each binary over the rounds, and the median (min-max) of the
per-round ratios BASE/X (above 1: X is faster). Usage: summarize.py DIR [NAMES...]"""
import json, sys, glob, os, statistics as st
d = sys.argv[1]
names = sys.argv[2:] or ["BASE", "WIDE", "LANES"]
runs = {}
for f in glob.glob(os.path.join(d, "*.json")):
    name, r = os.path.basename(f)[:-5].rsplit("-", 1)
    for rec in json.load(open(f)):
        if rec["impl"] in ("reference", "fused_autograd"):
            continue
        runs.setdefault((rec["case"], rec["impl"]), {}).setdefault(name, {})[int(r)] = rec["median_ms"]
print(f"{'case':34} {'impl':16} " + " ".join(f"{n:>8}" for n in names) + "   " + " ".join(f"{'BASE/'+n:>24}" for n in names[1:]))
for (case, impl), by in sorted(runs.items()):
    med = [st.median(by[n].values()) if n in by else float('nan') for n in names]
    cols = []
    for n in names[1:]:
        rs = sorted(by["BASE"][r] / by[n][r] for r in by["BASE"] if r in by.get(n, {}))
        cols.append(f"{st.median(rs):.2f}x ({rs[0]:.2f}-{rs[-1]:.2f})" if rs else "")
    print(f"{case:34} {impl:16} " + " ".join(f"{m:8.1f}" for m in med) + "   " + " ".join(f"{c:>24}" for c in cols))
