#!/bin/bash
# One round of the attention-kernel A/B against SDPA: A's and B's `bench attention`
# at the two torch_reference shapes (A and B swap places on even rounds), then
# PyTorch's SDPA cases. Usage: A=bin B=bin attn.sh ROUND
set -euo pipefail
cd "$(dirname "$0")/../../.."
round=$1
out=benches/results/attn_avx2
. benches/results/timed.sh
order=$(ab_order "$round")
for x in $order; do
  bin=${!x}
  for s in _8x8x256x64 _2x8x1024x64; do
    quiet; echo "$(date -u +%T) $x $s"
    nice -n -15 "$bin" bench attention --threads 2 --json --filter "$s" > "$out/attn_${x}${s}_$round.json"
  done
done
quiet; echo "$(date -u +%T) torch sdpa"
nice -n -15 python3 ../shared/bench/torch_reference.py --only attn_sdpa --out "$out/attn_torch_$round.json" > /dev/null 2>&1
echo "$(date -u +%T) done; load $(cut -d' ' -f1-3 /proc/loadavg)"
