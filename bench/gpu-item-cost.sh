#!/usr/bin/env bash
# The Hopper forward's cost per work item, from untraced runs: the same FLOPs (S² H fixed, D=128,
# no mask) cut into items (query tile x head) of 256, 128, 64 and 32 key tiles. With t tiles an
# item and I items, time = (I f + I t c) / SMs: rows of equal work differ only by the fixed cost f
# an item pays. First the persistent forward's per-item traces (`gpu.js trace ... items`: the
# window edge, no mask at 16k and 8k, the causal diagonal), then the sweep, the per-CTA traces
# (full grid) of the window edge, the diagonal and no mask at 16k, `gpu.js masks 16384 5`, and,
# unless SKIP_PEERS=1, the sweep again beside PyTorch's cuDNN in the same run. Carry .devkit, .devrun and dist. Results in
# $OUT/item-cost.log; ~5 minutes.   bash bench/gpu-item-cost.sh [reps=10]
set -uo pipefail
source bench/device-env.sh
reps=${1:-10}
log="$OUT/item-cost.log"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv,noheader | tee "$log"
sweep() {
  for shape in "32768 8" "16384 32" "8192 128" "4096 512"; do
    read -r S H <<<"$shape"
    echo "== S=$S H=$H ($((S / 128)) key tiles an item, $((S / 128 * H)) items) $*" | tee -a "$log"
    timeout -s KILL 150 $N dist/bench/gpu.js "$S" "$H" "$reps" --d=128 --fwd-only --causal=0 --queue=4 "$@" 2>&1 | grep -v "NVRTC\|ptxas" | tee -a "$log"
  done
}
traces() {
  SPECS="$1" SKIP_NCU=1 SKIP_UNTRACED=1 timeout -s KILL 300 bash bench/gpu-trace-run.sh 20 >/dev/null 2>&1
  grep -v "^JSON" "$OUT/trace.log" | tee -a "$log"
  cat "$OUT/trace.log" >>"$OUT/traces-full.log"
}
traces "${ITEM_SPECS:-16384 32 128 edge items,16384 32 128 0 items,8192 32 128 0 items,16384 32 128 1 items}"
sweep
traces "${CTA_SPECS:-16384 32 128 edge fwd,16384 32 128 1 fwd,16384 32 128 0 fwd}"
echo "== masks" | tee -a "$log"
timeout -s KILL 150 $N dist/bench/gpu.js masks 16384 5 2>&1 | grep -v "NVRTC\|ptxas" | tee -a "$log"
[ -n "${SKIP_PEERS:-}" ] || sweep --peers
echo "== tests: trace.test.js (the traced builds, per CTA and per item)" | tee -a "$log"
timeout -s KILL 150 $N --test --test-reporter=tap dist/tests/cuda/trace.test.js >"$OUT/trace-test.tap" 2>&1
echo "trace.test exit $?" | tee -a "$log"
tap_results "$OUT/trace-test.tap" | tee -a "$log"
