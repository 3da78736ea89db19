#!/bin/bash
# usage: sweep.sh RUN  -> sampling sweep on one checkpoint, 40 samples each
R=$1
B=/work/exp/bin/tinylm
cd /work/main
while read -r tag args; do
  [ -z "$tag" ] && continue
  $B eval --threads 1 --checkpoint /work/exp/$R --samples 40 $args --json > /work/exp/sw-$R-$tag.json 2>/dev/null
done <<'LIST'
t08p95 --temperature 0.8 --top-p 0.95
t10p1 --temperature 1.0 --top-p 1
t10p95 --temperature 1.0 --top-p 0.95
t09p95 --temperature 0.9 --top-p 0.95
t07p95 --temperature 0.7 --top-p 0.95
t10m05 --temperature 1.0 --top-p 1 --min-p 0.05
t10m10 --temperature 1.0 --top-p 1 --min-p 0.1
t08m05 --temperature 0.8 --top-p 1 --min-p 0.05
t08k50 --temperature 0.8 --top-k 50 --top-p 1
t08p95r11 --temperature 0.8 --top-p 0.95 --repetition-penalty 1.1
t10m05r11 --temperature 1.0 --top-p 1 --min-p 0.05 --repetition-penalty 1.1
LIST
echo "sweep $R done" >> /work/exp/queue.log
