#!/usr/bin/env bash
# Forward variants chosen at compile time (-D options through RINGATTN_NVRTC_DEFINES) in one device
# run: each variant's kernels compiled on all CPUs, its forward tests against float64 (TESTS, a
# test-name pattern; default the schedules the dispatcher picks, ht and hw, and hc), then bench/gpu.js
# forward timings in ROUNDS rounds (every shape and variant a round, so that drift hits all alike)
# with the summary of bench/ab-summary.py, then, where the machine has cuobjdump, the order of ht's
# waits, exponentials and products in each variant's SASS (bench/sass-order.sh). Carry .devkit,
# .devrun and dist. Results in $OUT/defines.log.
#   bash bench/gpu-fwd-defines.sh [reps=10] "label|-DX -DY" ...      ("label|": the default build)
# e.g. bash bench/gpu-fwd-defines.sh 10 "base|" "late|-DFWD_LATE_WAIT" "masks|-DFWD_TILE_MASKS"
set -uo pipefail
source bench/device-env.sh
reps=${1:-10}
shift
log="$OUT/defines.log"
SHAPES=${SHAPES:-"8192:32:128 32768:32:128 8192:8:64"}
TESTS=${TESTS-"forward with RINGATTN_WGMMA_ATTN=[568] "}
# Each variant compiles into a cache of its own, so that its kernels (and their SASS) are told apart.
cacheOf() { echo "${RINGATTN_CACHE}-$1"; }
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv,noheader | tee "$log"
for v in "$@"; do
  label="${v%%|*}" defs="${v#*|}"
  echo "[$label] $(RINGATTN_CACHE=$(cacheOf "$label") RINGATTN_NVRTC_DEFINES="$defs" precompile_kernels --kernels attn_fwd.cu,attn_fwd_h.cu,attn_bwd.cu,attn_bwd_h.cu)" | tee -a "$log"
  if [ -n "$defs" ] && [ -n "$TESTS" ]; then
    RINGATTN_CACHE=$(cacheOf "$label") RINGATTN_NVRTC_DEFINES="$defs" timeout -s KILL "${TESTS_LIMIT:-150}" $N --test --test-reporter=tap --test-name-pattern="$TESTS" \
      dist/tests/cuda/attention.gpu.test.js >"$OUT/tests-$label.log" 2>&1
    echo "[$label] forward tests /$TESTS/ exit $?" | tee -a "$log"
    tap_results "$OUT/tests-$label.log" | tee -a "$log"
  fi
done
for round in $(seq 1 "${ROUNDS:-2}"); do
  for shape in $SHAPES; do
    IFS=: read -r S H D <<<"$shape"
    for v in "$@"; do
      label="${v%%|*}" defs="${v#*|}"
      echo "== round $round S=$S H=$H D=$D variant '$label' defines='$defs'" | tee -a "$log"
      RINGATTN_CACHE=$(cacheOf "$label") RINGATTN_NVRTC_DEFINES="$defs" timeout -s KILL 60 $N dist/bench/gpu.js "$S" "$H" "$reps" --d="$D" --fwd-only 2>&1 |
        grep -v "^device\|NVRTC\|ptxas\|^kernel " | tee -a "$log"
    done
  done
done
python3 bench/ab-summary.py "$log" | tee -a "$log"
for v in "$@"; do
  label="${v%%|*}"
  echo "== SASS order, variant '$label'" | tee -a "$log"
  RINGATTN_CACHE=$(cacheOf "$label") bash bench/sass-order.sh attn_fwd_ht_bf16_d128 attn_fwd_h.cu | tee -a "$log"
done
