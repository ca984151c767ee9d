#!/usr/bin/env python3
"""The A/B logs' summary (bench/gpu-env-ab.sh, bench/gpu-fwd-ab.sh): per shape, mask and
variant, the median over the rounds of each round's median TFLOP/s, and every round's. A log's
rounds start with "== round R S=.. H=.. [D=..] variant 'label'", then bench/gpu.js's rows (whose
second column, the head dim, is the one used).
   python3 bench/ab-summary.py LOG"""
import re, statistics as st, sys
rows, cur = {}, None
for line in open(sys.argv[1]):
    m = re.match(r"== round \d+ S=(\d+) H=(\d+) (?:D=\d+ )?variant '([^']*)'", line)
    if m:
        cur = m.groups()
        continue
    f = line.split()
    if cur and len(f) >= 5 and f[2] in ("false", "true"):
        # fwd (and bwd) TF/s; FWD_ONLY prints '-' for the backward's.
        rows.setdefault((int(cur[0]), int(cur[1]), int(f[1]), f[2], cur[2]), []).append([float(x) for x in f[4::2] if x != "-"])
print("S      H   D    causal  variant          fwd TF/s median [rounds]             bwd TF/s median [rounds]")
for (S, H, D, causal, label), v in sorted(rows.items()):
    cols = []
    for i in range(len(v[0])):
        xs = [r[i] for r in v if len(r) > i]
        cols.append(f"{st.median(xs):6.1f} [{' '.join(f'{x:.0f}' for x in xs)}]")
    print(f"{S:<6} {H:<3} {D:<4} {causal:7} {label:16} " + "   ".join(f"{c:36}" for c in cols))
