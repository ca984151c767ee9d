#!/usr/bin/env bash
# SASS of one kernel, on a machine without a GPU: compiles FILE.cu with nvcc for sm_90a (with any
# -D options given) and disassembles KERNEL with cuobjdump. Where the only cuobjdump is an older
# one (Debian bookworm's CUDA 11.8 tools: `--fetch` installs its cuobjdump and nvdisasm, nothing
# else), the cubin's ELF header is rewritten to the 11.x form first: OS/ABI 0x21, ABI version 7,
# flags 0x5a055a (sm_90). Only the header changes; the code and its sections are CUDA 13's. The
# 11.8 disassembler knows sm_90's instruction set (HGMMA, WARPGROUP.DEPBAR, SYNCS, UTMALDG).
#   scripts/sass.sh --fetch                                   tools into $SASS_TOOLS
#   scripts/sass.sh [--order] [-DNAME ...] FILE.cu KERNEL     SASS (or its event order) to stdout
# --order prints bench/sass-order.awk's run-length encoded order of waits, products, exponentials,
# packs, barriers and stage arrivals instead of the listing (kernels/NOTES.md, session 20).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
tools=${SASS_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/ringattn/cuda-tools}
deb=nvidia-cuda-toolkit_11.8.89~11.8.0-5~deb12u1_amd64.deb
url=http://deb.debian.org/debian/pool/non-free/n/nvidia-cuda-toolkit/$deb

if [ "${1:-}" = "--fetch" ]; then
  mkdir -p "$tools"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  echo "sass: downloading $url (84 MB)" >&2
  curl -fsSL -o "$tmp/$deb" "$url"
  dpkg-deb --fsys-tarfile "$tmp/$deb" | tar -x -C "$tools" ./usr/bin/cuobjdump ./usr/bin/nvdisasm
  echo "sass: installed $tools/usr/bin/cuobjdump and nvdisasm" >&2
  exit 0
fi

order=0
defines=()
while [ $# -gt 0 ]; do
  case $1 in
    --order) order=1; shift ;;
    -D*) defines+=("$1"); shift ;;
    *) break ;;
  esac
done
if [ $# -ne 2 ]; then
  echo "usage: scripts/sass.sh [--order] [-DNAME ...] FILE.cu KERNEL   (or --fetch)" >&2
  exit 2
fi
file=$1 kernel=$2
[ -f "$file" ] || file=$root/src/cuda/kernels/$1
[ -f "$file" ] || { echo "sass: no file $1 (here or in src/cuda/kernels)" >&2; exit 2; }

cuobj=${CUOBJDUMP:-}
[ -z "$cuobj" ] && cuobj=$(command -v cuobjdump || ls /usr/local/cuda*/bin/cuobjdump "$tools/usr/bin/cuobjdump" 2>/dev/null | head -1 || true)
if [ -z "$cuobj" ]; then
  echo "sass: no cuobjdump (set CUOBJDUMP, or run scripts/sass.sh --fetch)" >&2
  exit 2
fi
export PATH="$(dirname "$cuobj"):$PATH"  # cuobjdump runs the nvdisasm beside it

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
nvcc -arch=sm_90a -cubin -std=c++17 "${defines[@]}" -o "$tmp/k.cubin" "$file"
if ! "$cuobj" -sass -fun "$kernel" "$tmp/k.cubin" >"$tmp/k.sass" 2>"$tmp/err"; then
  # CUDA 12+ header read by an 11.x tool: rewrite bytes 7-8 (OS/ABI, ABI version) and e_flags (48).
  printf '\x21\x07' | dd of="$tmp/k.cubin" bs=1 seek=7 conv=notrunc status=none
  printf '\x5a\x05\x5a\x00' | dd of="$tmp/k.cubin" bs=1 seek=48 conv=notrunc status=none
  "$cuobj" -sass -fun "$kernel" "$tmp/k.cubin" >"$tmp/k.sass" 2>"$tmp/err" || { cat "$tmp/err" >&2; exit 1; }
fi
grep -q "Function : $kernel" "$tmp/k.sass" || { echo "sass: no kernel $kernel in $file" >&2; exit 1; }
if [ $order = 1 ]; then
  awk -f "$root/bench/sass-order.awk" "$tmp/k.sass" | fold -w 160
else
  cat "$tmp/k.sass"
fi
