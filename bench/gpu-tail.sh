#!/usr/bin/env bash
# The persistent forward's last wave (kernels/NOTES.md "The 8k forward's last wave"): one shape at
# head counts whose item counts fill the SMs' last round by different amounts, in alternating order
# over ROUNDS rounds, forward only, no peers. With I = (S/128) * H items over the GPU's SMs, the
# last round's idle share is 1 - (I/SMs) / ceil(I/SMs); if it is what the kernel loses, TFLOP/s
# tracks it. Lines "H=.. round=.. <gpu.js row>" in $OUT/tail.log.  Carry .devkit, .devrun, dist.
#   bash bench/gpu-tail.sh [S=8192] [heads="31 32 33 64 66"] [reps=20]
set -uo pipefail
source bench/device-env.sh
S=${1:-8192}; heads=(${2:-31 32 33 64 66}); reps=${3:-20}
: > "$OUT/tail.log"
for r in $(seq 1 "${ROUNDS:-3}"); do
  round_order "$r" "${heads[@]}"
  for h in "${order[@]}"; do
    out=$(timeout -s KILL 120 $N dist/bench/gpu.js "$S" "$h" "$reps" --d=128 --causal=0 --fwd-only 2>&1)
    [ "$r$h" = "1${order[0]}" ] && echo "$out" | grep -m1 '^device' | tee -a "$OUT/tail.log"
    row=$(echo "$out" | awk '$2 == 128 { print; exit }')
    [ -z "$row" ] && row="FAILED: $(echo "$out" | tail -3)"
    echo "H=$h round=$r $row" | tee -a "$OUT/tail.log"
  done
done
