#!/usr/bin/env bash
# One device run of the per-CTA traces (bench/gpu-trace.ts): the Hopper forward and backward at
# the issue's shapes where the 8k causal rows fall short, beside the untraced rates (bench/gpu.js)
# in the same run; then, where Nsight Compute is installed, the L2 and tensor-pipe load of our 8k
# forward and of cuDNN's (is the K/V traffic from L2 near its limit? FlashAttention-3 halves it
# by multicasting K/V over a cluster of 2: kernels/NOTES.md). Carry .devkit, .devrun and dist.
# Results in $OUT/trace.log; ~3 minutes. SPECS="S H D causal fwd|items|bwd, ..." traces only those
# (causal: 1, 0, or edge for a sliding window's edge block);
# SKIP_NCU=1 leaves Nsight Compute out; SKIP_UNTRACED=1 the untraced rates; SOL_CAUSAL="" skips
# the speed-of-light profiles; STALLS=1 adds its warp-state (stall) sections and the
# per-instruction SASS table of our 8k unmasked forward ($OUT/fwd-sass.csv.gz).
#   bash bench/gpu-trace-run.sh [reps=20]
set -uo pipefail
source bench/device-env.sh
reps=${1:-20}
log="$OUT/trace.log"
gpu_header "$log"
IFS=, read -ra specs <<<"${SPECS:-8192 32 128 1 fwd,8192 32 128 0 fwd,32768 32 128 1 fwd,8192 8 64 1 fwd,8192 32 128 1 bwd,8192 32 128 0 bwd}"
for spec in "${specs[@]}"; do
  read -r S H D causal which <<<"$spec"
  echo "== trace S=$S H=$H D=$D causal=$causal $which" | tee -a "$log"
  timeout -s KILL 120 $N dist/bench/gpu.js trace "$S" "$H" "$D" "$causal" "$reps" "$which" 2>&1 | grep -v "NVRTC\|ptxas" | tee -a "$log"
done
[ -n "${SKIP_UNTRACED:-}" ] || echo "== untraced, same run" | tee -a "$log"
for shape in "8192 32 --d=128" "32768 32 --d=128" "8192 8 --d=64"; do
  [ -n "${SKIP_UNTRACED:-}" ] && break
  read -r S H d <<<"$shape"
  timeout -s KILL 120 $N dist/bench/gpu.js "$S" "$H" 10 "$d" 2>&1 | grep -v "NVRTC\|ptxas" | tee -a "$log"
done
if [ -n "$NCU" ] && [ -z "${SKIP_NCU:-}" ]; then
  mkdir -p /tmp/prof
  # profile NAME KERNEL-REGEX SKIP COMMAND...: one launch's load, its summary into the log.
  profile() {
    local name=$1 kernels=$2 skip=$3
    shift 3
    echo "== ncu: $name" | tee -a "$log"
    timeout -s KILL 150 "$NCU" --clock-control none --target-processes all -k "regex:$kernels" --launch-skip "$skip" --launch-count 1 \
      --section SpeedOfLight --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis -f -o "/tmp/prof/$name" "$@" >"/tmp/prof/$name.log" 2>&1
    "$NCU" -i "/tmp/prof/$name.ncu-rep" --page details 2>&1 | grep -E "^  [a-z]|Duration|Throughput|Hit Rate|Tensor|Issue Slots|SM Busy" | head -24 | tee -a "$log"
  }
  for causal in ${SOL_CAUSAL-0 1}; do
    profile "ours-8k-causal$causal" attn_fwd_h 5 $N dist/bench/gpu.js 8192 32 1 --d=128 --fwd-only --causal="$causal"
    profile "cudnn-8k-causal$causal" 'sdpa|fprop|fmha|flash' 3 python3 bench/peers/torch_sdpa_loop.py 8192 "$causal" 0.2
  done
  if [ -n "${STALLS:-}" ]; then
    echo "== ncu: warp states of ours, 8k unmasked" | tee -a "$log"
    timeout -s KILL 150 "$NCU" --clock-control none --target-processes all -k regex:attn_fwd_h --launch-skip 5 --launch-count 1 \
      --section WarpStateStats --section SchedulerStats --section SourceCounters --section InstructionStats --import-source no \
      -f -o /tmp/prof/stalls $N dist/bench/gpu.js 8192 32 1 --d=128 --fwd-only --causal=0 >/tmp/prof/stalls.log 2>&1
    "$NCU" -i /tmp/prof/stalls.ncu-rep --page details >"$OUT/fwd-stalls.txt" 2>&1
    grep -E "Stall|Warp Cycles|Eligible|Issued Warp|No Eligible|Active Warps" "$OUT/fwd-stalls.txt" | head -30 | tee -a "$log"
    "$NCU" -i /tmp/prof/stalls.ncu-rep --page source --print-source sass --csv 2>&1 | gzip -c >"$OUT/fwd-sass.csv.gz"
  fi
  (cd /tmp/prof && tar czf "$OUT/trace-prof.tar.gz" --exclude='*.cubin' .)
else
  echo "ncu: not run (${SKIP_NCU:+SKIP_NCU set}${NCU:-not found})" | tee -a "$log"
fi
