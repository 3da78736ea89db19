cd /work/main
for R in base h1rot h1rot4k bytesrot h1rot-lr4; do
  /work/exp/bin/tinylm eval --checkpoint /work/exp/$R --samples 40 --json > /work/exp/sw-$R-final.json 2>/dev/null
done
echo "evals_final done" >> /work/exp/queue.log
