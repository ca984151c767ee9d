#!/usr/bin/env bash
# One device run on 2 GPUs: environment, every CUDA test (the 2-GPU ring ones included), the
# ring benchmark against one GPU (bench/gpu-ring.ts), PyTorch SDPA at the same shapes, the
# CUDA demo. Carry .devkit, .devrun (koffi, commander, cli-progress) and dist. Logs to $OUT.
#   bash bench/gpu-ring-run.sh [reps=3] [sizes=16384,32768,65536]
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
[ -e node_modules ] || ln -s .devrun/node_modules node_modules
export RINGATTN_CACHE=/tmp/ringattn-cache PYTHONUNBUFFERED=1 RINGATTN_GPU_TIMEOUT=${RINGATTN_GPU_TIMEOUT:-90}
{
  nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv,noheader
  nvidia-smi topo -m 2>/dev/null | head -4
  python3 -c "import torch; print('torch', torch.__version__, 'nccl', torch.cuda.nccl.version())" 2>&1
} 2>&1 | tee "$OUT/env.log"
N="bash .devkit/env.sh node"
if [ -z "${SKIP_SMOKE:-}" ]; then
echo "== ring smoke"
timeout 100 $N bin/ringattn.js launch --nproc 2 -- "$(command -v node || echo /tmp/devkit-node/bin/node)" dist/tests/cuda/ring-rank.js cases 1 2>&1 | tee "$OUT/smoke.log" | cut -c1-400 | tail -20
fi
echo "== tests"
timeout -s KILL 300 $N bin/ringattn.js compile >"$OUT/compile.log" 2>&1; tail -1 "$OUT/compile.log"  # every kernel at once first
timeout 240 $N --test --test-reporter=spec ${TESTS:-dist/tests/cuda/} 2>&1 | tee "$OUT/test.log" | grep -E "^\s*(✔|✖|ℹ (tests|pass|fail|skipped))|not ok|Error|error" | head -80
[ -n "${SKIP_BENCH:-}" ] || {
echo "== ring bench"
timeout 150 $N dist/bench/gpu.js ring 2 "${1:-3}" "${2:-16384,32768,65536}" 2>&1 | tee "$OUT/ring.log" | grep -v JSON
echo "== torch sdpa"
timeout 100 bash .devkit/env.sh python3 bench/peers/torch_sdpa.py 5 "${2:-16384,32768,65536}" 2>&1 | tee "$OUT/torch.log" | grep -v JSON
}
echo "== demo"
timeout 120 $N bin/ringattn.js demo --backend cuda --backward --report "$OUT/demo.html" 2>&1 | tee "$OUT/demo.log" | tail -25
