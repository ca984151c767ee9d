import { requireGpu } from './gpu-guard.js';
import { existsSync, readFileSync } from 'node:fs';
import { launchSelfIfNeeded } from '../src/cuda/cli.js';
import { CudaContext, type DeviceBuffer } from '../src/cuda/context.js';
import { toBf16 } from '../src/cuda/convert.js';
import { CudaDecode, DecodeCombiner, readProbe, type DecodePlan, type DeviceDecodeCache } from '../src/cuda/decode.js';
import { rankMain, type CudaGroup } from '../src/cuda/group.js';

requireGpu();

/**
 * GPU decode benchmark (issue 11): one decode step of B sequences, one query token each, against
 * caches of n tokens; H = 32, Hk = 8, D = 128 (--d=64), bf16 cache; causal with the query at the cache's
 * end, so every row is visible and read once. Time per step is the median over `reps` blocks of
 * back-to-back steps (CUDA events, after warm-up), effective bandwidth = K and V bytes read / time,
 * against the peak measured in the same run (a read kernel, and cuMemcpyDtoD counted as 2x bytes).
 * With --torch=<json> (bench/peers/torch_decode.py) PyTorch SDPA's flash and cuDNN times go in the
 * same table. A window row shows that only visible rows are read.
 *
 *   node dist/bench/gpu-decode.js [--contexts=32768,131072,1048576] [--batches=1,8] [--reps=30]
 *                                 [--torch=torch_decode.json] [--max-waves=N] [--waves=N] [--d=64]
 *   node dist/bench/gpu-decode.js --devices=2 [--contexts=...] [--batches=...] [--reps=...]
 *     each of 2 ranks (one GPU each) holds half of every cache; a step = the decode of its half
 *     plus decodeCombineRanks (all-gather + merge); speedup against one GPU with the whole cache.
 */

const args = new Map(process.argv.slice(2).map((a) => {
  const i = a.indexOf('=');
  return i < 0 ? [a.replace(/^--/, ''), 'true'] : [a.slice(2, i), a.slice(i + 1)];
}));
// --h / --hk change the head counts (e.g. --h=4 --hk=1 with 8x the context: the same bytes, each
// KV head's rows contiguous instead of 256-byte pieces at a 2 KB stride).
const H = Number(args.get('h') ?? 32), Hk = Number(args.get('hk') ?? 8), D = Number(args.get('d') ?? 128);
if (D !== 64 && D !== 128) throw new Error(`--d: expected 64 or 128, got ${args.get('d')}`);
const list = (k: string, d: string) => (args.get(k) ?? d).split(',').filter(Boolean).map(Number);
const contexts = list('contexts', '32768,131072,1048576');
const batches = list('batches', '1,8');
const reps = Number(args.get('reps') ?? 30);
const devices = Number(args.get('devices') ?? 1);
const maxWaves = args.has('max-waves') ? Number(args.get('max-waves')) : undefined;
const waves = args.has('waves') ? Number(args.get('waves')) : undefined;
const GB = 1e9;

const median = (x: number[]) => [...x].sort((a, b) => a - b)[Math.floor(x.length / 2)];
const fmtCtx = (n: number) => (n >= 1 << 20 ? `${n / (1 << 20)}M` : `${n / 1024}k`);

/** Random bf16 in a device buffer: one random 32 MiB block, then doubling device copies. */
function fillRandom(ctx: CudaContext, buf: DeviceBuffer, seed: number): void {
  const block = Math.min(buf.bytes, 32 << 20);
  const f = new Float32Array(block / 2);
  let s = seed >>> 0;
  for (let i = 0; i < f.length; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    f[i] = s / 2 ** 31 - 1;
  }
  ctx.upload(buf, toBf16(f));
  for (let done = block; done < buf.bytes; done *= 2) {
    const n = Math.min(done, buf.bytes - done);
    ctx.check('cuMemcpyDtoDAsync_v2', ctx.drv.cuMemcpyDtoDAsync_v2(buf.ptr + done, buf.ptr, n, ctx.stream));
  }
  ctx.sync();
}

function tryAlloc(ctx: CudaContext, bytes: number): DeviceBuffer | null {
  try {
    return ctx.alloc(bytes);
  } catch (e) {
    if (/OUT_OF_MEMORY|out of memory/i.test((e as Error).message)) return null;
    throw e;
  }
}

