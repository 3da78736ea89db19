#!/bin/bash
# Loss curves of the default preset in f32 and bf16 products, two seeds each, so that the
# bf16-vs-f32 gap can be set against the seed-to-seed gap (issue 19). 600 steps each,
# validation every 100, at nice -15 once no other timed run is alive; f32 and bf16 of a
# seed in alternating order. Usage: curves.sh OUTDIR; then curves.py OUTDIR.
set -euo pipefail
cd "$(dirname "$0")/../../.."
out=${1:?usage: curves.sh OUTDIR}
mkdir -p "$out"
. benches/results/timed.sh
i=0
for seed in 1337 7; do
  i=$((i + 1))
  for side in $(ab_order $i); do
    d=$([ "$side" = A ] && echo f32 || echo bf16)
    quiet; echo "$(date -u +%T) $d seed $seed"
    nice -n -15 ./target/release/tinylm train --max-steps 600 --eval-interval 100 --seed "$seed" \
      --dtype "$d" --out "$out/${d}_$seed" --no-progress --form-samples 20 > "$out/${d}_$seed.log" 2>&1
  done
done
echo "$(date -u +%T) done"
