#!/usr/bin/env bash
# One device run comparing builds of the Hopper forward (kernels/attn_fwd_h.cu): each variant is
# "SCHEDULE|DEFINES|DS" (RINGATTN_WGMMA_ATTN, RINGATTN_NVRTC_DEFINES, head dims for --d=), e.g.
# "5||64,128" "6|-DFWDH_LAZY=1|64". First the forward GPU tests of schedules 5-7 and the block
# merges with each distinct DEFINES (unless SKIP_TESTS=1), then forward-only timings at S 8k and
# 32k, H=32, for every variant (rounds of all variants, ROUNDS times, so drift hits all alike),
# then PyTorch SDPA at D 64 and 128 (unless SKIP_TORCH=1). Each step is time-limited. Carry
# .devkit, .devrun and dist. Results in $OUT/ab.log.
#   bash bench/gpu-fwd-ab.sh [reps=5] VARIANT...
set -uo pipefail
source bench/device-env.sh
reps=${1:-5}
shift
log="$OUT/ab.log"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader | tee "$log"
if [ -z "${SKIP_TESTS:-}" ]; then
  defs=$(printf '%s\n' "$@" | cut -d'|' -f2 | sort -u)
  i=0
  while IFS= read -r d; do
    i=$((i + 1))
    RINGATTN_NVRTC_DEFINES="$d" precompile_kernels --kernels attn_fwd.cu,attn_fwd_h.cu,attn_bwd.cu,attn_bwd_h.cu | tee -a "$log"
    RINGATTN_NVRTC_DEFINES="$d" timeout -s KILL 200 $N --test --test-reporter=spec --test-name-pattern="RINGATTN_WGMMA_ATTN=(5|6|7)|block kernels" \
      dist/tests/cuda/attention.gpu.test.js >"$OUT/tests$i.log" 2>&1
    echo "forward tests [defines '$d'] exit $?" | tee -a "$log"
    grep -E "^(✔|✖)|^ℹ (pass|fail)" "$OUT/tests$i.log" | grep -v "^﹣" | tee -a "$log"
  done <<<"$defs"
fi
for round in $(seq 1 "${ROUNDS:-2}"); do
  for S in 8192 32768; do
    for v in "$@"; do
      IFS='|' read -r sched def ds <<<"$v"
      echo "== round $round S=$S RINGATTN_WGMMA_ATTN=$sched defines='$def' D=$ds" | tee -a "$log"
      RINGATTN_WGMMA_ATTN=$sched RINGATTN_NVRTC_DEFINES="$def" timeout -s KILL 90 $N dist/bench/gpu.js "$S" 32 "$reps" --fwd-only --d="$ds" 2>&1 |
        grep -v "^device\|NVRTC\|ptxas" | tee -a "$log"
    done
  done
done
for D in $([ -n "${SKIP_TORCH:-}" ] || echo 128 64); do
  SDPA_H=32 SDPA_HK=32 SDPA_D=$D timeout -s KILL 100 python3 bench/peers/torch_sdpa.py "$reps" 8192,32768 2>&1 | grep -v JSON | tee -a "$log"
done
