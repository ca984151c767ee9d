/**
 * GPU GEMM benchmark: TFLOP/s of our kernels (src/cuda/kernels/gemm.cu) at the linear-layer
 * shapes of a ~1B Llama (hidden 2048, intermediate 8192), y = x·Wᵀ with x [M, K], W [N, K],
 * beside torch.matmul (cuBLAS) measured in the same run by bench/peers/torch_matmul.py.
 *
 *   node dist/bench/gpu-gemm.js [--reps=10] [--m=8192,32768] [--nk=2048x2048,8192x2048,2048x8192,512x2048]
 *                               [--tiles[=bf16-h,bf16-l,...]] [--no-f32] [--no-peer] [--python=python3]
 *
 * Rows: bf16 in / bf16 out (the like-for-like comparison with torch bf16), bf16 in / fp32 out,
 * and fp32 (our SIMT kernel against torch fp32 with TF32 disabled). --tiles also times every
 * bf16 tile family (or the listed ones) at each shape. Median of `reps` CUDA-event-timed calls after warm-up, on
 * random normal inputs; FLOP = 2·M·N·K. Each row also checks its output against the fp32
 * kernel's on a few rows (normwise; bf16 rounding makes ~1e-3 the expected size).
 */
import { requireGpu } from './gpu-guard.js';
import { spawnSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { CudaContext, type DeviceBuffer } from '../src/cuda/context.js';
import { chooseTile, gemm, gemmFlops, tileRuns, type DeviceGemmArgs, type GemmTile } from '../src/cuda/gemm.js';
import { convertDevice } from '../src/cuda/model-ops.js';

requireGpu();

const arg = (name: string): string | undefined => process.argv.find((x) => x.startsWith(`--${name}=`))?.slice(name.length + 3);
const flag = (name: string) => process.argv.includes(`--${name}`);
const reps = Number(arg('reps') ?? 10);
const Ms = (arg('m') ?? '8192,32768').split(',').map(Number);
const NKs = (arg('nk') ?? '2048x2048,8192x2048,2048x8192,512x2048').split(',').map((s) => s.split('x').map(Number) as [number, number]);
const withF32 = !flag('no-f32');
const withPeer = !flag('no-peer');
// --tiles: every bf16 family; --tiles=a,b: those.
const tileArg = process.argv.find((x) => x === '--tiles' || x.startsWith('--tiles='));
const tileList: GemmTile[] = !tileArg ? [] : tileArg === '--tiles' ? ['bf16-h', 'bf16-l', 'bf16-m', 'bf16-s', 'bf16-u'] : (tileArg.slice(8).split(',') as GemmTile[]);

function median(x: number[]): number {
  const s = [...x].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

/** Standard normal draws (Box-Muller), deterministic. */
function randn(n: number, seed: number, scale = 1): Float32Array {
  const out = new Float32Array(n);
  let s = seed >>> 0;
  const u = () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return (s + 0.5) / 2 ** 32;
  };
  for (let i = 0; i < n; i++) out[i] = scale * Math.sqrt(-2 * Math.log(u())) * Math.cos(2 * Math.PI * u());
  return out;
}

const ctx = CudaContext.open(0);
console.log(`device: ${ctx.name} (${ctx.arch}, ${ctx.smCount} SMs); reps=${reps}; y = x·Wᵀ, x [M,K], W [N,K]`);

// ---- the peer, first (its own process; it frees its memory before we allocate ours) ----------

interface PeerRow { M: number; N: number; K: number; dtype: string; ms?: number; tflops?: number; error?: string }
const peer = new Map<string, PeerRow>();
let peerNote = 'not run (--no-peer)';
if (withPeer) {
  const script = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'bench', 'peers', 'torch_matmul.py');
  const shapes = Ms.flatMap((M) => NKs.map(([N, K]) => `${M}x${N}x${K}`)).join(',');
  const py = arg('python') ?? process.env.PYTHON ?? 'python3';
  const t0 = Date.now();
  const res = spawnSync(py, [script, '--shapes', shapes, '--reps', String(reps), '--dtypes', withF32 ? 'bf16,fp32' : 'bf16'], { encoding: 'utf8', timeout: 900_000, maxBuffer: 1 << 24 });
  if (res.error || res.status !== 0) {
    peerNote = `failed: ${res.error?.message ?? `exit ${res.status}`} ${(res.stderr ?? '').trim().split('\n').slice(-3).join(' | ')}`;
  } else {
    peerNote = `ran in ${((Date.now() - t0) / 1e3).toFixed(1)} s`;
    for (const line of res.stdout.split('\n')) {
      if (!line.startsWith('JSON ')) continue;
      const o = JSON.parse(line.slice(5));
      if (o.info) peerNote = `${o.info}; ${peerNote}`;
      else if (o.error && o.M === undefined) peerNote = `unavailable: ${o.error}`;
      else peer.set(`${o.M}x${o.N}x${o.K}:${o.dtype}`, o as PeerRow);
    }
  }
}
console.log(`peer: ${peerNote}`);

