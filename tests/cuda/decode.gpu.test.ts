import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { fileURLToPath } from 'node:url';
import { InputError } from '../../src/core/errors.js';
import { cudaAvailable } from '../../src/cuda/check.js';
import { CudaContext, type DeviceBuffer } from '../../src/cuda/context.js';
import type { CudaDType } from '../../src/cuda/convert.js';
import { CudaDecode, decodeAttentionCuda, mergeGatheredDevice } from '../../src/cuda/decode.js';
import { launch } from '../../src/cuda/launch.js';
import { loadNccl } from '../../src/cuda/bindings/nccl.js';
import { assertClose, freshSeed, relErr, rng } from '../helpers/check.js';
import { refVisible } from '../ref/attention64.js';
import { refDecode, refDecodeTermScale } from '../ref/decode64.js';
import { makeProblem, running, type Mask, type Problem, type QueryPlace } from './decode-problems.js';

// GPU split-KV decode (kernels/decode.cu via src/cuda/decode.ts) against the float64 reference
// refDecode (tests/ref/decode64.ts): every mask, GQA 1:1, 4:1, 8:1, Sq 1 and 4 (and 16), batches
// of ragged caches (length 0 included), long caches split into many chunks, merging into a running
// (o, lse), one cache split into P = 2 and 3 shards whose partials merge into the whole, unsorted
// caches, and the 2-GPU rank combine. Inputs are fresh random draws (the seed is in every
// message); the reference runs on the inputs rounded to the GPU dtype; the partials workspace is
// NaN-poisoned before every run. Skipped, with the reason, where there is no GPU.

const avail = cudaAvailable();
const skip = avail.ok ? false : `${avail.reason} (GPU decode tests skipped)`;
let ctx: CudaContext | undefined;
const context = () => (ctx ??= CudaContext.open(0));
let decoder: CudaDecode | undefined;
const dec = () => (decoder ??= new CudaDecode(context()));
after(() => {
  decoder?.dispose();
  ctx?.dispose();
});

const TOL: Record<CudaDType, number> = { bfloat16: 1e-2, float16: 1e-2, float32: 1e-5 };

function runGpu(p: Problem, dtype: CudaDType, o: Float32Array, lse: Float32Array, kvSorted?: boolean) {
  return decodeAttentionCuda({
    q: p.q, qPos: p.qPos, qSeg: p.qSeg, caches: p.caches, H: p.H, Hk: p.Hk, D: p.D, causal: p.mask.causal, window: p.mask.window,
    sinks: p.mask.sinks, scale: p.scale, o, lse, kvSorted, dtype, context: context(), decoder: dec(), poison: true,
  });
}

/**
 * Ranks' partials (each a fresh (o, lse) over its shard) merged by decode_merge_ranks from an
 * all-gather's layout ([o | lse] a rank, in rank order), as DecodeCombiner.combine merges after
 * its all-gather, into a fresh (0, -inf).
 */
function mergeRanksOnDevice(parts: { o: Float32Array; lse: Float32Array }[], rows: number, D: number): { o: Float32Array; lse: Float32Array } {
  const c = context();
  const gathered = new Float32Array(parts.length * rows * (D + 1));
  parts.forEach((x, s) => {
    gathered.set(x.o, s * rows * (D + 1));
    gathered.set(x.lse, s * rows * (D + 1) + rows * D);
  });
  const g = c.alloc(gathered.byteLength), o = c.alloc(rows * D * 4), l = c.alloc(rows * 4);
  try {
    c.upload(g, gathered);
    c.fill32(o, 0, rows * D);
    c.fill32(l, 0xff800000, rows);
    mergeGatheredDevice(c, g.ptr, parts.length, rows, D, o.ptr, l.ptr);
    return { o: c.download(new Float32Array(rows * D), o), lse: c.download(new Float32Array(rows), l) };
  } finally {
    c.free(g);
    c.free(o);
    c.free(l);
  }
}

function check(p: Problem, dtype: CudaDType, what: string, opts: { fresh?: boolean; kvSorted?: boolean; r: () => number }): string {
  const init = running(p, opts.fresh ?? true, opts.r);
  const ref = refDecode(p, init.o, init.lse);
  const res = runGpu(p, dtype, init.o.slice(), init.lse.slice(), opts.kvSorted);
  const tag = `${res.info.kernel} chunks=${res.info.chunks} ${what}`;
  // o relative to its terms' size (refDecodeTermScale): 16-bit P errs in proportion to |v|, and
  // a long cache's rows average v to a small fraction of it
  const e = relErr(res.o, ref.o, dtype === 'float32' ? 0 : refDecodeTermScale(p, init.o, init.lse));
  assert.ok(e <= TOL[dtype], `o ${tag}: error ${e.toExponential(3)} (relative to max(max|o|, its terms' size)) > ${TOL[dtype]}`);
  assertClose(res.lse, ref.lse, TOL[dtype], `lse ${tag}`);
  return tag;
}

