import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { PHASES, parseTrace, summarizeEpilogue, summarizeTrace } from '../../bench/gpu-trace.js';
import { cudaAvailable } from '../../src/cuda/check.js';
import { CudaContext, Staging } from '../../src/cuda/context.js';
import { cudaKernel } from '../../src/cuda/attention.js';
import { encode, roundTo } from '../../src/cuda/convert.js';
import { refBackward } from '../ref/attention64.js';
import { assertClose, freshSeed, randn, rng, withEnv } from '../helpers/check.js';

// bench/gpu-trace.ts's reading of the -DFWD_TRACE records (kernels/attn_fwd_h.cu, Trace), on a
// made-up trace whose answers are known: a 2 GHz SM clock; per working CTA 2 us until Q lands,
// 1.5 us for the first tile, 1 us for each further tile and 1 us of epilogue (so time = 3.5 us +
// 1 us x tiles), two CTAs on SM 0 with a 0.5 us gap, then one that sees nothing, and one long CTA on SM 1.

// Raw counters far past 2^53, as %globaltimer (ns since 1970) and a long-running clock64 are.
const CLOCK0 = 2n ** 61n + 12345n, TIME0 = 1_764_950_000_000_000_000n;

function record(sm: number, tiles: number, qt: number, h: number, startNs: number): bigint[] {
  const marks = tiles ? [0, 2000, 3500, 3500 + 1000 * (tiles - 1), 4500 + 1000 * (tiles - 1)] : [0, 0, 0, 0, 300];
  const c = marks.map((ns) => CLOCK0 + BigInt(2 * (startNs + ns)));  // 2 cycles a ns
  const info = BigInt(sm) | (BigInt(tiles) << 16n) | (BigInt(qt) << 32n) | (BigInt(h) << 48n);
  return [info, ...c, TIME0 + BigInt(startNs), TIME0 + BigInt(startNs + marks[4])];
}

test('the trace summary: phases, the per-tile and per-CTA fit, gaps between CTAs and the idle tail', () => {
  const start = 1_000_001;  // odd: exact only if the counters were rebased before becoming Numbers
  const rows = [
    record(0, 10, 3, 0, start),              // 13.5 us
    record(0, 4, 1, 1, start + 14_000),       // after a 0.5 us gap: 7.5 us, ends at 21.5
    record(1, 20, 7, 0, start),              // 23.5 us: the kernel's end
    record(0, 0, 0, 1, start + 22_000),       // sees nothing: 0.3 us after another 0.5 us gap
  ];
  const raw = new BigUint64Array(8 * 6);  // two slots no CTA wrote
  rows.forEach((r, i) => raw.set(r, 8 * i));
  const { records } = parseTrace(raw, 6);
  assert.equal(records.length, 4);
  assert.deepEqual([records[0].sm, records[0].tiles, records[0].qt, records[0].h], [0, 10, 3, 0]);
  const s = summarizeTrace(records);
  assert.equal(s.working, 3);
  assert.equal(s.sms, 2);
  assert.ok(Math.abs(s.ghz - 2) < 1e-12, `clock ${s.ghz}`);
  assert.ok(Math.abs(s.spanUs - 23.5) < 1e-9, `span ${s.spanUs}`);
  assert.ok(s.fit && Math.abs(s.fit.perTile - 1) < 1e-9 && Math.abs(s.fit.perCta - 3.5) < 1e-9 && Math.abs(s.fit.r2 - 1) < 1e-9, JSON.stringify(s.fit));
  const ph = Object.fromEntries(s.phases.map((p) => [p.name, p]));
  assert.equal(ph['start to Q landed'].med, 2);
  assert.equal(ph['first tile (S, softmax)'].med, 1.5);
  assert.equal(ph['other tiles, per tile'].med, 1);
  assert.equal(ph['epilogue (o, lse stored)'].med, 1);
  assert.equal(ph['CTAs that see nothing'].med, 0.3);
  assert.equal(ph['gap between CTAs on an SM'].med, 0.5);
  // SM 0 ends 1.2 us before the kernel, SM 1 ends it.
  const tail = ph['idle after the last CTA'];
  assert.ok(tail.p10 === 0 && Math.abs(tail.p90! - 1.2) < 1e-9, JSON.stringify(tail));
  // Shares of 2 SMs x 23.5 us: the tiles after the first take (9 + 3 + 19) us.
  assert.ok(Math.abs(ph['other tiles, per tile'].share - 31 / 47) < 1e-9, `${ph['other tiles, per tile'].share}`);
  const whole = s.phases.reduce((a, p) => a + p.share, 0);
  assert.ok(Math.abs(whole - 1) < 1e-9, `the phases, gaps and idle time add up to the SMs' time: ${whole}`);
  assert.throws(() => summarizeTrace([]), /no CTA wrote a record/);
  // Every CTA with as many tiles (an unmasked launch): no line to fit, and none claimed.
  const even = new BigUint64Array(16);
  even.set(record(0, 8, 0, 0, start), 0);
  even.set(record(1, 8, 1, 0, start + 100), 8);
  assert.equal(summarizeTrace(parseTrace(even, 2).records).fit, null);
});

