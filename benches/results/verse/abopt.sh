#!/bin/bash
# A B A B: the default preset's step with AdamW (main before Muon, same shapes) and Muon.
cd /work/main
for i in 1 2 3; do
  for b in tinylm-presets tinylm-final; do
    nice -n -15 /work/exp/bin/$b bench train --filter default --json --threads 2 > ab/abopt-$b-$i.json 2>/dev/null
  done
done
echo "abopt done" >> /work/exp/queue.log
