import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CpuGroup } from '../../src/cpu/group.js';
import { ringPlan } from '../../src/cpu/ring-plan.js';
import { MAILBOX_BYTES } from '../../src/cpu/rank.js';
import { shardPositions, gatherRows } from '../../src/core/layout.js';
import { attention } from '../../src/attention.js';
import type { AttnParams } from '../../src/cpu/device.js';
import { assertClose, freshSeed, randn, rng } from '../helpers/check.js';
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
        for (let q = 0; q < P; q++) for (const i of [0, n - 1].filter((i) => i >= 0 && i < n)) assert.equal(all[q][i], q * 1000 + i);
        for (const i of [0, n - 1].filter((i) => i >= 0 && i < n)) assert.equal(sum[i], 3000 + 3 * i);
      }
    }
  } finally {
    await group.close();
  }
});
