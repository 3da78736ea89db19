#!/bin/bash
# One round of the AVX2 attention-blocking A/B: for each shape, A's step, B's step and
# PyTorch's (A and B swap places on even rounds), each at nice -15 once no other timed
# run is alive. Usage: A=bin B=bin ab.sh ROUND SHAPE...
set -euo pipefail
cd "$(dirname "$0")/../../.."
round=$1; shift
out=benches/results/attn_avx2
. benches/results/timed.sh
order=$(ab_order "$round")
for s in "$@"; do
  for x in $order; do
    bin=${!x}
    quiet; echo "$(date -u +%T) $x $s"
    nice -n -15 "$bin" bench train --threads 2 --json --filter "$s" > "$out/${x}_${s}_$round.json"
  done
  quiet; echo "$(date -u +%T) torch $s"
  nice -n -15 python3 benches/torch_train.py "$s" > "$out/torch_${s}_$round.json" 2>/dev/null
done
echo "$(date -u +%T) done; load $(cut -d' ' -f1-3 /proc/loadavg)"