const MASKS: { name: string; mask: Mask; place?: QueryPlace; segs?: boolean }[] = [
  { name: 'none', mask: { causal: false } },
  { name: 'causal', mask: { causal: true } },
  { name: 'window 37 (bidirectional)', mask: { causal: false, window: 37 }, place: 'behind' },
  { name: 'causal window 50', mask: { causal: true, window: 50 } },
  { name: 'causal window 45 + 4 sinks', mask: { causal: true, window: 45, sinks: 4 } },
  { name: 'window 29 + 3 sinks (bidirectional)', mask: { causal: false, window: 29, sinks: 3 }, place: 'behind' },
  { name: 'causal, queries behind the cache end', mask: { causal: true }, place: 'behind' },
  { name: 'causal window 60 + 2 sinks, queries behind the end', mask: { causal: true, window: 60, sinks: 2 }, place: 'behind' },
  { name: 'causal, queries beyond the cache end', mask: { causal: true }, place: 'beyond' },
  { name: 'segments causal window 80 + 2 sinks', mask: { causal: true, window: 80, sinks: 2 }, segs: true },
];

const GQA: [number, number][] = [[4, 4], [8, 2], [16, 2]];

for (const dtype of ['bfloat16', 'float16', 'float32'] as const) {
  for (const D of [64, 128]) {
    test(`decode ${dtype} D=${D}: every mask x GQA 1:1, 4:1, 8:1 x Sq 1, 4; B=3 ragged (0 included) vs float64`, { skip }, () => {
      const seed = freshSeed();
      const r = rng(seed);
      let n = 0;
      for (const m of MASKS) {
        for (const [H, Hk] of GQA) {
          for (const Sq of [1, 4]) {
            const lens = [0, 50 + Math.floor(r() * 200), 300 + Math.floor(r() * 900)];
            if (n++ % 2) lens.reverse();
            const p = makeProblem({ lens, Sq, H, Hk, D, mask: m.mask, place: m.place, segs: m.segs, gaps: n % 3 === 0 }, dtype, r);
            check(p, dtype, `${m.name} H=${H} Hk=${Hk} Sq=${Sq} lens=${lens} seed=${seed}`, { r });
          }
        }
      }
    });
  }
}

test('decode: long caches (20000 rows, many chunks), bf16 and fp32, causal and window + sinks', { skip }, () => {
  const seed = freshSeed();
  const r = rng(seed);
  const cases: [CudaDType, number, Mask, number][] = [
    ['bfloat16', 128, { causal: true }, 1],
    ['bfloat16', 128, { causal: true, window: 3000, sinks: 4 }, 4],
    ['float16', 64, { causal: false }, 1],
    ['float32', 128, { causal: true }, 1],
    ['float32', 64, { causal: true, window: 1000, sinks: 8 }, 4],
  ];
  for (const [dtype, D, mask, Sq] of cases) {
    const p = makeProblem({ lens: [20000, 7000], Sq, H: 8, Hk: 2, D, mask }, dtype, r);
    const tag = check(p, dtype, `${dtype} D=${D} ${JSON.stringify(mask)} Sq=${Sq} seed=${seed}`, { r });
    assert.match(tag, /chunks=(\d{2,})/, `expected many chunks: ${tag}`);
  }
});

test('decode: merges into a running (o, lse); rows that see nothing keep theirs', { skip }, () => {
  const seed = freshSeed();
  const r = rng(seed);
  for (const dtype of ['bfloat16', 'float32'] as const) {
    for (const [mask, place] of [[{ causal: true, window: 40, sinks: 2 }, 'end'], [{ causal: true }, 'behind']] as [Mask, QueryPlace][]) {
      const p = makeProblem({ lens: [400, 0, 2500], Sq: 4, H: 8, Hk: 2, D: 128, mask, place }, dtype, r);
      check(p, dtype, `running ${dtype} ${JSON.stringify(mask)} seed=${seed}`, { fresh: false, r });
    }
    // Queries before every key of a causal cache see nothing: (o, lse) stay bit for bit.
    const p = makeProblem({ lens: [300], Sq: 2, H: 4, Hk: 1, D: 64, mask: { causal: true } }, dtype, r);
    p.caches[0].pos = Int32Array.from(p.caches[0].pos, (x) => x + 1000);
    const init = running(p, false, r);
    const res = runGpu(p, dtype, init.o.slice(), init.lse.slice());
    assert.deepEqual(Array.from(res.lse), Array.from(init.lse), `lse untouched (seed ${seed})`);
    assert.deepEqual(Array.from(res.o), Array.from(init.o), `o untouched (seed ${seed})`);
  }
});

