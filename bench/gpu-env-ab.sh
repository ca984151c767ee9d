#!/usr/bin/env bash
# One device run comparing settings of the attention block kernels that environment variables
# choose (RINGATTN_HEAD_GROUP, RINGATTN_WGMMA_ATTN, RINGATTN_NVRTC_DEFINES, ...) with bench/gpu.js,
# forward and backward, beside PyTorch SDPA (flash, cuDNN) at the same shapes. ROUNDS rounds of
# every shape and variant, so that drift hits all alike (even rounds in reverse order). Carry .devkit, .devrun and dist.
# Results in $OUT/env-ab.log.
#   bash bench/gpu-env-ab.sh [reps=10] VARIANT...      VARIANT = "label|VAR=x VAR2=y" ("label|": the defaults)
# A variant's DIST=path runs that build's bench/gpu.js instead of dist's (an older build copied
# into an ignored folder and carried, e.g. "old|DIST=.cache/dist0": A/B of two commits in one run).
# SHAPES ("S:H:D ..."; default "8192:32:128 32768:32:128 8192:8:64 32768:8:64"), ROUNDS (2),
# FWD_ONLY=1 (forward only), SKIP_TORCH=1, TESTS="pattern" (first the attention GPU tests whose
# names match it).
set -uo pipefail
source bench/device-env.sh
reps=${1:-10}
shift
log="$OUT/env-ab.log"
SHAPES=${SHAPES:-"8192:32:128 32768:32:128 8192:8:64 32768:8:64"}
gpu_header "$log"
if [ -n "${TESTS:-}" ]; then
  precompile_kernels | tee -a "$log"
  # In session 17 the first matching tests, compiling their kernels one at a time, had not ended at
  # the limit and the log stayed empty; precompile_kernels comes first now, and the TAP reporter
  # prints each test as it ends. timeout kills the whole process group
  # (node --test's child too).
  timeout -s KILL "${TESTS_LIMIT:-300}" $N --test --test-reporter=tap --test-name-pattern="$TESTS" dist/tests/cuda/attention.gpu.test.js >"$OUT/tests.log" 2>&1
  echo "attention GPU tests /$TESTS/ exit $?" | tee -a "$log"
  tap_results "$OUT/tests.log" | tee -a "$log"
fi
for round in $(seq 1 "${ROUNDS:-2}"); do
  round_order "$round" "$@"
  for shape in $SHAPES; do
    IFS=: read -r S H D <<<"$shape"
    for v in "${order[@]}"; do
      label="${v%%|*}"
      envs="${v#*|}"
      echo "== round $round S=$S H=$H D=$D variant '$label' env='$envs'" | tee -a "$log"
      d=dist  # DIST=path in a variant's settings: another build's dist (carried, e.g. .cache/dist0)
      for e in $envs; do case $e in DIST=*) d=${e#DIST=} ;; esac; done
      env $envs timeout -s KILL 120 $N "$d/bench/gpu.js" "$S" "$H" "$reps" --d="$D" ${FWD_ONLY:+--fwd-only} 2>&1 |
        grep -v "^device\|NVRTC\|ptxas\|^kernel " | tee -a "$log"
    done
  done
done
# Per shape, mask and variant: the median over the rounds of each round's median, and every round's.
python3 bench/ab-summary.py "$log" | tee -a "$log"
[ -n "${SKIP_TORCH:-}" ] && exit 0
# One torch run per (H, D), over the shapes' S.
for hd in $(for s in $SHAPES; do echo "${s#*:}"; done | sort -u); do
  IFS=: read -r H D <<<"$hd"
  sizes=$(for s in $SHAPES; do [ "${s#*:}" = "$hd" ] && echo "${s%%:*}"; done | paste -sd,)
  echo "== torch sdpa H=$H D=$D S=$sizes" | tee -a "$log"
  SDPA_H=$H SDPA_HK=$H SDPA_D=$D timeout -s KILL 150 python3 bench/peers/torch_sdpa.py 5 "$sizes" 2>&1 | grep -v JSON | tee -a "$log"
done
