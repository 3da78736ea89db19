#!/bin/bash
# Same source, four layouts: pad 0/1000/2500 bytes of nops beside the loss kernel, and
# pad 0 with every loop aligned to 64 bytes; bf16 and f32 CE at 8192x8192, 2 threads.
cd /work/exp
for r in 1 2 3; do
  for b in pad0 pad1000 pad2500 align; do
    echo "== $r $b"
    nice -n -15 ./tinylm_$b bench loss --threads 2 --filter 16_8192x8192 2>&1 | grep ce_fwdbwd
  done
done
