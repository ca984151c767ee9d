import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { cudaAvailable } from '../../src/cuda/check.js';
import { CudaContext, type DeviceBuffer } from '../../src/cuda/context.js';
import { cudaKernel } from '../../src/cuda/attention.js';
import { attentionCuda } from '../../src/cuda/index.js';
import { encode, roundTo, type CudaDType } from '../../src/cuda/convert.js';
import { refBackward, refVisible, type RefMask } from '../ref/attention64.js';
import { refBlock } from './ref64.js';
import { assertClose, freshSeed, randn, rng, withEnv } from '../helpers/check.js';
import { RefCache } from '../helpers/ref-cache.js';

// The CUDA kernels against the float64 reference, on a GPU; skipped with the reason elsewhere.
// Inputs are fresh random draws (seed printed on failure); the reference runs on the inputs
// rounded to the GPU dtype, and device outputs are NaN-poisoned before their initialisation.

const avail = cudaAvailable();
const skip = avail.ok ? false : `${avail.reason} (GPU tests skipped)`;
let ctx: CudaContext | undefined;
const context = () => (ctx ??= CudaContext.open(0));
after(() => ctx?.dispose());

const TOL: Record<CudaDType, { fwd: number; grad: number }> = {
  bfloat16: { fwd: 1e-2, grad: 2e-2 },
  float16: { fwd: 1e-2, grad: 2e-2 },
  float32: { fwd: 1e-5, grad: 1e-5 },
};

interface Case {
  name: string;
  mask: RefMask;
}

function masks(S: number, r: () => number): Case[] {
  // Packed documents: 3-4 segments of random lengths.
  const segments = new Int32Array(S);
  let doc = 0;
  for (let i = 0, next = 1 + Math.floor(r() * S * 0.4); i < S; i++) {
    if (i === next) {
      doc++;
      next = i + 1 + Math.floor(r() * S * 0.4);
    }
    segments[i] = doc;
  }
  return [
    { name: 'none', mask: {} },
    { name: 'causal', mask: { causal: true } },
    { name: 'window 17 (bidirectional)', mask: { window: 17 } },
    { name: 'causal window 23 + 3 sinks', mask: { causal: true, window: 23, sinks: 3 } },
    { name: 'segments', mask: { segments } },
    { name: 'segments causal window 40 + 2 sinks', mask: { segments, causal: true, window: 40, sinks: 2 } },
  ];
}

const HEADS: [number, number][] = [[4, 2], [4, 1], [2, 2], [6, 3]];

// The float64 reference of a case, computed once per file run: the kernel variants (schedules,
// launch orders, backward kernels) are checked on the same fresh inputs, and the reference in
// JavaScript, not the GPU, is what takes this file's time.
// With RINGATTN_REF_CACHE, also on disk across the runs of an A/B script (RefCache).
const refs = new RefCache<ReturnType<typeof refBackward>>();
const maskKey = (m: RefMask) => JSON.stringify({ ...m, segments: m.segments ? Array.from(m.segments).join(',') : undefined });

async function checkCase(dtype: CudaDType, D: number, H: number, Hk: number, S: number, c: Case, seed: number, B = 1): Promise<string> {
  const r = rng(seed);
  const q = randn(B * S * H * D, r), k = randn(B * S * Hk * D, r), v = randn(B * S * Hk * D, r), dO = randn(B * S * H * D, r);
  const shape = (h: number) => (B === 1 ? [S, h, D] : [B, S, h, D]);
  const m = c.mask;
  const res = await attentionCuda({ dtype: 'float32', shape: shape(H), data: q }, { dtype: 'float32', shape: shape(Hk), data: k }, { dtype: 'float32', shape: shape(Hk), data: v }, {
    dtype, causal: m.causal, window: m.window, sinks: m.sinks, segments: m.segments as Int32Array | undefined,
    gradOut: { dtype: 'float32', shape: shape(H), data: dO }, context: context(), poison: true,
  });
  const what = `${res.stats.kernel} D=${D} H=${H} Hk=${Hk} S=${S} B=${B} mask=${c.name} seed=${seed}`;
  const tol = TOL[dtype];
  const [rq, rk, rv, rdO] = [q, k, v, dO].map((x) => roundTo(x, dtype));
  const nq = S * H * D, nk = S * Hk * D;
  for (let b = 0; b < B; b++) {
    const sl = (x: Float32Array, n: number) => x.subarray(b * n, (b + 1) * n);
    // refBackward returns the forward (o, lse) it computed as well
    const g = refs.get(`${dtype} D=${D} H=${H} Hk=${Hk} S=${S} B=${B}/${b} seed=${seed} ${maskKey(m)}`, () =>
      refBackward(sl(rq, nq), sl(rk, nk), sl(rv, nk), sl(rdO, nq), S, H, Hk, D, m));
    assertClose(sl(res.out.data, nq), g.o, tol.fwd, `out ${what}`);
    assertClose(sl(res.lse.data, S * H), g.lse, tol.fwd, `lse ${what}`);
    assertClose(sl(res.dq!.data, nq), g.dq, tol.grad, `dq ${what}`);
    assertClose(sl(res.dk!.data, nk), g.dk, tol.grad, `dk ${what}`);
    assertClose(sl(res.dv!.data, nk), g.dv, tol.grad, `dv ${what}`);
  }
  return what;
}

/**
 * checkCase over every mask for each dtype and head dim, the GQA groupings in turn, S ragged in
 * [65, 65 + spread) (segmented masks at `len`).
 */
async function maskSweep(dtypes: readonly CudaDType[], Ds: readonly number[], seed: number, len: number, spread: number): Promise<void> {
  const r = rng(seed);
  let n = 0;
  for (const dtype of dtypes) {
    for (const D of Ds) {
      for (const c of masks(len, r)) {
        const S = c.mask.segments ? len : 65 + Math.floor(r() * spread);
        const [H, Hk] = HEADS[n++ % HEADS.length];
        await checkCase(dtype, D, H, Hk, S, c, (seed + n * 7919) >>> 0);
      }
    }
  }
}

