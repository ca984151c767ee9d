# Sourced by the device run scripts (bench/gpu-*-run.sh, gpu-fwd-profile.sh) from the project
# root: $OUT (results), the node_modules link to the carried .devrun, the kernel cache and GPU-wait
# settings, and $N, node through the carried .devkit.
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
[ -e node_modules ] || ln -s .devrun/node_modules node_modules
export RINGATTN_CACHE=${RINGATTN_CACHE:-/tmp/ringattn-cache} RINGATTN_GPU_TIMEOUT=${RINGATTN_GPU_TIMEOUT:-90} PYTHONUNBUFFERED=1
N="bash .devkit/env.sh node"
# Unpack node now, once: two commands started together through .devkit/env.sh would both unpack it,
# and the second fails with "Text file busy" (session 16, run 45).
bash .devkit/env.sh true
# Every kernel compiled into the cache at once on all CPUs (`ringattn compile`), before test files
# that would otherwise compile dozens of kernels one at a time (~400 s for attention.gpu on a
# fresh machine). Output in $OUT/compile.log.
precompile_kernels() {
  timeout -s KILL 300 $N bin/ringattn.js compile --verbose "$@" >"$OUT/compile.log" 2>&1
  echo "ringattn compile: exit $? ($(tail -1 "$OUT/compile.log"))"
}
