#!/bin/bash
# A B / B A: the default preset's step (Muon) with full Newton–Schulz products (A: main
# at 78d6a2f) and with symmetric ones (B). Binaries copied to $BIN before the run.
# Usage: ab.sh ROUNDS PRESET
set -euo pipefail
cd "$(dirname "$0")"
. ../timed.sh
BIN=${BIN:-/work/exp/s27/ab}
preset=${2:-default}
for r in $(seq 1 "$1"); do
  for side in $(ab_order "$r"); do
    quiet
    nice -n -15 "$BIN/tinylm-$side" bench train --filter "$preset" --json --threads 2 \
      > "$preset-$side-$r.json" 2>/dev/null
  done
done