for (const dtype of ['bfloat16', 'float16', 'float32'] as const) {
  for (const D of [64, 128]) {
    test(`attentionCuda ${dtype} D=${D}: every mask, GQA, ragged S, forward and backward vs float64`, { skip }, async () => {
      await maskSweep([dtype], [D], freshSeed(), 200, 120);
    });
  }
}

// The 16-bit forward on every kernel: mma.sync (attn_fwd.cu) and, on Hopper, wgmma
// (attn_fwd_h.cu on sm_90a: RINGATTN_WGMMA_ATTN=1 one tile at a time, 2 pipelined, 3 ping-pong,
// 4 both, 5 both loading with TMA (the default), 6 that with three consumer warpgroups at D=64,
// 7 that with 176-key tiles at D=128, 8 that in clusters of two multicasting K/V at D=128 (blocks
// without a mask and with an even number of query tiles, such as S = 129-256 in the sweep and the
// 1000 below; the others run ht); =0 mma.sync), across many
// 128-key tiles (the stage ring wraps several times), empty tiles skipped and partial ones
// masked, and a shard of fewer than 64 queries (the second consumer warpgroup has no live row).
// One fresh seed for every schedule: the same inputs, so each case's reference is computed once.
const scheduleSeed = freshSeed();
for (const wgmma of ['0', '1', '2', '3', '4', '5', '6', '7', '8']) {
  test(`attentionCuda 16-bit forward with RINGATTN_WGMMA_ATTN=${wgmma} (${wgmma === '0' ? 'mma.sync' : 'wgmma on Hopper, mma.sync elsewhere'}): every mask at D 64/128, then long sequences of many tiles`, { skip }, async () => {
    const seed = scheduleSeed;
    const cc = context().computeCapability;
    // ht must really load with TMA on Hopper, not fall back to hq unseen.
    if ((wgmma === '5' || wgmma === '6' || wgmma === '7' || wgmma === '8') && cc[0] === 9 && cc[1] === 0) assert.equal(typeof context().drv.cuTensorMapEncodeTiled, 'function', 'cuTensorMapEncodeTiled missing: ht would run hq');
    await withEnv({ RINGATTN_WGMMA_ATTN: wgmma }, async () => {
      if (wgmma === '7' && cc[0] === 9 && cc[1] === 0) assert.match(cudaKernel(context()).name({ dtype: 'bfloat16', D: 128 }), /wgmma-fwd-hl[+/]/, 'hl runs at D=128');
      if (wgmma === '8' && cc[0] === 9 && cc[1] === 0) assert.match(cudaKernel(context()).name({ dtype: 'bfloat16', D: 128 }), /wgmma-fwd-hc[+/]/, 'hc runs at D=128 (unmasked blocks)');
      await maskSweep(['bfloat16', 'float16'], [64, 128], seed, 200, 200);
      for (const [D, S, name, mask] of [
        [128, 1300, 'causal', { causal: true }],
        [64, 1100, 'causal window 300 + 4 sinks', { causal: true, window: 300, sinks: 4 }],
        [128, 777, 'none', {}],
        [128, 1000, 'none', {}],
        [64, 1500, 'causal', { causal: true }],
        [128, 40, 'causal', { causal: true }],
        [64, 40, 'none', {}],
      ] as const) await checkCase('bfloat16', D, 4, 2, S, { name, mask }, (seed + D + S) >>> 0);
    });
  });
}

// The tensor-core kernels' launch order (launchTile in kernels/common.cuh): heads interleaved in
// groups with a short last one (6 heads in groups of 5, and of 4 by default here; the backward's
// 3 KV heads x split alike), and one head at a time; on the Hopper kernels and on mma.sync.
test('launch orders: heads interleaved in groups of RINGATTN_HEAD_GROUP (a short last group) or one at a time, forward and backward, wgmma and mma.sync, vs float64', { skip }, async () => {
  const seed = freshSeed();
  for (const kernels of [{}, { RINGATTN_WGMMA_ATTN: '0', RINGATTN_WGMMA_BWD: '0' }]) {
    for (const group of ['5', '1', '']) {
      await withEnv({ ...kernels, RINGATTN_HEAD_GROUP: group }, async () => {
        await checkCase('bfloat16', 128, 6, 3, 1000, { name: `causal, head group ${group || 'auto'}`, mask: { causal: true } }, seed + 1);
        await checkCase('bfloat16', 64, 6, 3, 1300, { name: `causal window 200, head group ${group || 'auto'}`, mask: { causal: true, window: 200 } }, seed + 2);
      });
    }
  }
});