// ---- ours ------------------------------------------------------------------------------------

const bufs: DeviceBuffer[] = [];
const alloc = (bytes: number) => {
  const b = ctx.alloc(bytes);
  bufs.push(b);
  return b;
};
/** n random fp32 values on the device: one random block uploaded repeatedly. */
const block = randn(1 << 22, 12345);
function randomF32(n: number, scale: number): DeviceBuffer {
  const b = alloc(n * 4);
  const scaled = scale === 1 ? block : block.map((v) => v * scale);
  for (let off = 0; off < n; off += block.length) ctx.upload(b, scaled.subarray(0, Math.min(block.length, n - off)), off * 4);
  return b;
}
function toBf16Dev(src: DeviceBuffer, n: number): DeviceBuffer {
  const b = alloc(n * 2);
  convertDevice(ctx, { src: src.ptr, dst: b.ptr, n, from: 'float32', to: 'bfloat16' });
  return b;
}

function timeGemm(a: DeviceGemmArgs): number {
  gemm(ctx, a);
  gemm(ctx, a);
  ctx.sync();
  const ts: number[] = [];
  for (let i = 0; i < reps; i++) ts.push(ctx.time(() => gemm(ctx, a)));
  return median(ts);
}

/** Normwise difference of rows [0, rows) of two device outputs (bf16 or fp32) of N columns. */
function rowsDiff(x: DeviceBuffer, xBf16: boolean, ref: DeviceBuffer, N: number, rows: number): number {
  const n = rows * N;
  const a = new Float32Array(n);
  if (xBf16) {
    const bits = ctx.download(new Uint16Array(n), x);
    const u = new Uint32Array(a.buffer);
    for (let i = 0; i < n; i++) u[i] = bits[i] << 16;
  } else ctx.download(a, x);
  const b = ctx.download(new Float32Array(n), ref);
  let num = 0, den = 0;
  for (let i = 0; i < n; i++) {
    if (!Number.isFinite(a[i])) return NaN;
    num += (a[i] - b[i]) ** 2;
    den += b[i] ** 2;
  }
  return Math.sqrt(num / den);
}

interface Row { shape: string; kind: string; kernel: string; ms: number; tflops: number; peer?: PeerRow; check: string }
const rows: Row[] = [];
const fmt = (x: number | undefined, d = 1) => (x === undefined || !Number.isFinite(x) ? '-' : x.toFixed(d));

