import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CpuGroup } from '../../src/cpu/group.js';
import { ringPlan } from '../../src/cpu/ring-plan.js';
import { MAILBOX_BYTES } from '../../src/cpu/rank.js';
import { shardPositions, gatherRows } from '../../src/core/layout.js';
import { attention } from '../../src/attention.js';
import type { AttnParams } from '../../src/cpu/device.js';
import { assertClose, freshSeed, randn, rng } from '../helpers/check.js';
import { RankError } from '../../src/core/errors.js';
import { TOL } from '../ref/tolerances.js';

const program = new URL('./group-program.js', import.meta.url).href;

test('one group runs many ring passes on the same buffers (forward and backward), each equal to single-device', async () => {
  const seed = freshSeed();
  const r = rng(seed);
  const [S, H, Hk, D, P, L] = [90, 4, 2, 16, 3, 3];
  const params: AttnParams = { H, Hk, D, scale: 1 / Math.sqrt(D), causal: true, window: 40, sinks: 2 };
  const pos = shardPositions(S, P, 'zigzag');
  const layers = Array.from({ length: L }, () => ({ q: randn(S * H * D, r), k: randn(S * Hk * D, r), v: randn(S * Hk * D, r), dO: randn(S * H * D, r) }));
  const plan = ringPlan(pos.map((p) => ({ pos: p })), params, { causal: true, window: 40, sinks: 2 }, true);
  const group = await CpuGroup.start(P, { program });
  try {
    const args = pos.map((p) => ({
      plan,
      params,
      shards: layers.map((x) => ({ q: gatherRows(x.q, H * D, p), k: gatherRows(x.k, Hk * D, p), v: gatherRows(x.v, Hk * D, p), dO: gatherRows(x.dO, H * D, p), pos: p })),
    }));
    const res = await group.call<{ o: Float32Array; dk: Float32Array }[]>('layers', args);
    for (let l = 0; l < L; l++) {
      const x = layers[l];
      const t = (data: Float32Array, h: number) => ({ dtype: 'float32' as const, shape: [S, h, D], data });
      const one = await attention(t(x.q, H), t(x.k, Hk), t(l === 0 ? x.v : layers[l - 1].v, Hk), { causal: true, window: 40, sinks: 2, gradOut: t(x.dO, H), threads: 1 });
      for (let rk = 0; rk < P; rk++) {
        assertClose(res[rk][l].o, gatherRows(one.out.data, H * D, pos[rk]), TOL.ringVsSingle, `seed ${seed} layer ${l} rank ${rk} o`);
        assertClose(res[rk][l].dk, gatherRows(one.dk!.data, Hk * D, pos[rk]), TOL.ringVsSingle, `seed ${seed} layer ${l} rank ${rk} dk`);
      }
    }
  } finally {
    await group.close();
  }
});

test('collectives: allGather, allReduceSum and barrier, across mailbox-sized pieces', async () => {
  const P = 3;
  const group = await CpuGroup.start(P, { program });
  try {
    for (const n of [0, 5, MAILBOX_BYTES / 4 + 7]) {
      const res = await group.call<{ all: Float32Array[]; sum: Float32Array }>('collectives', [n, n, n]);
      for (const { all, sum } of res) {
        assert.equal(all.length, P);
        // Every element (a wrong piece boundary would show in the middle, not at the ends).
        for (let q = 0; q < P; q++) assert.deepEqual(all[q], Float32Array.from({ length: n }, (_, i) => q * 1000 + i), `rank ${q}'s part, n = ${n}`);
        assert.deepEqual(sum, Float32Array.from({ length: n }, (_, i) => 3000 + 3 * i), `sum, n = ${n}`);
      }
    }
  } finally {
    await group.close();
  }
});

test('a rank that fails inside a collective of a long-lived group ends that call with its error, quickly', async () => {
  // Each case on a group that has already run a call (as the model's group has): the other ranks
  // are blocked in the collective and must be woken, not left waiting.
  for (const [rank, where, mode] of [[1, 'allGather', 'throw'], [2, 'barrier', 'throw'], [0, 'allReduceSum', 'exit'], [2, 'allGather', 'exit']] as const) {
    const group = await CpuGroup.start(3, { program });
    try {
      const ok = await group.call<{ sum: Float32Array }>('collectives', [4, 4, 4]);
      assert.deepEqual(ok[0].sum, Float32Array.from([3000, 3003, 3006, 3009]));
      const t0 = Date.now();
      await assert.rejects(
        group.call('dieIn', [0, 1, 2].map(() => ({ rank, where, mode }))),
        (e: unknown) => e instanceof RankError && e.rank === rank && (mode === 'throw' ? new RegExp(`injected failure before ${where}`).test(e.message) : /exited with code 3/.test(e.message)),
        `rank ${rank} ${mode} before ${where}`,
      );
      assert.ok(Date.now() - t0 < 5000, 'stopped promptly');
    } finally {
      await group.close();
    }
  }
});
