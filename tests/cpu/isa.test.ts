import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { loadNative } from '../../src/cpu/build.js';

/**
 * The C kernels have a SIMD path per ISA (simd.h: avx512, avx2, neon, scalar) and a build runs
 * only this CPU's own. On x86-64, RINGATTN_CPU_ISA builds the lower ones this CPU can also
 * execute; this file runs the CPU kernel, decode and GEMM test files again under each of them
 * (fresh random inputs, the same float64 references and tolerances). NEON cannot run here.
 */
const native = loadNative();
const order = ['scalar', 'avx2', 'avx512'] as const;
const lower = 'error' in native || process.arch !== 'x64' ? [] : order.slice(0, order.indexOf(native.isa as (typeof order)[number]));
const files = ['kernel', 'kernel-cases', 'gemm'].map((f) => `dist/tests/cpu/${f}.test.js`);
/** The decode tests run on each path: every mask and grouping in fp32 and 16-bit caches, odd D and
 *  D 128, unsorted rows, the window of a long cache (the heaviest one, many query tokens against a
 *  long cache, stays with the native run). */
const DECODE = 'dist/tests/cpu/decode.test.js';
const DECODE_PATTERN = 'every mask, GQA groupings|D 128 and odd D|unsorted cache rows|only the window|custom scale';

if (lower.length === 0) {
  test('the lower SIMD paths (skipped)', { skip: 'error' in native ? `no C kernel: ${native.error}` : `no lower ISA to build on ${process.arch} ${native.isa}` }, () => {});
}
/** Runs a command to its end; resolves with its status and output. */
function run(args: string[], env: NodeJS.ProcessEnv): Promise<{ status: number | null; out: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (out += d));
    child.on('error', (e) => resolve({ status: null, out: `${out}\n${e.message}` }));
    child.on('close', (status) => resolve({ status, out }));
  });
}

const PROBE = 'import("./dist/src/cpu/build.js").then((m) => { const r = m.loadNative(); console.log("error" in r ? r.error : r.isa); })';

if (lower.length > 0) {
  // The ISAs run side by side (each is one test process of the files above): on the 2-core CI
  // machine this overlaps the rest of the suite instead of adding to it.
  test(`the CPU kernel, decode and GEMM tests pass on the ${lower.join(' and ')} paths`, async () => {
    const results = await Promise.all(
      lower.map(async (isa) => {
        const env: NodeJS.ProcessEnv = { ...process.env, RINGATTN_CPU_ISA: isa };
        delete env.NODE_TEST_CONTEXT; // a test runner of its own, not a child reporting to this one
        const probe = await run(['-e', PROBE], env);
        if (probe.out.trim() !== isa) return { isa, probe, tests: undefined, decodePassed: 0 };
        const a = await run(['--test', '--test-reporter=spec', ...files], env);
        const b = await run(['--test', '--test-reporter=spec', `--test-name-pattern=${DECODE_PATTERN}`, DECODE], env);
        return { isa, probe, tests: { status: a.status || b.status, out: a.out + b.out }, decodePassed: Number(/ℹ pass (\d+)/.exec(b.out)?.[1] ?? 0) };
      }),
    );
    for (const { isa, probe, tests, decodePassed } of results) {
      assert.equal(probe.out.trim(), isa, `RINGATTN_CPU_ISA=${isa} built: ${probe.out}`);
      const tail = tests!.out.split('\n').filter((l) => /✖|not ok|Error|ℹ (tests|pass|fail)/.test(l)).slice(0, 40).join('\n');
      assert.equal(tests!.status, 0, `RINGATTN_CPU_ISA=${isa}:\n${tail}`);
      assert.equal((tests!.out.match(/ℹ fail 0/g) ?? []).length, 2, isa);
      assert.doesNotMatch(tests!.out, /ℹ pass 0\b/, isa);
      assert.equal(decodePassed, 6, `${isa}: the six decode tests of the subset ran`);
    }
  });
}

test('RINGATTN_CPU_ISA rejects an unknown value by name', () => {
  const r = spawnSync(process.execPath, ['-e', PROBE], { env: { ...process.env, RINGATTN_CPU_ISA: 'sse9' }, encoding: 'utf8' });
  assert.match(r.stdout, /^RINGATTN_CPU_ISA: expected native, avx2 or scalar, got 'sse9'/);
});