test('decode: one cache in P = 2 and 3 shards; partials merged (merge kernel, and in place) equal the whole', { skip }, () => {
  const seed = freshSeed();
  const r = rng(seed);
  const c = context();
  for (const [dtype, P, mask] of [['bfloat16', 2, { causal: true }], ['bfloat16', 3, { causal: true, window: 900, sinks: 3 }], ['float32', 3, { causal: false }], ['float16', 2, { causal: true, window: 64 }]] as [CudaDType, number, Mask][]) {
    const p = makeProblem({ lens: [3000, 1200], Sq: 4, H: 8, Hk: 2, D: 128, mask }, dtype, r);
    const fresh = running(p, true, r);
    const whole = refDecode(p, fresh.o, fresh.lse);
    // Shards: contiguous for P = 2, strided (row j on shard j mod 3) for P = 3; positions still ascend.
    const shardOf = (j: number, n: number) => (P === 2 ? (j < n / 2 ? 0 : 1) : j % 3);
    const shards = Array.from({ length: P }, (_, s): Problem => ({
      ...p,
      caches: p.caches.map((cache) => {
        const n = cache.pos.length;
        const rows = Array.from({ length: n }, (_, j) => j).filter((j) => shardOf(j, n) === s);
        const pick = (x: Float32Array) => {
          const w = p.Hk * p.D, out = new Float32Array(rows.length * w);
          rows.forEach((j, t) => out.set(x.subarray(j * w, (j + 1) * w), t * w));
          return out;
        };
        return { k: pick(cache.k), v: pick(cache.v), pos: Int32Array.from(rows, (j) => cache.pos[j]) };
      }),
    }));
    const rows = p.B * p.Sq * p.H, D = p.D;
    // (a) fresh partials per shard, merged by the rank-merge kernel from an all-gather layout.
    const merged = mergeRanksOnDevice(shards.map((sp) => {
      const f = running(sp, true, r);
      return runGpu(sp, dtype, f.o, f.lse);
    }), rows, D);
    const what = `P=${P} ${dtype} ${JSON.stringify(mask)} seed=${seed}`;
    assertClose(merged.o, whole.o, TOL[dtype], `merge kernel o ${what}`);
    assertClose(merged.lse, whole.lse, TOL[dtype], `merge kernel lse ${what}`);
    // (b) each shard merged in place into the same running (o, lse).
    const run = running(p, true, r);
    for (const sp of shards) runGpu(sp, dtype, run.o, run.lse);
    assertClose(run.o, whole.o, TOL[dtype], `in-place o P=${P} ${dtype} seed=${seed}`);
    assertClose(run.lse, whole.lse, TOL[dtype], `in-place lse P=${P} ${dtype} seed=${seed}`);
  }
});

test('decode: unsorted caches (kvSorted false) read every row and mask it; Sq=16 with 8:1 GQA; more than 128 query rows', { skip }, () => {
  const seed = freshSeed();
  const r = rng(seed);
  // A permuted cache: same result as the sorted one.
  for (const dtype of ['bfloat16', 'float32'] as const) {
    const p = makeProblem({ lens: [900, 333], Sq: 4, H: 8, Hk: 2, D: 64, mask: { causal: true, window: 100, sinks: 3 }, place: 'behind' }, dtype, r);
    p.caches = p.caches.map((cache) => {
      const n = cache.pos.length, w = p.Hk * p.D;
      const perm = Array.from({ length: n }, (_, j) => j).sort(() => r() - 0.5);
      const k = new Float32Array(n * w), v = new Float32Array(n * w);
      perm.forEach((j, t) => {
        k.set(cache.k.subarray(j * w, (j + 1) * w), t * w);
        v.set(cache.v.subarray(j * w, (j + 1) * w), t * w);
      });
      return { k, v, pos: Int32Array.from(perm, (j) => cache.pos[j]) };
    });
    check(p, dtype, `unsorted ${dtype} seed=${seed}`, { r, kvSorted: false });
    check(p, dtype, `unsorted, detected ${dtype} seed=${seed}`, { r });
  }
  // 16 queries x 8 heads per KV head = 128 rows (8 m16 tiles, 8 warps); and 4 x 64 = 256 rows (two passes).
  check(makeProblem({ lens: [700, 1500, 5], Sq: 16, H: 16, Hk: 2, D: 128, mask: { causal: true, window: 300, sinks: 1 } }, 'bfloat16', r), 'bfloat16', `Sq=16 8:1 seed=${seed}`, { r });
  check(makeProblem({ lens: [1100], Sq: 4, H: 64, Hk: 1, D: 64, mask: { causal: true } }, 'float16', r), 'float16', `256 rows seed=${seed}`, { r });
  check(makeProblem({ lens: [600], Sq: 16, H: 8, Hk: 1, D: 64, mask: { causal: true } }, 'float32', r), 'float32', `generic 128 rows seed=${seed}`, { r });
  // Other head dims on the generic path.
  check(makeProblem({ lens: [500, 90], Sq: 2, H: 4, Hk: 2, D: 96, mask: { causal: true, window: 70, sinks: 2 } }, 'bfloat16', r), 'bfloat16', `D=96 seed=${seed}`, { r });
  check(makeProblem({ lens: [400], Sq: 1, H: 2, Hk: 1, D: 256, mask: { causal: true } }, 'float32', r), 'float32', `D=256 seed=${seed}`, { r });
});

