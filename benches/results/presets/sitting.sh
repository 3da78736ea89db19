#!/bin/bash
# One round of the issue-19 sitting: for each shape, tinylm's step then PyTorch's, each
# at nice -15 once no other timed (nice -15) run is alive. Usage: sitting.sh ROUND [SHAPE...]
set -euo pipefail
cd "$(dirname "$0")/../../.."
round=$1; shift
shapes=${*:-bench-ref default bench-8l bench-gpt2s}
out=benches/results/presets
. benches/results/timed.sh
for s in $shapes; do
  quiet; echo "$(date -u +%T) tinylm $s"
  nice -n -15 ./target/release/tinylm bench train --threads 2 --json --filter "$s" > "$out/tinylm_${s}_$round.json"
  quiet; echo "$(date -u +%T) torch $s"
  nice -n -15 python3 benches/torch_train.py "$s" > "$out/torch_${s}_$round.json" 2>/dev/null
done
echo "$(date -u +%T) done; load $(cut -d' ' -f1-3 /proc/loadavg)"
