#!/bin/bash
# `bench loss` at 8192 x 8192 (f32, bf16, f16; or the cases FILTER names), binaries side by side. Each name given
# is an environment variable holding a binary's path; rounds alternate the order, and
# each run is one process. Usage: BASE=... NEW=... bash ab.sh ROUNDS OUTDIR BASE NEW
. "$(dirname "$0")/../timed.sh"
rounds=$1; out=$2; shift 2; names="$*"; mkdir -p "$out"
for r in $(seq 1 "$rounds"); do
  order=$names
  if [ $((r % 2)) -eq 0 ]; then order=$(echo $names | tr ' ' '\n' | tac | tr '\n' ' '); fi
  for b in $order; do
    quiet
    nice -n -15 "${!b}" bench loss --threads 2 --json --filter "${FILTER:-_8192x8192}" > "$out/$b-$r.json"
  done
done
