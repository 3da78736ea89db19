#!/bin/bash
# A B / B A: `bench train` of one preset with two binaries, tinylm-X and tinylm-Y in $BIN
# (X, Y default A, B). A: main at 78d6a2f, full Newton–Schulz products; B: 85c72b7,
# symmetric ones; C: 424a281, B with the vectorised norm, polynomial and mirror.
# The B-against-C sitting ran as `ab.sh 8 default B C`; its B records were renamed
# default-Bc-*.json afterwards, as they had overwritten the A-against-B sitting's.
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
