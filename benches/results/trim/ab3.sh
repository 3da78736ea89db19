#!/bin/bash
# bench-8l in the other order: B (trimming off) first, then A.
cd /work/exp/trim
for round in 4 5; do
  for v in notrim base; do
    /usr/bin/time -f "%e s, %S sys, %R minor faults" -o time.bench-8l.$v.$round nice -n -15 /tmp/tinylm-$v bench train --threads 2 --json --filter bench-8l > bench-8l.$v.$round.json 2> bench-8l.$v.$round.err
  done
done
echo done > finished3
