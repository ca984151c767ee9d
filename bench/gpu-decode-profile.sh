#!/usr/bin/env bash
# One device run (one GPU) on the decode gap to cuDNN (issue 11): PyTorch SDPA decode and ours in
# the same run (bench/gpu-decode-run.sh, tests left out), ours again at other grid sizes
# (--waves), then Nsight Compute of our decode kernel and of cuDNN's at 1M x 1 and 1M x 8.
# Carry .devkit, .devrun and dist. Results in $OUT.
#   bash bench/gpu-decode-profile.sh [contexts=131072,1048576] [batches=1,8]
set -uo pipefail
source bench/device-env.sh
CTX=${1:-131072,1048576}
BAT=${2:-1,8}
SKIP_TESTS=1 bash bench/gpu-decode-run.sh 30 "$CTX" "$BAT" 2>&1 | grep -v "^JSON"
for w in ${WAVES:-1 2 4}; do
  echo "== ours, --waves=$w"
  timeout -s KILL 120 $N dist/bench/gpu-decode.js --reps=30 --contexts="$CTX" --batches="$BAT" --waves=$w --torch="$OUT/torch_decode.log" 2>&1 | grep -E "^ *[0-9]+[kM] " | tee -a "$OUT/waves.log"
done
[ -n "$NCU" ] || { echo "no ncu"; exit 0; }
mkdir -p /tmp/prof
for B in 1 8; do
  timeout -s KILL 120 "$NCU" --clock-control none --target-processes all -k regex:decode_mma --launch-count 1 --set full --import-source no -f -o /tmp/prof/ours$B \
    $N dist/bench/gpu-decode.js --reps=1 --contexts=1048576 --batches=$B >/tmp/prof/ours$B.log 2>&1
  echo "ncu ours 1M x $B: exit $?"
  "$NCU" -i /tmp/prof/ours$B.ncu-rep --page details >"$OUT/ncu-ours-$B.txt" 2>&1
  timeout -s KILL 120 env DECODE_PROFILE=cudnn "$NCU" --clock-control none --target-processes all --profile-from-start off --set full -f -o /tmp/prof/cudnn$B \
    python3 bench/peers/torch_decode.py 1 1048576 $B >/tmp/prof/cudnn$B.log 2>&1
  echo "ncu cudnn 1M x $B: exit $?"
  "$NCU" -i /tmp/prof/cudnn$B.ncu-rep --page details >"$OUT/ncu-cudnn-$B.txt" 2>&1
done
grep -E "^  [a-zA-Z_].*\(|Duration|DRAM Throughput|Memory Throughput|L2 Hit Rate|Registers Per|Grid Size|Block Size|Achieved Occupancy|Dynamic Shared" "$OUT"/ncu-*.txt | cut -c1-160