/** Median ms per call of `fn` over `reps` blocks of `inner` back-to-back calls (events). */
function timeSteps(ctx: CudaContext, fn: () => void, reps: number): { ms: number; inner: number } {
  for (let i = 0; i < 3; i++) fn();
  ctx.sync();
  const one = ctx.time(fn);
  const inner = Math.max(1, Math.min(200, Math.ceil(2 / Math.max(one, 1e-3))));
  const t: number[] = [];
  for (let r = 0; r < reps; r++) t.push(ctx.time(() => { for (let i = 0; i < inner; i++) fn(); }) / inner);
  return { ms: median(t), inner };
}

interface Setup {
  bufs: DeviceBuffer[];
  plan: DecodePlan;
  kvBytes: number;
  o: DeviceBuffer;
  lse: DeviceBuffer;
  rows: number;
}

/**
 * B caches of n rows (positions posBase..posBase+n-1) and one query per sequence at position
 * qPos; null when the GPU has no room.
 */
function setup(ctx: CudaContext, dec: CudaDecode, B: number, n: number, posBase: number, qPos: number, mask: { window?: number; sinks?: number } = {}): Setup | null {
  const bufs: DeviceBuffer[] = [];
  const free = () => { ctx.sync(); for (const b of bufs) ctx.free(b); };
  const alloc = (bytes: number) => {
    const b = tryAlloc(ctx, bytes);
    if (b) bufs.push(b);
    return b;
  };
  const row = Hk * D * 2;
  const k = alloc(B * n * row), v = alloc(B * n * row);
  if (!k || !v) { free(); return null; }
  fillRandom(ctx, k, 1);
  fillRandom(ctx, v, 2);
  const pos = alloc(n * 4)!;
  const p = new Int32Array(Math.min(n, 1 << 20));
  for (let off = 0; off < n; off += p.length) {
    const m = Math.min(p.length, n - off);
    for (let j = 0; j < m; j++) p[j] = posBase + off + j;
    ctx.upload(pos, p.subarray(0, m), off * 4);
  }
  const rows = B * H;
  const qf = new Float32Array(rows * D).map((_, i) => Math.sin(i * 0.37));
  const q = alloc(rows * D * 2)!;
  ctx.upload(q, toBf16(qf));
  const qp = alloc(B * 4)!;
  ctx.upload(qp, new Int32Array(B).fill(qPos));
  const o = alloc(rows * D * 4)!, lse = alloc(rows * 4)!;
  ctx.fill32(o, 0, rows * D);
  ctx.fill32(lse, 0xff800000, rows);
  const caches: DeviceDecodeCache[] = Array.from({ length: B }, (_, b) => ({ k: k.ptr + b * n * row, v: v.ptr + b * n * row, pos: pos.ptr, n }));
  const plan = dec.plan({ q: q.ptr, qPos: qp.ptr, caches, Sq: 1, H, Hk, D, dtype: 'bfloat16', causal: true, window: mask.window, sinks: mask.sinks, o: o.ptr, lse: lse.ptr });
  return { bufs, plan, kvBytes: B * n * row * 2, o, lse, rows };
}

function release(ctx: CudaContext, s: Setup): void {
  ctx.sync();
  for (const b of s.bufs) ctx.free(b);
}

/** Peak bandwidth in this run: a read kernel over 4 GiB, and a 2 GiB device-to-device copy (2x bytes). */
function peaks(ctx: CudaContext): { read: number; copy: number } {
  const bytes = 4 * 2 ** 30;
  const a = tryAlloc(ctx, bytes);
  if (!a) return { read: NaN, copy: NaN };
  try {
    ctx.fill32(a, 0x3f803f80, bytes / 4);
    const read = timeSteps(ctx, () => readProbe(ctx, a.ptr, bytes), 10).ms;
    const half = bytes / 2;
    const copy = timeSteps(ctx, () => ctx.check('cuMemcpyDtoDAsync_v2', ctx.drv.cuMemcpyDtoDAsync_v2(a.ptr + half, a.ptr, half, ctx.stream)), 10).ms;
    return { read: bytes / (read * 1e-3) / 1e12, copy: (2 * half) / (copy * 1e-3) / 1e12 };
  } finally {
    ctx.sync();
    ctx.free(a);
  }
}

interface TorchRow { backend: string; context: number; batch: number; d?: number; ms?: number; gqa?: string; error?: string }

