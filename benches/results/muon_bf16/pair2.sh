#!/bin/bash
# Pair 2: seed 2, f32 first this time (c1), then mx.
cd /work/main
for b in c1 mx; do
  rm -rf /work/exp/pair/s2_$b
  nice -n -15 /work/exp/tinylm_$b train --seed 2 --out /work/exp/pair/s2_$b --no-progress > /work/exp/pair/s2_$b.log 2>&1
  nice -n -15 /work/exp/tinylm_$b eval --checkpoint /work/exp/pair/s2_$b --samples 100 > /work/exp/pair/s2_$b.form100.txt 2>&1
done
echo DONE > /work/exp/pair/done2