// ht (the default at D=128) runs on a persistent grid whose CTAs take (query tile, head) items from
// a counter (kernels/attn_fwd_h.cu): with RINGATTN_FWD_CTAS capping the grid at 1, 3 or 7 CTAs
// every CTA computes many items in turn (the stage ring and Q's barrier run on across them), in
// each launch order; and blocks in which whole query tiles see nothing (the producer skips those
// items, and a CTA may find none left) leave their rows untouched.
test('ht persistent grid: 1, 3 and 7 CTAs taking many items each, every mask, head groups, query tiles that see nothing, vs float64', { skip }, async () => {
  const seed = freshSeed();
  const c = context();
  const kern = cudaKernel(c);
  const hopper = c.computeCapability[0] === 9 && c.computeCapability[1] === 0;
  for (const ctas of ['1', '3', '7']) {
    await withEnv({ RINGATTN_WGMMA_ATTN: '5', RINGATTN_FWD_CTAS: ctas }, async () => {
      if (hopper) assert.match(kern.name({ dtype: 'bfloat16', D: 128 }), /wgmma-fwd-ht[+/]/, 'ht runs');
      // 3 CTAs: both 16-bit types and D=64 too (ht at D=64 has four stages)
      await maskSweep(ctas === '3' ? ['bfloat16', 'float16'] : ['bfloat16'], ctas === '3' ? [64, 128] : [128], (seed + Number(ctas)) >>> 0, 200, 300);
      for (const group of ['1', '5']) {
        await withEnv({ RINGATTN_HEAD_GROUP: group }, () => checkCase('bfloat16', 128, 6, 3, 1000, { name: `causal, ${ctas} CTAs, head group ${group}`, mask: { causal: true } }, (seed + 11) >>> 0));
      }
    });
  }
  // Queries at positions 0..399: four query tiles of 128, launched last tile first. Causal, keys at
  // 300..555: query tiles 0 and 1 (positions 0..255) see nothing of the block, so the last items
  // are skipped; tile 2 sees keys 300..383. Causal window 128, keys at 0..255: tile 3 (384..399)
  // sees nothing and is the first item, skipped before tile 2 (keys from 129) is computed.
  const r = rng(seed);
  const H = 3, Hk = 1, D = 128, Sq = 400, Sk = 256, dtype = 'bfloat16' as const;
  const qPos = Int32Array.from({ length: Sq }, (_, i) => i);
  const q = roundTo(randn(Sq * H * D, r), dtype), k = roundTo(randn(Sk * Hk * D, r), dtype), v = roundTo(randn(Sk * Hk * D, r), dtype);
  for (const [k0, window] of [[300, 0], [0, 128]] as const) {
    const kPos = Int32Array.from({ length: Sk }, (_, j) => k0 + j);
    const ref = refBlock({ q, k, v, qPos, kPos, Sq, Sk, H, Hk, D, scale: 0.1 }, { causal: true, window: window || undefined });
    for (const ctas of ['1', '2', '']) {
      await withEnv({ RINGATTN_WGMMA_ATTN: '5', RINGATTN_FWD_CTAS: ctas }, () => {
        const b = caseBuffers(c);
        try {
          const o = b.init(Sq * H * D, 0x7fc00000), lse = b.init(Sq * H, 0xff800000);
          kern.forward({ q: b.up(encode(q, dtype)), k: b.up(encode(k, dtype)), v: b.up(encode(v, dtype)), qPos: b.up(qPos), kPos: b.up(kPos), Sq, Sk, H, Hk, D, dtype, causal: true, window, sinks: 0, scale: 0.1, o, lse });
          kern.finishForward(o, lse, Sq * H, D);
          const what = `${kern.name({ dtype, D })}, keys from ${k0}, window ${window}, ${ctas || 'all'} CTAs, seed ${seed}`;
          assertClose(c.download(new Float32Array(Sq * H * D), o), ref.o, TOL[dtype].fwd, `out ${what}`);
          assertClose(c.download(new Float32Array(Sq * H), lse), ref.lse, TOL[dtype].fwd, `lse ${what}`);
        } finally {
          b.free();
        }
      });
    }
  }
  kern.dispose();
});

test('attentionCuda: other head dims (generic path), a batch, several 64-key tiles with empty ones skipped', { skip }, async () => {
  const seed = freshSeed();
  await checkCase('bfloat16', 32, 2, 1, 77, { name: 'causal', mask: { causal: true } }, seed);
  await checkCase('float16', 96, 4, 2, 90, { name: 'window 9', mask: { window: 9, sinks: 1 } }, seed + 1);
  await checkCase('float32', 256, 2, 2, 70, { name: 'causal', mask: { causal: true } }, seed + 2);
  await checkCase('bfloat16', 128, 4, 2, 300, { name: 'causal window 70', mask: { causal: true, window: 70 } }, seed + 3, 2);
  await checkCase('float16', 64, 2, 1, 333, { name: 'causal', mask: { causal: true } }, seed + 4);
});

test('mma.sync backward (RINGATTN_WGMMA_BWD=0) with the GQA group split over CTAs (dK/dV by atomics) and without', { skip }, async () => {
  const seed = freshSeed();
  for (const split of ['1', '2', '4', '']) {
    await withEnv({ RINGATTN_BWD_SPLIT: split, RINGATTN_WGMMA_BWD: '0' }, async () => {
      for (const D of [64, 128]) await checkCase('bfloat16', D, 8, 2, 190, { name: `causal, split ${split || 'auto'}`, mask: { causal: true } }, seed + D);
    });
  }
});

// One fresh seed for both Hopper backward kernels (their shared cases' references computed once).
const hopperBwdSeed = freshSeed();

// The Hopper backward (attn_bwd_h.cu, the default on sm_90a; mma.sync elsewhere):
// every mask, GQA, ragged S (several 128-key tiles and query tiles: 128 rows at D=64, 64 at 128), 16-bit at D 64/128,
// the GQA group split over CTAs and not, and a batch.
test('attentionCuda 16-bit backward with RINGATTN_WGMMA_BWD=1 (wgmma on Hopper): every mask, GQA, ragged S, split and not, vs float64', { skip }, async () => {
  const seed = hopperBwdSeed;
  await withEnv({ RINGATTN_WGMMA_BWD: '1' }, async () => {
    await maskSweep(['bfloat16', 'float16'], [64, 128], seed, 300, 300);
    for (const split of ['1', '2', '4']) {
      await withEnv({ RINGATTN_BWD_SPLIT: split }, async () => {
        for (const D of [64, 128]) await checkCase('bfloat16', D, 8, 2, 333, { name: `causal, split ${split}`, mask: { causal: true } }, seed + D + 1);
      });
    }
    await checkCase('bfloat16', 128, 4, 2, 300, { name: 'causal window 70', mask: { causal: true, window: 70 } }, seed + 3, 2);
    // 33 query tiles of 128 (D=64): the per-tile class bits span two words, and the last key
    // tiles see nothing in the first (the search skips whole words), for each of the group's 2 heads.
    await checkCase('bfloat16', 64, 2, 1, 4200, { name: 'causal, 33 query tiles', mask: { causal: true } }, seed + 5);
  });
});

