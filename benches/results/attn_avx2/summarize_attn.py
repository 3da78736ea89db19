#!/usr/bin/env python3
"""attn.sh rounds: fused_native time of A (before) and B (after) and SDPA's, per case."""
import glob, json, os, re, statistics
here = os.path.dirname(os.path.abspath(__file__))
def native(x, shape, r):
    p = os.path.join(here, f"attn_{x}_{shape}_{r}.json")
    if not os.path.exists(p) or not os.path.getsize(p):
        return {}
    return {e["case"]: e["median_ms"] for e in json.load(open(p)) if e["impl"] == "fused_native"}
rounds = sorted({int(re.search(r"_(\d+)\.json$", f).group(1)) for f in glob.glob(os.path.join(here, "attn_torch_*.json"))})
for shape in ["8x8x256x64", "2x8x1024x64"]:
    for mode in ["fwd", "fwdbwd"]:
        case = f"attn_{mode}_{shape}"
        ab, bt, at = [], [], []
        for r in rounds:
            a, b = native("A", shape, r).get(case), native("B", shape, r).get(case)
            t = json.load(open(os.path.join(here, f"attn_torch_{r}.json")))["runs"]["run"]["results"].get(f"attn_sdpa_{mode}_{shape}", {}).get("median_ms")
            if a is None or b is None or t is None:
                continue
            ab.append(b / a); bt.append(b / t); at.append(a / t)
            print(f"{case:26s} r{r} A {a:7.2f} ms  B {b:7.2f} ms  SDPA {t:7.2f} ms | B/A time {b/a:.3f}  B/SDPA time {b/t:.3f}")
        if ab:
            f = lambda xs: f"{statistics.median(xs):.3f} [{min(xs):.3f}-{max(xs):.3f}]"
            print(f"{case:26s} n={len(ab)} B/A time {f(ab)}  B/SDPA time {f(bt)}  A/SDPA time {f(at)}")
