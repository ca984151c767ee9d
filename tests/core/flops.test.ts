import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { visiblePairs } from '../../src/core/flops.js';
import { refVisible } from '../ref/attention64.js';

test('visiblePairs counts exactly what the elementwise mask sees', () => {
  fc.assert(
    fc.property(
      fc.integer({ min: 1, max: 70 }),
      fc.boolean(),
      fc.option(fc.integer({ min: 1, max: 30 }), { nil: undefined }),
      fc.option(fc.integer({ min: 0, max: 8 }), { nil: undefined }),
      fc.option(fc.array(fc.integer({ min: 0, max: 4 }), { minLength: 70, maxLength: 70 }), { nil: undefined }),
      fc.boolean(),
      (S, causal, window, sinks, segs, sortSegs) => {
        const segments = segs ? Int32Array.from(sortSegs ? [...segs].sort((a, b) => a - b) : segs).subarray(0, S) : undefined;
        const spec = { causal, window, sinks, segments };
        let n = 0;
        for (let i = 0; i < S; i++) for (let j = 0; j < S; j++) if (refVisible(spec, i, j)) n++;
        assert.equal(visiblePairs(S, spec), n);
      },
    ),
    { numRuns: 500 },
  );
  assert.equal(visiblePairs(16384, { causal: true }), (16384 * 16385) / 2);
});
