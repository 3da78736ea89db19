#!/bin/bash
# 2026-11-30 07:02-08:20 UTC: Muon on the matrices (run.sh / runq.sh as in this folder,
# each at nice -15 with background builds stopped). muon1 and muon1b ran a build whose
# Newton-Schulz iterated on X every step; the later runs, the Gram-matrix form (the same
# map, fewer FLOPs on the MLP's and attention's rectangular matrices).
./run.sh muon1 --optimizer muon                    # lr 3e-3, then the default
tinylm eval --checkpoint muon1 --samples 100 --json > muon1.form100.json
./run.sh muon1b --optimizer muon
tinylm eval --checkpoint muon1b --samples 100 --json > muon1b.form100.json
./sweep3.sh muon1                                  # sampling settings on muon1
./runq.sh muonlr2 --optimizer muon --lr 2e-3 --min-lr 2e-4
./runq.sh muonlr5 --optimizer muon --lr 5e-3 --min-lr 5e-4
./runq.sh muonlr8 --optimizer muon --lr 8e-3 --min-lr 8e-4
./runq.sh muonlr5b16 --optimizer muon --lr 5e-3 --min-lr 5e-4 --batch-size 16
# muonlr5 as the default (optimizer muon, lr 5e-3, min_lr 5e-4, batch 8), no flags:
./run.sh final1
tinylm eval --checkpoint final1 --samples 100 --json > final1.form100.json
tinylm eval --checkpoint final1 --samples 20 > final1.form20.txt
# Batch 4 (after the final1 runs), then the new default itself, one build later
# (Muon's matrices in parallel, one per thread; eval_batches 32 so that evaluations
# cover the same 128 windows as at batch 8):
./runq.sh muonlr5b4 --optimizer muon --lr 5e-3 --min-lr 5e-4 --batch-size 4
./run.sh final2
tinylm eval --checkpoint final2 --samples 100 --json > final2.form100.json
tinylm eval --checkpoint final2 --samples 20 > final2.form20.txt
tinylm eval --checkpoint muonlr5b4 --text data/modern_zh.txt --json > muonlr5b4.prose.json
tinylm eval --checkpoint muonlr5b4 --samples 40 --temperature 0.8 --top-k 50 --top-p 1 --json > muonlr5b4.ref.json
