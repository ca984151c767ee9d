// One rank of the GPU ring tests (tests/cuda/ring.gpu.test.ts), started by launch():
//   node ring-rank.js cases <seed>   every case: the ring's rows of this rank against one GPU
//                                     (same kernels, whole tensors) and the float64 reference;
//                                     prints "RESULT {json}" per case
//   node ring-rank.js fail           rank 1 throws after NCCL init, while rank 0 is in the ring
import { attentionCuda } from '../../src/cuda/index.js';
import { roundTo, type CudaDType } from '../../src/cuda/convert.js';
import { rankMain } from '../../src/cuda/group.js';
import { ringAttentionCuda } from '../../src/cuda/ring.js';
import { gatherRows, shardPositions, type Layout } from '../../src/core/layout.js';
import { refBackward, type RefMask } from '../ref/attention64.js';
import { randn, rng } from '../helpers/check.js';

interface Case {
  name: string;
  S: number;
  H: number;
  Hk: number;
  D: number;
  dtype: CudaDType;
  layout: Layout;
  mask: RefMask;
}

export const CASES: Case[] = [
  { name: 'causal zigzag bf16 GQA 8:2 D128', S: 300, H: 8, Hk: 2, D: 128, dtype: 'bfloat16', layout: 'zigzag', mask: { causal: true } },
  { name: 'causal zigzag fp32 GQA 4:2 D64', S: 259, H: 4, Hk: 2, D: 64, dtype: 'float32', layout: 'zigzag', mask: { causal: true } },
  { name: 'full zigzag bf16 D64', S: 200, H: 4, Hk: 4, D: 64, dtype: 'bfloat16', layout: 'zigzag', mask: {} },
  { name: 'causal window 48 + 4 sinks contiguous bf16 GQA 4:1 D128', S: 333, H: 4, Hk: 1, D: 128, dtype: 'bfloat16', layout: 'contiguous', mask: { causal: true, window: 48, sinks: 4 } },
  { name: 'causal window 40 + 3 sinks zigzag fp32 GQA 6:3 D64', S: 280, H: 6, Hk: 3, D: 64, dtype: 'float32', layout: 'zigzag', mask: { causal: true, window: 40, sinks: 3 } },
  { name: 'window 30 (bidirectional) striped fp16 D64', S: 150, H: 2, Hk: 1, D: 64, dtype: 'float16', layout: 'striped', mask: { window: 30 } },
];

function relErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let num = 0, den = 0;
  for (let i = 0; i < a.length; i++) {
    if (!Number.isFinite(b[i])) {
      if (a[i] !== b[i]) return Infinity;
      continue;
    }
    if (!Number.isFinite(a[i])) return Infinity;
    num = Math.max(num, Math.abs(a[i] - b[i]));
    den = Math.max(den, Math.abs(b[i]));
  }
  return den > 0 ? num / den : num;
}

const mode = process.argv[2] ?? 'cases';
const seed = Number(process.argv[3] ?? 1);

await rankMain(async (g) => {
  if (mode === 'fail') {
    const P = g.world, S = 4096, H = 8, Hk = 2, D = 128;
    const positions = shardPositions(S, P, 'zigzag');
    const r = rng(5);
    const mine = positions[g.rank];
    const shard = { q: randn(mine.length * H * D, r), k: randn(mine.length * Hk * D, r), v: randn(mine.length * Hk * D, r), pos: mine };
    await ringAttentionCuda(g, shard, { positions, causal: true, H, Hk, D }); // one good run
    if (g.rank === 1) throw new Error('injected failure on rank 1 after NCCL init');
    for (let i = 0; i < 1000; i++) await ringAttentionCuda(g, shard, { positions, causal: true, H, Hk, D });
    return;
  }
  for (const c of CASES) {
    const { S, H, Hk, D, dtype } = c;
    const r = rng(seed + S);
    const q = randn(S * H * D, r), k = randn(S * Hk * D, r), v = randn(S * Hk * D, r), dO = randn(S * H * D, r);
    const positions = shardPositions(S, g.world, c.layout);
    const mine = positions[g.rank];
    const opts = { positions, causal: !!c.mask.causal, window: c.mask.window, sinks: c.mask.sinks, dtype, H, Hk, D, backward: true };
    const ring = await ringAttentionCuda(g, { q: gatherRows(q, H * D, mine), k: gatherRows(k, Hk * D, mine), v: gatherRows(v, Hk * D, mine), dO: gatherRows(dO, H * D, mine), pos: mine }, opts);
    const one = await attentionCuda({ dtype: 'float32', shape: [S, H, D], data: q }, { dtype: 'float32', shape: [S, Hk, D], data: k }, { dtype: 'float32', shape: [S, Hk, D], data: v }, {
      causal: c.mask.causal, window: c.mask.window, sinks: c.mask.sinks, dtype, gradOut: { dtype: 'float32', shape: [S, H, D], data: dO }, context: g.ctx,
    });
    const [qr, kr, vr, dOr] = [q, k, v, dO].map((x) => roundTo(x, dtype));
    const refG = refBackward(qr, kr, vr, dOr, S, H, Hk, D, c.mask), ref = refG;
    const rows = (x: ArrayLike<number>, w: number) => gatherRows(Float64Array.from(x) as unknown as Float32Array, w, mine);
    const errs = {
      oVsOne: relErr(ring.o, rows(one.out.data, H * D)), lseVsOne: relErr(ring.lse, rows(one.lse.data, H)),
      dqVsOne: relErr(ring.dq!, rows(one.dq!.data, H * D)), dkVsOne: relErr(ring.dk!, rows(one.dk!.data, Hk * D)), dvVsOne: relErr(ring.dv!, rows(one.dv!.data, Hk * D)),
      oVsRef: relErr(ring.o, rows(ref.o, H * D)), lseVsRef: relErr(ring.lse, rows(ref.lse, H)),
      dqVsRef: relErr(ring.dq!, rows(refG.dq, H * D)), dkVsRef: relErr(ring.dk!, rows(refG.dk, Hk * D)), dvVsRef: relErr(ring.dv!, rows(refG.dv, Hk * D)),
    };
    const transfers = ring.events.filter((e) => e.kind === 'transfer').length;
    console.log(`RESULT ${JSON.stringify({ rank: g.rank, name: c.name, dtype, errs, transfers, forwardMs: ring.forwardMs, backwardMs: ring.backwardMs })}`);
  }
});
