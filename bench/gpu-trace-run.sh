#!/usr/bin/env bash
# One device run of the per-CTA traces (bench/gpu-trace.ts): the Hopper forward and backward at
# the issue's shapes where the 8k causal rows fall short, beside the untraced rates (bench/gpu.js)
# in the same run. Carry .devkit, .devrun and dist. Results in $OUT/trace.log; ~2 minutes.
#   bash bench/gpu-trace-run.sh [reps=20]
set -uo pipefail
source bench/device-env.sh
reps=${1:-20}
log="$OUT/trace.log"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv,noheader | tee "$log"
for spec in "8192 32 128 1 fwd" "8192 32 128 0 fwd" "32768 32 128 1 fwd" "8192 8 64 1 fwd" "8192 32 128 1 bwd" "8192 32 128 0 bwd"; do
  read -r S H D causal which <<<"$spec"
  echo "== trace S=$S H=$H D=$D causal=$causal $which" | tee -a "$log"
  timeout -s KILL 120 $N dist/bench/gpu.js trace "$S" "$H" "$D" "$causal" "$reps" "$which" 2>&1 | grep -v "NVRTC\|ptxas" | tee -a "$log"
done
echo "== untraced, same run" | tee -a "$log"
for shape in "8192 32 --d=128" "32768 32 --d=128" "8192 8 --d=64"; do
  read -r S H d <<<"$shape"
  timeout -s KILL 120 $N dist/bench/gpu.js "$S" "$H" 10 "$d" 2>&1 | grep -v "NVRTC\|ptxas" | tee -a "$log"
done
