"""Per preset, over the rounds of run.sh: tokens/s and peak RSS of each build (median,
min-max), and the ratio after/before of each round's pair (median, min-max)."""
import json
import statistics as st
from pathlib import Path

here = Path(__file__).parent


def load(tag, case, r):
    f = here / f"{tag}_{case}_{r}.json"
    return json.loads(f.read_text())[0] if f.exists() else None


def span(v, fmt):
    return f"{fmt % st.median(v)} ({fmt % min(v)}-{fmt % max(v)})"


cases = [f"bf16_{p}" for p in ("bench-ref", "default", "bench-8l", "bench-gpt2s")]
for preset in cases + ["f32_default", "f32_bench-8l"]:
    pairs = []
    for r in range(1, 10):
        b, a = load("before", preset, r), load("after", preset, r)
        if b and a:
            pairs.append((b, a))
    if not pairs:
        continue
    tok = {t: [p[i]["tokens_per_s"] for p in pairs] for i, t in enumerate(("before", "after"))}
    rss = {t: [p[i]["peak_rss_bytes"] / 2**20 for p in pairs] for i, t in enumerate(("before", "after"))}
    ratio = [a["tokens_per_s"] / b["tokens_per_s"] for b, a in pairs]
    print(
        f"{preset:17} rounds {len(pairs)}  tok/s before {span(tok['before'], '%.0f')} "
        f"after {span(tok['after'], '%.0f')}  after/before {span(ratio, '%.3f')}x  "
        f"peak RSS MiB before {span(rss['before'], '%.0f')} after {span(rss['after'], '%.0f')}"
    )
