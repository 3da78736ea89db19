#!/bin/bash
# Optimizer phase: Muon's matrices on both threads each (final) vs one matrix per thread (final2).
cd /work/main
for i in 1 2 3; do
  for b in tinylm-final tinylm-final2; do
    nice -n -15 /work/exp/bin/$b bench train --filter default --json --threads 2 > ab/abopt2-$b-$i.json 2>/dev/null
  done
done
echo "abopt2 done" >> /work/exp/queue.log
