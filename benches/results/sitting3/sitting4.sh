#!/bin/bash
# Quiet sitting 4, A B A B: PyTorch then tinylm, CE fwd+bwd only (after the uninitialised fresh gradient).
set -x
cd /work/exp/s2
R=/work/shared/bench/torch_reference.py
B=/work/main/target/release/examples/bench_loss
date
python3 $R --only ce_fwdbwd --out torch_ce4_a.json --tag a 2>&1 | grep ce_
RAYON_NUM_THREADS=2 $B --threads 2 --json --filter ce_fwdbwd > tinylm_ce4_a.json
python3 $R --only ce_fwdbwd --out torch_ce4_b.json --tag b 2>&1 | grep ce_
RAYON_NUM_THREADS=2 $B --threads 2 --filter ce_fwdbwd > tinylm_ce4_b.txt 2>&1
date