// The TMA-load variant (attn_bwd_ht_*, the default on Hopper; RINGATTN_WGMMA_BWD=2 names it): the same contract, the
// Q/dO tiles by TMA onto mbarriers (rows past Sq zero-filled by the hardware).
test('attentionCuda 16-bit backward with RINGATTN_WGMMA_BWD=2 (wgmma, TMA loads, on Hopper): every mask, GQA, ragged S, split, many query tiles, vs float64', { skip }, async () => {
  const seed = hopperBwdSeed;
  await withEnv({ RINGATTN_WGMMA_BWD: '2' }, async () => {
    await maskSweep(['bfloat16'], [64, 128], seed, 300, 300);
    await checkCase('float16', 128, 4, 2, 333, { name: 'causal window 70', mask: { causal: true, window: 70 } }, seed + 1);
    await withEnv({ RINGATTN_BWD_SPLIT: '2' }, () => checkCase('bfloat16', 128, 8, 2, 333, { name: 'causal, split 2', mask: { causal: true } }, seed + 2));
    // 66 query tiles of 64 (D=128): the per-tile class bits span three words, and the last key
    // tiles see nothing in the first two (the search skips whole words).
    await checkCase('bfloat16', 128, 2, 1, 4200, { name: 'causal, 66 query tiles', mask: { causal: true } }, seed + 5);
    // One and two query tiles a head over a group of 4: the three stages and their phases cycle
    // across head boundaries.
    await withEnv({ RINGATTN_BWD_SPLIT: '1' }, async () => {
      await checkCase('bfloat16', 128, 4, 1, 50, { name: 'one query tile a head', mask: { causal: true } }, seed + 6);
      await checkCase('float16', 64, 4, 1, 200, { name: 'two query tiles a head', mask: {} }, seed + 7);
    });
  });
});

/** Ring-step semantics on device buffers: queries of a shard against two KV blocks elsewhere. */
test('block kernels on global positions: two KV blocks merge into the full result; rows that see nothing stay 0 / -inf', { skip }, async () => {
  const seed = freshSeed();
  const r = rng(seed);
  const c = context();
  const kern = cudaKernel(c);
  const cases = [['bfloat16', 128, true, 0, 0, '0'], ['float16', 64, true, 100, 4, '0'], ['float32', 64, false, 50, 2, undefined],
    ['bfloat16', 128, true, 0, 0, '1'], ['float16', 64, true, 100, 4, '1'], ['bfloat16', 64, true, 0, 0, '2'], ['float16', 64, false, 60, 3, '2'],
    ['bfloat16', 128, true, 0, 0, '2'], ['float16', 128, false, 60, 3, '3'], ['bfloat16', 64, true, 100, 4, '3'], ['bfloat16', 128, true, 100, 4, '4'], ['float16', 64, false, 0, 0, '4'],
    ['bfloat16', 128, true, 0, 0, '5'], ['float16', 64, true, 100, 4, '5'], ['float16', 128, false, 60, 3, '5'],
    ['bfloat16', 64, true, 0, 0, '6'], ['float16', 64, true, 100, 4, '6'], ['bfloat16', 64, false, 60, 3, '6'],
    ['bfloat16', 128, false, 0, 0, undefined, -0.07]] as const; // a negative scale (mma.sync: wgmma takes scale > 0 only)
  for (const [dtype, D, causal, window, sinks, wgmma, scaleGiven] of cases.map((x) => [...x, undefined] as const)) await withEnv({ RINGATTN_WGMMA_ATTN: wgmma, RINGATTN_WGMMA_BWD: wgmma === '5' ? '1' : '0' }, async () => {
    const H = 4, Hk = 2, Sq = 90, S1 = 70, S2 = 81, Sk = S1 + S2;
    // Queries hold positions 60..149 (a shard); keys 0..150 in two blocks, block 2 first in position.
    const qPos = Int32Array.from({ length: Sq }, (_, i) => 60 + i);
    const kPos = Int32Array.from({ length: Sk }, (_, j) => (j < S1 ? S2 + j : j - S1));
    const q = roundTo(randn(Sq * H * D, r), dtype), k = roundTo(randn(Sk * Hk * D, r), dtype), v = roundTo(randn(Sk * Hk * D, r), dtype);
    const dO = roundTo(randn(Sq * H * D, r), dtype);
    const scale = scaleGiven ?? 1 / Math.sqrt(D);
    const m = { causal, window: window || undefined, sinks };
    const ref = refBlock({ q, k, v, qPos, kPos, Sq, Sk, H, Hk, D, scale }, m, dO);
    const { up: upRaw, init, free } = caseBuffers(c);
    const up = (x: Float32Array | Int32Array, asDtype: boolean) => upRaw(asDtype ? encode(x as Float32Array, dtype) : x);
    const zeros = (n: number, bits = 0) => init(n, bits); // NaN-poisoned first, then the initial value
    try {
      // o stays poisoned: a forward must not read a row's o while its lse is -inf (finishForward zeroes what no key reached)
      const qd = up(q, true), qp = up(qPos, false), o = zeros(Sq * H * D, 0x7fc00000), lse = zeros(Sq * H, 0xff800000);
      const blocks = [
        { k: up(k.subarray(0, S1 * Hk * D), true), v: up(v.subarray(0, S1 * Hk * D), true), pos: up(kPos.subarray(0, S1), false), n: S1 },
        { k: up(k.subarray(S1 * Hk * D), true), v: up(v.subarray(S1 * Hk * D), true), pos: up(kPos.subarray(S1), false), n: S2 },
      ];
      const base = { q: qd, qPos: qp, Sq, H, Hk, D, dtype, causal, window, sinks, scale };
      for (const b of blocks) kern.forward({ ...base, k: b.k, v: b.v, kPos: b.pos, Sk: b.n, o, lse });
      kern.finishForward(o, lse, Sq * H, D);
      const out = c.download(new Float32Array(Sq * H * D), o);
      const outLse = c.download(new Float32Array(Sq * H), lse);
      const what = `${kern.name({ dtype, D })} causal=${causal} window=${window} scale=${scale} seed=${seed}`;
      assertClose(out, ref.o, TOL[dtype].fwd, `merged out ${what}`);
      assertClose(outLse, ref.lse, TOL[dtype].fwd, `merged lse ${what}`);
      // Backward with the final lse and delta; dq accumulates over both blocks, dk/dv per block.
      const gO = up(dO, true), delta = zeros(Sq * H), gq = zeros(Sq * H * D);
      kern.delta(gO, o, delta, Sq * H, D, dtype);
      const dk = new Float32Array(Sk * Hk * D), dv = new Float32Array(Sk * Hk * D);
      let off = 0;
      for (const b of blocks) {
        const gk = zeros(b.n * Hk * D), gv = zeros(b.n * Hk * D);
        kern.backward({ ...base, k: b.k, v: b.v, kPos: b.pos, Sk: b.n, dO: gO, lse, delta, dq: gq, dk: gk, dv: gv });
        c.download(dk.subarray(off, off + b.n * Hk * D), gk);
        c.download(dv.subarray(off, off + b.n * Hk * D), gv);
        off += b.n * Hk * D;
      }
      assertClose(c.download(new Float32Array(Sq * H * D), gq), ref.dq, TOL[dtype].grad, `dq ${what}`);
      assertClose(dk, ref.dk, TOL[dtype].grad, `dk ${what}`);
      assertClose(dv, ref.dv, TOL[dtype].grad, `dv ${what}`);
    } finally {
      free();
    }
  });
  kern.dispose();
});

