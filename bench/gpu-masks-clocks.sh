#!/usr/bin/env bash
# The masks bench's cases with the GPU's clock and power sampled beside them, build against build:
# does a build that takes fewer cycles a call run at a lower clock for the same time (the power
# cap, 700 W on an H100, binding)? Each variant is "LABEL|DEFINES" (RINGATTN_NVRTC_DEFINES); all
# builds compiled first (compile_builds); then ROUNDS rounds (2), the variants in round_order, each
# `gpu.js masks S REPS step CASES` with nvidia-smi sampling every 50 ms (the instant power where
# the driver has it), and bench/clock-spans.py: each pass's ms, median SM clock and power over its
# settled span, cycles and energy a call. Carry .devkit, .devrun and dist. Results in
# $OUT/masks-clocks.log; the samples in $OUT/clocks-masks.csv (the last round's).
#   [S=16384 CASES=none,edge REPS=50 ROUNDS=2 SETTLE_MS=3000] bash bench/gpu-masks-clocks.sh VARIANT...
set -uo pipefail
source bench/device-env.sh
log="$OUT/masks-clocks.log"
: > "$log"
S=${S:-16384} cases=${CASES:-none,edge} reps=${REPS:-50}
export RINGATTN_BENCH_SETTLE_MS=${SETTLE_MS:-3000}
fields=timestamp,clocks.sm,power.draw
nvidia-smi --query-gpu=power.draw.instant --format=csv,noheader >/dev/null 2>&1 && fields+=,power.draw.instant
gpu_header "$log" -a
echo "sampled: $fields; settle ${RINGATTN_BENCH_SETTLE_MS} ms a pass, the first 1000 ms of each span left out" | tee -a "$log"
defs=()
for v in "$@"; do defs+=("${v#*|}"); done
compile_builds "${defs[@]}" | tee -a "$log"
# One variant's round: the bench with the sampler beside it, then each pass's clock and energy.
masks_round() {
  local round=$1 label=$2 def=$3 pid
  echo "== round $round masks $S $reps step $cases [$label]" | tee -a "$log"
  nvidia-smi --query-gpu="$fields" --format=csv,noheader -lms 50 >"$OUT/clocks-masks.csv" &
  pid=$!
  RINGATTN_NVRTC_DEFINES="$def" timeout -s KILL 200 $N dist/bench/gpu.js masks "$S" "$reps" step "$cases" >"$OUT/masks-run.log" 2>&1
  echo "exit $?" >>"$OUT/masks-run.log"
  kill "$pid"; wait "$pid" 2>/dev/null
  grep -v "NVRTC\|ptxas\|^JSON" "$OUT/masks-run.log" | tee -a "$log"
  python3 bench/clock-spans.py "$OUT/clocks-masks.csv" "$OUT/masks-run.log" "$label" | tee -a "$log"
}
ab_rounds masks_round "$@"
