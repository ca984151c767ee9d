#!/usr/bin/env bash
# Two or more builds of the whole project (each a dist folder: an older one copied into an ignored
# folder and carried, e.g. .cache/dist0) compared in one device run on `bench/gpu.js` commands:
# ROUNDS rounds (2), variants in round_order (reversed on even rounds), of each command in CMDS
# (";"-separated argument lists; default the masks bench at 16k and 8k and the 16k causal forward
# and backward at H=16). Then, unless SKIP_TESTS=1, the attention GPU tests whose names match TESTS
# on the first variant's build (the new one, by convention). Each build compiles its kernels into
# the one cache (the keys hash the sources). Carry .devkit, .devrun, dist and the other dists.
# Results in $OUT/dist-ab.log.
#   bash bench/gpu-dist-ab.sh "LABEL|DIST" ...     e.g. "new|dist" "old|.cache/dist0"
set -uo pipefail
source bench/device-env.sh
log="$OUT/dist-ab.log"
CMDS=${CMDS:-"masks 16384 5;masks 8192 5;16384 16 10 --d=128 --causal=1"}
TESTS=${TESTS:-"heavier end|(bfloat16|float16) D=(64|128): every mask|launch orders|ht persistent grid|RINGATTN_WGMMA_BWD=2|mma.sync backward|block kernels"}
gpu_header "$log"
for v in "$@"; do
  d=${v#*|}
  [ -f "$d/bench/gpu.js" ] || { echo "gpu-dist-ab: no $d/bench/gpu.js (variant '$v')" | tee -a "$log"; exit 2; }
done
IFS=';' read -ra cmds <<<"$CMDS"
for round in $(seq 1 "${ROUNDS:-2}"); do
  round_order "$round" "$@"
  for c in "${cmds[@]}"; do
    for v in "${order[@]}"; do
      label=${v%%|*}
      d=${v#*|}
      echo "== round $round '$c' [$label]" | tee -a "$log"
      # shellcheck disable=SC2086 # the command's arguments split on spaces
      timeout -s KILL 180 $N "$d/bench/gpu.js" $c 2>&1 | grep -v "NVRTC\|ptxas\|^JSON\|^kernel " | tee -a "$log"
    done
  done
done
if [ -z "${SKIP_TESTS:-}" ]; then
  d=${1#*|}
  [ "$d" = dist ] || { echo "gpu-dist-ab: the tests run dist's files; the first variant is '$1'" | tee -a "$log"; exit 0; }
  attention_tests "$TESTS" "${RINGATTN_NVRTC_DEFINES:-}" "${1%%|*}"
fi
