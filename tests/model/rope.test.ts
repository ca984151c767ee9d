import { test } from 'node:test';
import assert from 'node:assert/strict';
import { InputError } from '../../src/core/errors.js';
import type { RopeConfig } from '../../src/model/config.js';
import { applyRope, ropeInvFreq } from '../../src/model/rope.js';
import { assertClose, freshSeed, randn, rng } from '../helpers/check.js';

const cfgOf = (headDim: number, rope: RopeConfig, maxPositionEmbeddings = 4096) => ({ headDim, rope, maxPositionEmbeddings });

function rowNorms(x: Float32Array, headDim: number): number[] {
  const out: number[] = [];
  for (let o = 0; o < x.length; o += headDim) {
    let s = 0;
    for (let i = 0; i < headDim; i++) s += x[o + i] ** 2;
    out.push(Math.sqrt(s));
  }
  return out;
}

function dot(a: Float32Array, b: Float32Array): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * b[i];
  return s;
}

test('default rope: inv_freq = theta^(-2i/d); rotation keeps norms; inverse undoes it', () => {
  const seed = freshSeed();
  const r = rng(seed);
  const hd = 32;
  const rope = ropeInvFreq(cfgOf(hd, { theta: 10000, type: 'default' }), 'fp64');
  assert.equal(rope.attentionScaling, 1);
  for (let i = 0; i < hd / 2; i++) assert.ok(Math.abs(rope.invFreq[i] - 10000 ** (-(2 * i) / hd)) < 1e-15 * 10, `inv_freq[${i}]`);
  const rows = 7, heads = 3;
  const x = randn(rows * heads * hd, r);
  const orig = x.slice();
  const pos = Int32Array.from([0, 1, 2, 100, 4095, 65536, 1_000_000]);
  applyRope(x, rows, heads, hd, pos, rope);
  assertClose(rowNorms(x, hd), rowNorms(orig, hd), 1e-6, `norms (seed ${seed})`);
  // position 0 is the identity
  assertClose(x.subarray(0, heads * hd), orig.subarray(0, heads * hd), 1e-7, 'position 0');
  applyRope(x, rows, heads, hd, pos, rope, true);
  assertClose(x, orig, 1e-6, `inverse (seed ${seed})`);
});

test('rotate_half pairing: dim d pairs with d + headDim/2', () => {
  const hd = 4;
  const rope = { invFreq: Float64Array.of(Math.PI / 2, 0), attentionScaling: 1 };
  const x = Float32Array.of(1, 2, 3, 4); // pairs (x0, x2) rotated by 90°, (x1, x3) by 0
  applyRope(x, 1, 1, hd, Int32Array.of(1), rope);
  assertClose(x, [-3, 2, 1, 4], 1e-7, 'rotated');
});

test('relative position: <R(p)q, R(p\')k> depends only on p - p\'', () => {
  const seed = freshSeed();
  const r = rng(seed);
  const hd = 64;
  const rope = ropeInvFreq(cfgOf(hd, { theta: 500000, type: 'default' }));
  const q = randn(hd, r), k = randn(hd, r);
  for (const delta of [0, 1, 7, 300]) {
    const dots: number[] = [];
    for (const p0 of [0, 13, 5000, 123456]) {
      const qq = q.slice(), kk = k.slice();
      applyRope(qq, 1, 1, hd, Int32Array.of(p0 + delta), rope);
      applyRope(kk, 1, 1, hd, Int32Array.of(p0), rope);
      dots.push(dot(qq, kk));
    }
    for (const d of dots) assert.ok(Math.abs(d - dots[0]) < 1e-4 * hd, `delta ${delta}: ${dots.join(', ')} (seed ${seed})`);
  }
});

test('global positions: rotating a shard equals rotating the whole sequence and slicing', () => {
  const seed = freshSeed();
  const r = rng(seed);
  const hd = 16, heads = 2, rows = 12;
  const rope = ropeInvFreq(cfgOf(hd, { theta: 10000, type: 'linear', factor: 4 }));
  const x = randn(rows * heads * hd, r);
  const full = x.slice();
  applyRope(full, rows, heads, hd, Int32Array.from({ length: rows }, (_, i) => i), rope);
  // a zigzag-like shard: rows 2..4 and 9..11
  const take = [2, 3, 4, 9, 10, 11];
  const shard = new Float32Array(take.length * heads * hd);
  take.forEach((t, i) => shard.set(x.subarray(t * heads * hd, (t + 1) * heads * hd), i * heads * hd));
  applyRope(shard, take.length, heads, hd, Int32Array.from(take), rope);
  take.forEach((t, i) => assert.deepEqual(shard.subarray(i * heads * hd, (i + 1) * heads * hd), full.subarray(t * heads * hd, (t + 1) * heads * hd)));
});

test('linear scaling divides every inverse frequency by the factor', () => {
  const a = ropeInvFreq(cfgOf(16, { theta: 10000, type: 'default' }), 'fp64');
  const b = ropeInvFreq(cfgOf(16, { theta: 10000, type: 'linear', factor: 4 }), 'fp64');
  for (let i = 0; i < 8; i++) assert.ok(Math.abs(b.invFreq[i] - a.invFreq[i] / 4) < 1e-16);
});