// The epilogue records (-DFWD_TRACE_EPI): a warpgroup's number in the count field, clocks from its
// last P·V; at 2 GHz warpgroup 0 merges row 0 in 1 us and row 1 in 0.5 us, then waits 1 us at the
// consumers' bar.sync; warpgroup 1 takes 1.5 + 1.5 us and waits 0.
function epiRecord(wg: number, startNs: number, [r0, r1, wait]: number[]): bigint[] {
  const marks = [0, r0, r0 + r1, r0 + r1 + wait, r0 + r1 + wait];
  const c = marks.map((ns) => CLOCK0 + BigInt(2 * (startNs + ns)));
  return [BigInt(3) | (BigInt(wg) << 16n), ...c, TIME0 + BigInt(startNs), TIME0 + BigInt(startNs + marks[4])];
}

test('the epilogue summary: each warpgroup\'s rows and its wait at the bar.sync', () => {
  const raw = new BigUint64Array(8 * 4);
  [epiRecord(0, 1001, [1000, 500, 1000]), epiRecord(1, 2001, [1500, 1500, 0]), epiRecord(0, 9001, [1000, 500, 1000]), epiRecord(1, 9501, [1500, 1500, 0])].forEach((r, i) => raw.set(r, 8 * i));
  const s = summarizeEpilogue(parseTrace(raw, 4).records);
  assert.ok(Math.abs(s.ghz - 2) < 1e-12, `clock ${s.ghz}`);
  assert.ok(Math.abs(s.spanUs - 11.5) < 1e-9, `span ${s.spanUs}`);  // 1001 ns to 12501 ns
  const med = Object.fromEntries(s.phases.map((p) => [p.name, p.med]));
  assert.equal(med['warpgroup 0: row 0 merged (lse, o read, o stored)'], 1);
  assert.equal(med['warpgroup 0: row 1 merged'], 0.5);
  assert.equal(med["warpgroup 0: the other consumers' bar.sync"], 1);
  assert.equal(med['warpgroup 0: the whole epilogue'], 2.5);
  assert.equal(med['warpgroup 1: row 1 merged'], 1.5);
  assert.equal(med["warpgroup 1: the other consumers' bar.sync"], 0);
  assert.equal(med['warpgroup 1: the whole epilogue'], 3);
  assert.throws(() => summarizeEpilogue([]), /no warpgroup wrote an epilogue record/);
});

// On a GPU (sm_90a): the traced builds (-DFWD_TRACE, -DBWD_TRACE) still compute the block as the
// float64 reference does, and write one record per CTA with the work the mask leaves it: causal
// over S = 1000, 128-row query tiles in the forward (tile t sees key tiles 0..t), 128-key tiles
// against 64-query tiles in the backward (key tile t is seen by query tiles 2t..15).
const avail = cudaAvailable();
const gpuSkip = avail.ok ? false : `${avail.reason} (GPU tests skipped)`;

// The default kernels whatever the environment says (ht at D=128, the Hopper backward unsplit):
// the work counts below are theirs.
const DEFAULT_KERNELS = { RINGATTN_WGMMA_ATTN: undefined, RINGATTN_WGMMA_BWD: undefined, RINGATTN_NO_WGMMA: undefined, RINGATTN_BWD_SPLIT: undefined };

/**
 * body(ctx) on the default kernels built with the given trace defines (added to any in the
 * environment) and further environment settings; skipped off sm_90 (the traces are written by
 * the sm_90a kernels only).
 */
function onHopperTraced(t: TestContext, defines: string, env: Record<string, string | undefined>, body: (ctx: CudaContext) => void): void {
  return withEnv({ ...DEFAULT_KERNELS, ...env, RINGATTN_NVRTC_DEFINES: [process.env.RINGATTN_NVRTC_DEFINES, defines].filter(Boolean).join(' ') }, () => {
    const ctx = CudaContext.open(0);
    try {
      const [major, minor] = ctx.computeCapability;
      if (major !== 9 || minor !== 0) {
        t.skip(`sm_${major}${minor}: the traces are written by the sm_90a kernels only`);
        return;
      }
      body(ctx);
    } finally {
      ctx.dispose();
    }
  });
}

