#!/usr/bin/env bash
# Device runs on nvidia-h200-x2 (2 GPUs), in two calls of under 10 minutes each. Carry .devkit,
# .devrun and dist. Results (logs) in $OUT.
#   bash bench/gpu-pair-run.sh 1   the ring on 2 GPUs against 1 (bench/gpu.js ring, issue 5), the
#                                  2-GPU decode (issue 11), then, side by side, PyTorch SDPA at the
#                                  ring's shapes on GPU 0 and the Hopper backward tests on GPU 1
#   bash bench/gpu-pair-run.sh 2   side by side: the backward timings (bench/gpu-bwd-run.sh, tests
#                                  left out) on GPU 0, the whole attention GPU suite on GPU 1; then
#                                  the 2-GPU test files (ring, decode, model) on both
set -uo pipefail
source bench/device-env.sh
nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv,noheader | tee "$OUT/env.log"
precompile_kernels | tee -a "$OUT/env.log"  # every kernel at once, before the tests compile them one at a time
spec() { # spec LOG LIMIT FILES... : node's test runner, spec reporter, killed at LIMIT seconds
  local log=$1 lim=$2; shift 2
  timeout -s KILL "$lim" $N --test --test-concurrency=1 --test-reporter=spec "$@" >"$log" 2>&1
  echo "exit $?" >>"$log"
}
case "${1:-1}" in
1)
  echo "== ring, 2 GPUs against 1"
  timeout -s KILL 240 $N dist/bench/gpu.js ring 2 3 "${RING_SIZES:-32768,65536,131072}" 2>&1 | tee "$OUT/ring.log" | grep -v JSON
  echo "== decode, 2 GPUs against 1"
  timeout -s KILL 150 $N dist/bench/gpu-decode.js --devices=2 --reps=30 --contexts=131072,1048576 --batches=1,8 2>&1 | tee "$OUT/decode2.log" | grep -v JSON
  echo "== PyTorch SDPA (GPU 0) beside the backward tests (GPU 1)"
  CUDA_VISIBLE_DEVICES=1 spec "$OUT/bwdtests.log" 240 --test-name-pattern="RINGATTN_WGMMA_BWD=" dist/tests/cuda/attention.gpu.test.js &
  CUDA_VISIBLE_DEVICES=0 timeout -s KILL 150 python3 bench/peers/torch_sdpa.py 3 "${RING_SIZES:-32768,65536,131072}" 2>&1 | tee "$OUT/torch.log" | grep -v JSON
  wait
  grep -E "^(✔|✖)|^ℹ (pass|fail)|^exit" "$OUT/bwdtests.log"
  ;;
2)
  echo "== backward timings (GPU 0) beside the attention suite (GPU 1)"
  CUDA_VISIBLE_DEVICES=1 spec "$OUT/attention.log" 330 dist/tests/cuda/attention.gpu.test.js &
  CUDA_VISIBLE_DEVICES=0 SKIP_TESTS=1 bash bench/gpu-bwd-run.sh 3 >/dev/null 2>&1
  cat "$OUT/bwd.log"
  wait
  grep -E "^(✔|✖)|^ℹ (tests|pass|fail|skipped)|^exit" "$OUT/attention.log"
  echo "== 2-GPU test files"
  spec "$OUT/pair.log" 200 dist/tests/cuda/ring.gpu.test.js dist/tests/cuda/decode.gpu.test.js dist/tests/cuda/model.gpu.test.js
  grep -E "^(✔|✖)|^ℹ (tests|pass|fail|skipped)|^exit" "$OUT/pair.log"
  ;;
esac
