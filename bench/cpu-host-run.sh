#!/usr/bin/env bash
# The CPU kernels on the GPU machine's host CPU (session 12 found its CPU decode 3-5x slower a
# thread than on AMD Zen: BENCHMARKS.md "Session 12"): one device call that runs the decode A/B of
# prefetch hints (the default is T1 on Intel since session 16; 0 is the non-temporal hint of before),
# prefetch switches, session 15's bf16 blocking and tiles, and the ISA at 1 thread, the
# same at all threads on a 128k cache, and the CPU forward/backward bench at 1 and all threads.
# Carry .devkit, .devrun and dist. Results in $OUT/cpu-host-{t1,tall,fwd}.log; ~5 minutes.
#   bash bench/cpu-host-run.sh
set -uo pipefail
source bench/device-env.sh
ALL=$(nproc)
V=("" "|-DPF_SEG_HINT=0|" "|-DPF_SEG_HINT=3|" "|-DPF_SEG_FP32=0|" "|-DPF_PAGES=0|"
  "|-DRA_BF16_EO=0 -DNK16=3 -DPV_NQ16=2|" "|-DTK=32|" "RINGATTN_CPU_ISA=avx2||")
bash bench/cpu-decode-ab.sh 1 512,4096,32768,131072 float32,bfloat16 "${V[@]}" >/dev/null 2>&1
mv "$OUT/cpu-decode-ab.log" "$OUT/cpu-host-t1.log"
bash bench/cpu-decode-ab.sh "$ALL" 131072 float32,bfloat16 "${V[@]}" >/dev/null 2>&1
mv "$OUT/cpu-decode-ab.log" "$OUT/cpu-host-tall.log"
timeout -s KILL 120 $N dist/bench/cpu.js --quick --no-peers --sizes=4096 --threads="1,$ALL" >"$OUT/cpu-host-fwd.log" 2>&1
cat "$OUT/cpu-host-t1.log" "$OUT/cpu-host-tall.log"
tail -20 "$OUT/cpu-host-fwd.log"