// The kernels take the heavier end of a block first (lastQueriesHeavier / firstKeysHeavier in
// kernels/common.cuh): at a window's edge, keys a block behind the queries, that is the first
// query tiles (the forwards) and the last key tiles (the backwards), the reverse of the causal
// diagonal's order. Queries at 700..1399 against keys 0..699 under a causal window of 350: query
// i sees keys 351 + i..699, so the first query tiles see the most and those past 349 nothing;
// key tiles before 351 are seen by nobody. On the default kernels, ht on 3 CTAs (many items
// each, in the reversed order), hw at D=64, mma.sync, and the first wgmma backward.
test('the heavier end first: a window\'s edge (keys a block behind the queries) runs its tiles in reverse order, forward and backward vs float64', { skip }, async () => {
  const seed = freshSeed();
  const r = rng(seed);
  const c = context();
  const kern = cudaKernel(c);
  const H = 4, Hk = 2, Sq = 700, Sk = 700, window = 350;
  const qPos = Int32Array.from({ length: Sq }, (_, i) => 700 + i);
  const kPos = Int32Array.from({ length: Sk }, (_, j) => j);
  const variants = [{}, { RINGATTN_WGMMA_ATTN: '5', RINGATTN_FWD_CTAS: '3' }, { RINGATTN_WGMMA_ATTN: '6' }, { RINGATTN_WGMMA_ATTN: '0', RINGATTN_WGMMA_BWD: '0' }, { RINGATTN_WGMMA_BWD: '1' }];
  for (const env of variants) {
    for (const [dtype, D] of [['bfloat16', 128], ['float16', 64]] as const) {
      await withEnv(env, () => {
        const q = roundTo(randn(Sq * H * D, r), dtype), k = roundTo(randn(Sk * Hk * D, r), dtype), v = roundTo(randn(Sk * Hk * D, r), dtype);
        const dO = roundTo(randn(Sq * H * D, r), dtype);
        const scale = 1 / Math.sqrt(D);
        const ref = refBlock({ q, k, v, qPos, kPos, Sq, Sk, H, Hk, D, scale }, { causal: true, window }, dO);
        const b = caseBuffers(c);
        try {
          const base = { q: b.up(encode(q, dtype)), k: b.up(encode(k, dtype)), v: b.up(encode(v, dtype)), qPos: b.up(qPos), kPos: b.up(kPos), Sq, Sk, H, Hk, D, dtype, causal: true, window, sinks: 0, scale };
          const o = b.init(Sq * H * D, 0x7fc00000), lse = b.init(Sq * H, 0xff800000);
          kern.forward({ ...base, o, lse });
          kern.finishForward(o, lse, Sq * H, D);
          const what = `${kern.name({ dtype, D })} ${JSON.stringify(env)} seed=${seed}`;
          assertClose(c.download(new Float32Array(Sq * H * D), o), ref.o, TOL[dtype].fwd, `out ${what}`);
          assertClose(c.download(new Float32Array(Sq * H), lse), ref.lse, TOL[dtype].fwd, `lse ${what}`);
          const gO = b.up(encode(dO, dtype)), delta = b.init(Sq * H, 0), dq = b.init(Sq * H * D, 0), dk = b.init(Sk * Hk * D, 0), dv = b.init(Sk * Hk * D, 0);
          kern.delta(gO, o, delta, Sq * H, D, dtype);
          kern.backward({ ...base, dO: gO, lse, delta, dq, dk, dv });
          assertClose(c.download(new Float32Array(Sq * H * D), dq), ref.dq, TOL[dtype].grad, `dq ${what}`);
          assertClose(c.download(new Float32Array(Sk * Hk * D), dk), ref.dk, TOL[dtype].grad, `dk ${what}`);
          assertClose(c.download(new Float32Array(Sk * Hk * D), dv), ref.dv, TOL[dtype].grad, `dv ${what}`);
        } finally {
          b.free();
        }
      });
    }
  }
  kern.dispose();
});

/**
 * A case's device buffers: up(x) uploads host data, init(n, bits) fills n 32-bit words with `bits`
 * after a NaN poison; free() waits for the stream and frees them all.
 */
function caseBuffers(c: CudaContext) {
  const bufs: DeviceBuffer[] = [];
  const alloc = (bytes: number) => {
    const b = c.alloc(bytes);
    bufs.push(b);
    return b;
  };
  return {
    up: (x: ArrayBufferView) => {
      const b = alloc(x.byteLength);
      c.upload(b, x);
      return b.ptr;
    },
    init: (n: number, bits: number) => {
      const b = alloc(n * 4);
      c.fill32(b, 0x7fc00000, n);
      c.fill32(b, bits, n);
      return b.ptr;
    },
    free: () => {
      c.sync();
      for (const b of bufs) c.free(b);
    },
  };
}

