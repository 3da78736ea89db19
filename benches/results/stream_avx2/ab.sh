#!/bin/bash
# One round of the AVX2 streaming-store A/B: A's and B's `bench loss` (fwd+bwd cases;
# A and B swap places on even rounds), each at nice -15 once no other timed run is
# alive. Usage: A=bin B=bin ab.sh ROUND
set -euo pipefail
cd "$(dirname "$0")/../../.."
round=$1
out=benches/results/stream_avx2
. benches/results/timed.sh
order=$(ab_order "$round")
for x in $order; do
  bin=${!x}
  quiet; echo "$(date -u +%T) $x"
  nice -n -15 "$bin" bench loss --threads 2 --json --filter ce_fwdbwd > "$out/${x}_$round.json"
done
echo "$(date -u +%T) done; load $(cut -d' ' -f1-3 /proc/loadavg)"