function torchRows(): TorchRow[] {
  const f = args.get('torch');
  if (!f) return [];
  if (!existsSync(f)) {
    console.log(`(no PyTorch results: ${f} does not exist)`);
    return [];
  }
  const rows = readFileSync(f, 'utf8').split('\n').filter((l) => l.startsWith('JSON ')).map((l) => JSON.parse(l.slice(5)) as TorchRow);
  return rows.filter((x) => (x.d ?? 128) === D); // (rows written before torch_decode.py took D are D = 128)
}

function oneGpu(): void {
  const ctx = CudaContext.open(0);
  const dec = new CudaDecode(ctx, { maxWaves, waves });
  const pk = peaks(ctx);
  const torch = torchRows();
  console.log(`device: ${ctx.name} (${ctx.arch}, ${ctx.smCount} SMs); bf16 H=${H} Hk=${Hk} D=${D}, one query token per sequence, causal at the cache end`);
  console.log(`peak bandwidth this run: read kernel ${pk.read.toFixed(2)} TB/s, cuMemcpyDtoD ${pk.copy.toFixed(2)} TB/s (2x bytes); median of ${reps} blocks of back-to-back steps`);
  console.log('context batch | ours ms   TB/s  %read %copy | flash ms  cudnn ms  TB/s  | ours/cudnn | kernel (chunks)');
  const rowsOut: object[] = [];
  const cases: { n: number; B: number; window?: number; sinks?: number }[] = [];
  for (const n of contexts) for (const B of batches) cases.push({ n, B });
  cases.push({ n: 131072, B: 1, window: 4096, sinks: 4 });
  for (const c of cases) {
    const s = setup(ctx, dec, c.B, c.n, 0, c.n - 1, c);
    const label = `${fmtCtx(c.n).padStart(7)} ${String(c.B).padStart(5)}`;
    if (!s) {
      console.log(`${label} | skipped: the cache (${((2 * c.B * c.n * Hk * D * 2) / GB).toFixed(1)} GB) does not fit in this GPU's memory`);
      continue;
    }
    const read = c.window ? c.B * (c.window + c.sinks!) * Hk * D * 2 * 2 : s.kvBytes;
    const t = timeSteps(ctx, () => s.plan.run(), reps);
    const tbs = read / (t.ms * 1e-3) / 1e12;
    const find = (b: string) => torch.find((x) => x.backend === b && x.context === c.n && x.batch === c.B && !c.window);
    const fl = find('flash'), cu = find('cudnn');
    const tms = (x?: TorchRow) => (x?.ms !== undefined ? x.ms.toFixed(3) : x?.error ? 'n/a' : '-');
    const cuTbs = cu?.ms ? (s.kvBytes / (cu.ms * 1e-3) / 1e12).toFixed(2) : '-';
    const ratio = cu?.ms ? (t.ms / cu.ms).toFixed(3) : '-';
    const note = c.window ? `  window ${c.window} + ${c.sinks} sinks: bytes of visible rows` : '';
    console.log(
      `${label} | ${t.ms.toFixed(3).padStart(7)} ${tbs.toFixed(2).padStart(6)} ${(100 * tbs / pk.read).toFixed(0).padStart(5)} ${(100 * tbs / pk.copy).toFixed(0).padStart(5)} | ${tms(fl).padStart(8)} ${tms(cu).padStart(9)} ${cuTbs.padStart(5)} | ${ratio.padStart(10)} | ${s.plan.info.kernel} (${s.plan.info.chunks}${s.plan.info.fusedMerge ? ', merge fused' : ''})${note}`,
    );
    const row = { context: c.n, batch: c.B, window: c.window, ms: t.ms, tbs, readPeak: pk.read, copyPeak: pk.copy, inner: t.inner, flashMs: fl?.ms, cudnnMs: cu?.ms, ...s.plan.info };
    rowsOut.push(row);
    console.log(`JSON ${JSON.stringify(row)}`);
    release(ctx, s);
  }
  const errs = torch.filter((x) => x.error);
  for (const e of errs.slice(0, 4)) console.log(`torch ${e.backend} ${fmtCtx(e.context)} x ${e.batch}: ${e.error}`);
  const gqa = torch.find((x) => x.gqa)?.gqa;
  if (gqa) console.log(`torch GQA: ${gqa}`);
  for (const [file, log] of ctx.compileLogs) if (file === 'decode.cu') console.log(`--- NVRTC ${file}: ${log.split('\n').filter((l) => /decode_mma_bf16_d128_m1|Used/.test(l)).slice(0, 4).join(' | ')}`);
  dec.dispose();
  ctx.dispose();
}