test('rows that see no key: out 0 (from finishForward, over a NaN-poisoned o), lse -inf, gradients 0 (never NaN)', { skip }, () => {
  const seed = freshSeed();
  const r = rng(seed);
  const c = context();
  const kern = cudaKernel(c);
  for (const [dtype, D] of [['bfloat16', 64], ['float32', 64], ['float32', 30]] as const) {
    const H = 2, Hk = 1, Sq = 80, Sk = 64;
    // Causal; keys at positions 50..113 and queries at 0..79: rows 0..49 see nothing.
    const qPos = Int32Array.from({ length: Sq }, (_, i) => i);
    const kPos = Int32Array.from({ length: Sk }, (_, j) => 50 + j);
    const q = roundTo(randn(Sq * H * D, r), dtype), k = roundTo(randn(Sk * Hk * D, r), dtype), v = roundTo(randn(Sk * Hk * D, r), dtype), dO = roundTo(randn(Sq * H * D, r), dtype);
    const ref = refBlock({ q, k, v, qPos, kPos, Sq, Sk, H, Hk, D, scale: 0.125 }, { causal: true }, dO);
    const { up, init, free } = caseBuffers(c);
    try {
      const a = { q: up(encode(q, dtype)), k: up(encode(k, dtype)), v: up(encode(v, dtype)), qPos: up(qPos), kPos: up(kPos), Sq, Sk, H, Hk, D, dtype, causal: true, window: 0, sinks: 0, scale: 0.125 };
      const o = init(Sq * H * D, 0x7fc00000), lse = init(Sq * H, 0xff800000);
      kern.forward({ ...a, o, lse });
      kern.finishForward(o, lse, Sq * H, D);
      const gO = up(encode(dO, dtype)), delta = init(Sq * H, 0), dq = init(Sq * H * D, 0), dk = init(Sk * Hk * D, 0), dv = init(Sk * Hk * D, 0);
      kern.delta(gO, o, delta, Sq * H, D, dtype);
      kern.backward({ ...a, dO: gO, lse, delta, dq, dk, dv });
      const outLse = c.download(new Float32Array(Sq * H), lse);
      const out = c.download(new Float32Array(Sq * H * D), o);
      const gq = c.download(new Float32Array(Sq * H * D), dq);
      for (let row = 0; row < 50 * H; row++) assert.equal(outLse[row], -Infinity, `lse row ${row} (${dtype} D=${D}, seed ${seed})`);
      for (let x = 0; x < 50 * H * D; x++) {
        assert.equal(out[x], 0, `out element ${x} (${dtype} D=${D})`);
        assert.equal(gq[x], 0, `dq element ${x} (${dtype})`);
      }
      assertClose(out, ref.o, TOL[dtype].fwd, `out ${dtype} seed ${seed}`);
      assertClose(gq, ref.dq, TOL[dtype].grad, `dq ${dtype} seed ${seed}`);
      assertClose(c.download(new Float32Array(Sk * Hk * D), dk), ref.dk, TOL[dtype].grad, `dk ${dtype} seed ${seed}`);
      assertClose(c.download(new Float32Array(Sk * Hk * D), dv), ref.dv, TOL[dtype].grad, `dv ${dtype} seed ${seed}`);
    } finally {
      free();
    }
  }
  kern.dispose();
});

// ---- non-finite inputs (allowNonfinite) --------------------------------------------------------
// README "Inputs and errors": a NaN in a query or key makes NaN, output and LSE, every row that
// sees it (never 0 with LSE -inf, which reads as a row that saw no key); a NaN in a value reaches
// that element of the output (also, as 0·NaN in a tile's P·V, rows that share its key tile
// without seeing it). The CPU kernels' test of the same contract: tests/cpu/kernel-cases.test.ts.

// The kernel variants the NaN test runs, each on the same inputs (one reference a case): the
// defaults (on Hopper the wgmma forward hw at D=64 and ht at D=128, and the TMA backward ht),
// mma.sync forward and backward, the wgmma forward h (one tile at a time) with the cp.async
// backward h, and hl (176-key tiles, D=128 only: at D=64 it runs hw). Elsewhere than Hopper the
// wgmma variants run mma.sync; float32 runs the generic kernels, whatever the variables say.
const NAN_VARIANTS: { name: string; env: Record<string, string | undefined> }[] = [
  { name: 'default kernels', env: {} },
  { name: 'mma.sync', env: { RINGATTN_WGMMA_ATTN: '0', RINGATTN_WGMMA_BWD: '0' } },
  { name: 'wgmma h forward, h backward', env: { RINGATTN_WGMMA_ATTN: '1', RINGATTN_WGMMA_BWD: '1' } },
  { name: 'wgmma hl forward', env: { RINGATTN_WGMMA_ATTN: '7' } },
];

