#!/usr/bin/env bash
# One device run: our block kernels and PyTorch SDPA timed alone (queue 1) and back to back
# (queue 8) at S 8k and 32k, H=32, D 64 and 128 (kernels/NOTES.md run 37): how much of a single
# call's time is host-side gaps. Carry .devkit, .devrun and dist. Results in $OUT/queue.log.
#   bash bench/gpu-queue.sh [reps=5]
set -uo pipefail
source bench/device-env.sh
reps=${1:-5}
log="$OUT/queue.log"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader | tee "$log"
for S in 8192 32768; do
  for q in 1 8; do
    echo "== ours S=$S queue=$q" | tee -a "$log"
    timeout -s KILL 150 $N dist/bench/gpu.js "$S" 32 "$reps" --queue=$q 2>&1 | grep -E "^cuda|rror" | tee -a "$log"
  done
done
for D in 128 64; do
  for q in 1 8; do
    SDPA_QUEUE=$q SDPA_H=32 SDPA_HK=32 SDPA_D=$D timeout -s KILL 150 python3 bench/peers/torch_sdpa.py "$reps" 8192,32768 2>&1 | grep -v JSON | tee -a "$log"
  done
done
