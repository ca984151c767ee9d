#!/usr/bin/env bash
# One device run for the Hopper backward (kernels/attn_bwd_h.cu): its GPU tests for the default
# (h, RINGATTN_WGMMA_BWD=1) and the TMA-load variant (ht, =2), then bf16 H=32 timings at D=128 and
# 64 for =0 (mma.sync), =1 and =2, GQA (Hk=8) on the default, and PyTorch SDPA (flash, cuDNN) at the
# same shapes in the same run; with PROFILE=1 an Nsight Compute profile of the default at 8k D=128.
# Each step is time-limited; SKIP_TESTS=1 leaves the tests out; BWDS="2" times only those
# variants (default "0 1 2"); SDPA_DS="128" runs the peers at D=128 only. Carry .devkit, .devrun
# and dist. Results in $OUT.
#   bash bench/gpu-bwd-run.sh [reps=3]
set -uo pipefail
source bench/device-env.sh
reps=${1:-3}
log="$OUT/bwd.log"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader | tee "$log"
if [ -z "${SKIP_TESTS:-}" ]; then
  precompile_kernels --kernels attn_fwd.cu,attn_fwd_h.cu,attn_bwd.cu,attn_bwd_h.cu | tee -a "$log"
  timeout -s KILL 240 $N --test --test-reporter=tap --test-name-pattern="RINGATTN_WGMMA_BWD=|forward and backward vs float64|block kernels|rows that see no key" dist/tests/cuda/attention.gpu.test.js >"$OUT/tests.log" 2>&1
  echo "backward tests exit $?" | tee -a "$log"
  tap_results "$OUT/tests.log" | tee -a "$log"
fi
for S in 8192 32768; do
  for b in ${BWDS:-0 1 2}; do
    echo "== S=$S RINGATTN_WGMMA_BWD=$b" | tee -a "$log"
    RINGATTN_WGMMA_BWD=$b timeout -s KILL 90 $N dist/bench/gpu.js "$S" 32 "$reps" 2>&1 | grep -v "^device\|NVRTC\|ptxas" | tee -a "$log"
  done
done
echo "== GQA H=32 Hk=8, default" | tee -a "$log"
timeout -s KILL 60 $N dist/bench/gpu.js 8192 32 "$reps" --hk=8 2>&1 | grep -v "^device\|NVRTC\|ptxas" | tee -a "$log"
for D in ${SDPA_DS:-128 64}; do
  for HK in 32 8; do
    SDPA_H=32 SDPA_HK=$HK SDPA_D=$D timeout -s KILL 100 python3 bench/peers/torch_sdpa.py "$reps" 8192,32768 2>&1 | grep -v JSON | tee -a "$log"
  done
done
if [ -n "${PROFILE:-}" ] && [ -n "$NCU" ]; then
  mkdir -p /tmp/prof
  timeout -s KILL 120 "$NCU" --clock-control none --target-processes all -k regex:attn_bwd_h --launch-count 1 --set full --import-source no -f -o /tmp/prof/bwd \
    $N dist/bench/gpu.js 8192 32 1 --d=128 >/tmp/prof/ncu.log 2>&1
  echo "ncu exit $?" | tee -a "$log"
  "$NCU" -i /tmp/prof/bwd.ncu-rep --page details >"$OUT/bwd-details.txt" 2>&1
  "$NCU" -i /tmp/prof/bwd.ncu-rep --page source --print-source sass --csv 2>&1 | gzip -c >"$OUT/bwd-sass.csv.gz"
fi
