#!/bin/bash
# Quiet sitting, A B A B: PyTorch then tinylm, attention then loss then train.
set -x
cd /work/exp/s2
T=/work/main/target/release/tinylm
R=/work/shared/bench/torch_reference.py
date
python3 $R --only attn_sdpa --out torch_attn_a.json --tag a 2>&1 | grep attn_
$T bench attention --threads 2 --json --filter 8x8x256x64,2x8x1024x64,16x8x1024x64,8x8x2048x64 > tinylm_attn_a.json
python3 $R --only attn_sdpa --out torch_attn_b.json --tag b 2>&1 | grep attn_
$T bench attention --threads 2 --filter 8x8x256x64,2x8x1024x64,16x8x1024x64,8x8x2048x64 > tinylm_attn_b.txt 2>&1
date
python3 $R --only ce_ --out torch_ce2_a.json --tag a 2>&1 | grep ce_
RAYON_NUM_THREADS=2 /work/main/target/release/examples/bench_loss --threads 2 --json --filter ce_ > tinylm_ce2_a.json
python3 $R --only ce_ --out torch_ce2_b.json --tag b 2>&1 | grep ce_
RAYON_NUM_THREADS=2 /work/main/target/release/examples/bench_loss --threads 2 --filter ce_ > tinylm_ce2_b.txt 2>&1
date
python3 $R --only gpt_step_sdpa_eager --out torch_gpt_c.json --tag c 2>&1 | grep gpt_
$T bench train --threads 2 > tinylm_train_c.txt 2>&1
date