test('decode: forced 64-row chunks (queries behind the end and windows leave many chunks empty)', { skip }, () => {
  const seed = freshSeed();
  const r = rng(seed);
  for (const [dtype, mask, place] of [['bfloat16', { causal: true }, 'behind'], ['float32', { causal: true, window: 90, sinks: 5 }, 'end'], ['float16', { causal: false, window: 70 }, 'behind']] as [CudaDType, Mask, QueryPlace][]) {
    const p = makeProblem({ lens: [3000, 130, 0, 777], Sq: 2, H: 8, Hk: 2, D: 64, mask, place }, dtype, r);
    const init = running(p, false, r);
    const ref = refDecode(p, init.o, init.lse);
    const res = decodeAttentionCuda({
      q: p.q, qPos: p.qPos, caches: p.caches, H: p.H, Hk: p.Hk, D: p.D, causal: mask.causal, window: mask.window, sinks: mask.sinks,
      o: init.o.slice(), lse: init.lse.slice(), dtype, context: context(), tuning: { chunkRows: 64 }, poison: true,
    });
    const tag = `${res.info.kernel} chunks=${res.info.chunks} ${dtype} ${JSON.stringify(mask)} seed=${seed}`;
    assert.ok(res.info.chunks >= 8, tag);
    assertClose(res.o, ref.o, TOL[dtype], `o ${tag}`);
    assertClose(res.lse, ref.lse, TOL[dtype], `lse ${tag}`);
  }
});

test('decode: a batch of 70 sequences (two launches) and many sequences of length 0', { skip }, () => {
  const seed = freshSeed();
  const r = rng(seed);
  const lens = Array.from({ length: 70 }, (_, b) => (b % 5 === 0 ? 0 : 1 + Math.floor(r() * 400)));
  check(makeProblem({ lens, Sq: 1, H: 8, Hk: 2, D: 128, mask: { causal: true, window: 200, sinks: 2 } }, 'bfloat16', r), 'bfloat16', `B=70 seed=${seed}`, { r });
});

test('decode: D=128 and 64 with <= 8 query rows a KV head: the register-staged kernel (the default) and the mma path (RINGATTN_DECODE_LDG=0), on every mask', { skip }, () => {
  const seed = freshSeed();
  const r = rng(seed);
  for (const ldg of [true, false]) {
    const saved = process.env.RINGATTN_DECODE_LDG;
    if (ldg) delete process.env.RINGATTN_DECODE_LDG;
    else process.env.RINGATTN_DECODE_LDG = '0';
    try {
      for (const D of [128, 64]) {
        for (const m of MASKS) {
          for (const [dtype, H, Hk, Sq] of [['bfloat16', 8, 2, 1], ['float16', 4, 4, 4], ['bfloat16', 16, 2, 1], ['float16', 8, 4, 3]] as [CudaDType, number, number, number][]) {
            const lens = [30 + Math.floor(r() * 100), 0, 700 + Math.floor(r() * 1500)];
            const p = makeProblem({ lens, Sq, H, Hk, D, mask: m.mask, place: m.place, segs: m.segs, gaps: lens[0] % 2 === 0 }, dtype, r);
            const tag = check(p, dtype, `${m.name} ${dtype} D=${D} H=${H} Hk=${Hk} Sq=${Sq} lens=${lens} seed=${seed}`, { r, fresh: lens[2] % 2 === 0 });
            // ldg: sm_90 and later
            assert.match(tag, ldg && context().computeCapability[0] >= 9 ? new RegExp(`ldg-d${D}/`) : new RegExp(`mma-d${D}-m1/`), tag);
          }
        }
      }
    } finally {
      if (saved === undefined) delete process.env.RINGATTN_DECODE_LDG;
      else process.env.RINGATTN_DECODE_LDG = saved;
    }
  }
});

