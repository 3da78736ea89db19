#!/bin/bash
# The bf16 step before and after storing its product-only activations in bf16 (issue
# 19): `bench train --dtype bf16` at each preset, the two builds in turn (before first
# on odd rounds, after first on even ones), each at nice -15 once no other timed run is
# alive; and the f32 step of default and bench-8l likewise, which must not change.
# BEFORE and AFTER name the two `tinylm` binaries. Usage: run.sh [ROUNDS].
set -euo pipefail
cd "$(dirname "$0")"
. ../../timed.sh
rounds=${1:-3}
for r in $(seq 1 "$rounds"); do
  for case in bf16:bench-ref bf16:default bf16:bench-8l bf16:bench-gpt2s f32:default f32:bench-8l; do
    dtype=${case%%:*} s=${case#*:}
    for side in $(ab_order "$r"); do
      if [ "$side" = A ]; then tag=before bin=$BEFORE; else tag=after bin=$AFTER; fi
      quiet
      echo "$(date -u +%T) round $r $s $dtype $tag"
      nice -n -15 "$bin" bench train --threads 2 --json --filter "$s" --dtype "$dtype" > "${tag}_${dtype}_${s}_$r.json"
    done
  done
done
echo "$(date -u +%T) done; load $(cut -d' ' -f1-3 /proc/loadavg)"
python3 summarize.py
