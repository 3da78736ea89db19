#!/bin/bash
# Sampling settings on one checkpoint: deterministic (fixed seeds), so run at nice 0.
R=$1; N=${2:-100}
B=/work/exp/bin/tinylm
cd /work/main
while read -r tag args; do
  [ -z "$tag" ] && continue
  $B eval --checkpoint /work/exp/$R --samples $N $args --json > /work/exp/sw-$R-$tag.json 2>/dev/null
done <<'LIST'
t09p95r12 --temperature 0.9 --top-p 0.95 --repetition-penalty 1.2
t10p95r11 --temperature 1.0 --top-p 0.95 --repetition-penalty 1.1
t08p95r11 --temperature 0.8 --top-p 0.95 --repetition-penalty 1.1
t10p95r12 --temperature 1.0 --top-p 0.95 --repetition-penalty 1.2
LIST
echo "sweep3 $R done" >> /work/exp/queue.log