test('decode: the fused merge (last CTA of a sequence) and the merge kernel, each forced, on every mask; many chunks, two row groups, two launches', { skip }, () => {
  const seed = freshSeed();
  const r = rng(seed);
  for (const merge of ['fused', 'kernel'] as const) {
    const d = new CudaDecode(context(), { merge });
    const forced = new CudaDecode(context(), { merge, chunkRows: 64 });
    try {
      const run = (p: Problem, dtype: CudaDType, what: string, decoder: CudaDecode, fresh: boolean) => {
        const init = running(p, fresh, r);
        const ref = refDecode(p, init.o, init.lse);
        const res = decodeAttentionCuda({
          q: p.q, qPos: p.qPos, qSeg: p.qSeg, caches: p.caches, H: p.H, Hk: p.Hk, D: p.D, causal: p.mask.causal, window: p.mask.window,
          sinks: p.mask.sinks, scale: p.scale, o: init.o.slice(), lse: init.lse.slice(), dtype, context: context(), decoder, poison: true,
        });
        const tag = `${merge} ${res.info.kernel} chunks=${res.info.chunks} ${what} seed=${seed}`;
        assert.equal(res.info.fusedMerge, merge === 'fused', tag);
        assertClose(res.o, ref.o, TOL[dtype], `o ${tag}`);
        assertClose(res.lse, ref.lse, TOL[dtype], `lse ${tag}`);
        return res.info;
      };
      for (const m of MASKS) {
        for (const [dtype, D] of [['bfloat16', 128], ['float32', 64]] as [CudaDType, number][]) {
          const p = makeProblem({ lens: [0, 40 + Math.floor(r() * 300), 900 + Math.floor(r() * 900)], Sq: 1, H: 8, Hk: 2, D, mask: m.mask, place: m.place, segs: m.segs }, dtype, r);
          run(p, dtype, `${dtype} D=${D} ${m.name}`, forced, m.name.length % 2 === 0);
        }
      }
      // Long caches (the planner's split), a running (o, lse) to merge into.
      const long = makeProblem({ lens: [20000, 7000], Sq: 1, H: 8, Hk: 2, D: 128, mask: { causal: true, window: 3000, sinks: 4 } }, 'bfloat16', r);
      assert.ok(run(long, 'bfloat16', 'long', d, false).chunks >= 10);
      // 16 queries x 16 heads per KV head = 256 rows: two row groups (grid z), each with its own counters.
      const z2 = makeProblem({ lens: [1500, 333], Sq: 16, H: 16, Hk: 1, D: 128, mask: { causal: true } }, 'bfloat16', r);
      run(z2, 'bfloat16', 'two row groups', forced, true);
      // 70 sequences: two launches reuse the counters, which each launch leaves at zero.
      const lens = Array.from({ length: 70 }, (_, b) => (b % 7 === 0 ? 0 : 1 + Math.floor(r() * 500)));
      const many = makeProblem({ lens, Sq: 1, H: 8, Hk: 2, D: 128, mask: { causal: true } }, 'bfloat16', r);
      for (let rep = 0; rep < 2; rep++) assert.equal(run(many, 'bfloat16', `B=70 run ${rep}`, forced, rep === 0).launches, 2);
    } finally {
      d.dispose();
      forced.dispose();
    }
  }
});

test('decode: a plan made before the fused merge\'s counters grew is stale (run() says so, as for the workspace)', { skip }, () => {
  const c = context();
  const d = new CudaDecode(c, { merge: 'fused', chunkRows: 16 });
  const bufs: DeviceBuffer[] = [];
  const alloc = (bytes: number) => {
    const b = c.alloc(bytes);
    bufs.push(b);
    c.fill32(b, 0, b.bytes / 4);
    return b.ptr;
  };
  const args = (B: number, Hk: number, n: number) => ({
    q: alloc(B * Hk * 128 * 2), qPos: alloc(B * 4), Sq: 1, H: Hk, Hk, D: 128, dtype: 'bfloat16' as const, causal: false, o: alloc(B * Hk * 128 * 4), lse: alloc(B * Hk * 4),
    caches: Array.from({ length: B }, () => ({ k: alloc(n * Hk * 128 * 2), v: alloc(n * Hk * 128 * 2), pos: alloc(n * 4), n })),
  });
  try {
    d.plan(args(1, 8, 8192)).run(); // a large workspace (512 chunks), 8 counters
    const small = d.plan(args(1, 8, 16));
    small.run();
    d.plan(args(64, 32, 16)).run(); // the workspace is large enough; 2048 counters are not
    assert.throws(() => small.run(), /decode plan is stale/);
    c.sync();
  } finally {
    d.dispose();
    for (const b of bufs) c.free(b);
  }
});

