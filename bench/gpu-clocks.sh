#!/usr/bin/env bash
# Clocks, power and throttle reasons while our kernel runs and while the peer's does (H=32, D=128,
# bf16): is a gap between them in the kernels or in the clocks they get? Samples every 100 ms
# into $OUT/clocks-*.csv; a summary per run in $OUT/clocks.log. PASS=fwd (default: ours against
# cuDNN's forward) or bwd (ours against flash's backward, each pass timed alone: gpu.js
# --bwd-only, torch_sdpa_loop.py's pass=bwd); S (32768), CAUSAL (0 or 1, default 0). Carry
# .devkit, .devrun, dist.
#   [PASS=fwd|bwd S=32768 CAUSAL=0] bash bench/gpu-clocks.sh [reps=40]
set -uo pipefail
source bench/device-env.sh
reps=${1:-40}
pass=${PASS:-fwd} S=${S:-32768} causal=${CAUSAL:-0}
case "$pass" in fwd) peer=cudnn ;; bwd) peer=flash ;; *) echo "PASS: expected fwd or bwd, got '$pass'" >&2; exit 2 ;; esac
case "$causal" in 0 | 1) ;; *) echo "CAUSAL: expected 0 or 1, got '$causal'" >&2; exit 2 ;; esac
log="$OUT/clocks.log"
: > "$log"
sample() { nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu,clocks_throttle_reasons.active --format=csv,noheader -lms 100 > "$1" & echo $!; }
summ() {
  # median SM clock and power over the busy samples (power above 300 W), and the throttle reasons seen
  python3 - "$1" <<'PY'
import sys, statistics, collections
rows = [[x.strip() for x in l.split(",")] for l in open(sys.argv[1]) if l.count(",") >= 5]
busy = [(float(r[1].split()[0]), float(r[3].split()[0]), r[5]) for r in rows if r[3].split()[0].replace(".", "").isdigit() and float(r[3].split()[0]) > 300]
if not busy:
    print("   no busy samples"); sys.exit()
c = [b[0] for b in busy]; p = [b[1] for b in busy]
why = collections.Counter(b[2] for b in busy)
print(f"   busy samples {len(busy)}: SM clock median {statistics.median(c):.0f} MHz (min {min(c):.0f}), power median {statistics.median(p):.0f} W (max {max(p):.0f}); throttle reasons: " + ", ".join(f"{k} x{v}" for k, v in why.items()))
PY
}
gpu_header "$log" -a
for round in 1 2; do
  echo "== ours, round $round" | tee -a "$log"
  pid=$(sample "$OUT/clocks-ours-$round.csv")
  timeout -s KILL 200 $N dist/bench/gpu.js "$S" 32 "$reps" --d=128 "--$pass-only" --causal="$causal" 2>&1 | grep -E "^cuda|rror" | tee -a "$log"
  kill "$pid"; sleep 0.3; summ "$OUT/clocks-ours-$round.csv" | tee -a "$log"
  echo "== $peer $pass (torch), round $round" | tee -a "$log"
  pid=$(sample "$OUT/clocks-torch-$round.csv")
  timeout -s KILL 60 python3 bench/peers/torch_sdpa_loop.py "$S" "$causal" 8 "$peer" "$pass" 2>&1 | tail -2 | tee -a "$log"
  kill "$pid"; sleep 0.3; summ "$OUT/clocks-torch-$round.csv" | tee -a "$log"
done
