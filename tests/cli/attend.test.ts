import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync, existsSync, readdirSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { encodeNpy, readNpyFloat32 } from '../../src/io/index.js';
import type { Tensor } from '../../src/core/tensor.js';
import { refForward, refBackward } from '../ref/attention64.js';
import { TOL } from '../ref/tolerances.js';
import { assertClose, freshSeed, randn, rng } from '../helpers/check.js';

const BIN = join(process.cwd(), 'bin', 'ringattn.js');

function cli(args: string[]): { code: number; stderr: string; stdout: string } {
  const r = spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8' });
  return { code: r.status ?? -1, stderr: r.stderr, stdout: r.stdout };
}

function setup(S: number, H: number, Hk: number, D: number, seed: number) {
  const dir = mkdtempSync(join(tmpdir(), 'ringattn-cli-'));
  const r = rng(seed);
  const t = (shape: number[]): Tensor<'float32'> => ({ dtype: 'float32', shape, data: randn(shape.reduce((a, b) => a * b), r) });
  const x = { q: t([S, H, D]), k: t([S, Hk, D]), v: t([S, Hk, D]), do: t([S, H, D]) };
  for (const [name, ten] of Object.entries(x)) writeFileSync(join(dir, `${name}.npy`), encodeNpy(ten));
  return { dir, ...x, p: (n: string) => join(dir, n) };
}

test('attend: single device and ring write O, LSE and gradients equal to the float64 reference', () => {
  const seed = freshSeed();
  const [S, H, Hk, D] = [67, 4, 2, 16];
  const s = setup(S, H, Hk, D, seed);
  const mask = { causal: true, window: 20, sinks: 2 };
  const g = refBackward(s.q.data, s.k.data, s.v.data, s.do.data, S, H, Hk, D, mask), ref = g;
  for (const extra of [[], ['--devices', '3', '--layout', 'striped'], ['--kernel', 'ts']]) {
    const r = cli(['attend', '--q', s.p('q.npy'), '--k', s.p('k.npy'), '--v', s.p('v.npy'), '--out', s.p('o.npy'), '--lse', s.p('lse.npy'), '--causal', '--window', '20', '--sinks', '2', '--grad-out', s.p('do.npy'), '--dq', s.p('dq.npy'), '--dk', s.p('dk.npy'), '--dv', s.p('dv.npy'), '--verify', '8', ...extra]);
    assert.equal(r.code, 0, r.stderr);
    const what = `seed ${seed} ${extra.join(' ')}`;
    assertClose(readNpyFloat32(s.p('o.npy')).data, ref.o, TOL.fp32Forward, `${what} out`);
    const lse = readNpyFloat32(s.p('lse.npy'));
    assert.deepEqual(lse.shape, [S, H]);
    assertClose(lse.data, ref.lse, TOL.fp32Forward, `${what} lse`);
    assertClose(readNpyFloat32(s.p('dq.npy')).data, g.dq, TOL.fp32Grad, `${what} dq`);
    assertClose(readNpyFloat32(s.p('dk.npy')).data, g.dk, TOL.fp32Grad, `${what} dk`);
    assertClose(readNpyFloat32(s.p('dv.npy')).data, g.dv, TOL.fp32Grad, `${what} dv`);
  }
});

test('attend: --segments, --scale, --block and --threads give the float64 reference; a bad --segments is named and writes nothing', () => {
  const seed = freshSeed();
  const [S, H, Hk, D] = [75, 4, 1, 16];
  const s = setup(S, H, Hk, D, seed);
  const r = rng(seed + 1);
  const segments = Int32Array.from({ length: S }, (_, i) => (i < 20 ? 0 : i < 21 ? 1 : i < 58 ? 2 : 3)); // one 1-token document
  writeFileSync(s.p('seg.npy'), encodeNpy({ dtype: 'int32', shape: [S], data: segments }));
  const scale = 0.05 + r() * 0.4;
  const mask = { causal: true, window: 12, sinks: 3, segments };
  const ref = refForward(s.q.data, s.k.data, s.v.data, S, H, Hk, D, mask, scale);
  const base = ['attend', '--q', s.p('q.npy'), '--k', s.p('k.npy'), '--v', s.p('v.npy'), '--lse', s.p('lse.npy'), '--causal', '--window', '12', '--sinks', '3', '--scale', String(scale)];
  for (const extra of [['--block', '16', '--threads', '1'], ['--block', '40', '--threads', '2'], ['--devices', '2', '--block', '8']]) {
    const what = `seed ${seed} scale ${scale} ${extra.join(' ')}`;
    const res = cli([...base, '--out', s.p('o.npy'), '--segments', s.p('seg.npy'), ...extra]);
    assert.equal(res.code, 0, `${what}: ${res.stderr}`);
    assertClose(readNpyFloat32(s.p('o.npy')).data, ref.o, TOL.fp32Forward, `${what} out`);
    assertClose(readNpyFloat32(s.p('lse.npy')).data, ref.lse, TOL.fp32Forward, `${what} lse`);
  }
  writeFileSync(s.p('seg-short.npy'), encodeNpy({ dtype: 'int32', shape: [S - 1], data: segments.subarray(1) }));
  const bad = cli([...base, '--out', s.p('o-bad.npy'), '--segments', s.p('seg-short.npy')]);
  assert.equal(bad.code, 2, bad.stderr);
  assert.match(bad.stderr, /segments/);
  assert.ok(!existsSync(s.p('o-bad.npy')), 'no partial output file');
});

