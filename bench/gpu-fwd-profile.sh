#!/usr/bin/env bash
# One device run for the Hopper attention forward's schedules (kernels/attn_fwd_h.cu): the GPU
# attention tests (every schedule against float64), forward-only timings at S 8k/32k, H=32 for
# RINGATTN_WGMMA_ATTN=1..5 and 0 (mma.sync) and GQA (Hk=8) on the default, the backward with
# RINGATTN_WGMMA_BWD=0 and 1, PyTorch SDPA at the same shapes, the SASS of the
# forward (cuobjdump), and Nsight Compute profiles (full set, SASS with stall samples) of the
# forward at 8k D=128 (schedules named in PROFILE, default "5") and of the split-KV decode at
# 1M x 1 (SKIP_TESTS, SKIP_DECODE, SKIP_TORCH leave parts out). Every step has a hard time limit. Carry .devkit, .devrun and dist. Results in $OUT
# (logs, and prof.tar.gz with the reports).   bash bench/gpu-fwd-profile.sh [reps=5]
set -uo pipefail
source bench/device-env.sh
mkdir -p /tmp/prof
reps=${1:-5}
log="$OUT/fwd.log"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader | tee "$log"
if [ -z "${SKIP_TESTS:-}" ]; then
  precompile_kernels
  timeout -s KILL 280 $N --test dist/tests/cuda/attention.gpu.test.js >"$OUT/tests.log" 2>&1
  echo "attention tests exit $?" | tee -a "$log"
  grep -E "^# (pass|fail|skipped)|^not ok" "$OUT/tests.log" | tee -a "$log"
fi
for S in 8192 32768; do
  for v in 5 4 3 2 1 0; do
    echo "== S=$S RINGATTN_WGMMA_ATTN=$v" | tee -a "$log"
    RINGATTN_WGMMA_ATTN=$v timeout -s KILL 90 $N dist/bench/gpu.js "$S" 32 "$reps" --fwd-only 2>&1 | grep -v "^kernel\|^device" | tee -a "$log"
  done
done
echo "== backward: mma.sync (RINGATTN_WGMMA_BWD=0) and wgmma (=1)" | tee -a "$log"
for S in 8192 32768; do
  for b in 0 1; do
    RINGATTN_WGMMA_BWD=$b timeout -s KILL 120 $N dist/bench/gpu.js "$S" 32 3 2>&1 | grep -v "^kernel\|^device" | tee -a "$log"
  done
done
echo "== GQA H=32 Hk=8, default schedule" | tee -a "$log"
for S in 8192 32768; do
  timeout -s KILL 90 $N dist/bench/gpu.js "$S" 32 "$reps" --hk=8 --fwd-only 2>&1 | grep -v "^kernel\|^device" | tee -a "$log"
done
if command -v cuobjdump >/dev/null; then
  nvcc -arch=sm_90a -cubin -std=c++17 -o /tmp/prof/fwdh.cubin src/cuda/kernels/attn_fwd_h.cu 2>&1 | tail -2
  for k in attn_fwd_ht_bf16_d128 attn_fwd_hq_bf16_d128; do cuobjdump -sass -fun $k /tmp/prof/fwdh.cubin >/tmp/prof/$k.sass; done
fi
if [ -n "$NCU" ]; then
  for v in ${PROFILE:-5}; do
    RINGATTN_WGMMA_ATTN=$v timeout -s KILL 120 "$NCU" --clock-control none --target-processes all -k regex:attn_fwd_h --launch-count 1 --set full \
      --import-source no -f -o /tmp/prof/fwd$v $N dist/bench/gpu.js 8192 32 1 --d=128 --fwd-only >/tmp/prof/ncu$v.log 2>&1
    echo "ncu fwd $v exit $?" | tee -a "$log"
    "$NCU" -i /tmp/prof/fwd$v.ncu-rep --page details >/tmp/prof/fwd$v-details.txt 2>&1
    "$NCU" -i /tmp/prof/fwd$v.ncu-rep --page source --print-source sass --csv >/tmp/prof/fwd$v-sass.csv 2>&1
    grep -E "Duration|Compute \(SM\) Throughput|Tensor|Issue Slots Busy|No Eligible|Warp Cycles Per Issued|Stall" /tmp/prof/fwd$v-details.txt | head -30 | tee -a "$log"
  done
  [ -n "${SKIP_DECODE:-}" ] || timeout -s KILL 120 "$NCU" --clock-control none --target-processes all -k regex:decode_mma --launch-skip 3 --launch-count 1 --set full \
    -f -o /tmp/prof/dec $N dist/bench/gpu-decode.js --contexts=1048576 --batches=1 --reps=3 >/tmp/prof/ncu-dec.log 2>&1
  echo "ncu decode exit $?" | tee -a "$log"
  "$NCU" -i /tmp/prof/dec.ncu-rep --page details >/tmp/prof/dec-details.txt 2>&1
  grep -E "Duration|Memory Throughput|DRAM Throughput|L2 Hit|Achieved Occupancy" /tmp/prof/dec-details.txt | head -12 | tee -a "$log"
else
  echo "ncu not found" | tee -a "$log"
fi
(cd /tmp/prof && tar czf "$OUT/prof.tar.gz" --exclude='*.cubin' .)
echo "== torch sdpa H=32 D=128 and D=64" | tee -a "$log"
for D in $([ -n "${SKIP_TORCH:-}" ] || echo 128 64); do
  for HK in 32 8; do
    SDPA_H=32 SDPA_HK=$HK SDPA_D=$D timeout -s KILL 100 python3 bench/peers/torch_sdpa.py 5 8192,32768 2>&1 | grep -v JSON | tee -a "$log"
  done
done
(cd /tmp/prof && tar czf "$OUT/prof.tar.gz" --exclude='*.cubin' .)