test('llama3 inverse frequencies against the formula written out by hand', () => {
  const theta = 10000, d = 16, factor = 8, low = 1, high = 4, orig = 64;
  const rope = ropeInvFreq(cfgOf(d, { theta, type: 'llama3', factor, lowFreqFactor: low, highFreqFactor: high, originalMaxPositionEmbeddings: orig }), 'fp64');
  assert.equal(rope.attentionScaling, 1);
  const want: number[] = [];
  for (let i = 0; i < d / 2; i++) {
    const f = Math.exp((-2 * i * Math.log(theta)) / d);
    const cycles = (orig * f) / (2 * Math.PI); // rotations within the original context = orig / wavelength
    if (cycles > high) want.push(f); // short wavelengths: untouched
    else if (cycles < low) want.push(f / factor); // long wavelengths: fully interpolated
    else {
      const s = (cycles - low) / (high - low);
      want.push(f * (s + (1 - s) / factor));
    }
  }
  assertClose(rope.invFreq, want, 1e-12, 'llama3 inv_freq');
  // by hand: i = 0 keeps 1; i = 3 (wavelength ~199 > 64) is divided by 8; i = 1 and 2 are smoothed
  assert.ok(Math.abs(rope.invFreq[0] - 1) < 1e-15);
  assert.ok(Math.abs(rope.invFreq[3] - 10000 ** (-6 / 16) / 8) < 1e-15);
  const s1 = (64 * 10000 ** (-2 / 16) / (2 * Math.PI) - 1) / 3;
  assert.ok(s1 > 0 && s1 < 1);
  assert.ok(Math.abs(rope.invFreq[1] - 10000 ** (-2 / 16) * (s1 + (1 - s1) / 8)) < 1e-15);
  // fp32 (the default) is the same rounded to float32
  const r32 = ropeInvFreq(cfgOf(d, { theta, type: 'llama3', factor, lowFreqFactor: low, highFreqFactor: high, originalMaxPositionEmbeddings: orig }));
  for (let i = 0; i < d / 2; i++) assert.equal(r32.invFreq[i], Math.fround(rope.invFreq[i]));
});

test('yarn inverse frequencies and attention factor against the formula written out by hand', () => {
  const theta = 10000, d = 16, factor = 4, orig = 64;
  const yarn = (extra: Partial<RopeConfig>) =>
    ropeInvFreq(cfgOf(d, { theta, type: 'yarn', factor, originalMaxPositionEmbeddings: orig, ...extra }, 256), 'fp64');
  // dimension index at which a pair completes `rot` rotations over `orig` positions
  const dimFor = (rot: number) => (d / 2) * Math.log(orig / (2 * Math.PI * rot)) / Math.log(theta);
  const expect = (lo: number, hi: number): number[] =>
    Array.from({ length: d / 2 }, (_, i) => {
      const f = theta ** (-(2 * i) / d);
      const t = i <= lo ? 0 : i >= hi ? 1 : (i - lo) / (hi - lo); // 0: keep, 1: divide by factor
      return (1 - t) * f + (t * f) / factor;
    });
  // truncate (default): lo = max(floor(dimFor(32)), 0) = 0, hi = min(ceil(dimFor(1)), d - 1) = 3
  assert.equal(Math.max(Math.floor(dimFor(32)), 0), 0);
  assert.equal(Math.ceil(dimFor(1)), 3);
  const t = yarn({});
  assertClose(t.invFreq, expect(0, 3), 1e-12, 'yarn truncated');
  assert.ok(Math.abs(t.attentionScaling - (0.1 * Math.log(4) + 1)) < 1e-15);
  // no truncation: the ramp runs over the fractional range
  const nt = yarn({ truncate: false });
  assertClose(nt.invFreq, expect(Math.max(dimFor(32), 0), dimFor(1)), 1e-12, 'yarn untruncated');
  // beta_fast / beta_slow move the range
  const b = yarn({ betaFast: 4, betaSlow: 2 });
  assertClose(b.invFreq, expect(Math.floor(dimFor(4)), Math.ceil(dimFor(2))), 1e-12, 'yarn betas');
  // attention factor: explicit, or the mscale ratio, or 1 when factor <= 1
  assert.equal(yarn({ attentionFactor: 1.25 }).attentionScaling, 1.25);
  const ms = yarn({ mscale: 1, mscaleAllDim: 0.5 }).attentionScaling;
  assert.ok(Math.abs(ms - (0.1 * Math.log(4) + 1) / (0.05 * Math.log(4) + 1)) < 1e-15);
  assert.equal(ropeInvFreq(cfgOf(d, { theta, type: 'yarn', factor: 1, originalMaxPositionEmbeddings: orig })).attentionScaling, 1);
  // applyRope scales cos and sin by the attention factor: norms grow by exactly that
  const x = Float32Array.of(1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5, 6, 7, 8);
  const before = rowNorms(x, d)[0];
  applyRope(x, 1, 1, d, Int32Array.of(37), t);
  assert.ok(Math.abs(rowNorms(x, d)[0] / before - t.attentionScaling) < 1e-6);
});

test('bad arguments throw InputError naming them', () => {
  const rope = ropeInvFreq(cfgOf(8, { theta: 10000, type: 'default' }));
  const is = (fn: () => unknown, arg: string) => assert.throws(fn, (e: unknown) => e instanceof InputError && e.arg === arg);
  is(() => applyRope(new Float32Array(15), 2, 1, 8, Int32Array.of(0, 1), rope), 'x');
  is(() => applyRope(new Float32Array(16), 2, 1, 8, Int32Array.of(0), rope), 'positions');
  is(() => applyRope(new Float32Array(12), 2, 1, 6, Int32Array.of(0, 1), rope), 'rope.invFreq');
  is(() => applyRope(new Float32Array(14), 2, 1, 7, Int32Array.of(0, 1), rope), 'headDim');
  is(() => ropeInvFreq(cfgOf(8, { theta: 10000, type: 'llama3', factor: 8 })), 'rope.lowFreqFactor');
  is(() => ropeInvFreq(cfgOf(8, { theta: 10000, type: 'dynamic' as never })), 'rope.type');
});
