#!/usr/bin/env bash
# One device run comparing builds of the Hopper forward (kernels/attn_fwd_h.cu): each variant is
# "SCHEDULE|DEFINES|DS" (RINGATTN_WGMMA_ATTN, empty for the dispatcher's choice; RINGATTN_NVRTC_DEFINES;
# head dims for --d=), e.g. "||64,128" "|-DFWD_MY_CHANGE|64,128" "6||64". Each distinct DEFINES
# compiles into a kernel cache of its own; first its forward GPU tests (TESTS, a test-name pattern:
# by default the schedules the dispatcher picks, 5 and 6, and 7-8, and the block merges; unless
# SKIP_TESTS=1), then forward-only timings at S 8k and 32k, H=32, for every variant (rounds of all
# variants, ROUNDS times, so drift hits all alike; even rounds in reverse order) with bench/ab-summary.py's table, then where the
# machine has cuobjdump the order of ht's waits, exponentials and products in each build's SASS
# (bench/sass-order.sh: where ptxas put the P·V wait, kernels/NOTES.md run 62), then PyTorch SDPA at
# D 64 and 128 (unless SKIP_TORCH=1). Each step is time-limited. Carry .devkit, .devrun and dist.
# Results in $OUT/ab.log.
#   bash bench/gpu-fwd-ab.sh [reps=5] VARIANT...
set -uo pipefail
source bench/device-env.sh
reps=${1:-5}
shift
log="$OUT/ab.log"
TESTS=${TESTS:-"RINGATTN_WGMMA_ATTN=[5-8] |block kernels"}
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader | tee "$log"
defs=$(printf '%s\n' "$@" | cut -d'|' -f2 | sort -u)
# The kernel cache of a DEFINES: its line number in the sorted list.
cacheOf() { echo "$RINGATTN_CACHE-$(grep -nxF -- "$1" <<<"$defs" | cut -d: -f1)"; }
while IFS= read -r d; do
  build_and_test "$(cacheOf "$d")" "$d" "$TESTS" "$OUT/tests$(basename "$(cacheOf "$d")").log" "forward tests [defines '$d']"
done <<<"$defs"
for round in $(seq 1 "${ROUNDS:-2}"); do
  round_order "$round" "$@"
  for S in 8192 32768; do
    for v in "${order[@]}"; do
      IFS='|' read -r sched def ds <<<"$v"
      echo "== round $round S=$S H=32 variant '${sched:-default}${def:+ $def}'" | tee -a "$log"
      RINGATTN_CACHE=$(cacheOf "$def") RINGATTN_WGMMA_ATTN=$sched RINGATTN_NVRTC_DEFINES="$def" timeout -s KILL 90 \
        $N dist/bench/gpu.js "$S" 32 "$reps" --fwd-only --d="$ds" 2>&1 | grep -v "^device\|NVRTC\|ptxas" | tee -a "$log"
    done
  done
done
python3 bench/ab-summary.py "$log" | tee -a "$log"
while IFS= read -r d; do
  echo "== SASS order [defines '$d']" | tee -a "$log"
  RINGATTN_CACHE=$(cacheOf "$d") bash bench/sass-order.sh attn_fwd_ht_bf16_d128 attn_fwd_h.cu | tee -a "$log"
done <<<"$defs"
for D in $([ -n "${SKIP_TORCH:-}" ] || echo 128 64); do
  SDPA_H=32 SDPA_HK=32 SDPA_D=$D timeout -s KILL 100 python3 bench/peers/torch_sdpa.py "$reps" 8192,32768 2>&1 | grep -v JSON | tee -a "$log"
done
