#!/bin/bash
# /tmp/tinylm-base: main at 60b62ac; /tmp/tinylm-notrim: the same with mallopt(M_TRIM_THRESHOLD, -1) (commit f2b16d4), release builds.
# A = main (trim threshold 1 GiB), B = trimming off; alternate A B per shape.
cd /work/exp/trim
for round in 1 2 3; do
  for preset in bench-8l bench-gpt2s; do
    for v in base notrim; do
      /usr/bin/time -f "%e s, %S sys, %R minor faults" -o time.$preset.$v.$round nice -n -15 /tmp/tinylm-$v bench train --threads 2 --json --filter $preset > $preset.$v.$round.json 2> $preset.$v.$round.err
    done
  done
done
echo done > finished
