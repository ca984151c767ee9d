#!/usr/bin/env bash
# One device run for the GPU decode (issue 11): environment, the decode kernels' registers and
# spills (nvcc), the decode tests, PyTorch SDPA decode (flash, cuDNN), our decode benchmark with
# torch's times in the same table, and, with 2 GPUs or more, the 2-GPU decode (half the cache per
# rank + decodeCombineRanks). Carry .devkit, .devrun (koffi) and dist. Logs go to $OUT.
#   bash .devkit/env.sh bash bench/gpu-decode-run.sh [reps=30] [contexts=32768,131072,1048576] [batches=1,8]
# SKIP_TESTS=1, SKIP_TORCH=1, SKIP_BENCH=1 leave parts out.
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
[ -e node_modules ] || ln -s .devrun/node_modules node_modules
export RINGATTN_CACHE=${RINGATTN_CACHE:-/tmp/ringattn-cache} PYTHONUNBUFFERED=1 RINGATTN_GPU_TIMEOUT=${RINGATTN_GPU_TIMEOUT:-90}
N="node"
[ -f .devkit/env.sh ] && N="bash .devkit/env.sh node"
REPS=${1:-30}
CTX=${2:-32768,131072,1048576}
BAT=${3:-1,8}
GPUS=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || echo 0)
{
  nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch; print('torch', torch.__version__, 'cuDNN', torch.backends.cudnn.version())" 2>&1
  $N --version
} 2>&1 | tee "$OUT/env.log"
[ -d dist/src ] || { echo "no dist/: build with 'npx tsc -p . && node scripts/copy-assets.mjs' and carry dist" | tee -a "$OUT/env.log"; exit 1; }

echo "== nvcc: decode.cu registers / spills (sm_90a)"
if command -v nvcc >/dev/null 2>&1; then
  nvcc -arch=sm_90a -cubin -std=c++17 -Xptxas -v -o /tmp/decode.cubin src/cuda/kernels/decode.cu 2>&1 |
    awk '/Compiling entry function/ { match($0, /'"'"'[^'"'"']+'"'"'/); fn = substr($0, RSTART + 1, RLENGTH - 2) }
         /bytes stack frame/ { st = $1; ss = $5; sl = $9 }
         /Used [0-9]+ registers/ { match($0, /Used [0-9]+ registers/); r = substr($0, RSTART + 5, RLENGTH - 15);
           printf "   %-28s regs %4s  stack %3s  spill st/ld %s/%s\n", fn, r, st, ss, sl }' | tee "$OUT/nvcc.log"
else
  echo "   nvcc not found (skipped)"
fi

if [ -z "${SKIP_TESTS:-}" ]; then
  echo "== decode tests"
  timeout 400 $N --test --test-reporter=spec dist/tests/cuda/decode.gpu.test.js 2>&1 | tee "$OUT/test.log" |
    grep -E "^\s*(✔|✖|ℹ (tests|pass|fail|skipped))|not ok|Error|error|relative" | head -60
fi

if [ -z "${SKIP_TORCH:-}" ]; then
  echo "== PyTorch SDPA decode"
  timeout 400 python3 bench/peers/torch_decode.py "$REPS" "$CTX" "$BAT" 2>&1 | tee "$OUT/torch_decode.log" | grep -v '^JSON'
fi

if [ -z "${SKIP_BENCH:-}" ]; then
  echo "== ringattn GPU decode"
  timeout 400 $N dist/bench/gpu-decode.js --reps="$REPS" --contexts="$CTX" --batches="$BAT" --torch="$OUT/torch_decode.log" 2>&1 | tee "$OUT/decode.log" | grep -v '^JSON'
  if [ "$GPUS" -ge 2 ]; then
    echo "== ringattn GPU decode on 2 GPUs"
    timeout 400 $N dist/bench/gpu-decode.js --devices=2 --reps="$REPS" --contexts="$CTX" --batches="$BAT" 2>&1 | tee "$OUT/decode2.log" | grep -v 'JSON'
  else
    echo "== 2-GPU decode skipped: $GPUS GPU(s) visible"
  fi
fi
