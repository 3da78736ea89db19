#!/usr/bin/env python3
"""Validation loss of curves.sh's runs at each evaluation, and the two gaps: bf16 - f32
at the same seed, and f32 seed 7 - f32 seed 1337 (run-to-run noise)."""
import json, os, sys
out = sys.argv[1]
runs = {}
for name in sorted(os.listdir(out)):
    m = os.path.join(out, name, "metrics.jsonl")
    if os.path.isdir(os.path.join(out, name)) and os.path.exists(m):
        rows = [json.loads(l) for l in open(m)]
        runs[name] = {r["step"]: r["val_loss"] for r in rows if r.get("val_loss") is not None}
steps = sorted(set().union(*[set(v) for v in runs.values()]))
names = sorted(runs)
print("step " + " ".join(f"{n:>10}" for n in names) + "  bf16-f32(1337) bf16-f32(7) f32 7-1337")
for s in steps:
    g = lambda n: runs.get(n, {}).get(s, float("nan"))
    print(f"{s:4d} " + " ".join(f"{g(n):10.4f}" for n in names)
          + f"  {g('bf16_1337') - g('f32_1337'):+14.4f} {g('bf16_7') - g('f32_7'):+11.4f} {g('f32_7') - g('f32_1337'):+10.4f}")