for (const M of Ms) {
  for (const [N, K] of NKs) {
    const shape = `${M}x${N}x${K}`;
    const flops = gemmFlops(M, N, K);
    try {
      const x32 = randomF32(M * K, 1), w32 = randomF32(N * K, 1 / Math.sqrt(K));
      const x16 = toBf16Dev(x32, M * K), w16 = toBf16Dev(w32, N * K);
      const yRef = alloc(M * N * 4), y32 = alloc(M * N * 4), y16 = alloc(M * N * 2);
      const base = { transA: false, transB: true, M, N, K } as const;
      // Reference for the checks: the fp32 kernel on the first rows only (cheap).
      const chkRows = Math.min(M, 64);
      gemm(ctx, { ...base, M: chkRows, a: x32.ptr, b: w32.ptr, c: yRef.ptr, dtype: 'float32' });
      const add = (kind: string, a: DeviceGemmArgs, out: DeviceBuffer, outBf16: boolean, peerKey?: string) => {
        const ms = timeGemm(a);
        const d = rowsDiff(out, outBf16, yRef, N, chkRows);
        const tile = a.tile ?? chooseTile(a, ctx);
        rows.push({ shape, kind, kernel: tile, ms, tflops: flops / ms / 1e9, peer: peerKey ? peer.get(`${shape}:${peerKey}`) : undefined, check: Number.isFinite(d) ? d.toExponential(1) : 'NaN!' });
      };
      const b16: DeviceGemmArgs = { ...base, a: x16.ptr, b: w16.ptr, c: y16.ptr, dtype: 'bfloat16', outDtype: 'bfloat16' };
      add('bf16->bf16', b16, y16, true, 'bf16');
      add('bf16->fp32', { ...b16, c: y32.ptr, outDtype: 'float32' }, y32, false, 'bf16');
      for (const tile of tileList.filter((t) => tileRuns(t, ctx.arch))) add(`bf16->bf16 [${tile}]`, { ...b16, tile }, y16, true);
      if (withF32) add('fp32', { ...base, a: x32.ptr, b: w32.ptr, c: y32.ptr, dtype: 'float32' }, y32, false, 'fp32');
    } catch (e) {
      rows.push({ shape, kind: 'error', kernel: '-', ms: NaN, tflops: NaN, check: (e as Error).message.split('\n')[0] });
    } finally {
      ctx.sync();
      for (const b of bufs.splice(0)) ctx.free(b);
    }
    const last = rows.filter((r) => r.shape === shape);
    for (const r of last) {
      const frac = r.peer?.tflops ? `${((100 * r.tflops) / r.peer.tflops).toFixed(0)}%` : '-';
      console.log(
        `${r.shape.padEnd(17)} ${r.kind.padEnd(22)} ${r.kernel.padEnd(7)} ${fmt(r.ms, 3).padStart(8)} ms ${fmt(r.tflops).padStart(7)} TF/s` +
          `   torch ${r.peer?.dtype ?? '-'} ${fmt(r.peer?.tflops).padStart(6)} TF/s  ours/torch ${frac.padStart(5)}   check ${r.check}${r.peer?.error ? `  (peer: ${r.peer.error})` : ''}`,
      );
    }
  }
}

console.log('\nsummary (TFLOP/s; ours/torch)');
console.log('shape (MxNxK)      bf16->bf16   torch bf16   frac | bf16->fp32 |   fp32   torch fp32   frac');
const shapes = [...new Set(rows.map((r) => r.shape))];
for (const s of shapes) {
  const get = (k: string) => rows.find((r) => r.shape === s && r.kind === k);
  const b = get('bf16->bf16'), bf = get('bf16->fp32'), f = get('fp32');
  const pct = (r: Row | undefined) => (r?.peer?.tflops ? `${((100 * r.tflops) / r.peer.tflops).toFixed(0)}%` : '-');
  console.log(
    `${s.padEnd(17)} ${fmt(b?.tflops).padStart(10)}   ${fmt(b?.peer?.tflops).padStart(10)}  ${pct(b).padStart(5)} | ${fmt(bf?.tflops).padStart(10)} | ${fmt(f?.tflops).padStart(6)}   ${fmt(f?.peer?.tflops).padStart(10)}  ${pct(f).padStart(5)}`,
  );
}
for (const [file, log] of ctx.compileLogs) {
  console.log(`--- NVRTC log ${file} (registers/spills)`);
  const lines = log.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const m = /Compiling entry function '(\w+)'/.exec(lines[i]);
    if (!m) continue;
    const rest = lines.slice(i + 1, i + 4).join(' ');
    const regs = /Used (\d+) registers/.exec(rest)?.[1];
    const spill = /(\d+) bytes spill stores, (\d+) bytes spill loads/.exec(rest);
    console.log(`  ${m[1].padEnd(24)} regs ${regs ?? '?'}  spills ${spill ? `${spill[1]}/${spill[2]}` : '?'}`);
  }
}
ctx.dispose();
