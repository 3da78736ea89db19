#!/bin/bash
# A B / B A: `bench train` of one preset with two binaries, tinylm-X and tinylm-Y in $BIN
# (X, Y default A, B). A: main at 78d6a2f, full Newton–Schulz products; B: 85c72b7,
# symmetric ones; C: B with the vectorised norm, polynomial and mirror.
# Usage: ab.sh ROUNDS PRESET [X Y]
set -euo pipefail
cd "$(dirname "$0")"
. ../timed.sh
BIN=${BIN:-/work/exp/s27/ab}
preset=${2:-default}
x=${3:-A}
y=${4:-B}
for r in $(seq 1 "$1"); do
  for side in $(ab_order "$r"); do
    name=$([ "$side" = A ] && echo "$x" || echo "$y")
    quiet
    nice -n -15 "$BIN/tinylm-$name" bench train --filter "$preset" --json --threads 2 \
      > "$preset-$name-$r.json" 2>/dev/null
  done
done
