#!/usr/bin/env bash
# The order of one kernel's wgmma waits, products, exponentials, packs, named barriers and stage
# arrivals in its SASS, for every build of it in the kernel cache, run-length encoded:
# the letters are bench/sass-order.awk's. Where ptxas placed the P·V wait (W0) against the
# softmax's exponentials is what kernels/NOTES.md run 62 found by it. Needs the toolkit's
# cuobjdump (the GPU machine's; prints a line and exits 0 without it). Each SASS is also kept,
# gzipped, in $OUT.
#   bash bench/sass-order.sh KERNEL SOURCE      e.g. attn_fwd_ht_bf16_d128 attn_fwd_h.cu
set -uo pipefail
kernel=$1 source=$2
OUT=${OUT:-/tmp/out}
cache=${RINGATTN_CACHE:-/tmp/ringattn-cache}/cuda
cuobj=$(command -v cuobjdump || ls /usr/local/cuda*/bin/cuobjdump 2>/dev/null | head -1)
if [ -z "$cuobj" ]; then echo "sass-order: no cuobjdump on this machine"; exit 0; fi
for f in "$cache/$source"-*.cubin; do
  "$cuobj" -sass -fun "$kernel" "$f" >/tmp/sass-order.txt 2>/dev/null || continue
  grep -q HGMMA /tmp/sass-order.txt || continue
  gzip -c /tmp/sass-order.txt >"$OUT/$(basename "$f" .cubin).$kernel.sass.gz"
  echo "== $kernel in $(basename "$f")"
  awk -f "$(dirname "$0")/sass-order.awk" /tmp/sass-order.txt | fold -w 160
done
