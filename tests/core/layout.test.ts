import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { LAYOUTS, shard, shardPositions, unshard, parseLayout } from '../../src/core/layout.js';
import { InputError } from '../../src/core/errors.js';

test('unshard(shard(x)) is the identity for every layout, length and ring size', () => {
  fc.assert(
    fc.property(fc.constantFrom(...LAYOUTS), fc.integer({ min: 0, max: 300 }), fc.integer({ min: 1, max: 9 }), fc.integer({ min: 1, max: 3 }), (layout, S, P, row) => {
      const data = Float32Array.from({ length: S * row }, (_, i) => i + 0.5);
      const pos = shardPositions(S, P, layout);
      assert.equal(pos.length, P);
      const all = pos.flatMap((p) => [...p]).sort((a, b) => a - b);
      assert.deepEqual(all, Array.from({ length: S }, (_, i) => i), 'every position exactly once');
      for (const p of pos) for (let i = 1; i < p.length; i++) assert.ok(p[i] > p[i - 1], 'ascending');
      const back = unshard(shard(data, row, pos), row, pos, S);
      assert.deepEqual(back, data);
    }),
  );
});

test('shards are balanced: sizes differ by at most one (two for zigzag)', () => {
  for (const layout of LAYOUTS)
    for (const S of [1, 7, 64, 101, 1000])
      for (const P of [1, 2, 3, 4, 7]) {
        const n = shardPositions(S, P, layout).map((p) => p.length);
        assert.ok(Math.max(...n) - Math.min(...n) <= (layout === 'zigzag' ? 2 : 1), `${layout} S=${S} P=${P}: ${n}`);
      }
});

test('zigzag gives rank r chunks r and 2P-1-r', () => {
  const pos = shardPositions(16, 4, 'zigzag');
  assert.deepEqual([...pos[0]], [0, 1, 14, 15]);
  assert.deepEqual([...pos[1]], [2, 3, 12, 13]);
  assert.deepEqual([...pos[3]], [6, 7, 8, 9]);
  assert.deepEqual([...shardPositions(8, 3, 'striped')[1]], [1, 4, 7]);
});

test('zigzag balances causal work across ranks', () => {
  const S = 4096;
  const P = 4;
  const work = (layout: 'contiguous' | 'zigzag') => shardPositions(S, P, layout).map((p) => p.reduce((s, t) => s + t + 1, 0));
  const z = work('zigzag');
  const c = work('contiguous');
  assert.ok(Math.max(...z) / Math.min(...z) < 1.01, `zigzag ${z}`);
  assert.ok(Math.max(...c) / Math.min(...c) > 5, `contiguous ${c}`);
});

test('bad layout and ring size are named', () => {
  assert.throws(() => parseLayout('spiral'), (e: unknown) => e instanceof InputError && e.arg === 'layout' && /zigzag/.test(e.message));
  assert.throws(() => shardPositions(10, 0, 'zigzag'), (e: unknown) => e instanceof InputError && e.arg === 'devices');
});
