import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { compileModule, kernelEntries, moduleSource } from '../../src/cuda/compile.js';
import { kernelSource, kernelsDir } from '../../src/cuda/context.js';
import { compileJobs, jobLabel, kernelFiles, precompile } from '../../src/cuda/precompile.js';
import { loadNvrtc } from '../../src/cuda/bindings/nvrtc.js';
import { InputError } from '../../src/core/errors.js';
import { withEnv } from '../helpers/check.js';

// `ringattn compile` and precompile() on a stand-in NVRTC (tests/cuda/fake-nvrtc.c, built here with
// the C compiler), so that the job list, the workers, the cache they fill and the errors are
// checked on any machine; the real compiles run on a GPU machine (kernels/NOTES.md).

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
const work = mkdtempSync(join(tmpdir(), 'ra-precompile-'));
const fakeLib = join(work, 'libnvrtc-fake.so');
const built = spawnSync('cc', ['-O1', '-shared', '-fPIC', '-o', fakeLib, join(root, 'tests', 'cuda', 'fake-nvrtc.c')], { encoding: 'utf8' });
const skip = built.status === 0 ? false : `no C compiler to build the stand-in NVRTC: ${built.stderr || built.error?.message}`;
process.on('exit', () => rmSync(work, { recursive: true, force: true }));

let cacheN = 0;
/** A fresh cache directory, the stand-in NVRTC, and `extra` in the environment for `body`. */
const withFake = <R>(extra: Record<string, string | undefined>, body: (cache: string) => R): R => {
  const cache = join(work, `cache${cacheN++}`);
  return withEnv({ RINGATTN_LIBNVRTC: fakeLib, RINGATTN_CACHE: cache, RINGATTN_NVRTC_DEFINES: undefined, FAKE_NVRTC_MS: undefined, FAKE_NVRTC_FAIL: undefined, FAKE_NVRTC_CRASH: undefined, ...extra }, () => body(cache));
};
const cubins = (cache: string) => readdirSync(join(cache, 'cuda')).filter((f) => f.endsWith('.cubin')).sort();

test('compileJobs: one job a kernel in files of entry macros, one a file otherwise, whole files first; unknown files named', () => {
  const jobs = compileJobs();
  const files = kernelFiles();
  assert.ok(files.includes('attn_fwd_h.cu') && files.includes('decode.cu'));
  for (const file of files) {
    const names = kernelEntries(readFileSync(join(kernelsDir(), file), 'utf8'));
    const mine = jobs.filter((j) => j.file === file);
    if (names.length === 0) assert.deepEqual(mine, [{ file, name: null }]);
    else assert.deepEqual(mine.map((j) => j.name), names);
  }
  const firstEntry = jobs.findIndex((j) => j.name !== null);
  assert.ok(firstEntry > 0 && jobs.slice(firstEntry).every((j) => j.name !== null), 'whole files first');
  assert.ok(jobs.some((j) => j.name === 'attn_fwd_ht_bf16_d128'));
  assert.equal(jobLabel({ file: 'a.cu', name: null }), 'a.cu');
  assert.equal(jobLabel({ file: 'a.cu', name: 'k' }), 'a.cu#k');
  assert.deepEqual(compileJobs(['ring.cu']), [{ file: 'ring.cu', name: null }]);
  assert.deepEqual(compileJobs(['ring.cu', 'ring.cu']), [{ file: 'ring.cu', name: null }], 'a file named twice: compiled once');
  assert.throws(() => compileJobs(['nope.cu']), (e: Error) => e instanceof InputError && /--kernels/.test(e.message) && /nope\.cu/.test(e.message));
});

test('precompile fills the cache that CudaContext reads: every job compiled once on several workers, then all found cached', { skip, timeout: 120_000 }, async () => {
  await withFake({ FAKE_NVRTC_MS: '20' }, async (cache) => {
    const jobs = compileJobs(['attn_fwd_h.cu', 'ring.cu', 'attn_bwd_h.cu']);
    const seen: number[] = [];
    const r = await precompile({ arch: 'sm_90a', jobs, workers: 3, onDone: (done, total) => seen.push(done * 1000 + total) });
    assert.equal(r.workers, 3);
    assert.equal(r.outcomes.length, jobs.length);
    assert.deepEqual(seen, jobs.map((_, i) => (i + 1) * 1000 + jobs.length), 'progress after every job');
    assert.deepEqual(r.outcomes.map((o) => jobLabel(o.job)).sort(), jobs.map(jobLabel).sort(), 'each job once');
    for (const o of r.outcomes) {
      assert.equal(o.error, undefined, jobLabel(o.job));
      assert.equal(o.cached, false);
    }
    assert.equal(cubins(cache).length, jobs.length, 'one cubin a job');
    // CudaContext.module's compile of one of them (moduleSource, then compileModule) is a cache hit holding that kernel.
    const api = loadNvrtc();
    assert.ok(!('error' in api));
    const mod = moduleSource('attn_fwd_h.cu', 'attn_fwd_ht_bf16_d128', kernelSource);
    const hit = compileModule(mod, 'sm_90a', api);
    assert.equal(hit.cached, true);
    assert.match(hit.cubin.toString(), /^FAKECUBIN attn_fwd_h\.cu [0-9a-f]{16}$/);
    // Again: nothing compiled; another arch or other defines are other entries.
    const again = await precompile({ arch: 'sm_90a', jobs, workers: 2 });
    assert.ok(again.outcomes.every((o) => o.cached && !o.error));
    assert.equal(compileModule(mod, 'sm_80', api).cached, false);
  });
});

