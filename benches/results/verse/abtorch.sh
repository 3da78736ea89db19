#!/bin/bash
# A B A B: the new default preset's step (Muon, batch 4) in tinylm and in PyTorch (torch.optim.Muon).
cd /work/main
for i in 1 2 3 4; do
  nice -n -15 /work/exp/bin/tinylm-final2 bench train --filter default --json --threads 2 > ab/abtorch-tinylm-$i.json 2>/dev/null
  nice -n -15 python3 benches/torch_train.py default > ab/abtorch-torch-$i.json 2>ab/abtorch-torch-$i.err
done
echo "abtorch done" >> /work/exp/queue.log