test('attend: batched [B,S,H,D] input', () => {
  const dir = mkdtempSync(join(tmpdir(), 'ringattn-cli-'));
  const r = rng(freshSeed());
  const [B, S, H, D] = [2, 30, 2, 8];
  const mk = (): Tensor<'float32'> => ({ dtype: 'float32', shape: [B, S, H, D], data: randn(B * S * H * D, r) });
  const q = mk(), k = mk(), v = mk();
  for (const [n, t] of [['q', q], ['k', k], ['v', v]] as const) writeFileSync(join(dir, `${n}.npy`), encodeNpy(t));
  const res = cli(['attend', '--q', join(dir, 'q.npy'), '--k', join(dir, 'k.npy'), '--v', join(dir, 'v.npy'), '--out', join(dir, 'o.npy'), '--causal', '--devices', '2']);
  assert.equal(res.code, 0, res.stderr);
  const o = readNpyFloat32(join(dir, 'o.npy'));
  assert.deepEqual(o.shape, [B, S, H, D]);
  for (let b = 0; b < B; b++) {
    const n = S * H * D;
    const ref = refForward(q.data.subarray(b * n, (b + 1) * n), k.data.subarray(b * n, (b + 1) * n), v.data.subarray(b * n, (b + 1) * n), S, H, H, D, { causal: true });
    assertClose(o.data.subarray(b * n, (b + 1) * n), ref.o, TOL.fp32Forward, `batch ${b}`);
  }
});

