import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { AttentionKernel } from '../../src/core/kernel.js';
import { getKernel } from '../../src/cpu/attention.js';
import { assertClose, assertCloseLse, freshSeed, randn, rng } from '../helpers/check.js';
import { computeDelta } from '../../src/core/kernel.js';
import { normRelErr } from '../../src/core/verify.js';
import { refBackward, refForward } from '../ref/attention64.js';
import { TOL } from '../ref/tolerances.js';
import { makeProblem, range, runKernel, stripe, type MaskOpts, type Problem, type RunOpts } from './kernel-harness.js';

/**
 * Both block kernels (C and TypeScript) against the float64 reference: forward O and LSE, backward
 * dQ, dK, dV, over every mask combination, head groupings, head sizes, tile sizes that do not
 * divide S, one and two threads, key blocks merged one after another, and striped positions.
 */

const forcedTs = process.env.RINGATTN_KERNEL === 'ts';
const kernels: [string, () => AttentionKernel][] = [
  ['c', () => getKernel({ kernel: 'c' })],
  ['ts', () => getKernel({ kernel: 'ts' })],
];

function check(p: Problem, seed: number, what: string, opts: RunOpts = {}): void {
  const grads = opts.backward === false ? undefined : refBackward(p.q, p.k, p.v, p.dO, p.S, p.H, p.Hk, p.D, p.mask, p.scale);
  const ref = grads ?? refForward(p.q, p.k, p.v, p.S, p.H, p.Hk, p.D, p.mask, p.scale);
  for (const [name, make] of kernels) {
    if (name === 'c' && forcedTs) continue;
    const kernel = make();
    const got = runKernel(kernel, p, opts);
    const tag = `${kernel.name} ${what} seed=${seed}`;
    assertCloseLse(got.lse, ref.lse, TOL.fp32Forward, `${tag}: lse`);
    assertClose(got.o, ref.o, TOL.fp32Forward, `${tag}: o`);
    for (const x of [got.o, got.lse, got.dq, got.dk, got.dv]) assert.ok(!x.some(Number.isNaN), `${tag}: NaN`);
    if (!grads) continue;
    assertClose(got.dq, grads.dq, TOL.fp32Grad, `${tag}: dq`);
    assertClose(got.dk, grads.dk, TOL.fp32Grad, `${tag}: dk`);
    assertClose(got.dv, grads.dv, TOL.fp32Grad, `${tag}: dv`);
  }
}

const masks: [string, (S: number, c: number) => MaskOpts][] = [
  ['none', () => ({})],
  ['causal', () => ({ causal: true })],
  ['window', (S, c) => ({ window: 1 + Math.floor(S / 5) + (c % 3) })],
  ['window+sinks', (S, c) => ({ window: 1 + Math.floor(S / 6), sinks: 1 + (c % 4) })],
  ['causal+window+sinks', (S, c) => ({ causal: true, window: 1 + Math.floor(S / 4), sinks: 1 + (c % 3) })],
  ['segments', (S) => ({ docs: 1 + Math.floor(S / 25) })],
  ['causal+segments+window', (S) => ({ causal: true, docs: 1 + Math.floor(S / 30), window: 2 + Math.floor(S / 7) })],
];
const groups: [number, number][] = [[1, 1], [4, 2], [8, 1], [6, 3]];
const sizes = [1, 2, 17, 37, 61, 97, 131, 113, 53, 150, 73, 29, 89, 5];
const heads = [16, 24, 64, 128];
const tiles: [number | undefined, number | undefined][] = [[undefined, undefined], [16, 24], [32, 16], [48, 40], [7, 13], [64, 64]];

let c = 0;
for (const [mname, mask] of masks) {
  for (const [H, Hk] of groups) {
    const cse = c++;
    const S = sizes[cse % sizes.length];
    // Keep the float64 reference cheap: big heads on the shorter sequences.
    const D = S > 100 ? heads[cse % 3] : heads[(cse + Math.floor(cse / 4)) % 4];
    const [blockQ, blockK] = tiles[cse % tiles.length];
    const threads = cse % 2 === 1 ? 2 : 1;
    const what = `S=${S} H=${H}/${Hk} D=${D} ${mname} tiles=${blockQ ?? '-'}x${blockK ?? '-'} threads=${threads}`;
    test(what, () => {
      const seed = freshSeed();
      const p = makeProblem(seed, S, H, Hk, D, mask(S, cse));
      check(p, seed, what, { blockQ, blockK, threads });
    });
  }
}

test('S=300 H=4/2 D=64 causal+window+sinks, default tiles and 2 threads', () => {
  const seed = freshSeed();
  const p = makeProblem(seed, 300, 4, 2, 64, { causal: true, window: 70, sinks: 4 });
  check(p, seed, 'S=300', { threads: 2 });
  check(p, seed, 'S=300 tiles 64x48', { blockQ: 64, blockK: 48, threads: 1, backward: false });
});

test('key blocks merged one after another equal the reference (forward and backward)', () => {
  const seed = freshSeed();
  const p = makeProblem(seed, 157, 6, 3, 64, { causal: true, window: 40, sinks: 3 });
  check(p, seed, 'two blocks', { kBlocks: [range(0, 67), range(67, 157)], blockQ: 32, blockK: 24, threads: 2 });
  check(p, seed, 'three blocks, reversed', { kBlocks: [range(120, 157), range(50, 120), range(0, 50)], blockQ: 16, blockK: 16 });
});

