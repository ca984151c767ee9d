#!/usr/bin/env bash
# Builds of the CPU decode kernel (src/cpu/kernels/decode.c) compared in one run: the decode bench
# (dist/bench/decode.js, which probes the STREAM bandwidth before every case) for each variant,
# ROUNDS rounds of all variants so drift hits all alike. A variant is "VAR=x VAR2=y|DEFINES": the
# environment (e.g. RINGATTN_CPU_ISA=avx2) and the -D options (RINGATTN_CPU_DEFINES, e.g.
# "-DPF_SEG_HINT=3"), optionally "|ARGS" more bench arguments (e.g. --offset=0); an empty argument
# is the default build. Runs here or on the GPU machine (with
# .devkit, .devrun and dist carried). Results in $OUT/cpu-decode-ab.log.
#   bash bench/cpu-decode-ab.sh [threads=1] [ctx=512,32768,131072] [dtypes=float32] VARIANT...
set -uo pipefail
source bench/device-env.sh
[ -d .devkit ] || N=node
THR=${1:-1}
CTX=${2:-512,32768,131072}
DT=${3:-float32}
shift 3
log="$OUT/cpu-decode-ab.log"
{ lscpu | grep -E "Model name|^CPU\(s\)|L2|L3"; cat /sys/kernel/mm/transparent_hugepage/enabled 2>/dev/null; cc --version | head -1; } | tee "$log"
for round in $(seq 1 "${ROUNDS:-1}"); do
  for v in "$@"; do
    envs=""
    defs="$v"
    args=""
    if [[ "$v" == *"|"* ]]; then envs="${v%%|*}"; defs="${v#*|}"; fi
    if [[ "$defs" == *"|"* ]]; then args="${defs#*|}"; defs="${defs%%|*}"; fi
    echo "== round $round env='$envs' defines='$defs' args='$args'" | tee -a "$log"
    env $envs RINGATTN_CPU_DEFINES="$defs" timeout -s KILL 300 $N dist/bench/decode.js --quick --rounds=1 --threads="$THR" --ctx="$CTX" --dtypes="$DT" $args 2>&1 |
      grep -E '^\| [0-9]|rror|caches start' | tee -a "$log"
  done
done
