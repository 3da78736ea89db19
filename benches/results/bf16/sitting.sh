#!/bin/bash
# One round of the bf16 sitting (issue 19): for each shape, tinylm's f32 and bf16 steps
# and PyTorch's eager and autocast-bf16 steps, each at nice -15 once no other timed run
# is alive, tinylm's pair and PyTorch's pair each in A B order on odd rounds and B A on
# even ones. Usage: sitting.sh ROUND [SHAPE...]; PYTHON names a python with torch.
set -euo pipefail
cd "$(dirname "$0")/../../.."
round=$1; shift
shapes=${*:-bench-ref default bench-8l bench-gpt2s}
out=benches/results/bf16
py=${PYTHON:-python3}
. benches/results/timed.sh
for s in $shapes; do
  for side in $(ab_order "$round"); do
    quiet
    if [ "$side" = A ]; then
      echo "$(date -u +%T) tinylm $s f32, then bf16"
      nice -n -15 ./target/release/tinylm bench train --threads 2 --json --filter "$s" > "$out/tinylm_f32_${s}_$round.json"
      quiet
      nice -n -15 ./target/release/tinylm bench train --threads 2 --json --filter "$s" --dtype bf16 > "$out/tinylm_bf16_${s}_$round.json"
    else
      echo "$(date -u +%T) torch $s eager, then autocast bf16"
      nice -n -15 "$py" benches/torch_train.py "$s" > "$out/torch_f32_${s}_$round.json" 2>/dev/null
      quiet
      nice -n -15 "$py" benches/torch_train.py "$s" --autocast bf16 > "$out/torch_bf16_${s}_$round.json" 2>/dev/null
    fi
  done
done
echo "$(date -u +%T) done; load $(cut -d' ' -f1-3 /proc/loadavg)"
