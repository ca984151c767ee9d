import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mergePartial } from '../../src/core/merge.js';
import { freshSeed, randn, rng, assertClose } from '../helpers/check.js';
import { TOL } from '../ref/tolerances.js';

/** Attention of one query over keys [a, b), in float64, as (o, lse). */
function partial(q: Float32Array, k: Float32Array, v: Float32Array, D: number, a: number, b: number): { o: Float32Array; lse: number } {
  if (b <= a) return { o: new Float32Array(D), lse: -Infinity };
  const s: number[] = [];
  for (let j = a; j < b; j++) {
    let dot = 0;
    for (let d = 0; d < D; d++) dot += q[d] * k[j * D + d];
    s.push(dot / Math.sqrt(D));
  }
  const m = Math.max(...s);
  const w = s.map((x) => Math.exp(x - m));
  const sum = w.reduce((x, y) => x + y, 0);
  const o = new Float64Array(D);
  for (let j = a; j < b; j++) for (let d = 0; d < D; d++) o[d] += (w[j - a] / sum) * v[j * D + d];
  return { o: Float32Array.from(o), lse: m + Math.log(sum) };
}

/** The LSE rule in float64 on the values the merge is given (fp32 o and LSE). */
function merge64(oa: Float32Array, la: number, ob: Float32Array, lb: number): { o: Float64Array; lse: number } {
  if (lb === -Infinity) return { o: Float64Array.from(oa), lse: la };
  if (la === -Infinity) return { o: Float64Array.from(ob), lse: lb };
  const m = Math.max(la, lb), wa = Math.exp(la - m), wb = Math.exp(lb - m);
  return { o: Float64Array.from(oa, (x, d) => (wa * x + wb * ob[d]) / (wa + wb)), lse: m + Math.log(wa + wb) };
}

test('merging two partials over disjoint keys equals attention over all keys', () => {
  const seed = freshSeed();
  const r = rng(seed);
  const D = 16;
  const S = 37;
  for (let trial = 0; trial < 20; trial++) {
    const q = randn(D, r, trial % 3 === 0 ? 30 : 1);
    const k = randn(S * D, r);
    const v = randn(S * D, r);
    const cut = Math.floor(r() * (S + 1));
    const left = partial(q, k, v, D, 0, cut);
    const right = partial(q, k, v, D, cut, S);
    const whole = partial(q, k, v, D, 0, S);
    const o = left.o.slice();
    const lse = new Float32Array([left.lse]);
    const rightLse = new Float32Array([right.lse]);
    mergePartial(o, lse, right.o, rightLse, D);
    // The merge's own arithmetic: the rule in float64 on the same fp32 inputs, to fp32 rounding.
    const want = merge64(left.o, Math.fround(left.lse), right.o, rightLse[0]);
    assertClose(o, want.o, 1e-6, `seed ${seed} trial ${trial} O against the rule on its inputs`);
    assertClose(lse, [want.lse], 1e-6, `seed ${seed} trial ${trial} LSE against the rule on its inputs`);
    // Against attention over all keys: the partial LSEs stored in fp32 are off by up to
    // |lse| 2^-24 each, which moves the weights by as much and o by that times |o_l - o_r|
    // (|lse| reaches ~140 with q x 30, where a fixed 1e-5 had a margin of 2): allowed
    // 2 LSEs x 2 max|o| x 2 of margin on top of the fp32 tolerance.
    const L = Math.max(...[left.lse, right.lse].filter(Number.isFinite).map(Math.abs));
    const tol = TOL.fp32Forward + 8 * 2 ** -24 * L;
    assertClose(o, whole.o, tol, `seed ${seed} trial ${trial} O`);
    assertClose(lse, [whole.lse], TOL.fp32Forward, `seed ${seed} trial ${trial} LSE`);
  }
});

test('a side that saw no key contributes nothing; both empty stays (0, -Infinity)', () => {
  const o = new Float32Array([0, 0]);
  const lse = new Float32Array([-Infinity]);
  mergePartial(o, lse, new Float32Array([0, 0]), new Float32Array([-Infinity]), 2);
  assert.deepEqual([...o], [0, 0]);
  assert.equal(lse[0], -Infinity);
  mergePartial(o, lse, new Float32Array([3, 4]), new Float32Array([1.5]), 2);
  assert.deepEqual([...o], [3, 4]);
  assert.equal(lse[0], 1.5);
  mergePartial(o, lse, new Float32Array([9, 9]), new Float32Array([-Infinity]), 2);
  assert.deepEqual([...o], [3, 4]);
  assert.equal(lse[0], 1.5);
});

test('merge is stable for LSEs far apart (1e3 scaled logits)', () => {
  const o = new Float32Array([1]);
  const lse = new Float32Array([1000]);
  mergePartial(o, lse, new Float32Array([5]), new Float32Array([-1000]), 1);
  assert.equal(o[0], 1);
  assert.equal(lse[0], 1000);
  assert.ok([...o].every(Number.isFinite));
});