test('precompile: a kernel that fails to compile, or whose compiler process dies, is reported and the others still compile; a missing NVRTC, bad defines or worker counts reject', { skip, timeout: 120_000 }, async () => {
  await withFake({ FAKE_NVRTC_FAIL: 'attn_tile_spans' }, async (cache) => {
    const jobs = compileJobs(['attn_fwd.cu', 'ring.cu', 'attn_bwd_h.cu']);
    const r = await precompile({ arch: 'sm_90a', jobs, workers: 2 });
    const failed = r.outcomes.filter((o) => o.error);
    assert.deepEqual(failed.map((o) => jobLabel(o.job)), ['attn_fwd.cu']);
    assert.match(failed[0].error!, /NVRTC_ERROR_COMPILATION/);
    assert.match(failed[0].error!, /fake compile error/);
    assert.equal(cubins(cache).length, jobs.length - 1);
  });
  await withFake({ FAKE_NVRTC_CRASH: 'attn_bwd_h_bf16_d128' }, async (cache) => {
    const jobs = compileJobs(['attn_bwd_h.cu', 'ring.cu']);
    const r = await precompile({ arch: 'sm_90a', jobs, workers: 2 });
    assert.equal(r.outcomes.length, jobs.length, 'every job has an outcome');
    const failed = r.outcomes.filter((o) => o.error);
    assert.deepEqual(failed.map((o) => jobLabel(o.job)), ['attn_bwd_h.cu#attn_bwd_h_bf16_d128']);
    assert.match(failed[0].error!, /compiler process died \(signal SIGKILL\)/);
    assert.equal(cubins(cache).length, jobs.length - 1, 'a replacement worker compiled the rest');
  });
  await withFake({ RINGATTN_NVRTC_DEFINES: 'FWDH_LAZY=1' }, async () => {
    await assert.rejects(precompile({ arch: 'sm_90a', jobs: compileJobs(['ring.cu']) }), (e: Error) => e instanceof InputError && /RINGATTN_NVRTC_DEFINES/.test(e.message));
  });
  await withFake({}, async () => {
    for (const workers of [0, -1, NaN]) {
      await assert.rejects(precompile({ arch: 'sm_90a', jobs: compileJobs(['ring.cu']), workers }), (e: Error) => e instanceof InputError && /workers/.test(e.message));
    }
    const none = await precompile({ arch: 'sm_90a', jobs: [] });
    assert.deepEqual([none.outcomes.length, none.workers], [0, 0]);
    const clamped = await precompile({ arch: 'sm_90a', jobs: compileJobs(['ring.cu', 'model.cu']), workers: 9 });
    assert.equal(clamped.workers, 2, 'never more workers than jobs');
  });
  await withFake({ RINGATTN_LIBNVRTC: join(work, 'missing.so') }, async () => {
    await assert.rejects(precompile({ arch: 'sm_90a', jobs: compileJobs(['ring.cu', 'model.cu']), workers: 2 }), (e: Error) => /NVRTC library not found/.test(e.message));
  });
});

test('ringattn compile: a summary line and exit 0; bad flags exit 2 naming the flag; failed kernels exit 1 naming them', { skip, timeout: 120_000 }, () => {
  const cli = join(root, 'bin', 'ringattn.js');
  const clean = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('FAKE_NVRTC_') && k !== 'RINGATTN_NVRTC_DEFINES'));
  const run = (args: string[], env: Record<string, string> = {}) =>
    spawnSync(process.execPath, [cli, 'compile', ...args], {
      encoding: 'utf8',
      env: { ...clean, RINGATTN_LIBNVRTC: fakeLib, RINGATTN_CACHE: join(work, `cli${cacheN++}`), ...env },
    });
  let r = run(['--arch', 'sm_90a', '--kernels', 'ring.cu,attn_bwd_h.cu', '--jobs', '2']);
  assert.equal(r.status, 0, r.stderr);
  const n = 1 + compileJobs(['attn_bwd_h.cu']).length;
  assert.match(r.stdout, new RegExp(`^sm_90a: ${n} of ${n} compiles done, 0 found in the cache, 0 failed; [\\d.]+ s on 2 processes; cache `));
  r = run(['--arch', 'sm_90a', '--kernels', 'ring.cu', '--verbose']);
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /^ring\.cu: [\d.]+ s\n/);
  for (const [args, flag] of [[['--arch', 'sm9'], '--arch'], [['--arch', 'sm_90a', '--jobs', '0'], '--jobs'], [['--arch', 'sm_90a', '--kernels', 'x.cu'], '--kernels'], [['--arch', 'sm_90a', '--kernels', ','], '--kernels']] as const) {
    r = run([...args]);
    assert.equal(r.status, 2, `${args.join(' ')}: ${r.stderr}`);
    assert.match(r.stderr, new RegExp(`^ringattn: ${flag}: expected`));
  }
  r = run(['--arch', 'sm_90a', '--kernels', 'attn_fwd.cu,ring.cu'], { FAKE_NVRTC_FAIL: 'attn_tile_spans' });
  assert.equal(r.status, 1);
  assert.match(r.stdout, /1 of 2 compiles done, 0 found in the cache, 1 failed/);
  assert.match(r.stderr, /1 of 2 compiles failed:\n {2}attn_fwd\.cu: nvrtcCompileProgram/);
  r = run(['--arch', 'sm_90a', '--kernels', 'ring.cu'], { RINGATTN_NVRTC_DEFINES: '-I/tmp' });
  assert.equal(r.status, 2);
  assert.match(r.stderr, /^ringattn: RINGATTN_NVRTC_DEFINES/);
});
