#!/usr/bin/env bash
# One device run comparing builds of the Hopper attention kernels on the mask path: each variant is
# "LABEL|DEFINES" (RINGATTN_NVRTC_DEFINES), e.g. "default|" "new|-DNAME" (session 20 compared the
# range masks with the per-tile masks of an opt-in since removed: kernels/NOTES.md run 65).
# Each DEFINES compiles into a kernel cache of its own; then its GPU tests of every mask, forward
# and backward (bf16 and fp16 sweeps at D 64/128 on the kernels the dispatcher picks, the ht
# backward's sweep, block merges, rows that see nothing; TESTS overrides the name pattern, unless
# SKIP_TESTS=1), then ROUNDS rounds of every variant of `gpu.js masks 16384` (one ring step's block
# under each mask against the unmasked one) and of the 8k causal forward and backward (H=32,
# D=128), whose diagonal tiles take the mask path. Each step is time-limited. Carry .devkit, .devrun
# and dist. Results in $OUT/mask-ab.log.
#   bash bench/gpu-mask-ab.sh [reps=5] VARIANT...
set -uo pipefail
source bench/device-env.sh
reps=${1:-5}
shift
log="$OUT/mask-ab.log"
TESTS=${TESTS:-"(bfloat16|float16) D=(64|128): every mask|RINGATTN_WGMMA_BWD=2|block kernels|rows that see no key"}
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader | tee "$log"
i=0
for v in "$@"; do
  IFS='|' read -r label def <<<"$v"
  i=$((i + 1))
  build_and_test "$RINGATTN_CACHE-m$i" "$def" "$TESTS" "$OUT/tests-$label.log" "mask tests [$label: '$def']"
done
for round in $(seq 1 "${ROUNDS:-2}"); do
  i=0
  for v in "$@"; do
    IFS='|' read -r label def <<<"$v"
    i=$((i + 1))
    echo "== round $round masks 16384 [$label]" | tee -a "$log"
    RINGATTN_CACHE=$RINGATTN_CACHE-m$i RINGATTN_NVRTC_DEFINES="$def" timeout -s KILL 120 \
      $N dist/bench/gpu.js masks 16384 "$reps" 2>&1 | grep -v "NVRTC\|ptxas" | tee -a "$log"
    echo "== round $round 8192 H=32 D=128 [$label]" | tee -a "$log"
    RINGATTN_CACHE=$RINGATTN_CACHE-m$i RINGATTN_NVRTC_DEFINES="$def" timeout -s KILL 90 \
      $N dist/bench/gpu.js 8192 32 "$reps" --d=128 --causal=1 2>&1 | grep -v "^device\|NVRTC\|ptxas" | tee -a "$log"
  done
done
