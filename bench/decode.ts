/**
 * CPU decode benchmark (issue 11): time per decode step and effective bandwidth (KV bytes read /
 * time) of the split-KV decode kernel, against the machine's memory bandwidth measured in the
 * same run by STREAM-like loops compiled into the same library (copy: 2 x bytes moved per element
 * as STREAM counts it; sum: a read-only pass, the access pattern of decode).
 *
 *   node dist/bench/decode.js [--big] [--quick] [--threads=1,2]
 *
 * H = 32, Hk = 8, D = 128, fp32 cache, one query token per sequence at the cache's last position
 * (causal: every cache row is visible and read once). Contexts 32k and 128k at batch 1, 32k at
 * batch 8; --big adds 1M at batch 1 and 128k at batch 8 (8 GiB of cache each). One window row
 * (128k cache, window 4096 + 4 sinks) shows that only visible rows are read.
 */
import os from 'node:os';
import { loadNative } from '../src/cpu/build.js';
import { decodeAttention, decodeKernelName, type DecodeCache } from '../src/cpu/decode.js';

const argv = process.argv.slice(2);
const big = argv.includes('--big');
const quick = argv.includes('--quick');
const cores = typeof os.availableParallelism === 'function' ? os.availableParallelism() : os.cpus().length;
const threadList = (argv.find((a) => a.startsWith('--threads='))?.slice(10).split(',').map(Number)) ?? [...new Set([1, cores])];
const H = 32, Hk = 8, D = 128;
const ROW = Hk * D; // floats per cache row, for K (and again for V)
const GiB = 2 ** 30;

const native = loadNative();
if ('error' in native) {
  console.error(`decode bench needs the C library: ${native.error}`);
  process.exit(1);
}
const streamCopy = native.lib.func('double ra_stream_copy(float* dst, const float* src, int64_t n, int threads)') as (...a: unknown[]) => number;
const streamSum = native.lib.func('double ra_stream_sum(const float* src, int64_t n, int threads)') as (...a: unknown[]) => number;

/** Times of `fn` in seconds after one warm-up: at least `min` runs, more while under `budget` s. */
function times(fn: () => void, min: number, budget: number): number[] {
  fn();
  const out: number[] = [];
  let total = 0;
  while (out.length < min || (total < budget && out.length < 50)) {
    const t = performance.now();
    fn();
    const dt = (performance.now() - t) / 1e3;
    out.push(dt);
    total += dt;
  }
  return out.sort((a, b) => a - b);
}
const median = (x: number[]) => x[Math.floor(x.length / 2)];

/** Fills x with pseudo-random values in [-1, 1) cheaply: a random 1 MiB block, then doubling copies. */
function fill(x: Float32Array, seed: number): void {
  const n0 = Math.min(x.length, 1 << 18);
  let s = seed >>> 0;
  for (let i = 0; i < n0; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    x[i] = s / 2 ** 31 - 1;
  }
  for (let n = n0; n < x.length; n *= 2) x.copyWithin(n, 0, Math.min(n, x.length - n));
}

// ---- memory bandwidth (arrays far larger than the 32 MiB L3) ----
const streamN = quick ? 1 << 26 : 1 << 27; // floats per array: 256 or 512 MiB
const a = new Float32Array(streamN), b = new Float32Array(streamN);
fill(a, 1);
fill(b, 2);
const bw: Record<number, { copy: number; sum: number }> = {};
for (const t of threadList) {
  const tc = times(() => streamCopy(b, a, streamN, t), 5, quick ? 1 : 3);
  const ts = times(() => streamSum(a, streamN, t), 5, quick ? 1 : 3);
  // best of runs, as STREAM reports; copy counts read + write bytes
  bw[t] = { copy: (2 * 4 * streamN) / tc[0] / 1e9, sum: (4 * streamN) / ts[0] / 1e9 };
}

