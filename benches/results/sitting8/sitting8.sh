#!/bin/bash
# Quiet sitting 8, after the short-row kernel (src/loss/kernel/short_rows.rs):
# two full pairs A B (every CE fwd+bwd shape), then four quick pairs C D E F at 16384x256
# (fwd and fwd+bwd), PyTorch then tinylm in each pair.
set -x
cd "$(dirname "$0")"
R=${TORCH_REF:-../../../../shared/bench/torch_reference.py}  # the shared folder beside the checkout
B=../../../target/release/examples/bench_loss  # cargo build --release --example bench_loss
date
for p in a b; do
  python3 $R --only ce_fwdbwd --out torch_ce8_$p.json --tag $p 2>&1 | grep ce_
  RAYON_NUM_THREADS=2 $B --threads 2 --json --filter ce_fwdbwd > tinylm_ce8_$p.json
done
for p in c d e f; do
  python3 $R --only ce_fwd_16384x256,ce_fwdbwd_16384x256 --out torch_ce8_$p.json --tag $p 2>&1 | grep ce_
  RAYON_NUM_THREADS=2 $B --threads 2 --filter 16384x256 > tinylm_ce8_$p.txt 2>&1
done
date
