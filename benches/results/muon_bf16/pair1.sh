#!/bin/bash
# 5-minute default runs: Muon's Newton-Schulz partly in bf16 (mx) then f32 (c1), same seed.
cd /work/main
for b in mx c1; do
  rm -rf /work/exp/pair/$b
  nice -n -15 /work/exp/tinylm_$b train --out /work/exp/pair/$b --no-progress > /work/exp/pair/$b.log 2>&1
  nice -n -15 /work/exp/tinylm_$b eval --checkpoint /work/exp/pair/$b --samples 100 > /work/exp/pair/$b.form100.txt 2>&1
done
echo DONE > /work/exp/pair/done
