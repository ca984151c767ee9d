#!/usr/bin/env bash
# The single-GPU grid of issue 4 item 7 in one device run: our kernels at S in {8k, 32k}, with
# H=32 (D=128) and H=8 (D=64), causal and not, beside PyTorch SDPA (flash, cuDNN) at the same
# shapes. Carry .devkit, .devrun and dist.   bash bench/gpu-grid.sh [reps=10]
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
[ -e node_modules ] || ln -s .devrun/node_modules node_modules
export RINGATTN_CACHE=/tmp/ringattn-cache
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/grid.log"
for S in 8192 32768; do
  for H in 32 8; do
    bash .devkit/env.sh node dist/bench/gpu.js "$S" "$H" "${1:-10}" 2>&1 | tee -a "$OUT/grid.log"
  done
done
echo "== torch sdpa H=32 Hk=32 D=128" | tee -a "$OUT/grid.log"
SDPA_H=32 SDPA_HK=32 SDPA_D=128 python3 bench/peers/torch_sdpa.py 5 8192,32768 2>&1 | grep -v JSON | tee -a "$OUT/grid.log"
echo "== torch sdpa H=8 Hk=8 D=64" | tee -a "$OUT/grid.log"
SDPA_H=8 SDPA_HK=8 SDPA_D=64 python3 bench/peers/torch_sdpa.py 5 8192,32768 2>&1 | grep -v JSON | tee -a "$OUT/grid.log"
