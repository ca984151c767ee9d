import { test } from 'node:test';
import assert from 'node:assert/strict';
import { InputError } from '../../src/core/errors.js';
import {
  argmax, crossEntropy, embed, embedBackward, naiveMatmul, rmsNorm, rmsNormBackward, sampleTopP, silu, swiglu, swigluBackward,
} from '../../src/model/layers.js';
import { assertClose, freshSeed, randn, rng } from '../helpers/check.js';

/** Central finite differences of a float64 scalar function, element by element. */
function numGrad(f: (x: Float64Array) => number, x0: ArrayLike<number>, h = 1e-5): Float64Array {
  const x = Float64Array.from(x0);
  const g = new Float64Array(x.length);
  for (let i = 0; i < x.length; i++) {
    const v = x[i];
    x[i] = v + h;
    const a = f(x);
    x[i] = v - h;
    const b = f(x);
    x[i] = v;
    g[i] = (a - b) / (2 * h);
  }
  return g;
}

/** float64 RMSNorm written independently: y = w * x / rms(x). */
function rmsRef(x: ArrayLike<number>, rows: number, dim: number, w: ArrayLike<number>, eps: number): Float64Array {
  const y = new Float64Array(rows * dim);
  for (let r = 0; r < rows; r++) {
    let ms = 0;
    for (let i = 0; i < dim; i++) ms += x[r * dim + i] ** 2 / dim;
    const rms = Math.sqrt(ms + eps);
    for (let i = 0; i < dim; i++) y[r * dim + i] = (w[i] * x[r * dim + i]) / rms;
  }
  return y;
}

test('naiveMatmul: out = x · wᵀ', () => {
  const out = new Float32Array(4);
  naiveMatmul(Float32Array.of(1, 2, 3, 4, 5, 6), Float32Array.of(1, 0, -1, 2, 1, 0), 2, 3, 2, out);
  assert.deepEqual([...out], [1 - 3, 2 + 2, 4 - 6, 8 + 5]);
  const named = (arg: string) => (e: unknown) => e instanceof InputError && e.arg === arg;
  assert.throws(() => naiveMatmul(new Float32Array(5), new Float32Array(6), 2, 3, 2, out), named('x'));
  assert.throws(() => naiveMatmul(new Float32Array(6), new Float32Array(7), 2, 3, 2, out), named('w'));
  assert.throws(() => naiveMatmul(new Float32Array(6), new Float32Array(6), 2, 3, 2, new Float32Array(3)), named('out'));
});

test('rmsNorm forward against float64, in place, and the saved 1/rms', () => {
  const seed = freshSeed();
  const r = rng(seed);
  const rows = 5, dim = 24, eps = 1e-5;
  const x = randn(rows * dim, r, 3);
  const w = randn(dim, r);
  const out = new Float32Array(rows * dim);
  const inv = new Float32Array(rows);
  rmsNorm(x, rows, dim, w, eps, out, inv);
  assertClose(out, rmsRef(x, rows, dim, w, eps), 2e-7, `rmsNorm (seed ${seed})`);
  const ms = x.subarray(0, dim).reduce((s, v) => s + v * v, 0) / dim;
  assert.ok(Math.abs(inv[0] - 1 / Math.sqrt(ms + eps)) < 1e-6 * inv[0]);
  const y = x.slice();
  rmsNorm(y, rows, dim, w, eps, y);
  assert.deepEqual(y, out, 'out may alias x');
  assert.throws(() => rmsNorm(x, rows, dim, new Float32Array(dim - 1), eps, out), (e: unknown) => e instanceof InputError && e.arg === 'weight');
});

