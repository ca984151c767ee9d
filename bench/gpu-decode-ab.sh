#!/usr/bin/env bash
# One device run comparing builds of the GPU decode kernel (kernels/decode.cu) against PyTorch SDPA
# in the same run: torch's decode once, then ours for each RINGATTN_NVRTC_DEFINES variant given
# (an empty argument is the default build), ROUNDS rounds of all variants so drift hits all alike.
# A variant "VAR=x VAR2=y|DEFINES" also sets those environment variables (e.g.
# "RINGATTN_DECODE_MERGE=kernel|" is the default build with the separate merge launch).
# D=64 in the environment times head dim 64 (ours and torch's). Carry .devkit, .devrun and dist.
# Results in $OUT/decode-ab.log.
#   bash bench/gpu-decode-ab.sh [reps=30] [contexts=131072,1048576] [batches=1,8] VARIANT...
set -uo pipefail
source bench/device-env.sh
REPS=${1:-30}
CTX=${2:-131072,1048576}
BAT=${3:-1,8}
shift 3
log="$OUT/decode-ab.log"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$log"
HD=${D:-128}
timeout -s KILL 300 python3 bench/peers/torch_decode.py "$REPS" "$CTX" "$BAT" "$HD" >"$OUT/torch_decode.log" 2>&1
grep -v '^JSON' "$OUT/torch_decode.log" | tee -a "$log"
for round in $(seq 1 "${ROUNDS:-2}"); do
  for v in "$@"; do
    envs=""
    defs="$v"
    if [[ "$v" == *"|"* ]]; then envs="${v%%|*}"; defs="${v#*|}"; fi
    echo "== round $round env='$envs' defines='$defs'" | tee -a "$log"
    env $envs RINGATTN_NVRTC_DEFINES="$defs" timeout -s KILL 200 $N dist/bench/gpu-decode.js --reps="$REPS" --contexts="$CTX" --batches="$BAT" --d="$HD" --torch="$OUT/torch_decode.log" 2>&1 |
      grep -v '^JSON' | tee -a "$log"
  done
done
