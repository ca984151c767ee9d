/** A rank program for the group tests: several ring runs on one set of buffers, and collectives. */
import type { CpuRank } from '../../src/cpu/rank.js';
import type { AttnParams, RankShard } from '../../src/cpu/device.js';
import type { RingPlan } from '../../src/cpu/ring-plan.js';

export const methods = {
  async layers(rank: CpuRank, arg: unknown) {
    const { plan, params, shards } = arg as { plan: RingPlan; params: AttnParams; shards: RankShard[] };
    await rank.prepareRing(plan, params, shards[0].pos.length);
    // Feed each layer's output in as the next layer's values: results depend on every run.
    const outs = [];
    let v = shards[0].v;
    for (const s of shards) {
      const r = rank.ringAttention({ ...s, v }, params);
      outs.push({ o: r.o.slice(), lse: r.lse.slice(), dk: r.dk?.slice(), dv: r.dv?.slice(), dq: r.dq?.slice() });
      v = s.v;
    }
    return outs;
  },
  collectives(rank: CpuRank, arg: unknown) {
    const n = arg as number;
    const mine = Float32Array.from({ length: n }, (_, i) => rank.rank * 1000 + i);
    const all = rank.allGather(mine);
    const sum = mine.slice();
    rank.allReduceSum(sum);
    rank.barrier();
    return { all, sum };
  },
  /** Rank `rank` fails (throws, or its worker exits with code 3) just before `where`; the others enter it. */
  dieIn(rank: CpuRank, arg: unknown) {
    const { rank: who, where, mode } = arg as { rank: number; where: 'allGather' | 'allReduceSum' | 'barrier'; mode: 'throw' | 'exit' };
    const x = new Float32Array(8).fill(rank.rank);
    if (rank.rank === who) {
      if (mode === 'exit') process.exit(3);
      throw new Error(`injected failure before ${where}`);
    }
    if (where === 'allGather') rank.allGather(x);
    else if (where === 'allReduceSum') rank.allReduceSum(x);
    else rank.barrier();
    return null;
  },
};
