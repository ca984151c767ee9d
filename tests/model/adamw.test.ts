import { test } from 'node:test';
import assert from 'node:assert/strict';
import { InputError } from '../../src/core/errors.js';
import { AdamW, clipGradNorm } from '../../src/model/adamw.js';
import { assertClose } from '../helpers/check.js';

test('AdamW: two steps against hand arithmetic (bias correction, decoupled decay only where asked)', () => {
  const w = Float32Array.of(1, -2);
  const gw = Float32Array.of(0.5, -0.1);
  const b = Float32Array.of(0.3);
  const gb = Float32Array.of(2);
  const lr = 0.1, b1 = 0.9, b2 = 0.999, eps = 1e-8, wd = 0.01;
  const opt = new AdamW([{ param: w, grad: gw, decay: true }, { param: b, grad: gb, decay: false }], { lr, betas: [b1, b2], eps, weightDecay: wd });

  // step 1: m = (1-b1) g, v = (1-b2) g², m̂ = g, v̂ = g², so the step is lr·g/(|g| + eps)
  opt.step();
  const w1 = [1 * (1 - lr * wd) - (lr * 0.5) / (0.5 + eps), -2 * (1 - lr * wd) + (lr * 0.1) / (0.1 + eps)];
  const b1v = 0.3 - (lr * 2) / (2 + eps);
  assertClose(w, w1, 1e-7, 'weights after step 1');
  assertClose(b, [b1v], 1e-7, 'bias after step 1 (no decay)');
  assert.equal(opt.stepCount, 1);

  // step 2 with new gradients and a scheduled lr
  gw.set([-0.2, 0.4]);
  gb.set([1]);
  const lr2 = 0.05;
  opt.step(lr2);
  const upd = (p: number, g1: number, g2: number, decay: boolean) => {
    const m = b1 * ((1 - b1) * g1) + (1 - b1) * g2;
    const v = b2 * ((1 - b2) * g1 * g1) + (1 - b2) * g2 * g2;
    const mh = m / (1 - b1 ** 2);
    const vh = v / (1 - b2 ** 2);
    return p * (decay ? 1 - lr2 * wd : 1) - (lr2 * mh) / (Math.sqrt(vh) + eps);
  };
  assertClose(w, [upd(w1[0], 0.5, -0.2, true), upd(w1[1], -0.1, 0.4, true)], 1e-6, 'weights after step 2');
  assertClose(b, [upd(b1v, 2, 1, false)], 1e-6, 'bias after step 2');
});

test('AdamW state: save and load resumes exactly; malformed state is refused', () => {
  const mk = () => {
    const p = Float32Array.of(0.5, -0.25, 2);
    const g = new Float32Array(3);
    const q = Float32Array.of(1);
    const gq = new Float32Array(1);
    const opt = new AdamW([{ param: p, grad: g, decay: true, name: 'w' }, { param: q, grad: gq, decay: false, name: 'norm' }], { lr: 0.01 });
    return { p, g, q, gq, opt };
  };
  const a = mk();
  for (const grads of [[1, 2, 3], [-1, 0.5, 0]]) {
    a.g.set(grads);
    a.gq.set([grads[0]]);
    a.opt.step();
  }
  const state = a.opt.stateDict();
  assert.deepEqual(Object.keys(state).sort(), ['exp_avg.norm', 'exp_avg.w', 'exp_avg_sq.norm', 'exp_avg_sq.w', 'step']);
  assert.deepEqual([...state.step], [2]);
  assert.ok(Object.values(state).every((v) => v instanceof Float32Array));

  const b = mk();
  b.p.set(a.p);
  b.q.set(a.q);
  b.opt.loadStateDict(state);
  assert.equal(b.opt.stepCount, 2);
  for (const o of [a, b]) {
    o.g.set([0.3, -0.3, 1]);
    o.gq.set([0.7]);
    o.opt.step();
  }
  assert.deepEqual(b.p, a.p);
  assert.deepEqual(b.q, a.q);

  const is = (fn: () => unknown, arg: string) => assert.throws(fn, (e: unknown) => e instanceof InputError && e.arg === arg);
  const { step: _s, ...noStep } = state;
  is(() => b.opt.loadStateDict(noStep), 'state.step');
  const { ['exp_avg.w']: _m, ...noM } = state;
  is(() => b.opt.loadStateDict(noM), 'state.exp_avg.w');
  is(() => b.opt.loadStateDict({ ...state, 'exp_avg_sq.norm': new Float32Array(2) }), 'state.exp_avg_sq.norm');
  is(() => b.opt.loadStateDict({ ...state, 'exp_avg.bias': new Float32Array(1) }), 'state.exp_avg.bias');
  assert.equal(b.opt.stepCount, 3, 'a refused state changes nothing');
});

test('AdamW: bad options and mismatched grads throw InputError', () => {
  const p = new Float32Array(2);
  const is = (fn: () => unknown, arg: string) => assert.throws(fn, (e: unknown) => e instanceof InputError && e.arg === arg);
  is(() => new AdamW([{ param: p, grad: new Float32Array(3), decay: true }], { lr: 1 }), 'params[0]');
  is(() => new AdamW([], { lr: -1 }), 'lr');
  is(() => new AdamW([], { lr: 1, betas: [1, 0.9] }), 'betas[0]');
  is(() => new AdamW([{ param: p, grad: p, decay: true, name: 'a' }, { param: p, grad: p, decay: true, name: 'a' }], { lr: 1 }), 'params');
});

test('clipGradNorm: global L2 norm, scaled by maxNorm/(norm + 1e-6) only when above', () => {
  const a = Float32Array.of(3, 4);
  const b = Float32Array.of(12);
  assert.equal(clipGradNorm([a, b], 20), 13);
  assert.deepEqual([...a, ...b], [3, 4, 12], 'under the limit: untouched');
  assert.equal(clipGradNorm([a, b], 6.5), 13);
  const c = 6.5 / (13 + 1e-6);
  assertClose([...a, ...b], [3 * c, 4 * c, 12 * c], 1e-7, 'clipped');
  const n = Math.sqrt(a.reduce((s, v) => s + v * v, 0) + b[0] * b[0]);
  assert.ok(Math.abs(n - 6.5) < 1e-5);
  const bad = Float32Array.of(1, NaN);
  assert.ok(Number.isNaN(clipGradNorm([bad], 1)));
  assert.equal(bad[0], 1, 'non-finite norm: untouched');
  assert.throws(() => clipGradNorm([a], 0), (e: unknown) => e instanceof InputError && /^max/i.test(e.arg), 'names the clipping norm');
});
