import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { classifyBlock, visible, validateMask, type MaskSpec } from '../../src/core/mask.js';
import { InputError } from '../../src/core/errors.js';
import { refVisible } from '../ref/attention64.js';

const specArb = fc.record({
  causal: fc.boolean(),
  window: fc.option(fc.integer({ min: 1, max: 40 }), { nil: undefined }),
  sinks: fc.option(fc.integer({ min: 0, max: 6 }), { nil: undefined }),
});

test('visible() agrees with the independent reference on every pair', () => {
  fc.assert(
    fc.property(specArb, fc.integer({ min: 0, max: 60 }), fc.integer({ min: 0, max: 60 }), (spec, i, j) => {
      assert.equal(visible(spec, i, j), refVisible(spec, i, j));
    }),
  );
});

test('classifyBlock is exact for contiguous boxes without segments', () => {
  fc.assert(
    fc.property(specArb, fc.nat(50), fc.nat(12), fc.nat(50), fc.nat(12), (spec, qLo, qn, kLo, kn) => {
      const qHi = qLo + qn;
      const kHi = kLo + kn;
      let any = false;
      let all = true;
      for (let i = qLo; i <= qHi; i++)
        for (let j = kLo; j <= kHi; j++) {
          const v = refVisible(spec, i, j);
          any ||= v;
          all &&= v;
        }
      const want = !any ? 'empty' : all ? 'full' : 'partial';
      assert.equal(classifyBlock(spec, { qLo, qHi, kLo, kHi }), want, JSON.stringify({ spec, qLo, qHi, kLo, kHi }));
    }),
    { numRuns: 3000 },
  );
});

test('classifyBlock with segments is sound: full means all visible, empty means none', () => {
  fc.assert(
    fc.property(specArb, fc.array(fc.integer({ min: 0, max: 3 }), { minLength: 40, maxLength: 40 }), fc.nat(30), fc.nat(9), fc.nat(30), fc.nat(9), (spec, segs, qLo, qn, kLo, kn) => {
      const segments = Int32Array.from(segs.sort((a, b) => a - b));
      const m: MaskSpec = { ...spec, segments };
      const qHi = qLo + qn;
      const kHi = kLo + kn;
      const seg = (lo: number, hi: number) => [Math.min(...segments.subarray(lo, hi + 1)), Math.max(...segments.subarray(lo, hi + 1))];
      const [qSegLo, qSegHi] = seg(qLo, qHi);
      const [kSegLo, kSegHi] = seg(kLo, kHi);
      const c = classifyBlock(m, { qLo, qHi, kLo, kHi, qSegLo, qSegHi, kSegLo, kSegHi });
      for (let i = qLo; i <= qHi; i++)
        for (let j = kLo; j <= kHi; j++) {
          const v = refVisible(m, i, j);
          if (c === 'full') assert.ok(v, `full but (${i},${j}) hidden`);
          if (c === 'empty') assert.ok(!v, `empty but (${i},${j}) visible`);
        }
    }),
    { numRuns: 2000 },
  );
});

test('classifyBlock examples', () => {
  assert.equal(classifyBlock({ causal: true }, { qLo: 0, qHi: 63, kLo: 64, kHi: 127 }), 'empty');
  assert.equal(classifyBlock({ causal: true }, { qLo: 64, qHi: 127, kLo: 0, kHi: 63 }), 'full');
  assert.equal(classifyBlock({ causal: true }, { qLo: 0, qHi: 63, kLo: 0, kHi: 63 }), 'partial');
  // Window 16: keys 0..63 are out of reach for queries 200..263 ...
  assert.equal(classifyBlock({ causal: true, window: 16 }, { qLo: 200, qHi: 263, kLo: 0, kHi: 63 }), 'empty');
  // ... except the 4 sinks.
  assert.equal(classifyBlock({ causal: true, window: 16, sinks: 4 }, { qLo: 200, qHi: 263, kLo: 0, kHi: 63 }), 'partial');
  assert.equal(classifyBlock({ causal: true, window: 16, sinks: 4 }, { qLo: 200, qHi: 263, kLo: 0, kHi: 3 }), 'full');
});

test('validateMask names the bad argument', () => {
  assert.throws(() => validateMask({ window: 0 }), (e: unknown) => e instanceof InputError && e.arg === 'window' && /positive integer/.test(e.message));
  assert.throws(() => validateMask({ sinks: -1 }), (e: unknown) => e instanceof InputError && e.arg === 'sinks');
  // int32 in the kernels: refused here, not by a worker after the ring has started.
  assert.throws(() => validateMask({ window: 2 ** 31 }), (e: unknown) => e instanceof InputError && e.arg === 'window' && /at most 2147483647/.test(e.message));
  assert.throws(() => validateMask({ window: 8, sinks: 2 ** 31 }), (e: unknown) => e instanceof InputError && e.arg === 'sinks' && /at most 2147483647/.test(e.message));
  validateMask({ window: 2 ** 31 - 1, sinks: 2 ** 31 - 1 });
  assert.throws(() => validateMask({ causal: true, sinks: 4 }), (e: unknown) => e instanceof InputError && e.arg === 'sinks' && /window/.test(e.message));
  validateMask({ causal: true, sinks: 0 });
  validateMask({ window: 8, sinks: 4 });
  assert.throws(() => validateMask({ segments: new Int32Array(3) }, 4), (e: unknown) => e instanceof InputError && e.arg === 'segments' && /4/.test(e.message));
});