test('allowNonfinite: a NaN in q, k or v makes NaN exactly the rows it reaches (q, k: all of o and the LSE, never 0 / -inf; v: element d0 alone), the other rows equal float64, on four masks (none, causal, causal window + sinks, causal packed documents); a NaN query row\'s dq, dk, dv; bf16 D=128 and 64 on the default, mma.sync, h and hl kernels, fp32 on the generic ones', { skip }, async () => {
  const seed = freshSeed();
  const r = rng(seed);
  const H = 4, Hk = 2, G = H / Hk;
  for (const [dtype, D] of [['bfloat16', 128], ['bfloat16', 64], ['float32', 64]] as const) {
    // Ragged S (257..316, no multiple of 64): three 128-row or five 64-row query tiles, key tiles
    // of 64, 128 and 176, the last of each partial.
    const S = 257 + Math.floor(r() * 60);
    const tol = TOL[dtype];
    const variants = dtype === 'float32' ? NAN_VARIANTS.slice(0, 1) : NAN_VARIANTS.filter((x) => D === 128 || x.env.RINGATTN_WGMMA_ATTN !== '7');
    const [q, k, v, dO] = [S * H * D, S * Hk * D, S * Hk * D, S * H * D].map((n) => roundTo(randn(n, r), dtype));
    const ms = masks(S, r);
    const segments = ms.find((x) => x.name === 'segments')!.mask.segments;
    const cases: Case[] = [
      { name: 'none', mask: {} },
      { name: 'causal', mask: { causal: true } },
      { name: 'causal window 20 + 2 sinks', mask: { causal: true, window: 20, sinks: 2 } },
      { name: 'segments causal', mask: { segments, causal: true } },
    ];
    const tensorOf = (data: Float32Array, heads: number) => ({ dtype: 'float32' as const, shape: [S, heads, D], data });
    for (const c of cases) {
      const m = c.mask;
      // One NaN place in each of q, k, v. The reference runs once, on the inputs with all three
      // places 0: each case's input holds 0 at the other two places, so it serves the three.
      const place = (which: 'q' | 'k' | 'v') => {
        const at = Math.floor(r() * S), d0 = Math.floor(r() * D);
        const head = Math.floor(r() * (which === 'q' ? H : Hk)); // q: a query head; k, v: a KV head
        return { which, at, head, d0, idx: (at * (which === 'q' ? H : Hk) + head) * D + d0 };
      };
      const places = [place('q'), place('k'), place('v')];
      const clean = { q: q.slice(), k: k.slice(), v: v.slice() };
      for (const x of places) clean[x.which][x.idx] = 0;
      const ref = refs.get(`NaN places ${places.map((x) => x.idx).join(',')} ${dtype} D=${D} H=${H} Hk=${Hk} S=${S} seed=${seed} ${maskKey(m)}`, () =>
        refBackward(clean.q, clean.k, clean.v, dO, S, H, Hk, D, m));
      for (const { which, at, head, d0, idx } of places) {
        const kh = which === 'q' ? Math.floor(head / G) : head;
        const bad = { ...clean, [which]: clean[which].slice() };
        bad[which][idx] = NaN;
        // Rows reached: q's own row; for k and v every row of the KV head's group that sees key `at`.
        const reached = (i: number, h: number) => (which === 'q' ? i === at && h === head : Math.floor(h / G) === kh && refVisible(m, i, at));
        const where = `NaN in ${which} at (${which === 'q' ? `row ${at}, head ${head}` : `key ${at}, KV head ${kh}`}, element ${d0}) ${dtype} D=${D} S=${S} mask=${c.name} seed=${seed}`;
        for (const variant of variants) {
          await withEnv(variant.env, async () => {
            // poison: o is NaN before the forward, so an o the kernel never wrote would pass as NaN
            // here; the LSE is -inf after the poison (NaN only if the kernel wrote it), a v NaN's
            // rows must be finite beside element d0, and the block test below starts o finite.
            const res = await attentionCuda(tensorOf(bad.q, H), tensorOf(bad.k, Hk), tensorOf(bad.v, Hk), {
              dtype, causal: m.causal, window: m.window, sinks: m.sinks, segments: m.segments as Int32Array | undefined, allowNonfinite: true,
              gradOut: which === 'q' ? tensorOf(dO, H) : undefined, context: context(), poison: true,
            });
            const tag = `${res.stats.kernel} (${variant.name}) ${where}`;
            const o = res.out.data, lse = res.lse.data;
            let n = 0;
            const gotO: number[] = [], refO: number[] = [], gotL: number[] = [], refL: number[] = [];
            for (let i = 0; i < S; i++) {
              for (let h = 0; h < H; h++) {
                const row = i * H + h, got = o.subarray(row * D, (row + 1) * D), want = ref.o.subarray(row * D, (row + 1) * D);
                if (reached(i, h)) {
                  n++;
                  if (which === 'v') {
                    // the weights are untouched: element d0 alone is NaN, the rest and the LSE are right
                    assert.ok(got.every((x, d) => Number.isNaN(x) === (d === d0)), `${tag}: row (${i}, ${h}) reaches the NaN in element ${d0} alone, o = ${Array.from(got.subarray(0, 4))}..., o[${d0}] = ${got[d0]}`);
                    for (let d = 0; d < D; d++) if (d !== d0) gotO.push(got[d]), refO.push(want[d]);
                    gotL.push(lse[row]), refL.push(ref.lse[row]);
                  } else {
                    assert.ok(Number.isNaN(lse[row]), `${tag}: lse of row (${i}, ${h}) is ${lse[row]}, expected NaN (${lse[row] === -Infinity ? 'read as a row that saw no key' : 'the NaN was dropped'})`);
                    assert.ok(got.every(Number.isNaN), `${tag}: row (${i}, ${h}) reaches the NaN, o = ${Array.from(got.subarray(0, 4))}...`);
                  }
                } else {
                  // (a value's NaN may reach element d0 of rows that share its key tile without
                  // seeing the key, as 0·NaN in the tile's P·V: those elements are left out)
                  for (let d = 0; d < D; d++) if (!(which === 'v' && d === d0 && Number.isNaN(got[d]))) gotO.push(got[d]), refO.push(want[d]);
                  gotL.push(lse[row]), refL.push(ref.lse[row]);
                }
              }
            }
            assert.ok(n > 0, `${tag}: no row reaches the NaN`);
            assertClose(gotO, refO, tol.fwd, `${tag}: o of the rows it does not reach`);
            assertClose(gotL, refL, tol.fwd, `${tag}: lse of the rows it does not reach`);
            if (which !== 'q') return;
            // The backward of a NaN query row: NaN in its dq and in dk, dv of the keys it sees;
            // every other gradient is the clean problem's (the row's own terms touch only those
            // keys), except that the tile's dK product (dSᵀ·Q) may carry the NaN query, as 0·NaN,
            // into dk of keys of its KV head that it does not see (on the GPU, whole key tiles):
            // such keys are left out. dv of those keys (Pᵀ·dO, P = 0 where the row does not see)
            // stays finite.
            const dq = res.dq!.data, dk = res.dk!.data, dv = res.dv!.data;
            const gq: number[] = [], rq: number[] = [];
            for (let x = 0; x < S * H; x++) {
              const got = dq.subarray(x * D, (x + 1) * D);
              if (x === at * H + head) assert.ok(got.every(Number.isNaN), `${tag}: dq of the NaN row is ${Array.from(got.subarray(0, 4))}...`);
              else gq.push(...got), rq.push(...ref.dq.subarray(x * D, (x + 1) * D));
            }
            assertClose(gq, rq, tol.grad, `${tag}: dq of the other rows`);
            for (const [name, gotG, refG] of [['dk', dk, ref.dk], ['dv', dv, ref.dv]] as const) {
              const g1: number[] = [], r1: number[] = [];
              for (let j = 0; j < S; j++) {
                for (let h2 = 0; h2 < Hk; h2++) {
                  const x = (j * Hk + h2) * D, got = gotG.subarray(x, x + D);
                  if (h2 === kh && refVisible(m, at, j)) {
                    assert.ok(got.every(Number.isNaN), `${tag}: ${name} of key ${j} (KV head ${h2}), seen by the NaN row, is ${Array.from(got.subarray(0, 4))}...`);
                  } else if (!(name === 'dk' && h2 === kh && got.some(Number.isNaN))) {
                    assert.ok(got.every(Number.isFinite), `${tag}: ${name} of key ${j} (KV head ${h2}), not seen by the NaN row, is not finite: ${Array.from(got.subarray(0, 4))}...`);
                    g1.push(...got), r1.push(...refG.subarray(x, x + D));
                  }
                }
              }
              assertClose(g1, r1, tol.grad, `${tag}: ${name} of the keys the NaN row does not see`);
            }
          });
        }
      }
    }
  }
});