// ---- non-finite caches ---------------------------------------------------------------------------

// The CPU decode's test of the same contract: tests/cpu/decode.test.ts. A NaN query is refused by
// the argument checks (checkDecodeQueries); the caches are not scanned, and a NaN in a key makes
// NaN the rows that see it. The 2-GPU combine (DecodeCombiner.combine: an all-gather, then the
// decode_merge_ranks kernel) needs two GPUs; its merge kernel runs here on one GPU, on partials
// laid out as the all-gather leaves them (mergeGatheredDevice), as the shard test above does.
test('decode: a NaN in the key cache makes NaN exactly the rows that see it (o in every element, lse NaN; never rows that read as seeing nothing), the other rows equal float64: planned and 16-row chunks (empty ones merged; merge kernel and fused), unsorted, shards (the NaN key alone in one) merged by decode_merge_ranks and in place; bf16 (ldg, mma) and fp32 (generic)', { skip }, () => {
  const seed = freshSeed();
  const r = rng(seed);
  const c = context();
  const chunked = new CudaDecode(c, { chunkRows: 16, merge: 'kernel' });
  const fused = new CudaDecode(c, { chunkRows: 16, merge: 'fused' });
  const decoders: [string, CudaDecode][] = [['planned', dec()], ['16-row chunks, merge kernel', chunked], ['16-row chunks, fused merge', fused]];
  try {
    // D=128 with one query (4 rows a KV head: decode_ldg on sm_90+, else mma), D=128 and 64 with
    // four (16 rows: mma), fp32 (generic).
    for (const [dtype, D, Sq, H] of [['bfloat16', 128, 1, 8], ['bfloat16', 128, 4, 8], ['bfloat16', 64, 4, 8], ['float32', 64, 2, 4]] as [CudaDType, number, number, number][]) {
      const Hk = 2, G = H / Hk;
      for (const [mname, mask] of [['none', { causal: false }], ['causal window 40 + 3 sinks', { causal: true, window: 40, sinks: 3 }]] as [string, Mask][]) {
        // The NaN key: an early one (a sink under the window), the last but one (seen by the last
        // queries only, causally), or, under the window, one no query sees (the unsorted run
        // reads it and must mask it; no row is NaN).
        for (const where of mask.window ? ['a sink', 'the last but one', 'outside every window'] : ['an early key', 'the last but one']) {
          // Queries at the cache's end (positions n - Sq .. n - 1); sequence 2 has an empty cache.
          const p = makeProblem({ lens: [250 + Math.floor(r() * 250), 90, 0], Sq, H, Hk, D, mask }, dtype, r);
          const b = Math.floor(r() * 2), n = p.caches[b].pos.length;
          const kh = Math.floor(r() * Hk), d0 = Math.floor(r() * D);
          const j = where === 'the last but one' ? n - 2 : where === 'outside every window' ? 3 + Math.floor(r() * (n - Sq - 42)) : Math.floor(r() * 3);
          const bad: Problem = { ...p, caches: p.caches.map((x, y) => (y === b ? { ...x, k: x.k.slice() } : x)) };
          bad.caches[b].k[(j * Hk + kh) * D + d0] = NaN;
          // the other rows against the reference with the NaN element set to 0 (they never read it)
          const clean: Problem = { ...bad, caches: bad.caches.map((x, y) => (y === b ? { ...x, k: x.k.map((z) => (Number.isNaN(z) ? 0 : z)) } : x)) };
          const rm = { causal: mask.causal, window: mask.window || undefined, sinks: mask.sinks };
          const sees = (y: number, qi: number, h: number) => y === b && Math.floor(h / G) === kh && refVisible(rm, p.qPos[y * Sq + qi], p.caches[b].pos[j]);
          const what = `NaN in k (sequence ${b}, row ${j} of ${n}: ${where}; KV head ${kh}, element ${d0}) ${dtype} D=${D} Sq=${Sq} H=${H} Hk=${Hk} mask=${mname} seed=${seed}`;
          const judge = (got: { o: Float32Array; lse: Float32Array }, init: { o: Float32Array; lse: Float32Array }, tag: string) => {
            const ref = refDecode(clean, init.o, init.lse);
            let reached = 0;
            const gotO: number[] = [], refO: number[] = [], gotL: number[] = [], refL: number[] = [];
            for (let y = 0; y < p.B; y++) {
              for (let qi = 0; qi < Sq; qi++) {
                for (let h = 0; h < H; h++) {
                  const row = (y * Sq + qi) * H + h, o = got.o.subarray(row * D, (row + 1) * D);
                  if (sees(y, qi, h)) {
                    reached++;
                    assert.ok(Number.isNaN(got.lse[row]), `${tag}: lse of row (${y}, ${qi}, ${h}), which sees the NaN, is ${got.lse[row]}${got.lse[row] === init.lse[row] ? ' (unchanged: read as a row that saw nothing)' : ''}`);
                    assert.ok(o.every(Number.isNaN), `${tag}: row (${y}, ${qi}, ${h}) sees the NaN, o = ${Array.from(o.subarray(0, 4))}...`);
                  } else {
                    gotO.push(...o), refO.push(...ref.o.subarray(row * D, (row + 1) * D));
                    gotL.push(got.lse[row]), refL.push(ref.lse[row]);
                  }
                }
              }
            }
            assert.ok(where === 'outside every window' ? reached === 0 : reached > 0, `${tag}: ${reached} rows see the NaN`);
            // o relative to its terms' size for 16-bit caches, as check() judges it
            const e = relErr(gotO, refO, dtype === 'float32' ? 0 : refDecodeTermScale(clean, init.o, init.lse));
            assert.ok(e <= TOL[dtype], `${tag}: o of the rows that do not see it: error ${e.toExponential(3)} > ${TOL[dtype]}`);
            assertClose(gotL, refL, TOL[dtype], `${tag}: lse of the rows that do not see it`);
          };
          const runOn = (pp: Problem, o: Float32Array, lse: Float32Array, decoder: CudaDecode, kvSorted?: boolean) => decodeAttentionCuda({
            q: pp.q, qPos: pp.qPos, caches: pp.caches, H, Hk, D, causal: mask.causal, window: mask.window, sinks: mask.sinks,
            scale: pp.scale, o, lse, kvSorted, dtype, context: c, decoder, poison: true,
          });
          // The whole caches, into fresh (0, -inf) or a running (o, lse) (some rows -inf, the others finite).
          decoders.forEach(([name, d], t) => {
            const init = running(p, t !== 1, r);
            const res = runOn(bad, init.o.slice(), init.lse.slice(), d);
            judge(res, init, `${res.info.kernel} chunks=${res.info.chunks} ${name} ${what}`);
          });
          // Unsorted (kvSorted false): every row is read and masked, the NaN key too where a row does not see it.
          {
            const init = running(p, false, r);
            const res = runOn(bad, init.o.slice(), init.lse.slice(), chunked, false);
            judge(res, init, `${res.info.kernel} chunks=${res.info.chunks} unsorted ${what}`);
          }
          // Shards of each cache, as ranks hold them: sequence b's rows before the NaN key, the NaN
          // key alone, the rows after it (possibly none); the other caches in thirds. (a) Fresh
          // partials merged by decode_merge_ranks in rank order (a finite partial into a NaN one,
          // then the NaN one into a finite one); (b) each shard merged in place into one running (o, lse).
          const w = Hk * D;
          const shards = [0, 1, 2].map((s): Problem => ({
            ...bad,
            caches: bad.caches.map((x, y) => {
              const len = x.pos.length;
              const [lo, hi] = y === b ? [[0, j], [j, j + 1], [j + 1, len]][s] : [Math.floor((len * s) / 3), Math.floor((len * (s + 1)) / 3)];
              return { k: x.k.slice(lo * w, hi * w), v: x.v.slice(lo * w, hi * w), pos: x.pos.slice(lo, hi) };
            }),
          }));
          const parts = shards.map((sp, s) => {
            const f = running(p, true, r);
            return runOn(sp, f.o, f.lse, s === 1 ? dec() : chunked);
          });
          judge(mergeRanksOnDevice(parts, p.B * Sq * H, D), running(p, true, r), `decode_merge_ranks of 3 shards ${what}`);
          const init = running(p, false, r);
          const acc = { o: init.o.slice(), lse: init.lse.slice() };
          shards.forEach((sp, s) => runOn(sp, acc.o, acc.lse, s === 1 ? dec() : fused));
          judge(acc, init, `3 shards merged in place ${what}`);
        }
      }
    }
  } finally {
    chunked.dispose();
    fused.dispose();
  }
});