test('rmsNormBackward against finite differences (dx and accumulated dweight)', () => {
  const seed = freshSeed();
  const r = rng(seed);
  const rows = 3, dim = 10, eps = 1e-6;
  const x = randn(rows * dim, r), w = randn(dim, r), dy = randn(rows * dim, r);
  const loss = (xx: ArrayLike<number>, ww: ArrayLike<number>) => rmsRef(xx, rows, dim, ww, eps).reduce((s, v, i) => s + v * dy[i], 0);
  const inv = new Float32Array(rows);
  rmsNorm(x, rows, dim, w, eps, new Float32Array(rows * dim), inv);
  const dx = new Float32Array(rows * dim);
  const dw = new Float32Array(dim).fill(0.5); // accumulates on top of what is there
  rmsNormBackward(x, rows, dim, w, inv, dy, dx, dw);
  assertClose(dx, numGrad((xx) => loss(xx, w), x), 1e-5, `dx (seed ${seed})`);
  const ndw = numGrad((ww) => loss(x, ww), w).map((v) => v + 0.5);
  assertClose(dw, ndw, 1e-5, `dweight (seed ${seed})`);
  // invRms = null recomputes it
  const dx2 = new Float32Array(rows * dim);
  rmsNormBackward(x, rows, dim, w, null, dy, dx2, new Float32Array(dim), eps);
  assertClose(dx2, dx, 1e-6, 'recomputed 1/rms');
});

test('swiglu forward against float64 and backward against finite differences', () => {
  const seed = freshSeed();
  const r = rng(seed);
  const n = 40;
  const g = randn(n, r, 4), u = randn(n, r), dy = randn(n, r);
  g[0] = -80; // exp overflow side stays finite
  g[1] = 60;
  const out = new Float32Array(n);
  swiglu(g, u, out);
  assertClose(out, Array.from(g, (v, i) => (v / (1 + Math.exp(-v))) * u[i]), 1e-7, 'swiglu');
  assert.equal(silu(0), 0);
  assert.ok(Math.abs(silu(1) - 1 / (1 + Math.exp(-1))) < 1e-16);
  const dg = new Float32Array(n), du = new Float32Array(n);
  swigluBackward(g, u, dy, dg, du);
  const f = (gg: ArrayLike<number>, uu: ArrayLike<number>) => {
    let s = 0;
    for (let i = 0; i < n; i++) s += dy[i] * (gg[i] / (1 + Math.exp(-gg[i]))) * uu[i];
    return s;
  };
  assertClose(dg, numGrad((gg) => f(gg, u), g), 1e-6, `dgate (seed ${seed})`);
  assertClose(du, numGrad((uu) => f(g, uu), u), 1e-6, `dup (seed ${seed})`);
  assert.ok(dg.every(Number.isFinite) && du.every(Number.isFinite));
});

test('embed copies rows; embedBackward accumulates repeated ids; out-of-range ids name their index', () => {
  const vocab = 5, hidden = 3;
  const table = Float32Array.from({ length: vocab * hidden }, (_, i) => i);
  const ids = Int32Array.of(4, 0, 4);
  const out = new Float32Array(ids.length * hidden);
  embed(ids, table, hidden, out);
  assert.deepEqual([...out], [12, 13, 14, 0, 1, 2, 12, 13, 14]);
  const dt = new Float32Array(vocab * hidden).fill(1);
  embedBackward(ids, Float32Array.of(1, 2, 3, 4, 5, 6, 7, 8, 9), hidden, dt);
  assert.deepEqual([...dt], [5, 6, 7, 1, 1, 1, 1, 1, 1, 1, 1, 1, 9, 11, 13]);
  for (const bad of [5, -1]) {
    assert.throws(() => embed(Int32Array.of(0, 1, bad), table, hidden, new Float32Array(9)), (e: unknown) => {
      assert.ok(e instanceof InputError);
      assert.equal(e.arg, 'ids[2]');
      assert.match(e.message, new RegExp(`token id ${bad} .*< 5`));
      return true;
    });
  }
  assert.throws(() => embedBackward(Int32Array.of(7), new Float32Array(3), hidden, dt), (e: unknown) => e instanceof InputError && e.arg === 'ids[0]');
});

