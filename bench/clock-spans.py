"""Clock and power over each timed pass of a masks bench run (bench/gpu-masks-clocks.sh).

Reads an nvidia-smi sample file (--query-gpu=timestamp,clocks.sm,power.draw[,power.draw.instant]
--format=csv,noheader, local time stamps) and the bench's output (its JSON lines carry each
case's fwdAt / bwdAt: the epoch-ms span over which that pass ran back to back, settling included),
and prints for each pass its median SM clock and power over the span less its first SKIP ms (the
clock takes about a second to settle under the power cap), with the pass's ms, the GPU cycles a
call took at that clock, and the energy a call took at that power (mJ = W x ms).
Usage: python3 bench/clock-spans.py SAMPLES.csv BENCH.log [LABEL] [SKIP=1000]
"""
import json
import statistics
import sys
from datetime import datetime

samples_file, bench_file = sys.argv[1], sys.argv[2]
label = sys.argv[3] if len(sys.argv) > 3 else ""
skip = float(sys.argv[4]) if len(sys.argv) > 4 else 1000.0


def num(x):
    try:
        return float(x.strip().split()[0])
    except (ValueError, IndexError):
        return None


samples = []
for line in open(samples_file):
    f = [x.strip() for x in line.split(",")]
    if len(f) < 3:
        continue
    try:
        t = datetime.strptime(f[0], "%Y/%m/%d %H:%M:%S.%f").timestamp() * 1000  # naive: local time, as nvidia-smi writes it
    except ValueError:
        continue
    power = num(f[3]) if len(f) > 3 and num(f[3]) is not None else num(f[2])  # the instant power where the driver gives it
    samples.append((t, num(f[1]), power))

rows = [json.loads(l[5:]) for l in open(bench_file) if l.startswith("JSON ") and '"fwdAt"' in l]
print(f"{label:10} {'case':18} pass  ms      samples  SM MHz  W      Mcycles  mJ/call")
for r in rows:
    for p in ("fwd", "bwd"):
        a, b = r[p + "At"]
        inside = [s for s in samples if a + skip <= s[0] <= b and s[1] is not None and s[2] is not None]
        ms = r[p + "Ms"]
        if not inside:
            print(f"{label:10} {r['case']:18} {p}  {ms:7.3f}  0 samples in the span")
            continue
        mhz = statistics.median(s[1] for s in inside)
        w = statistics.median(s[2] for s in inside)
        print(f"{label:10} {r['case']:18} {p}  {ms:7.3f}  {len(inside):7d}  {mhz:6.0f}  {w:5.0f}  {ms * mhz / 1000:7.3f}  {w * ms:7.1f}")
