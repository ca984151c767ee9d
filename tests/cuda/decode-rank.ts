// One rank of the 2-GPU decode combine test (tests/cuda/decode.gpu.test.ts), started by launch():
//   node decode-rank.js <seed>
// Every rank draws the same problem, keeps its contiguous share of each cache, decodes it on its
// GPU into fresh (o, lse), and calls DecodeCombiner.combine; every rank then compares the merged
// result with the float64 reference over the whole caches and prints
// "RESULT {rank, name, dtype, errO, errL, hash}" (hash: of the result's bits, equal on all ranks).
import { createHash } from 'node:crypto';
import type { CudaDType } from '../../src/cuda/convert.js';
import { encode } from '../../src/cuda/convert.js';
import type { DeviceBuffer } from '../../src/cuda/context.js';
import { CudaDecode, DecodeCombiner, type DeviceDecodeCache } from '../../src/cuda/decode.js';
import { rankMain } from '../../src/cuda/group.js';
import { relErr, rng } from '../helpers/check.js';
import { refDecode } from '../ref/decode64.js';
import { makeProblem, running, type Mask } from './decode-problems.js';

const seed = Number(process.argv[2] ?? 1);

const CASES: { name: string; dtype: CudaDType; D: number; Sq: number; mask: Mask; lens: number[] }[] = [
  { name: 'bf16 causal D128 GQA 4:1 B=2', dtype: 'bfloat16', D: 128, Sq: 1, mask: { causal: true }, lens: [5000, 333] },
  { name: 'fp32 causal window 700 + 4 sinks D64 Sq=4', dtype: 'float32', D: 64, Sq: 4, mask: { causal: true, window: 700, sinks: 4 }, lens: [3000] },
  { name: 'fp16 causal D64, a cache shorter than the ranks', dtype: 'float16', D: 64, Sq: 2, mask: { causal: true }, lens: [1, 900] },
];

await rankMain(async (g) => {
  const ctx = g.ctx;
  const dec = new CudaDecode(ctx);
  const combiner = new DecodeCombiner(g);
  for (const c of CASES) {
    const r = rng(seed + c.D);
    const p = makeProblem({ lens: c.lens, Sq: c.Sq, H: 8, Hk: 2, D: c.D, mask: c.mask }, c.dtype, r);
    const fresh = running(p, true, r);
    const ref = refDecode(p, fresh.o, fresh.lse);
    const bufs: DeviceBuffer[] = [];
    const up = (x: ArrayBufferView) => {
      const b = ctx.alloc(Math.max(16, x.byteLength));
      bufs.push(b);
      ctx.upload(b, x);
      return b.ptr;
    };
    try {
      const w = p.Hk * p.D;
      const caches: DeviceDecodeCache[] = p.caches.map((cache) => {
        const n = cache.pos.length;
        const lo = Math.floor((n * g.rank) / g.world), hi = Math.floor((n * (g.rank + 1)) / g.world);
        if (hi === lo) return { k: 0, v: 0, pos: 0, n: 0 };
        return { k: up(encode(cache.k.subarray(lo * w, hi * w), c.dtype)), v: up(encode(cache.v.subarray(lo * w, hi * w), c.dtype)), pos: up(cache.pos.subarray(lo, hi)), n: hi - lo };
      });
      const rows = p.B * p.Sq * p.H;
      const o = up(new Float32Array(rows * p.D)), lse = up(new Float32Array(rows).fill(-Infinity));
      dec.forward({ q: up(encode(p.q, c.dtype)), qPos: up(p.qPos), caches, Sq: p.Sq, H: p.H, Hk: p.Hk, D: p.D, dtype: c.dtype, causal: c.mask.causal, window: c.mask.window, sinks: c.mask.sinks, scale: p.scale, o, lse });
      combiner.combine(o, lse, rows, p.D);
      const outO = ctx.download(new Float32Array(rows * p.D), o);
      const outL = ctx.download(new Float32Array(rows), lse);
      const hash = createHash('sha256').update(new Uint8Array(outO.buffer)).update(new Uint8Array(outL.buffer)).digest('hex').slice(0, 16);
      console.log(`RESULT ${JSON.stringify({ rank: g.rank, name: c.name, dtype: c.dtype, errO: relErr(outO, ref.o), errL: relErr(outL, ref.lse), hash })}`);
    } finally {
      ctx.sync();
      for (const b of bufs) ctx.free(b);
    }
  }
  combiner.dispose();
  dec.dispose();
});
