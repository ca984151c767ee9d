import { test } from 'node:test';
import assert from 'node:assert/strict';
import { maskBench, seen } from '../../bench/gpu-masks.js';
import { traceBench } from '../../bench/gpu-trace.js';

// The mask benchmark's pieces that need no GPU: the visible-pair count its TFLOP/s are taken
// from, and its argument checks and the trace's (made before a GPU is opened).

test('seen: the keys a query position sees (causal, with and without a window) equal a brute-force count', () => {
  let state = 12345;
  const rand = () => ((state = (state * 1103515245 + 12345) >>> 0) / 2 ** 32);
  for (let trial = 0; trial < 20; trial++) {
    const n = 1 + Math.floor(rand() * 200);
    const kPos = Int32Array.from({ length: n }, () => Math.floor(rand() * 400)).sort();
    const window = trial % 3 === 0 ? 0 : 1 + Math.floor(rand() * 100);
    for (let x = -5; x < 420; x += 7) {
      const brute = kPos.filter((k) => k <= x && (window === 0 || x - k < window)).length;
      assert.equal(seen(kPos, x, window), brute, `n=${n} window=${window} x=${x}`);
    }
  }
});

test('maskBench: a bad size, count or timing mode is an error naming it, before any GPU is opened', () => {
  assert.throws(() => maskBench(100, 5), /S: expected a multiple of 4 of at least 256, got 100/);
  assert.throws(() => maskBench(16384, 0), /reps: expected a positive integer, got 0/);
  assert.throws(() => maskBench(16384, 5, 'kernel'), /masks: the timing is step .*, pass .*, fresh .*, finite .* or spaced .*, got 'kernel'/);
});

test('traceBench: a bad timing mode or kernel is an error naming it, before any GPU is opened', () => {
  assert.throws(() => traceBench(8192, 32, 128, 'none', 20, 'fwd', 'kernel'), /trace: the timing is step .*, pass .*, fresh .*, finite .* or spaced .*, got 'kernel'/);
  assert.throws(() => traceBench(8192, 32, 128, 'none', 20, 'both' as 'fwd'), /kernel: expected fwd, items .* or bwd, got both/);
});
