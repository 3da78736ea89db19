#!/bin/bash
# 2026-11-30 05:00-05:50 UTC: warmup and learning-rate runs of the default config
# (run.sh as in this folder, each at nice -15 with background builds stopped), then the
# 100-sample form evaluations of the two 3e-3 runs.
./run.sh w40 --warmup 40
./run.sh lr3 --lr 3e-3 --min-lr 3e-4
tinylm eval --checkpoint lr3 --samples 100 --json > lr3.form100.json
./run.sh lr3b --lr 3e-3 --min-lr 3e-4
tinylm eval --checkpoint lr3b --samples 100 --json > lr3b.form100.json
# The 20-sample reports (what train prints at its default --form-samples 20):
tinylm eval --checkpoint lr3 --samples 20 > lr3.form20.txt
tinylm eval --checkpoint lr3b --samples 20 > lr3b.form20.txt
