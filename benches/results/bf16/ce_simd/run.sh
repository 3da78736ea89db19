#!/bin/bash
# The bf16 cross-entropy before and after its SIMD passes (issue 19), three rounds, the
# two builds in turn. BEFORE and AFTER name the two `tinylm` binaries (after: this
# change's `target/release/tinylm`). Each run interleaves the 16-bit kernel with its
# f32 twin on the same logits, so `speedup_vs_f32` comes from one sitting.
set -euo pipefail
cd "$(dirname "$0")"
for r in 1 2 3; do
  nice -n -15 "$BEFORE" bench loss --threads 2 --json --filter fwdbwd_bf16 > "before_$r.json"
  nice -n -15 "$AFTER" bench loss --threads 2 --json --filter 16_ > "after_$r.json"
done
python3 summarize.py