test('traced Hopper forward and backward: correct results, one record a CTA with its work, clocks in order (GPU)', { skip: gpuSkip }, (t) => onHopperTraced(t, '-DFWD_TRACE -DBWD_TRACE', {}, (ctx) => {
  const kern = cudaKernel(ctx);
  const S = 1000, H = 2, D = 128, n = S * H * D, rows = S * H;
  const seed = freshSeed(), r = rng(seed);
  const [q, k, v, dO] = [0, 1, 2, 3].map(() => roundTo(randn(n, r), 'bfloat16'));
  const dev = new Staging(ctx);
  const pos = dev.up(Int32Array.from({ length: S }, (_, i) => i));
  const [o, lse, delta, dq, dk, dv] = [n, rows, rows, n, n, n].map((len) => dev.alloc(len * 4).ptr);
  const fwdTrace = dev.alloc(8 * 8 * 8 * H), bwdTrace = dev.alloc(8 * 8 * 8 * H);
  ctx.fill32(fwdTrace, 0, 8 * 8 * 2 * H);
  ctx.fill32(bwdTrace, 0, 8 * 8 * 2 * H);
  const a = { q: dev.up(encode(q, 'bfloat16')), k: dev.up(encode(k, 'bfloat16')), v: dev.up(encode(v, 'bfloat16')), qPos: pos, kPos: pos, Sq: S, Sk: S, H, Hk: H, D, dtype: 'bfloat16' as const, causal: true, window: 0, sinks: 0, scale: 1 / Math.sqrt(D) };
  ctx.fill32(lse, 0xff800000, rows);
  kern.forward({ ...a, o, lse, trace: fwdTrace.ptr });
  kern.finishForward(o, lse, rows, D);
  const dOp = dev.up(encode(dO, 'bfloat16'));
  kern.delta(dOp, o, delta, rows, D, 'bfloat16');
  for (const b of [dq, dk, dv]) ctx.fill32(b, 0, n);
  kern.backward({ ...a, dO: dOp, lse, delta, dq, dk, dv, trace: bwdTrace.ptr });
  const get = (ptr: number, len: number) => ctx.download(new Float32Array(len), ptr);
  const [out, gq, gk, gv] = [get(o, n), get(dq, n), get(dk, n), get(dv, n)];
  const [ft, bt] = [ctx.download(new BigUint64Array(8 * 8 * H), fwdTrace), ctx.download(new BigUint64Array(8 * 8 * H), bwdTrace)];
  ctx.sync();
  const g = refBackward(q, k, v, dO, S, H, H, D, { causal: true }); // with the forward (o, lse)
  assertClose(out, g.o, 1e-2, `traced forward out (seed ${seed})`);
  assertClose(gq, g.dq, 2e-2, `traced backward dq (seed ${seed})`);
  assertClose(gk, g.dk, 2e-2, `traced backward dk (seed ${seed})`);
  assertClose(gv, g.dv, 2e-2, `traced backward dv (seed ${seed})`);
  for (const [what, raw, work] of [['forward', ft, (t: number) => t + 1], ['backward', bt, (t: number) => 16 - 2 * t]] as const) {
    const { records } = parseTrace(raw, 8 * H);
    assert.equal(records.length, 8 * H, `${what}: a record for each of the 8 x ${H} CTAs`);
    for (const rec of records) {
      assert.equal(rec.tiles, work(rec.qt), `${what}: CTA of tile ${rec.qt}, head ${rec.h}: work items`);
      for (let i = 1; i < 5; i++) assert.ok(rec.c[i] >= rec.c[i - 1], `${what}: clocks in order ${rec.c.join(' ')}`);
      assert.ok(rec.g1 > rec.g0);
    }
    const s = summarizeTrace(records, PHASES[what === 'forward' ? 'fwd' : 'bwd']);
    assert.ok(s.fit && s.fit.perTile > 0 && s.ghz > 0.5 && s.ghz < 3, `${what}: ${JSON.stringify(s.fit)} at ${s.ghz} GHz`);
  }
  dev.free();
  kern.dispose();
}));

// The per-item trace of the persistent ht (-DFWD_TRACE_ITEMS, `gpu.js trace ... items`): three CTAs
// take the 8 x H causal items of S = 1000 from the counter, so each runs several; each item writes
// one record at h nx + qt with its own key tiles (t + 1), and the items one CTA ran follow one
// another on its SM's clock without overlapping.
/**
 * The persistent ht's causal forward over S = 1000 (H = 2, D = 128: 8 query tiles of 128 rows, tile t
 * seeing key tiles 0..t) with a trace buffer of `slots` records, checked against float64; returns
 * the raw records.
 */
