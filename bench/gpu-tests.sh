#!/usr/bin/env bash
# The single-GPU test files, each under its own time limit, each file's whole output in
# $OUT/<file>.log (TAP, written directly as each test ends: a file killed at its limit keeps what
# it printed; the spec reporter held everything back until the end) and a
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
  echo "== $f (limit ${limit} s)" | tee -a "$OUT/tests.log"
  timeout -s KILL "$limit" $N --test --test-reporter=tap "dist/tests/cuda/$f.test.js" > "$OUT/$f.log" 2>&1
  echo "   exit $?" | tee -a "$OUT/tests.log"
  grep -E "^(not ok|ok|# (tests|pass|fail|skipped|duration))|rror" "$OUT/$f.log" | tail -40 | tee -a "$OUT/tests.log"
done
