#!/bin/bash
# poet with the default's optimizer, rate and batch (Muon, 5e-3, batch 4; 32 eval batches = 128 windows as poet's 16 x 8).
B=/work/exp/bin/tinylm
D=/work/exp/poetmuon
cd /work/main
rm -rf $D
nice -n -15 $B train --out $D --preset poet --optimizer muon --lr 5e-3 --min-lr 5e-4 --batch-size 4 --eval-batches 32 --no-progress --sample-tokens 300 --form-samples 40 > $D.log 2>&1
nice -n -15 $B eval --checkpoint $D --text data/modern_zh.txt --json > $D.prose.json 2>>$D.log
nice -n -15 $B eval --checkpoint $D --samples 100 --json > $D.form100.json 2>/dev/null
echo "poetmuon done" >> /work/exp/queue.log