test('crossEntropy: mean over non-ignored rows, stable for large logits, gradient by finite differences', () => {
  const seed = freshSeed();
  const r = rng(seed);
  const rows = 4, vocab = 7;
  const logits = randn(rows * vocab, r, 2);
  const targets = Int32Array.of(3, -100, 0, 6);
  const ref = (l: ArrayLike<number>) => {
    let s = 0;
    for (const row of [0, 2, 3]) {
      let z = 0;
      for (let i = 0; i < vocab; i++) z += Math.exp(l[row * vocab + i]);
      s += Math.log(z) - l[row * vocab + targets[row]];
    }
    return s / 3;
  };
  const d = new Float32Array(rows * vocab).fill(9);
  const res = crossEntropy(logits, rows, vocab, targets, d);
  assert.equal(res.count, 3);
  assert.ok(Math.abs(res.loss - ref(logits)) < 1e-12, `loss ${res.loss} vs ${ref(logits)}`);
  assert.ok(Math.abs(res.sum - 3 * res.loss) < 1e-12);
  assertClose(d, numGrad(ref, logits), 1e-6, `dlogits (seed ${seed})`);
  assert.ok(d.subarray(vocab, 2 * vocab).every((v) => v === 0), 'ignored row has zero gradient');
  // gradScale replaces 1/count (a mean over several ranks)
  const d2 = new Float32Array(rows * vocab);
  crossEntropy(logits, rows, vocab, targets, d2, { gradScale: 0.1 });
  assertClose(d2, Array.from(d, (v) => (v * 3) / 10), 1e-6, 'gradScale');
  // huge logits: log-sum-exp stays finite and exact
  const big = Float32Array.of(1e4, 1e4 - 1, -1e4);
  const b = crossEntropy(big, 1, 3, Int32Array.of(1));
  assert.ok(Math.abs(b.loss - (1 + Math.log(1 + Math.exp(-1) + Math.exp(-2e4 + 0)))) < 1e-9, String(b.loss));
  // every row ignored: loss 0, count 0, zero gradient
  const none = crossEntropy(logits, rows, vocab, Int32Array.of(-100, -100, -100, -100), d);
  assert.deepEqual([none.loss, none.count], [0, 0]);
  assert.ok(d.every((v) => v === 0));
  assert.throws(() => crossEntropy(logits, rows, vocab, Int32Array.of(0, 7, 0, 0)), (e: unknown) => e instanceof InputError && e.arg === 'targets[1]');
});

test('argmax and sampleTopP', () => {
  assert.equal(argmax(Float32Array.of(1, 5, 5, -2)), 1, 'first of ties');
  assert.equal(argmax(Float32Array.of(NaN, -Infinity, -3)), 2);
  const logits = Float32Array.of(1, 3, 2, -1);
  assert.equal(sampleTopP(logits, 0, 0.9, () => 0.99), 1, 'temperature 0 is greedy');
  // probabilities 0.5, 0.3, 0.15, 0.05 (tokens 2, 0, 3, 1)
  const p = [0.3, 0.05, 0.5, 0.15];
  const lp = Float32Array.from(p, Math.log);
  const seen = (topP: number) => {
    const s = new Set<number>();
    for (let i = 0; i < 200; i++) s.add(sampleTopP(lp, 1, topP, () => i / 200));
    return [...s].sort();
  };
  assert.deepEqual(seen(0.5), [2], 'the top token alone reaches 0.5');
  assert.deepEqual(seen(0.7), [0, 2], 'the token that crosses top_p is kept');
  assert.deepEqual(seen(0.9), [0, 2, 3]);
  assert.deepEqual(seen(0.97), [0, 1, 2, 3]);
  assert.deepEqual(seen(1), [0, 1, 2, 3]);
  // frequencies follow softmax(logits / T)
  const seed = freshSeed();
  const r = rng(seed);
  const counts = [0, 0, 0, 0];
  const n = 40000;
  for (let i = 0; i < n; i++) counts[sampleTopP(lp, 2, 1, r)]++;
  const q = p.map((v) => Math.sqrt(v));
  const zq = q.reduce((a, b) => a + b);
  counts.forEach((c, i) => assert.ok(Math.abs(c / n - q[i] / zq) < 0.015, `token ${i}: ${c / n} vs ${q[i] / zq} (seed ${seed})`));
  assert.throws(() => sampleTopP(lp, -1, 1, r), (e: unknown) => e instanceof InputError && e.arg === 'temperature');
  assert.throws(() => sampleTopP(lp, 1, 0, r), (e: unknown) => e instanceof InputError && e.arg === 'topP');
});
