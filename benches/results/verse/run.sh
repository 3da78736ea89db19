#!/bin/bash
# usage: run.sh NAME [train flags...]   (300 s budget unless flags say otherwise)
set -u
name=$1; shift
B=/work/exp/bin/tinylm
D=/work/exp/$name
cd /work/main
rm -rf $D
nice -n -15 $B train --out $D --time-budget 300 --no-progress --sample-tokens 300 --form-samples 40 "$@" > $D.log 2>&1
nice -n -15 $B eval --checkpoint $D --text data/modern_zh.txt --json > $D.prose.json 2>>$D.log
nice -n -15 $B eval --checkpoint $D --samples 40 --temperature 0.8 --top-k 50 --top-p 1 --json > $D.ref.json 2>>$D.log
echo "$name done" >> /work/exp/queue.log
