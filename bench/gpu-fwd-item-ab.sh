#!/usr/bin/env bash
# Builds of the Hopper forward compared on its per-item costs, in one device run. Each variant is
# "LABEL|DEFINES" (RINGATTN_NVRTC_DEFINES). Every build (and its per-item trace build) is compiled
# first, in parallel, into one kernel cache (keys hash the options); then ROUNDS rounds, variants
# in round_order (reversed on even rounds), of `gpu.js masks 16384 5` and of the 8k and 16k
# unmasked forward (H=32, D=128, --queue=4; SIZES="8192" for one size); then the per-item traces of the window edge and 8k
# (`gpu.js trace ... items`, timed as TRACE_TIMING says: pass, step or fresh, the trace's default when unset) of the first and last variants (SKIP_TRACES=1: neither the
# trace builds nor the traces, for changes a trace cannot show); then the GPU tests of every mask
# (bf16 / fp16 at D 64/128, the persistent grid, block merges, rows that see nothing, non-finite
# inputs: TESTS overrides) on the last variant's build, unless SKIP_TESTS=1. Carry .devkit,
# .devrun and dist. Results in $OUT/fwd-item-ab.log.
#   bash bench/gpu-fwd-item-ab.sh [reps=10] VARIANT...
set -uo pipefail
source bench/device-env.sh
reps=${1:-10}
shift
log="$OUT/fwd-item-ab.log"
TESTS=${TESTS:-"(bfloat16|float16) D=(64|128): every mask|ht persistent grid|block kernels|rows that see no key|allowNonfinite"}
gpu_header "$log"
builds=()  # each variant's build and its per-item trace build
for v in "$@"; do
  IFS='|' read -r label def <<<"$v"
  builds+=("$def")
  [ -z "${SKIP_TRACES:-}" ] && builds+=("$(echo "$def -DFWD_TRACE -DFWD_TRACE_ITEMS" | xargs)")
done
compile_builds "${builds[@]}" | tee -a "$log"
# One variant's round: the masks, then the unmasked forward at each size.
item_round() {
  local round=$1 label=$2 def=$3 S
  echo "== round $round masks 16384 [$label]" | tee -a "$log"
  RINGATTN_NVRTC_DEFINES="$def" timeout -s KILL 120 $N dist/bench/gpu.js masks 16384 5 2>&1 | grep -v "NVRTC\|ptxas\|^JSON" | tee -a "$log"
  for S in ${SIZES:-8192 16384}; do
    echo "== round $round $S H=32 D=128 unmasked, queue 4 [$label]" | tee -a "$log"
    RINGATTN_NVRTC_DEFINES="$def" timeout -s KILL 90 $N dist/bench/gpu.js "$S" 32 "$reps" --d=128 --fwd-only --causal=0 --queue=4 2>&1 | grep "^cuda" | tee -a "$log"
  done
}
ab_rounds item_round "$@"
for v in "$1" "${!#}"; do
  [ -n "${SKIP_TRACES:-}" ] && break
  IFS='|' read -r label def <<<"$v"
  IFS=, read -ra specs <<<"${TRACE_SPECS:-16384 32 128 edge,8192 32 128 0}"
  for spec in "${specs[@]}"; do
    echo "== items trace $spec [$label]" | tee -a "$log"
    RINGATTN_NVRTC_DEFINES="$def" timeout -s KILL 120 $N dist/bench/gpu.js trace $spec 20 items ${TRACE_TIMING:-} 2>&1 | grep -v "NVRTC\|ptxas\|^JSON\|^device" | tee -a "$log"
  done
done
if [ -z "${SKIP_TESTS:-}" ]; then
  IFS='|' read -r label def <<<"${!#}"
  attention_tests "$TESTS" "$def" "$label"
fi
