#!/usr/bin/env bash
# The Hopper forward's cost per work item (query tile x head), and (ALT="-DNAME ...") a build that
# may cut it, in one device run (kernels/NOTES.md run 102):
# 1. `gpu.js trace ... items`: the persistent ht traced item by item (window edge, no mask at 16k
#    and 8k, the causal diagonal), then the window edge and 8k with ALT;
# 2. the sweep: equal FLOPs (S² H fixed, D=128, no mask) cut into items of 256, 128, 64 and 32 key
#    tiles; with t tiles an item and I items, time = I (f + t c) / SMs, so rows of equal work differ
#    by the fixed cost f an item pays; each shape timed with the default and with ALT, in turn;
# 3. `gpu.js masks 16384 5`, default and ALT; the per-CTA traces (full grid) of the window edge and
#    the diagonal; trace.test.js; unless SKIP_PEERS=1, 8k and 16k beside PyTorch's cuDNN.
# Every build is compiled first, in parallel. Carry .devkit, .devrun and dist. Results in
# $OUT/item-cost.log; ~6 minutes.   bash bench/gpu-item-cost.sh [reps=10]
set -uo pipefail
source bench/device-env.sh
reps=${1:-10}
ALT=${ALT:-}
log="$OUT/item-cost.log"
gpu_header "$log"
builds=("" "-DFWD_TRACE -DFWD_TRACE_ITEMS" "-DFWD_TRACE" "-DFWD_TRACE -DBWD_TRACE")
[ -n "$ALT" ] && builds+=("$ALT" "$ALT -DFWD_TRACE -DFWD_TRACE_ITEMS")
variants=("")
[ -n "$ALT" ] && variants+=("$ALT")
JOBS=3 compile_builds "${builds[@]}" | tee -a "$log"
traces() {  # SPECS [defines]
  RINGATTN_NVRTC_DEFINES="${2:-}" SPECS="$1" SKIP_NCU=1 SKIP_UNTRACED=1 timeout -s KILL 300 bash bench/gpu-trace-run.sh 20 >/dev/null 2>&1
  echo "== traces${2:+ with $2}" | tee -a "$log"
  grep -v "^JSON" "$OUT/trace.log" | tee -a "$log"
  cat "$OUT/trace.log" >>"$OUT/traces-full.log"
}
traces "16384 32 128 edge items,16384 32 128 0 items,8192 32 128 0 items,16384 32 128 1 items"
[ -n "$ALT" ] && traces "16384 32 128 edge items,8192 32 128 0 items" "$ALT"
for shape in "32768 8" "16384 32" "8192 128" "4096 512"; do
  read -r S H <<<"$shape"
  for d in "${variants[@]}"; do
    echo "== S=$S H=$H ($((S / 128)) key tiles an item, $((S / 128 * H)) items) ${d:-default}" | tee -a "$log"
    RINGATTN_NVRTC_DEFINES="$d" timeout -s KILL 150 $N dist/bench/gpu.js "$S" "$H" "$reps" --d=128 --fwd-only --causal=0 --queue=4 2>&1 | grep -v "NVRTC\|ptxas" | tee -a "$log"
  done
done
for d in "${variants[@]}"; do
  echo "== masks ${d:-default}" | tee -a "$log"
  RINGATTN_NVRTC_DEFINES="$d" timeout -s KILL 150 $N dist/bench/gpu.js masks 16384 5 2>&1 | grep -v "NVRTC\|ptxas" | tee -a "$log"
done
traces "16384 32 128 edge fwd,16384 32 128 1 fwd"
echo "== tests: trace.test.js (the traced builds, per CTA and per item)" | tee -a "$log"
timeout -s KILL 150 $N --test --test-reporter=tap dist/tests/cuda/trace.test.js >"$OUT/trace-test.tap" 2>&1
echo "trace.test exit $?" | tee -a "$log"
tap_results "$OUT/trace-test.tap" | tee -a "$log"
if [ -z "${SKIP_PEERS:-}" ]; then
  for S in 8192 16384; do
    echo "== S=$S H=32 beside cuDNN" | tee -a "$log"
    timeout -s KILL 150 $N dist/bench/gpu.js "$S" 32 "$reps" --d=128 --fwd-only --causal=0,1 --peers 2>&1 | grep -v "NVRTC\|ptxas" | tee -a "$log"
  done
fi