// ---- decode ----
interface Case {
  n: number;
  B: number;
  window?: number;
  sinks?: number;
}
const cases: Case[] = [{ n: 32 * 1024, B: 1 }, { n: 128 * 1024, B: 1 }, { n: 32 * 1024, B: 8 }, { n: 128 * 1024, B: 1, window: 4096, sinks: 4 }];
if (big) cases.push({ n: 1024 * 1024, B: 1 }, { n: 128 * 1024, B: 8 });
const maxRows = Math.max(...cases.map((c) => c.n * c.B));
const cacheBytes = 2 * maxRows * ROW * 4;
if (cacheBytes > 12 * GiB) throw new Error(`cache of ${(cacheBytes / GiB).toFixed(1)} GiB exceeds the 12 GiB budget`);
// One K and one V buffer for the largest case; every case takes views of it (sequence b at rows b*n..).
const K = new Float32Array(maxRows * ROW), V = new Float32Array(maxRows * ROW);
fill(K, 3);
fill(V, 4);
const posAll = Int32Array.from({ length: Math.max(...cases.map((c) => c.n)) }, (_, i) => i);

interface Row {
  ctx: string;
  B: number;
  mask: string;
  threads: number;
  mib: number;
  ms: number;
  best: number;
  gbs: number;
  copyFrac: number;
  sumFrac: number;
}
const rows: Row[] = [];
for (const c of cases) {
  const caches: DecodeCache[] = Array.from({ length: c.B }, (_, s) => ({
    k: K.subarray(s * c.n * ROW, (s + 1) * c.n * ROW),
    v: V.subarray(s * c.n * ROW, (s + 1) * c.n * ROW),
    pos: posAll.subarray(0, c.n),
  }));
  const q = new Float32Array(c.B * H * D);
  fill(q, 5);
  const qPos = new Int32Array(c.B).fill(c.n - 1);
  const o = new Float32Array(c.B * H * D), lse = new Float32Array(c.B * H);
  const visible = c.window ? Math.min(c.n, c.window + (c.sinks ?? 0)) : c.n;
  const bytes = 2 * c.B * visible * ROW * 4;
  for (const t of threadList) {
    const step = () => {
      lse.fill(-Infinity);
      decodeAttention({ q, qPos, caches, H, Hk, D, causal: true, window: c.window, sinks: c.sinks, o, lse, kvSorted: true, threads: t });
    };
    const ts = times(step, quick ? 3 : 5, quick ? 1 : 3);
    const gbs = bytes / median(ts) / 1e9;
    rows.push({
      ctx: c.n >= 1 << 20 ? `${c.n >> 20}M` : `${c.n >> 10}k`, B: c.B, mask: c.window ? `window ${c.window}+${c.sinks} sinks` : 'causal',
      threads: t, mib: bytes / 2 ** 20, ms: median(ts) * 1e3, best: ts[0] * 1e3, gbs, copyFrac: gbs / bw[t].copy, sumFrac: gbs / bw[t].sum,
    });
  }
}

const cpu = os.cpus()[0]?.model ?? 'unknown';
console.log(`# decode bench: ${cpu}, ${cores} cores, kernel ${decodeKernelName()}, H=${H} Hk=${Hk} D=${D} fp32, Sq=1, ${new Date().toISOString().slice(0, 10)}`);
console.log('');
console.log('| threads | STREAM copy GB/s | read-only sum GB/s |');
console.log('|---|---|---|');
for (const t of threadList) console.log(`| ${t} | ${bw[t].copy.toFixed(1)} | ${bw[t].sum.toFixed(1)} |`);
console.log('');
console.log('| context | batch | mask | threads | KV read MiB | ms/step (median) | best ms | GB/s (median) | of copy BW | of sum BW |');
console.log('|---|---|---|---|---|---|---|---|---|---|');
for (const r of rows) {
  console.log(`| ${r.ctx} | ${r.B} | ${r.mask} | ${r.threads} | ${r.mib.toFixed(0)} | ${r.ms.toFixed(2)} | ${r.best.toFixed(2)} | ${r.gbs.toFixed(1)} | ${(100 * r.copyFrac).toFixed(0)}% | ${(100 * r.sumFrac).toFixed(0)}% |`);
}
const full = rows.filter((r) => r.mask === 'causal' && r.threads === Math.max(...threadList));
const worst = Math.min(...full.map((r) => r.copyFrac));
console.log('');
console.log(`target: decode >= 70% of the measured copy bandwidth with all threads; worst full-cache case: ${(100 * worst).toFixed(0)}% -> ${worst >= 0.7 ? 'met' : 'NOT met'}`);
