"""Medians (min-max) over the rounds of run.sh: ms, % of the 16-bit floor, and the
16-bit kernel's speed-up over its f32 twin, per case, implementation and build. An
argument names another directory of before_*.json and after_*.json records."""
import json
import statistics as st
import sys
from pathlib import Path

here = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent
rows = {}
for tag in ("before", "after"):
    for f in sorted(here.glob(f"{tag}_*.json")):
        for x in json.loads(f.read_text()):
            rows.setdefault((x["case"], x["impl"], tag), []).append(x)


def span(v, fmt):
    return f"{fmt % st.median(v)} ({fmt % min(v)}-{fmt % max(v)})"


for case, imp in sorted({(c, i) for (c, i, _) in rows}):
    for tag in ("before", "after"):
        v = rows.get((case, imp, tag))
        if not v:
            continue
        ms = [x["median_ms"] for x in v]
        floor = [x["pct_of_floor"] for x in v]
        sp = [x["speedup_vs_f32"] for x in v if x.get("speedup_vs_f32")]
        line = f"{case:28} {imp:16} {tag:6} ms {span(ms, '%.2f')}  floor {span(floor, '%.0f')}%"
        if sp:
            line += f"  vs f32 {span(sp, '%.2f')}x"
        print(line)