// ---- argument errors (no GPU needed: checked before any device work) ----------------------------

test('decodeAttentionCuda: clear InputErrors for bad shapes and arguments', () => {
  const cache = { k: new Float32Array(10 * 2 * 64), v: new Float32Array(10 * 2 * 64), pos: Int32Array.from({ length: 10 }, (_, j) => j) };
  const base = { q: new Float32Array(4 * 64), qPos: Int32Array.of(9), caches: [cache], H: 4, Hk: 2, D: 64, causal: true };
  const bad: [string, object, RegExp][] = [
    ['H', { H: 3 }, /H: expected a multiple of Hk/],
    ['Sq', { qPos: new Int32Array(17), q: new Float32Array(17 * 4 * 64) }, /qPos: expected \[B = 1, Sq\] with 1 <= Sq <= 16/],
    ['q', { q: new Float32Array(10) }, /q: expected at least 256 elements/],
    ['D', { D: 100, q: new Float32Array(400), caches: [{ ...cache, k: new Float32Array(2000), v: new Float32Array(2000) }] }, /D: expected a head dim whose rows are a multiple of 16 bytes/],
    ['k', { caches: [{ ...cache, k: new Float32Array(5) }] }, /caches\[0\]\.k: expected at least 1280 elements/],
    ['seg', { qSeg: Int32Array.of(0) }, /caches\[0\]\.seg: segments must be given/],
    ['window', { window: -1 }, /window: expected an integer/],
    ['sorted', { kvSorted: true, caches: [{ ...cache, pos: Int32Array.from({ length: 10 }, (_, j) => 10 - j) }] }, /kvSorted is true but the positions do not ascend/],
    ['dtype', { dtype: 'int8' }, /dtype: expected bfloat16, float16 or float32/],
  ];
  for (const [name, patch, msg] of bad) {
    assert.throws(() => decodeAttentionCuda({ ...base, ...patch } as never), (e: unknown) => e instanceof InputError && msg.test(e.message), name);
  }
  // Tuning is checked when a decoder is made (before it touches the device).
  assert.throws(() => new CudaDecode({} as never, { merge: 'last' as never }), (e: unknown) => e instanceof InputError && /merge: expected 'auto', 'fused' or 'kernel', got "last"/.test(e.message));
  assert.throws(() => new CudaDecode({} as never, { waves: 0 }), (e: unknown) => e instanceof InputError && /waves/.test(e.message));
  // The reference itself: one key, one query, any head: o = v, lse = q.k * scale.
  const p: Problem = {
    B: 1, Sq: 1, H: 1, Hk: 1, D: 2, mask: { causal: true }, q: Float32Array.of(1, 2), qPos: Int32Array.of(5),
    caches: [{ k: Float32Array.of(3, 4, 9, 9), v: Float32Array.of(5, 6, 7, 7), pos: Int32Array.of(5, 6) }], scale: 0.5,
  };
  const ref = refDecode(p, new Float32Array(2), Float32Array.of(-Infinity));
  assert.deepEqual(Array.from(ref.o), [5, 6]);
  assert.equal(ref.lse[0], 5.5);
});

