#!/bin/bash
# The product's own measure: the default `tinylm train` (300 s budget, no flags) with
# full Newton–Schulz products (A: main at 78d6a2f) and symmetric ones (B), alternating.
# Logs here; run directories under $RUNS. Usage: train.sh ROUNDS
set -euo pipefail
cd "$(dirname "$0")"
. ../timed.sh
BIN=${BIN:-/work/exp/s27/ab}
RUNS=${RUNS:-/work/exp/s27/runs}
mkdir -p "$RUNS"
for r in $(seq 1 "$1"); do
  for side in $(ab_order "$r"); do
    quiet
    echo "$(date -u +%T) $side $r" >&2
    (cd /work/main && nice -n -15 "$BIN/tinylm-$side" train --out "$RUNS/$side-$r" --no-progress) \
      > "train-$side-$r.log" 2>&1
  done
done
echo "$(date -u +%T) done" >&2
