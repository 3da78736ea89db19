#!/bin/bash
# usage: runq.sh NAME [train flags...]: a 300 s run (quiet) and its 100-sample form.
set -u
name=$1; shift
B=/work/exp/bin/tinylm
D=/work/exp/$name
cd /work/main
rm -rf $D
nice -n -15 $B train --out $D --time-budget 300 --no-progress --sample-tokens 300 --form-samples 40 "$@" > $D.log 2>&1
nice -n -15 $B eval --checkpoint $D --samples 100 --json > $D.form100.json 2>$D.form100.err
echo "$name done" >> /work/exp/queue.log
