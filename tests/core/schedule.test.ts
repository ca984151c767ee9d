import { test } from 'node:test';
import assert from 'node:assert/strict';
import { blockAt, ringSchedule, sinkRows, transfers, finalHolder } from '../../src/core/schedule.js';
import { shardPositions, LAYOUTS } from '../../src/core/layout.js';
import { refVisible, type RefMask } from '../ref/attention64.js';
import { cudaRingPlan } from '../../src/cuda/ring.js';
import { ringPlan } from '../../src/cpu/ring-plan.js';

/** Brute force: does rank r's shard see any key of block b? */
function needs(pos: Int32Array[], m: RefMask, r: number, b: number): boolean {
  for (const i of pos[r]) for (const j of pos[b]) if (refVisible(m, i, j)) return true;
  return false;
}

test('full attention: every rank computes every block and P(P-1) transfers move', () => {
  for (const P of [1, 2, 3, 4, 7]) {
    const s = ringSchedule(shardPositions(100, P, 'contiguous'), {});
    assert.ok(s.compute.flat().every((c) => c === 'full'));
    assert.equal(transfers(s), P * (P - 1));
    for (let b = 0; b < P; b++) assert.equal(finalHolder(s, b), (b + P - 1) % P);
  }
});

test('contiguous causal: block b stops after P-1-b hops; ranks skip what lies in their future', () => {
  const P = 4;
  const s = ringSchedule(shardPositions(64, P, 'contiguous'), { causal: true });
  assert.deepEqual(s.lastStep, [3, 2, 1, 0]);
  assert.equal(transfers(s), 3 + 2 + 1);
  for (let r = 0; r < P; r++) {
    assert.equal(s.compute[r][0], 'partial', 'diagonal');
    for (let st = 1; st < P; st++) assert.equal(s.compute[r][st], blockAt(r, st, P) < r ? 'full' : 'empty');
  }
});

test('zigzag causal: no rank skips a step, and every non-diagonal step is partial (half the pairs)', () => {
  const s = ringSchedule(shardPositions(64, 4, 'zigzag'), { causal: true });
  for (const row of s.compute) {
    assert.ok(row.every((c) => c !== 'empty'));
  }
});

test('sliding window: a block travels only as far as the window reaches', () => {
  // 8 ranks of 100 tokens, window 150: query i sees keys down to i-149, so block b (keys
  // b*100..b*100+99) is seen by ranks b, b+1 and b+2 (query b*100+200 sees key b*100+51).
  const pos = shardPositions(800, 8, 'contiguous');
  const s = ringSchedule(pos, { causal: true, window: 150 });
  for (let b = 0; b < 8; b++) assert.equal(s.lastStep[b], Math.min(2, 7 - b), `block ${b}`);
  assert.equal(transfers(s), s.lastStep.reduce((a, x) => a + Math.max(0, x), 0));
});

test('the schedule agrees with brute force on every layout and mask', () => {
  const masks: RefMask[] = [{}, { causal: true }, { causal: true, window: 9 }, { window: 5 }, { causal: true, window: 7, sinks: 3 }, { causal: true, segments: Int32Array.from({ length: 61 }, (_, i) => (i < 20 ? 0 : i < 45 ? 1 : 2)) }];
  for (const layout of LAYOUTS)
    for (const P of [1, 2, 3, 5])
      for (const m of masks) {
        const pos = shardPositions(61, P, layout);
        const s = ringSchedule(pos, { ...m, segments: m.segments as Int32Array | undefined });
        for (let r = 0; r < P; r++)
          for (let st = 0; st < P; st++) {
            const need = needs(pos, m, r, blockAt(r, st, P));
            // Sound: 'empty' only when nothing is needed (it may say partial when striped is coarse).
            if (s.compute[r][st] === 'empty') assert.ok(!need, `${layout} P=${P} ${JSON.stringify(m)} r=${r} s=${st}`);
            if (layout !== 'striped') assert.equal(s.compute[r][st] !== 'empty', need, `${layout} P=${P} r=${r} s=${st}`);
          }
        // Every needed block reaches its rank: transfers cover steps up to lastStep.
        for (let b = 0; b < P; b++) for (let st = 1; st <= s.lastStep[b]; st++) assert.ok(s.recv[(b + st) % P][st - 1]);
      }
});

test('sink keys off the ring: each rank queries with its whole shard, sink rows included (a bidirectional window reaches past a shard of sinks)', () => {
  // Found by a review: with the sink rows taken out of the query boxes too, a rank whose rows were
  // all sinks skipped every step, and its queries lost the keys after them inside the window.
  const masks: { causal?: boolean; window: number; sinks: number }[] = [{ window: 3, sinks: 4 }, { window: 13, sinks: 21 }, { causal: true, window: 13, sinks: 21 }, { window: 5, sinks: 2 }];
  for (const layout of LAYOUTS)
    for (const P of [2, 3, 5])
      for (const m of masks) {
        const S = m.window === 3 ? 7 : 61;
        const pos = shardPositions(S, P, layout);
        const nSink = sinkRows(pos, m.sinks, 'pos');
        const keys = pos.map((p, r) => p.subarray(nSink[r]));
        const s = ringSchedule(keys, m, pos);
        for (let r = 0; r < P; r++)
          for (let st = 0; st < P; st++) {
            const b = blockAt(r, st, P);
            const need = pos[r].some((i) => keys[b].some((j) => refVisible(m, i, j)));
            const what = `${layout} P=${P} ${JSON.stringify(m)} r=${r} s=${st}`;
            if (s.compute[r][st] === 'empty') assert.ok(!need, what);
            if (layout !== 'striped') assert.equal(s.compute[r][st] !== 'empty', need, what);
          }
      }
  assert.throws(() => sinkRows([Int32Array.of(0, 2, 1)], 1, 'pos'), /pos.*ascending positions on rank 0/);
});

test('both rings plan sinks the same way: S=7 on 2 ranks, window 3, sinks 4, not causal (rank 0 all sinks, its queries 2 and 3 see key 4 on rank 1)', () => {
  const pos = shardPositions(7, 2, 'contiguous');
  const mask = { window: 3, sinks: 4 };
  const cuda = cudaRingPlan(pos, mask);
  const cpu = ringPlan(pos.map((p) => ({ pos: p, seg: undefined })), { H: 1, Hk: 1, D: 4, scale: 0.5, causal: false, window: 3, sinks: 4 }, mask, false);
  for (const plan of [cuda, cpu]) {
    assert.deepEqual(plan.sinkRows, [4, 0]);
    assert.deepEqual(plan.counts, [0, 3]);
    assert.equal(plan.schedule.compute[0][1], 'partial', 'rank 0 computes block 1 at step 1');
    assert.equal(plan.schedule.compute[1][0], 'full', 'rank 1 sees all of its own block');
    assert.equal(plan.schedule.compute[1][1], 'empty', 'block 0 carries no key');
  }
});
