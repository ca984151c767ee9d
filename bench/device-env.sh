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
# Several builds of the attention kernels compiled at once (A/B scripts): one `ringattn compile`
# a build (JOBS processes each, 2 by default), each DEFINES string its RINGATTN_NVRTC_DEFINES, into
# the one kernel cache (its keys hash the options); their logs appended to $OUT/compile.log, then a
# line "builds compiled: N" (the builds whose compile finished) on stdout.
#   compile_builds DEFINES...
compile_builds() {
  local d
  for d in "$@"; do
    RINGATTN_NVRTC_DEFINES="$d" timeout -s KILL 240 $N bin/ringattn.js compile --jobs "${JOBS:-2}" \
      --kernels attn_fwd_h.cu,attn_fwd.cu,attn_bwd_h.cu,attn_bwd.cu >>"$OUT/compile.log" 2>&1 &
  done
  wait
  echo "builds compiled: $(grep -c "compiles done" "$OUT/compile.log") of $#"
}
# One build of the attention kernels for an A/B script: every attention file compiled with the
# -D options DEFINES into the kernel cache CACHE, then (unless SKIP_TESTS=1) the attention GPU
# tests whose names match PATTERN, under TESTS_LIMIT seconds (200), their TAP in TESTLOG and their
# results, after a line "LABEL exit N", appended to $log (the calling script's).
#   build_and_test CACHE DEFINES PATTERN TESTLOG LABEL
# Every build's tests share one seed (AB_SEED, printed) and the float64 references on disk
# (tests/helpers/ref-cache.ts): the builds are checked on the same fresh inputs, and the ~20 s of
# JavaScript reference a run is paid by the first build alone.
AB_SEED=${RINGATTN_SEED:-$(( (RANDOM << 15) | RANDOM ))}
build_and_test() {
  : "${AB_REFS:=$(mktemp -d /tmp/ringattn-refs.XXXXXX)}"
  RINGATTN_CACHE=$1 RINGATTN_NVRTC_DEFINES="$2" precompile_kernels --kernels attn_fwd.cu,attn_fwd_h.cu,attn_bwd.cu,attn_bwd_h.cu | tee -a "$log"
  [ -n "${SKIP_TESTS:-}" ] && return 0
  echo "tests with RINGATTN_SEED=$AB_SEED" | tee -a "$log"
  RINGATTN_SEED=$AB_SEED RINGATTN_REF_CACHE=$AB_REFS RINGATTN_CACHE=$1 RINGATTN_NVRTC_DEFINES="$2" timeout -s KILL "${TESTS_LIMIT:-200}" $N --test --test-reporter=tap \
    --test-name-pattern="$3" dist/tests/cuda/attention.gpu.test.js >"$4" 2>&1
  echo "$5 exit $?" | tee -a "$log"
  tap_results "$4" | tee -a "$log"
}
# The attention GPU tests whose names match PATTERN on the build DEFINES (RINGATTN_NVRTC_DEFINES),
# seeded with AB_SEED, under TESTS_LIMIT seconds (240): their TAP in $OUT/tests.tap, a line "tests
# exit N" and their results appended to $log (the calling script's).
#   attention_tests PATTERN DEFINES LABEL
attention_tests() {
  echo "tests [$3: '$2'] with RINGATTN_SEED=$AB_SEED" | tee -a "$log"
  RINGATTN_SEED=$AB_SEED RINGATTN_NVRTC_DEFINES="$2" timeout -s KILL "${TESTS_LIMIT:-240}" $N --test --test-reporter=tap \
    --test-name-pattern="$1" dist/tests/cuda/attention.gpu.test.js >"$OUT/tests.tap" 2>&1
  echo "tests exit $?" | tee -a "$log"
  tap_results "$OUT/tests.tap" | tee -a "$log"
}
# Nsight Compute, where the machine has it (empty otherwise).
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda*/bin/ncu 2>/dev/null | head -1)
# A node --test TAP log's results: each test's ok / not ok line (not those a name pattern
# skipped), the counts, and each failure's message (TAP's "error:" and the lines under it).
tap_results() {
  awk '/# SKIP test name/ { next } /^(not ok|ok|# (tests|pass|fail|skipped|duration))/ { print; next }
       /^  error:/ { n = 6 } n > 0 { print; n-- }' "$1"
}
# An A/B round's variants in the order they run, in the array `order`: as given on odd rounds,
# reversed on even ones. With one fixed order the same variant always ran first in a round, on the
# coolest GPU, and drift over a round read as a difference between variants (kernels/NOTES.md
# run 92 could not tell the two apart).   round_order ROUND VARIANT...
round_order() {
  local r=$1 j
  shift
  order=("$@")
  if (( r % 2 == 0 )); then
    order=()
    for ((j = $#; j >= 1; j--)); do order+=("${!j}"); done
  fi
}
# FN ROUND LABEL DEFINES called for each build variant ("LABEL|DEFINES") of each of ROUNDS rounds
# (2), the variants in round_order.   ab_rounds FN VARIANT...
ab_rounds() {
  local fn=$1 round v label def
  shift
  for round in $(seq 1 "${ROUNDS:-2}"); do
    round_order "$round" "$@"
    for v in "${order[@]}"; do
      IFS='|' read -r label def <<<"$v"
      "$fn" "$round" "$label" "$def"
    done
  done
}
# The GPU a run measured (name, driver, top SM clock, power limit), the first line of a run's log:
# the clock's ceiling and the power cap decide what a pass sustains (kernels/NOTES.md run 115).
#   gpu_header LOG [append: -a]
gpu_header() {
  nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv,noheader | tee ${2:-} "$1"
}
