#!/usr/bin/env bash
# The single-GPU test files, each under its own time limit, each file's whole output in
# $OUT/<file>.log (TAP, written directly as each test ends: a file killed at its limit keeps what
# it printed; with the spec reporter, attention.gpu's log was empty when it was killed at 500 s in
# session 18) and a
# summary in $OUT/tests.log. Every kernel is compiled first, on all CPUs (precompile_kernels in
# device-env.sh): attention.gpu compiling its variants one at a time took ~410 s on a fresh machine
# (session 10). Carry .devkit, .devrun and dist.
#   bash bench/gpu-tests.sh [files=attention.gpu]      e.g. "decode.gpu model.gpu gemm.gpu"
set -uo pipefail
source bench/device-env.sh
files=${1:-attention.gpu}
: > "$OUT/tests.log"
precompile_kernels | tee -a "$OUT/tests.log"
for f in $files; do
  limit=${LIMIT:-150}
  [ "$f" = attention.gpu ] && limit=500
  # Within one 600 s device call: what the compile and earlier files left, less a margin.
  left=$(( ${BUDGET:-585} - SECONDS )); [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -lt 10 ]; then echo "== $f: skipped, ${left} s left of the call" | tee -a "$OUT/tests.log"; continue; fi
  echo "== $f (limit ${limit} s)" | tee -a "$OUT/tests.log"
  timeout -s KILL "$limit" $N --test --test-reporter=tap "dist/tests/cuda/$f.test.js" > "$OUT/$f.log" 2>&1
  echo "   exit $?" | tee -a "$OUT/tests.log"
  # Results, and each failure's message (TAP's "error:" line and the indented lines under it).
  tap_results "$OUT/$f.log" | tail -60 | tee -a "$OUT/tests.log"
done
