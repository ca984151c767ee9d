import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import { loadNative } from '../../src/cpu/build.js';
import { neonDriver, sanitizedDriver } from './emul/driver-build.js';

/**
 * The C kernels have a SIMD path per ISA (simd.h: avx512, avx2, neon, scalar) and a build runs
 * only this CPU's own. This file runs the CPU kernel, decode and GEMM test files again on the
 * others (fresh random inputs, the same float64 references and tolerances):
 * - on x86-64, RINGATTN_CPU_ISA builds the lower ones this CPU also executes;
 * - AArch64 NEON runs emulated: the kernels cross-compiled for ARMv8-A with a small call driver
 *   (emul/driver.c) that qemu-user runs, and the test files' kernel modules bound to it instead
 *   of the native library (emul/register.js swaps src/cpu/build.js for emul/build.js). Needs an
 *   AArch64 cross compiler and qemu-user (.ci/run installs them); skipped, saying so, without;
 * - this CPU's own path once more, built with AddressSanitizer and UBSan into the same driver
 *   (run directly): every array in a heap block of exactly its size, so a kernel that touches
 *   one element past an argument, or leaks, is reported (the reports go to files, checked here).
 */
const native = loadNative();
const order = ['scalar', 'avx2', 'avx512'] as const;
const lower = 'error' in native || process.arch !== 'x64' ? [] : order.slice(0, order.indexOf(native.isa as (typeof order)[number]));
const files = ['kernel', 'kernel-cases', 'gemm'].map((f) => `dist/tests/cpu/${f}.test.js`);
/** The decode tests run on each path: every mask and grouping in fp32 and 16-bit caches, odd D and
 *  D 128, unsorted rows, the window of a long cache, a NaN in a cache (the heaviest one, many query
 *  tokens against a long cache, stays with the native run). */
const DECODE = 'dist/tests/cpu/decode.test.js';
const DECODE_PATTERN = 'every mask, GQA groupings|D 128 and odd D|unsorted cache rows|only the window|custom scale|a NaN in the key cache';
/** A path that hangs (an emulator that never answers) fails the test instead of stalling the suite. */
const CHILD_TIMEOUT_MS = 300_000;

interface Path {
  /** the ISA the path's build reports */
  isa: string;
  /** the call driver the path's stand-in library must forward to (emulated and sanitized paths) */
  driver?: string;
  label: string;
  env: NodeJS.ProcessEnv;
  /** node options before the test files */
  node: string[];
}

const paths: Path[] = lower.map((isa) => ({ isa, label: `RINGATTN_CPU_ISA=${isa}`, env: { RINGATTN_CPU_ISA: isa }, node: [] }));
// the two test builds compile side by side
const [neon, sanitized] = 'error' in native
  ? [{ unavailable: `no C kernel: ${native.error}` }, { unavailable: `no C kernel: ${native.error}` }]
  : await Promise.all([neonDriver(), sanitizedDriver(process.arch === 'arm64' ? ['-mcpu=native'] : ['-march=native'])]);
if ('command' in neon) {
  paths.push({
    isa: 'neon',
    driver: neon.command[neon.command.length - 1],
    label: `neon (${neon.command.join(' ')})`,
    env: { RINGATTN_EMUL_COMMAND: JSON.stringify(neon.command), RINGATTN_EMUL_ISA: 'neon' },
    node: ['--import', './dist/tests/cpu/emul/register.js'],
  });
}

const sanLogs = mkdtempSync(join(os.tmpdir(), 'ringattn-san-'));
process.on('exit', () => rmSync(sanLogs, { recursive: true, force: true }));
if ('command' in sanitized && !('error' in native)) {
  paths.push({
    isa: native.isa,
    driver: sanitized.command[sanitized.command.length - 1],
    label: `${native.isa} with ASan and UBSan (${sanitized.command[0]})`,
    env: {
      RINGATTN_EMUL_COMMAND: JSON.stringify(sanitized.command),
      RINGATTN_EMUL_ISA: native.isa,
      ASAN_OPTIONS: `log_path=${join(sanLogs, 'asan')}:detect_leaks=1`,
      UBSAN_OPTIONS: `log_path=${join(sanLogs, 'ubsan')}:print_stacktrace=1`,
    },
    node: ['--import', './dist/tests/cpu/emul/register.js'],
  });
}

if (lower.length === 0) {
  test('the lower x86-64 SIMD paths (skipped)', { skip: 'error' in native ? `no C kernel: ${native.error}` : `no lower ISA to build on ${process.arch} ${native.isa}` }, () => {});
}
if ('unavailable' in sanitized) test('the kernels under AddressSanitizer and UBSan (skipped)', { skip: sanitized.unavailable }, () => {});
if ('unavailable' in neon) test('the AArch64 NEON path, emulated (skipped)', { skip: neon.unavailable }, () => {});

/** Runs a command to its end (killed after CHILD_TIMEOUT_MS); resolves with its status and output. */
function run(args: string[], env: NodeJS.ProcessEnv): Promise<{ status: number | null; out: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, args, { env, stdio: ['ignore', 'pipe', 'pipe'], timeout: CHILD_TIMEOUT_MS, killSignal: 'SIGKILL' });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (out += d));
    child.on('error', (e) => resolve({ status: null, out: `${out}\n${e.message}` }));
    child.on('close', (status, signal) => resolve({ status, out: signal ? `${out}\nkilled by ${signal} (timeout ${CHILD_TIMEOUT_MS} ms?)` : out }));
  });
}

