#!/bin/bash
# Quick sitting 9 on the final code after the review (a85f106): four pairs at 16384x256
# (fwd and fwd+bwd), PyTorch then tinylm in each pair.
set -x
cd "$(dirname "$0")"
R=${TORCH_REF:-../../../../shared/bench/torch_reference.py}  # the shared folder beside the checkout
B=../../../target/release/examples/bench_loss  # cargo build --release --example bench_loss
date
for p in a b c d; do
  python3 $R --only ce_fwd_16384x256,ce_fwdbwd_16384x256 --out torch_ce9_$p.json --tag $p 2>&1 | grep ce_
  RAYON_NUM_THREADS=2 $B --threads 2 --filter 16384x256 > tinylm_ce9_$p.txt 2>&1
done
date
