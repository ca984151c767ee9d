#!/usr/bin/env bash
# One device run on 2 GPUs: environment, every CUDA test (the 2-GPU ring ones included), the
# ring benchmark against one GPU (bench/gpu-ring.ts), PyTorch SDPA at the same shapes, the
# CUDA demo. Carry .devkit, .devrun (koffi, commander, cli-progress) and dist. Logs to $OUT.
#   bash bench/gpu-ring-run.sh [reps=3] [sizes=16384,32768,65536]
set -uo pipefail
source bench/device-env.sh  # $OUT, node_modules, RINGATTN_CACHE, RINGATTN_GPU_TIMEOUT, $N, precompile_kernels
{
  nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv,noheader
  nvidia-smi topo -m 2>/dev/null | head -4
  python3 -c "import torch; print('torch', torch.__version__, 'nccl', torch.cuda.nccl.version())" 2>&1
} 2>&1 | tee "$OUT/env.log"
if [ -z "${SKIP_SMOKE:-}" ]; then
echo "== ring smoke"
timeout 100 $N bin/ringattn.js launch --nproc 2 -- "$(command -v node || echo /tmp/devkit-node/bin/node)" dist/tests/cuda/ring-rank.js cases 1 2>&1 | tee "$OUT/smoke.log" | cut -c1-400 | tail -20
fi
echo "== tests"
precompile_kernels  # every kernel at once first
timeout 240 $N --test --test-reporter=spec ${TESTS:-dist/tests/cuda/} 2>&1 | tee "$OUT/test.log" | grep -E "^\s*(✔|✖|ℹ (tests|pass|fail|skipped))|not ok|Error|error" | head -80
[ -n "${SKIP_BENCH:-}" ] || {
echo "== ring bench"
timeout 150 $N dist/bench/gpu.js ring 2 "${1:-3}" "${2:-16384,32768,65536}" 2>&1 | tee "$OUT/ring.log" | grep -v JSON
echo "== torch sdpa"
timeout 100 bash .devkit/env.sh python3 bench/peers/torch_sdpa.py 5 "${2:-16384,32768,65536}" 2>&1 | tee "$OUT/torch.log" | grep -v JSON
}
echo "== demo"
timeout 120 $N bin/ringattn.js demo --backend cuda --backward --report "$OUT/demo.html" 2>&1 | tee "$OUT/demo.log" | tail -25