test('striped positions (queries and keys): ring of 3 against the reference', () => {
  const seed = freshSeed();
  const S = 139;
  const sets = [0, 1, 2].map((r) => stripe(S, 3, r));
  for (const [name, m] of [['causal+window+sinks', { causal: true, window: 31, sinks: 2 }], ['causal+segments', { causal: true, docs: 5 }], ['window', { window: 9 }]] as const) {
    const p = makeProblem(seed, S, 4, 2, 24, m);
    check(p, seed, `striped ${name}`, { qSets: sets, kBlocks: sets, blockQ: 8, blockK: 16, threads: 2 });
  }
});

test('a few thousand tokens (S=2003, prime): causal window sinks and packed documents, default tiles, 2 threads', () => {
  const seed = freshSeed();
  check(makeProblem(seed, 2003, 2, 1, 16, { causal: true, window: 700, sinks: 3 }), seed, 'S=2003 causal+window+sinks', { threads: 2 });
  check(makeProblem(seed + 1, 2003, 2, 2, 16, { causal: true, docs: 5 }), seed + 1, 'S=2003 causal+docs', { threads: 2 });
});

/**
 * dK and dV sum over every query tile of a key block: with 8-query tiles, 256 of them at 2048
 * tokens. The C backward keeps that running sum compensated (Kahan, every 4 tiles), so its error
 * does not grow with the tile count: here ~3.6e-7 of the norm from float64, where the plain fp32
 * sum it had before measured 1.2-1.3e-6 (BENCHMARKS.md, session 20). Norm-wise, fresh inputs.
 */
test('C backward: dK and dV stay within 7e-7 of float64 (norm-wise) over 256 query tiles', { skip: forcedTs && 'RINGATTN_KERNEL=ts (a C kernel test)' }, async () => {
  const seed = freshSeed();
  const c = getKernel({ kernel: 'c' });
  const [S, H, Hk, D] = [2048, 2, 1, 32];
  const r = rng(seed);
  const q = randn(S * H * D, r), k = randn(S * Hk * D, r), v = randn(S * Hk * D, r), dO = randn(S * H * D, r);
  const pos = Int32Array.from({ length: S }, (_, i) => i);
  const args = { q, k, v, qPos: pos, kPos: pos, Sq: S, Sk: S, H, Hk, D, causal: false, window: 0, sinks: 0, scale: 1 / Math.sqrt(D), blockQ: 8, blockK: 64, threads: 1 };
  const o = new Float32Array(S * H * D), lse = new Float32Array(S * H).fill(-Infinity);
  c.forward({ ...args, o, lse });
  const dq = new Float32Array(S * H * D), dk = new Float32Array(S * Hk * D), dv = new Float32Array(S * Hk * D);
  c.backward({ ...args, dO, lse, delta: computeDelta(o, dO, S * H, D), dq, dk, dv });
  const ref = refBackward(q, k, v, dO, S, H, Hk, D, {}, 1 / Math.sqrt(D));
  for (const [name, got, want] of [['dk', dk, ref.dk], ['dv', dv, ref.dv]] as const) {
    const e = normRelErr(got, want);
    assert.ok(e < 7e-7, `seed ${seed} ${name}: ${e.toExponential(2)} of the norm from float64`);
  }
});

test('an empty side (Sq = 0 or Sk = 0, its arrays empty, segments on one side only) is nothing to do for both kernels: the other side is left as it was', () => {
  // An empty typed array reaches C as NULL; the C kernel took that for a bad argument (a ring
  // rank with no rows met it in the sink keys' step).
  const seed = freshSeed();
  const r = rng(seed);
  const [S, H, Hk, D] = [9, 2, 1, 8];
  const none = new Float32Array(0), noPos = new Int32Array(0);
  const q = randn(S * H * D, r), k = randn(S * Hk * D, r), v = randn(S * Hk * D, r), pos = Int32Array.from({ length: S }, (_, i) => i);
  const mask = { causal: true, window: 4, sinks: 2, scale: 0.3, threads: 2 };
  for (const [name, make] of kernels) {
    if (name === 'c' && forcedTs) continue;
    const kern = make();
    const o = randn(S * H * D, r), lse = randn(S * H, r), o0 = o.slice(), lse0 = lse.slice();
    // No keys: the running (o, lse) stay; no queries: nothing is written.
    kern.forward({ q, k: none, v: none, qPos: pos, kPos: noPos, qSeg: pos, kSeg: noPos, Sq: S, Sk: 0, H, Hk, D, ...mask, window: 4, o, lse });
    kern.forward({ q: none, k, v, qPos: noPos, kPos: pos, Sq: 0, Sk: S, H, Hk, D, ...mask, o: none, lse: none });
    assert.deepEqual([o, lse], [o0, lse0], `${name} forward, seed ${seed}`);
    const dq = randn(S * H * D, r), dk = randn(S * Hk * D, r), dv = randn(S * Hk * D, r), before = [dq.slice(), dk.slice(), dv.slice()];
    kern.backward({ q, k: none, v: none, dO: q, lse, delta: lse, qPos: pos, kPos: noPos, Sq: S, Sk: 0, H, Hk, D, ...mask, dq, dk: none, dv: none });
    kern.backward({ q: none, k, v, dO: none, lse: none, delta: none, qPos: noPos, kPos: pos, Sq: 0, Sk: S, H, Hk, D, ...mask, dq: none, dk, dv });
    assert.deepEqual([dq, dk, dv], before, `${name} backward, seed ${seed}`);
  }
});
