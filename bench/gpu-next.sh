#!/usr/bin/env bash
# The first device run of a session after sessions 8-9 (which had no GPU for their host-side
# changes): the CUDA test files that exercise the changed host code (argument packing, the
# tensor-map cache, bench zeroing), then bench/gpu-queue.sh (ours and SDPA at queue 1 and 8).
# Each step is time-limited so one call stays under the device's 10 minutes. Carry .devkit,
# .devrun and dist. Results in $OUT (tests.log, queue.log).
#   bash bench/gpu-next.sh [reps=5]
set -uo pipefail
source bench/device-env.sh
: > "$OUT/tests.log"
for f in attention.gpu decode.gpu model.gpu gemm.gpu; do
  echo "== $f" | tee -a "$OUT/tests.log"
  timeout -s KILL 150 $N --test --test-reporter=spec "dist/tests/cuda/$f.test.js" 2>&1 \
    | grep -E "^\s*(✔|✖|ℹ (tests|pass|fail|skipped))|rror" | tail -40 | tee -a "$OUT/tests.log"
done
bash bench/gpu-queue.sh "${1:-5}"
