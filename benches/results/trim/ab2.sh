#!/bin/bash
# gpt2s again, the other order: B (trimming off) first, then A.
cd /work/exp/trim
for round in 4 5; do
  for v in notrim base; do
    /usr/bin/time -f "%e s, %S sys, %R minor faults" -o time.bench-gpt2s.$v.$round nice -n -15 /tmp/tinylm-$v bench train --threads 2 --json --filter bench-gpt2s > bench-gpt2s.$v.$round.json 2> bench-gpt2s.$v.$round.err
  done
done
echo done > finished2
