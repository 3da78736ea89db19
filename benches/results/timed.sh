# Sourced by the recorded A/B scripts under benches/results/: what makes a timed run.
# quiet: wait until no other timed run (a process at nice -15) is alive.
quiet() { while ps -eo ni= | awk '$1==-15' | grep -q .; do sleep 3; done; }
# ab_order ROUND: "A B" on odd rounds, "B A" on even ones, so neither side always runs first.
ab_order() { if [ $(($1 % 2)) -eq 0 ]; then echo "B A"; else echo "A B"; fi; }
