#!/bin/bash
# The bf16 cross-entropy before and after the one-prefetch-per-chunk and line-aligned
# pass C change (issue 19), five rounds, the two builds in turn. BEFORE and AFTER name
# the two `tinylm` binaries (before: 2a8b10d, after: 42ee962). Each run interleaves the
# 16-bit kernel with its f32 twin on the same logits, so `speedup_vs_f32` comes from
# one sitting.
set -euo pipefail
cd "$(dirname "$0")"
for r in 1 2 3 4 5; do
  nice -n -15 "$BEFORE" bench loss --threads 2 --json --filter fwdbwd_bf16 > "before_$r.json"
  nice -n -15 "$AFTER" bench loss --threads 2 --json --filter fwdbwd_bf16 > "after_$r.json"
done
python3 ../ce_simd/summarize.py .