function persistentTraced(ctx: CudaContext, slots: number): BigUint64Array {
  const kern = cudaKernel(ctx);
  assert.match(kern.name({ dtype: 'bfloat16', D: 128 }), /wgmma-fwd-ht\b/, 'the persistent ht is the kernel traced');
  const S = 1000, H = 2, D = 128, n = S * H * D, rows = S * H;
  const seed = freshSeed(), r = rng(seed);
  const [q, k, v] = [0, 1, 2].map(() => roundTo(randn(n, r), 'bfloat16'));
  const dev = new Staging(ctx);
  try {
    const pos = dev.up(Int32Array.from({ length: S }, (_, i) => i));
    const [o, lse] = [n, rows].map((len) => dev.alloc(len * 4).ptr);
    const trace = dev.alloc(8 * 8 * slots);
    ctx.fill32(trace, 0, 16 * slots);
    ctx.fill32(lse, 0xff800000, rows);
    kern.forward({ q: dev.up(encode(q, 'bfloat16')), k: dev.up(encode(k, 'bfloat16')), v: dev.up(encode(v, 'bfloat16')), qPos: pos, kPos: pos, Sq: S, Sk: S, H, Hk: H, D, dtype: 'bfloat16', causal: true, window: 0, sinks: 0, scale: 1 / Math.sqrt(D), o, lse, trace: trace.ptr });
    kern.finishForward(o, lse, rows, D);
    const out = ctx.download(new Float32Array(n), o);
    const raw = ctx.download(new BigUint64Array(8 * slots), trace);
    ctx.sync();
    const g = refBackward(q, k, v, q, S, H, H, D, { causal: true });
    assertClose(out, g.o, 1e-2, `traced persistent forward out (seed ${seed})`);
    return raw;
  } finally {
    dev.free();
    kern.dispose();
  }
}

test('per-item trace of the persistent forward: correct results, one record an item at h nx + qt, items in turn on each SM (GPU)', { skip: gpuSkip }, (t) => onHopperTraced(t, '-DFWD_TRACE -DFWD_TRACE_ITEMS', { RINGATTN_FWD_CTAS: '3' }, (ctx) => {
  const H = 2, nx = 8;
  const raw = persistentTraced(ctx, nx * H);
  const { records } = parseTrace(raw, nx * H);
  assert.equal(records.length, nx * H, `a record for each of the ${nx} x ${H} items`);
  for (let i = 0; i < nx * H; i++) {
    const rec = parseTrace(raw.subarray(8 * i, 8 * i + 8), 1).records[0];
    assert.deepEqual([rec.qt, rec.h, rec.tiles], [i % nx, Math.floor(i / nx), (i % nx) + 1], `record ${i}: (query tile, head, key tiles)`);
    for (let j = 1; j < 5; j++) assert.ok(rec.c[j] >= rec.c[j - 1], `record ${i}: clocks in order ${rec.c.join(' ')}`);
  }
  const bySm = new Map<number, typeof records>();
  for (const rec of records) bySm.set(rec.sm, [...(bySm.get(rec.sm) ?? []), rec]);
  assert.ok(bySm.size <= 3, `at most the 3 CTAs' SMs, got ${bySm.size}`);
  for (const [sm, list] of bySm) {
    list.sort((a, b) => a.smStart - b.smStart);
    for (let i = 1; i < list.length; i++) assert.ok(list[i].smStart >= list[i - 1].smStart + list[i - 1].c[4], `SM ${sm}: item ${i} starts before the one before it ends`);
  }
  const s = summarizeTrace(records, PHASES.items);
  assert.ok(s.fit && s.fit.perTile > 0, `per-item fit ${JSON.stringify(s.fit)}`);
}));

test('epilogue trace of the persistent forward: correct results, a record a warpgroup an item at 2 (h nx + qt) + warpgroup, clocks in order (GPU)', { skip: gpuSkip }, (t) => onHopperTraced(t, '-DFWD_TRACE -DFWD_TRACE_ITEMS -DFWD_TRACE_EPI', { RINGATTN_FWD_CTAS: '3' }, (ctx) => {
  const H = 2, nx = 8;
  const raw = persistentTraced(ctx, 2 * nx * H);
  for (let i = 0; i < 2 * nx * H; i++) {
    const item = i >> 1, rec = parseTrace(raw.subarray(8 * i, 8 * i + 8), 1).records[0];
    assert.ok(rec, `record ${i} written`);
    assert.deepEqual([rec.qt, rec.h, rec.tiles], [item % nx, Math.floor(item / nx), i & 1], `record ${i}: (query tile, head, warpgroup)`);
    for (let j = 1; j < 5; j++) assert.ok(rec.c[j] >= rec.c[j - 1], `record ${i}: clocks in order ${rec.c.join(' ')}`);
  }
  const s = summarizeEpilogue(parseTrace(raw, 2 * nx * H).records);
  assert.ok(s.phases.every((p) => p.med !== null && p.med >= 0), JSON.stringify(s.phases));
}));
