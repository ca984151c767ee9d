#!/usr/bin/env bash
# One device run that checks and times the Hopper (wgmma) attention forward, attn_fwd_h.cu:
# the GPU attention tests (both forward kernels against float64, the GEMM tests since gemm.cu
# shares hopper.cuh), then bench/gpu.js at S 8k/32k, H=32, with RINGATTN_WGMMA_ATTN=1 (attn_fwd_h),
# =2 (attn_fwd_hp at D=64) and unset (mma.sync), and PyTorch SDPA (flash, cuDNN) at the same shapes. Every step has a hard time limit
# (a pipeline bug traps after 4 s, but a wrong setmaxnreg could still stall a launch).
# Carry .devkit, .devrun and dist.   bash bench/gpu-wgmma-check.sh [reps=5]
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
[ -e node_modules ] || ln -s .devrun/node_modules node_modules
export RINGATTN_CACHE=${RINGATTN_CACHE:-/tmp/ringattn-cache} RINGATTN_GPU_TIMEOUT=${RINGATTN_GPU_TIMEOUT:-90}
reps=${1:-5}
log="$OUT/wgmma-check.log"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$log"
timeout -s KILL 300 bash .devkit/env.sh node --test dist/tests/cuda/attention.gpu.test.js dist/tests/cuda/gemm.gpu.test.js >"$OUT/tests.log" 2>&1
echo "tests exit $?" | tee -a "$log"
grep -E "^# (pass|fail|skipped)|^not ok" "$OUT/tests.log" | tee -a "$log"
for S in 8192 32768; do
  for v in 1 2 0; do
    echo "== RINGATTN_WGMMA_ATTN=$v" | tee -a "$log"
    RINGATTN_WGMMA_ATTN=$v timeout -s KILL 120 bash .devkit/env.sh node dist/bench/gpu.js "$S" 32 "$reps" 2>&1 | tee -a "$log"
  done
done
echo "== torch sdpa H=32 Hk=32 D=128" | tee -a "$log"
SDPA_H=32 SDPA_HK=32 SDPA_D=128 timeout -s KILL 120 python3 bench/peers/torch_sdpa.py 5 8192,32768 2>&1 | grep -v JSON | tee -a "$log"