// ---- two GPUs --------------------------------------------------------------------------------

const nccl = avail.ok ? loadNccl() : null;
const skip2 = !avail.ok ? `${avail.reason} (2-GPU decode combine skipped)` : avail.devices < 2 ? `only ${avail.devices} GPU visible: the decode combine test needs 2 (skipped)` : nccl && 'error' in nccl ? `${nccl.error} (2-GPU decode combine skipped)` : false;
const rankJs = fileURLToPath(new URL('./decode-rank.js', import.meta.url));

test('decodeCombineRanks on 2 GPUs: each rank decodes half the cache; both end with the whole result, bit-identical', { skip: skip2, timeout: 120_000 }, async () => {
  const seed = freshSeed();
  const out: string[] = [], err: string[] = [];
  const r = await launch({ nproc: 2, command: [process.execPath, rankJs, String(seed)], stdout: (l) => out.push(l), stderr: (l) => err.push(l) });
  assert.equal(r.code, 0, `seed ${seed}: ${r.message}\n${err.join('\n')}`);
  const results = out.filter((l) => l.includes('RESULT ')).map((l) => JSON.parse(l.slice(l.indexOf('RESULT ') + 7)) as { rank: number; name: string; dtype: CudaDType; errO: number; errL: number; hash: string });
  assert.ok(results.length >= 2, out.join('\n'));
  for (const x of results) {
    assert.ok(x.errO <= TOL[x.dtype] && x.errL <= TOL[x.dtype], `seed ${seed} rank ${x.rank} ${x.name}: o ${x.errO}, lse ${x.errL}`);
    const other = results.find((y) => y.name === x.name && y.rank !== x.rank);
    assert.ok(other, `both ranks report ${x.name}`);
    assert.equal(x.hash, other.hash, `${x.name}: ranks hold different bits`);
  }
});
