#!/usr/bin/env bash
# One device run: environment facts, the CUDA tests (tests/cuda), and the kernel timing
# (bench/gpu.ts). Carry .devkit, .devrun (koffi, linux_x64 only) and dist. Results go to $OUT.
#   bash bench/gpu-run.sh [S] [H] [reps]
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
[ -e node_modules ] || ln -s .devrun/node_modules node_modules
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  nvcc --version | tail -1
  ls /usr/local/cuda*/lib64/libnvrtc* 2>/dev/null | head -5
  python3 -c "import nvidia, os; print(nvidia.__path__)" 2>/dev/null
} 2>&1 | tee "$OUT/env.log"
export RINGATTN_CACHE=/tmp/ringattn-cache
probe='import("./dist/src/cuda/bindings/nvrtc.js").then(m=>{const r=m.loadNvrtc();console.log("nvrtc:", "error" in r ? r.error : r.path)})'
bash .devkit/env.sh node -e "$probe" 2>&1 | tee -a "$OUT/env.log"
echo "== nvcc-check"; bash scripts/nvcc-check.sh sm_90a 2>&1 | tail -3
echo "== tests"
timeout -s KILL 300 bash .devkit/env.sh node bin/ringattn.js compile >"$OUT/compile.log" 2>&1; tail -1 "$OUT/compile.log"  # every kernel at once first
bash .devkit/env.sh node --test --test-reporter=spec dist/tests/cuda/ 2>&1 | tee "$OUT/test.log" | grep -Ev "^\s*$" | tail -60
echo "== bench"
bash .devkit/env.sh node dist/bench/gpu.js "${1:-8192}" "${2:-16}" "${3:-10}" 2>&1 | tee "$OUT/bench.log"