/** Prints the ISA of the library the kernel modules get, and where it is (the driver, for the stand-in). */
const PROBE = 'import("./dist/src/cpu/build.js").then((m) => { const r = m.loadNative(); console.log("error" in r ? r.error : `${r.isa} ${r.path}`); })';

if (paths.length > 0) {
  // The paths run side by side (each is one test process of the files above): on the 2-core CI
  // machine this overlaps the rest of the suite instead of adding to it.
  test(`the CPU kernel, decode and GEMM tests pass on the ${paths.map((p) => p.isa).join(', ')} paths`, async () => {
    if ('command' in neon) {
      const r = spawnSync(neon.command[0], [...neon.command.slice(1), '--isa'], { encoding: 'utf8' });
      assert.equal(r.stdout.trim(), 'neon', `${neon.command.join(' ')} --isa: ${r.stdout}${r.stderr}`);
    }
    const results = await Promise.all(
      paths.map(async (p) => {
        const env: NodeJS.ProcessEnv = { ...process.env, ...p.env };
        delete env.NODE_TEST_CONTEXT; // a test runner of its own, not a child reporting to this one
        const probe = await run([...p.node, '-e', PROBE], env);
        const [isa, where] = probe.out.trim().split(' ');
        if (isa !== p.isa || (p.driver && where !== p.driver)) return { p, probe, tests: undefined, decodePassed: 0 };
        const a = await run([...p.node, '--test', '--test-reporter=spec', ...files], env);
        const b = await run([...p.node, '--test', '--test-reporter=spec', `--test-name-pattern=${DECODE_PATTERN}`, DECODE], env);
        return { p, probe, tests: { status: a.status || b.status, out: a.out + b.out }, decodePassed: Number(/ℹ pass (\d+)/.exec(b.out)?.[1] ?? 0) };
      }),
    );
    // first: a sanitizer's report says more than the failures it caused
    const reports = readdirSync(sanLogs).map((f) => readFileSync(join(sanLogs, f), 'utf8'));
    assert.equal(reports.length, 0, `sanitizer reports:\n${reports.join('\n').slice(0, 4000)}`);
    for (const { p, probe, tests, decodePassed } of results) {
      const [isa, where] = probe.out.trim().split(' ');
      assert.equal(isa, p.isa, `${p.label} built: ${probe.out}`);
      // the kernel modules were given the stand-in (the module hook took), bound to this driver
      if (p.driver) assert.equal(where, p.driver, `${p.label}: the kernels come from ${where}`);
      const tail = tests!.out.split('\n').filter((l) => /✖|not ok|Error|ℹ (tests|pass|fail)/.test(l)).slice(0, 40).join('\n');
      assert.equal(tests!.status, 0, `${p.label}:\n${tail}`);
      assert.equal((tests!.out.match(/ℹ fail 0/g) ?? []).length, 2, p.label);
      assert.doesNotMatch(tests!.out, /ℹ pass 0\b/, p.label);
      assert.equal(decodePassed, 7, `${p.label}: the seven decode tests of the subset ran`);
    }

  });
}

test('RINGATTN_CPU_ISA rejects an unknown value by name', () => {
  const r = spawnSync(process.execPath, ['-e', PROBE], { env: { ...process.env, RINGATTN_CPU_ISA: 'sse9' }, encoding: 'utf8' });
  assert.match(r.stdout, /^RINGATTN_CPU_ISA: expected native, avx2 or scalar, got 'sse9'/);
});

test('CC names the compiler: one that does not run is an error naming it, not a silent fallback to cc', () => {
  const env = { ...process.env, CC: '/nonexistent/cc-ringattn', RINGATTN_CACHE: mkdtempSync(join(os.tmpdir(), 'ringattn-cc-')) };
  try {
    const r = spawnSync(process.execPath, ['-e', PROBE], { env, encoding: 'utf8' });
    assert.match(r.stdout, /^CC='\/nonexistent\/cc-ringattn' does not run .*unset it to use cc, gcc or clang/);
  } finally {
    rmSync(env.RINGATTN_CACHE, { recursive: true, force: true });
  }
});

test('RINGATTN_CPU_DEFINES: -D options build a library of their own (in its cache key); anything else is refused by name', () => {
  const load = (defs: string | undefined) => {
    const env = { ...process.env };
    if (defs === undefined) delete env.RINGATTN_CPU_DEFINES;
    else env.RINGATTN_CPU_DEFINES = defs;
    return spawnSync(process.execPath, ['-e', PROBE], { env, encoding: 'utf8' }).stdout.trim();
  };
  const plain = load(undefined), hinted = load('-DPF_SEG_HINT=3  -DNK32=3');
  assert.match(plain, /^\w+ \S+/, plain);
  assert.match(hinted, /^\w+ \S+/, hinted);
  assert.equal(hinted.split(' ')[0], plain.split(' ')[0], 'same ISA');
  assert.notEqual(hinted.split(' ')[1], plain.split(' ')[1], 'another library file');
  assert.match(load('-DPF_SEG_HINT=3 oops'), /^RINGATTN_CPU_DEFINES: expected space-separated -DNAME or -DNAME=value, got 'oops'/);
});
