#!/bin/bash
# Quiet sitting 7, A B A B: PyTorch then tinylm, CE fwd+bwd only (final code: every alignment streamed from registers).
set -x
cd "$(dirname "$0")"
R=${TORCH_REF:-../../../../shared/bench/torch_reference.py}  # the shared folder beside the checkout
B=../../../target/release/examples/bench_loss  # cargo build --release --example bench_loss
date
python3 $R --only ce_fwdbwd --out torch_ce7_a.json --tag a 2>&1 | grep ce_
RAYON_NUM_THREADS=2 $B --threads 2 --json --filter ce_fwdbwd > tinylm_ce7_a.json
python3 $R --only ce_fwdbwd --out torch_ce7_b.json --tag b 2>&1 | grep ce_
RAYON_NUM_THREADS=2 $B --threads 2 --filter ce_fwdbwd > tinylm_ce7_b.txt 2>&1
date