async function twoGpus(P: number): Promise<void> {
  if (await launchSelfIfNeeded(P)) return;
  await rankMain(async (g: CudaGroup) => {
    const ctx = g.ctx;
    const say = (s: string) => g.rank === 0 && console.log(s);
    const dec = new CudaDecode(ctx, { maxWaves, waves });
    const comb = new DecodeCombiner(g);
    say(`device: ${ctx.name} x ${g.world}; bf16 H=${H} Hk=${Hk} D=${D}; each rank holds 1/${g.world} of every cache; median of ${reps} steps (wall clock, a step ends when the merged result is on every rank)`);
    say('context batch | 1 GPU ms | ranks: decode ms  combine ms  step ms | speedup');
    for (const n of contexts) {
      for (const B of batches) {
        // One GPU with the whole cache, timed by the same wall clock (and events for reference).
        let one = NaN;
        if (g.rank === 0) {
          const s = setup(ctx, dec, B, n, 0, n - 1);
          if (s) {
            // The same step as the ranks' below, less the combine: fresh (o, lse), decode, wait.
            const step1 = () => {
              ctx.fill32(s.o, 0, s.rows * D);
              ctx.fill32(s.lse, 0xff800000, s.rows);
              s.plan.run();
              g.syncStream();
            };
            for (let i = 0; i < 3; i++) step1();
            const t: number[] = [];
            for (let r = 0; r < reps; r++) {
              const t0 = performance.now();
              step1();
              t.push(performance.now() - t0);
            }
            one = median(t);
            release(ctx, s);
          }
        }
        g.barrier();
        const share = Math.ceil(n / g.world);
        const lo = g.rank * share, mine = Math.max(0, Math.min(n, lo + share) - lo);
        const s = setup(ctx, dec, B, mine, lo, n - 1);
        const ok = g.max(s ? 0 : 1) === 0;
        if (!ok || !s) {
          say(`${fmtCtx(n).padStart(7)} ${String(B).padStart(5)} | skipped: a rank's share does not fit in its GPU's memory`);
          if (s) release(ctx, s);
          continue;
        }
        // A step: fresh (o, lse), decode of this rank's share, combine (which waits once).
        const step = () => {
          ctx.fill32(s.o, 0, s.rows * D);
          ctx.fill32(s.lse, 0xff800000, s.rows);
          s.plan.run();
          comb.combine(s.o.ptr, s.lse.ptr, s.rows, D);
        };
        for (let i = 0; i < 3; i++) step();
        const tStep: number[] = [], tDec: number[] = [], tComb: number[] = [];
        for (let r = 0; r < reps; r++) {
          g.barrier();
          const t0 = performance.now();
          step();
          tStep.push(g.max(performance.now() - t0));
        }
        // The parts, with a wait between them (so their sum exceeds the step by one wait).
        for (let r = 0; r < reps; r++) {
          g.barrier();
          const t0 = performance.now();
          ctx.fill32(s.o, 0, s.rows * D);
          ctx.fill32(s.lse, 0xff800000, s.rows);
          s.plan.run();
          g.syncStream();
          const t1 = performance.now();
          comb.combine(s.o.ptr, s.lse.ptr, s.rows, D);
          const t2 = performance.now();
          tDec.push(g.max(t1 - t0));
          tComb.push(g.max(t2 - t1));
        }
        const st = median(tStep);
        say(`${fmtCtx(n).padStart(7)} ${String(B).padStart(5)} | ${one.toFixed(3).padStart(8)} | ${median(tDec).toFixed(3).padStart(16)} ${median(tComb).toFixed(3).padStart(11)} ${st.toFixed(3).padStart(8)} | ${(one / st).toFixed(2).padStart(7)}x`);
        say(`JSON ${JSON.stringify({ devices: g.world, context: n, batch: B, oneGpuMs: one, stepMs: st, decodeMs: median(tDec), combineMs: median(tComb), speedup: one / st })}`);
        release(ctx, s);
      }
    }
    comb.dispose();
    dec.dispose();
  });
}

if (devices > 1) await twoGpus(devices);
else oneGpu();
