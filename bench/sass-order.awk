# Run-length encoded order of the events that matter in a Hopper attention kernel's SASS (read from
# cuobjdump -sass): W0 / W1 = WARPGROUP.DEPBAR.LE gsb0 0 / 1 (wgmma waits), g = HGMMA, e = MUFU.EX2,
# p = F2FP (packs), B / A = BAR.SYNC / BAR.ARV (named barriers), R = SYNCS.ARRIVE (a stage released).
# Used by bench/sass-order.sh (the GPU machine's kernel cache) and scripts/sass.sh --order (here).
/DEPBAR.LE gsb0, 0x0/ { t = "W0" }
/DEPBAR.LE gsb0, 0x1/ { t = "W1" }
/MUFU.EX2/ { t = "e" }
/SYNCS.ARRIVE/ { t = "R" }
/BAR.SYNC/ { t = "B" }
/BAR.ARV/ { t = "A" }
/HGMMA/ { t = "g" }
/F2FP/ { t = "p" }
t != "" { if (t == last) n++; else { if (last != "") printf "%s%s ", last, (n > 1 ? "x" n : ""); last = t; n = 1 } t = "" }
END { printf "%s%s\n", last, (n > 1 ? "x" n : "") }