test('attend: bad input exits 2 with one line naming the argument, and leaves no output', () => {
  const s = setup(10, 4, 2, 8, 1);
  const bad = (name: string, t: Tensor) => {
    writeFileSync(s.p(name), encodeNpy(t));
    return s.p(name);
  };
  const flat = bad('flat.npy', { dtype: 'float32', shape: [10, 32], data: new Float32Array(320) });
  const heads3 = bad('k3.npy', { dtype: 'float32', shape: [10, 3, 8], data: new Float32Array(240) });
  const shortS = bad('k9.npy', { dtype: 'float32', shape: [9, 2, 8], data: new Float32Array(144) });
  const nanQ = s.q.data.slice();
  nanQ[5] = NaN;
  const nan = bad('nan.npy', { dtype: 'float32', shape: [10, 4, 8], data: nanQ });
  const ints = bad('ints.npy', { dtype: 'int32', shape: [10, 4, 8], data: new Int32Array(320) });
  const b0q = bad('b0q.npy', { dtype: 'float32', shape: [0, 10, 4, 8], data: new Float32Array(0) });
  const b0k = bad('b0k.npy', { dtype: 'float32', shape: [0, 10, 2, 8], data: new Float32Array(0) });
  const batch0 = ['attend', '--q', b0q, '--k', b0k, '--v', b0k, '--out', s.p('out.npy')];
  writeFileSync(s.p('garbage.npy'), 'not a numpy file at all');
  const good = readFileSync(s.p('q.npy'));
  writeFileSync(s.p('trunc.npy'), good.subarray(0, good.length - 10));
  const base = (q = s.p('q.npy'), k = s.p('k.npy')) => ['attend', '--q', q, '--k', k, '--v', s.p('v.npy'), '--out', s.p('out.npy')];
  const cases: [string[], RegExp][] = [
    [base(flat), /^ringattn: --q: .*\[S, H, D\]/],
    [base(undefined, heads3), /^ringattn: --k: expected KV heads dividing the 4 query heads, got 3/],
    [base(undefined, shortS), /^ringattn: --k: expected sequence length 10/],
    [base(nan), /^ringattn: --q: element 5 is NaN/],
    [batch0, /^ringattn: --q: expected non-empty dimensions, got \[0, 10, 4, 8\]/],
    [[...batch0, '--devices', '2'], /^ringattn: --q: expected non-empty dimensions/],
    [[...base(), '--scale', '1e38'], /^ringattn: --scale: expected scores q·k·scale within/],
    [[...base(), '--threads', '100000'], /^ringattn: --threads: expected an integer in \[1, 1024\], got '100000'/],
    [[...base(), '--window', '0x3'], /^ringattn: --window: expected an integer in \[1, 2147483647\], got '0x3'/],
    [[...base(), '--window', '1e20'], /^ringattn: --window: expected an integer in \[1, 2147483647\], got '1e20'/],
    [[...base(), 'extra'], /^error: too many arguments for 'attend'\. Expected 0 arguments but got 1\./], // (commander's words)
    [[...base(), '--lse', s.p('q.npy')], /^ringattn: --lse: .*q\.npy is the --q input/],
    [[...base(), '--out', s.p('k.npy')], /^ringattn: --out: .*k\.npy is the --k input/],
    [base(ints), /^ringattn: --q: /],
    [base(s.p('garbage.npy')), /^ringattn: --q: /],
    [base(s.p('trunc.npy')), /^ringattn: --q: .*truncated/],
    [base(s.p('missing.npy')), /^ringattn: --q: .*(no such file|not found|does not exist)/i],
    [[...base(), '--window', '0'], /^ringattn: --window: expected an integer in \[1, 2147483647\], got '0'/],
    [[...base(), '--sinks', '2'], /^ringattn: --sinks: expected --window/],
    [[...base(), '--layout', 'spiral'], /^ringattn: --layout: expected one of contiguous, zigzag, striped/],
    [[...base(), '--devices', '0'], /^ringattn: --devices: expected an integer in \[1, 256\], got '0'/],
    [[...base(), '--devices', '513'], /^ringattn: --devices: expected an integer in \[1, 256\], got '513'/], // (513 workers once exhausted 24 GB)
    [[...base(), '--grad-out', s.p('do.npy')], /^ringattn: --grad-out: expected --dq, --dk and --dv/],
    [[...base(), '--out', join(s.dir, 'nodir', 'o.npy')], /^ringattn: --out: /],
  ];
  for (const [args, re] of cases) {
    const r = cli(args);
    assert.equal(r.code, 2, `${args.join(' ')}: exit ${r.code}\n${r.stderr}`);
    const lines = r.stderr.trim().split('\n');
    assert.equal(lines.length, 1, `one line, got:\n${r.stderr}`);
    assert.match(lines[0], re);
    assert.ok(!/\n\s+at /.test(r.stderr), 'no stack trace');
    assert.ok(!existsSync(s.p('out.npy')), 'no output file');
  }
  assert.deepEqual(readNpyFloat32(s.p('q.npy')).data, s.q.data, 'the inputs named as outputs are unchanged');
  assert.deepEqual(readNpyFloat32(s.p('k.npy')).data, s.k.data);
  assert.deepEqual(readdirSync(s.dir).filter((f) => f.includes('.tmp') || f.startsWith('.')), [], 'no temp files left');
  // --allow-nonfinite accepts the NaN input; it reaches only the row of its query (token 0, head 0).
  // --verify samples row 0 (the NaN one) too: NaN in the result against NaN in its float64 check agrees
  const nanRun = cli([...base(nan), '--allow-nonfinite', '--verify', '4']);
  assert.equal(nanRun.code, 0, nanRun.stderr + nanRun.stdout);
  const o = readNpyFloat32(s.p('out.npy')).data;
  assert.ok(o.subarray(0, 8).some(Number.isNaN), 'the NaN query row is NaN');
  assert.ok(o.subarray(8).every(Number.isFinite), 'every other row is finite');
});

test('--help and --version', () => {
  const h = cli(['--help']);
  assert.equal(h.code, 0);
  for (const c of ['attend', 'demo', 'plan']) assert.match(h.stdout, new RegExp(c));
  const v = cli(['--version']);
  assert.equal(v.code, 0);
  assert.match(v.stdout, /^\d+\.\d+\.\d+/);
});