test('allowNonfinite, block kernels: a NaN query row or key, merged over two KV blocks (NaN block first or second), makes NaN exactly the rows that see it (o written from a finite or NaN start, lse NaN); the other rows equal float64', { skip }, async () => {
  const seed = freshSeed();
  const r = rng(seed);
  const c = context();
  const kern = cudaKernel(c);
  // Queries at positions 60..149 (a shard); keys 0..150 in two blocks, block 0 at 81..150 first,
  // block 1 at 0..80; causal, window 40: rows at 81..119 see keys of both blocks.
  const H = 4, Hk = 2, G = H / Hk, Sq = 90, S1 = 70, S2 = 81, Sk = S1 + S2, window = 40;
  const m = { causal: true, window };
  const qPos = Int32Array.from({ length: Sq }, (_, i) => 60 + i);
  const kPos = Int32Array.from({ length: Sk }, (_, j) => (j < S1 ? S2 + j : j - S1));
  for (const [dtype, D, wgmma] of [['bfloat16', 128, '0'], ['bfloat16', 128, undefined], ['bfloat16', 64, undefined], ['float32', 64, undefined]] as const) {
    await withEnv({ RINGATTN_WGMMA_ATTN: wgmma }, async () => {
      const q = roundTo(randn(Sq * H * D, r), dtype), k = roundTo(randn(Sk * Hk * D, r), dtype), v = roundTo(randn(Sk * Hk * D, r), dtype);
      const scale = 1 / Math.sqrt(D);
      // q: a row at position 81..119 (it sees keys of both blocks, NaN from each); k: a key of
      // block 0 at 81..110 (NaN first, then block 1's finite result merges into it) or of block 1
      // at 45..80 (a finite result first, then NaN); each seen by some rows of its group, not all.
      const cases = [
        { which: 'q' as const, at: 21 + Math.floor(r() * 39), head: Math.floor(r() * H) },
        { which: 'k' as const, at: Math.floor(r() * 30), head: Math.floor(r() * Hk) },
        { which: 'k' as const, at: S1 + 45 + Math.floor(r() * 36), head: Math.floor(r() * Hk) },
      ];
      for (const { which, at, head } of cases) {
        const d0 = Math.floor(r() * D), kh = which === 'q' ? Math.floor(head / G) : head;
        const idx = (at * (which === 'q' ? H : Hk) + head) * D + d0;
        const clean = { q: q.slice(), k: k.slice() };
        clean[which][idx] = 0;
        const bad = { ...clean, [which]: clean[which].slice() };
        bad[which][idx] = NaN;
        const ref = refBlock({ q: clean.q, k: clean.k, v, qPos, kPos, Sq, Sk, H, Hk, D, scale }, m);
        const reached = (i: number, h: number) => (which === 'q' ? i === at && h === head : Math.floor(h / G) === kh && refVisible(m, qPos[i], kPos[at]));
        for (const oStart of [0x7fc00000, 0x3f800000]) { // o NaN (never read while lse is -inf) or 1.0 (the NaN must be written)
          const { up, init, free } = caseBuffers(c);
          try {
            const o = init(Sq * H * D, oStart), lse = init(Sq * H, 0xff800000);
            const blocks = [
              { k: up(encode(bad.k.subarray(0, S1 * Hk * D), dtype)), v: up(encode(v.subarray(0, S1 * Hk * D), dtype)), pos: up(kPos.subarray(0, S1)), n: S1 },
              { k: up(encode(bad.k.subarray(S1 * Hk * D), dtype)), v: up(encode(v.subarray(S1 * Hk * D), dtype)), pos: up(kPos.subarray(S1)), n: S2 },
            ];
            const base = { q: up(encode(bad.q, dtype)), qPos: up(qPos), Sq, H, Hk, D, dtype, causal: true, window, sinks: 0, scale };
            for (const b of blocks) kern.forward({ ...base, k: b.k, v: b.v, kPos: b.pos, Sk: b.n, o, lse });
            kern.finishForward(o, lse, Sq * H, D);
            const out = c.download(new Float32Array(Sq * H * D), o), outLse = c.download(new Float32Array(Sq * H), lse);
            const tag = `${kern.name({ dtype, D })} NaN in ${which} at (${which === 'q' ? `row ${at}, head ${head}` : `key ${at} (block ${at < S1 ? 0 : 1}, position ${kPos[at]}), KV head ${kh}`}, element ${d0}) o from 0x${oStart.toString(16)} seed=${seed}`;
            let n = 0;
            const gotO: number[] = [], refO: number[] = [], gotL: number[] = [], refL: number[] = [];
            for (let i = 0; i < Sq; i++) {
              for (let h = 0; h < H; h++) {
                const row = i * H + h, got = out.subarray(row * D, (row + 1) * D);
                if (reached(i, h)) {
                  n++;
                  assert.ok(Number.isNaN(outLse[row]), `${tag}: lse of row (${i}, ${h}) is ${outLse[row]}, expected NaN`);
                  assert.ok(got.every(Number.isNaN), `${tag}: row (${i}, ${h}) reaches the NaN, o = ${Array.from(got.subarray(0, 4))}...`);
                } else {
                  gotO.push(...got), refO.push(...ref.o.subarray(row * D, (row + 1) * D));
                  gotL.push(outLse[row]), refL.push(ref.lse[row]);
                }
              }
            }
            assert.ok(n > 0 && gotL.length > 0, `${tag}: the case needs rows on both sides (${n} reached)`);
            assertClose(gotO, refO, TOL[dtype].fwd, `${tag}: merged o of the rows it does not reach`);
            assertClose(gotL, refL, TOL[dtype].fwd, `${tag}: merged lse of the rows it does not reach`);
          } finally {
            free();
          }
        }
      }
    });
  }
  kern.dispose();
});
