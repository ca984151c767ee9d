/**
 * CPU GEMM benchmark: GFLOP/s of the C kernel (src/cpu/kernels/gemm.c) on square sizes and on the
 * shapes of the model's linear layers, beside NumPy's sgemm (OpenBLAS) measured in the same run
 * by bench/peers/numpy_gemm.py when python3 + numpy exist.
 *
 *   node dist/bench/gemm.js [--quick] [--no-peers] [--threads=1,2] [--rounds=2] [--no-ts]
 *
 * Shapes are M x N x K (C [M, N], FLOP = 2 M N K). The model's flags: forward y = x w^T is NT,
 * backward dx = dy w is NN, dw = dy^T x is TN. Each round measures NumPy then ours for a thread
 * count; the table keeps each side's best round (the box is shared, so a neighbour's burst
 * should not decide the ratio).
 */
import { spawnSync } from 'node:child_process';
import { bestTime, fill } from './common.js';
import { existsSync } from 'node:fs';
import os from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadNative } from '../src/cpu/build.js';
import { gemm, gemmKernelName } from '../src/cpu/gemm.js';

const argv = new Set(process.argv.slice(2));
const arg = (name: string): string | undefined =>
  process.argv.find((x) => x.startsWith(`--${name}=`))?.slice(name.length + 3);
const quick = argv.has('--quick');
const threadList = (arg('threads') ?? '1,2').split(',').map(Number);
const rounds = Number(arg('rounds') ?? (quick ? 1 : 2));

interface Shape {
  op: 'NN' | 'NT' | 'TN' | 'TT';
  M: number;
  N: number;
  K: number;
  label: string;
}

const shapes: Shape[] = [];
for (const n of quick ? [512, 1024] : [512, 1024, 2048]) shapes.push({ op: 'NN', M: n, N: n, K: n, label: 'square' });
const model: [number, number, number][] = quick ? [[4096, 2048, 2048]] : [[4096, 2048, 2048], [4096, 5632, 2048], [4096, 2048, 5632]];
for (const [M, N, K] of model) {
  shapes.push({ op: 'NT', M, N, K, label: 'forward x·wᵀ' });
  shapes.push({ op: 'NN', M, N, K, label: 'backward dx = dy·w' });
  shapes.push({ op: 'TN', M, N, K, label: 'backward dw = dyᵀ·x' });
}
const key = (s: Shape) => `${s.op}:${s.M}x${s.N}x${s.K}`;

interface PeerOut {
  threads: string;
  blas: string;
  core: string | null;
  numpy: string;
  results: { op: string; M: number; N: number; K: number; gflops: number }[];
}

function runPeer(threads: number): PeerOut | string {
  const script = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'bench', 'peers', 'numpy_gemm.py');
  if (!existsSync(script)) return `peer script not found at ${script}`;
  const env: NodeJS.ProcessEnv = { ...process.env };
  // The box's environment pins OpenBLAS to its Haswell kernels and a small L2: let it pick for this CPU.
  delete env.OPENBLAS_CORETYPE;
  delete env.OPENBLAS_L2_SIZE;
  for (const k of ['OPENBLAS_NUM_THREADS', 'OMP_NUM_THREADS', 'MKL_NUM_THREADS']) env[k] = String(threads);
  const args = [script, '--shapes', shapes.map(key).join(','), '--reps', quick ? '2' : '3'];
  const r = spawnSync('python3', args, { env, encoding: 'utf8', timeout: 900_000 });
  if (r.error) return `python3 unavailable (${r.error.message})`;
  if (r.status !== 0) {
    const last = (r.stderr || '').trim().split('\n').pop() ?? '';
    return /No module named .?numpy/.test(r.stderr ?? '') ? 'numpy is not installed' : `peer failed: ${last}`;
  }
  try {
    return JSON.parse(r.stdout.trim().split('\n').pop() ?? '') as PeerOut;
  } catch {
    return `peer printed no JSON: ${r.stdout.slice(0, 200)}`;
  }
}

interface Buffers {
  A: Float32Array;
  B: Float32Array;
  C: Float32Array;
}
const maxA = Math.max(...shapes.map((s) => s.M * s.K)), maxB = Math.max(...shapes.map((s) => s.K * s.N));
const maxC = Math.max(...shapes.map((s) => s.M * s.N));
const buf: Buffers = { A: fill(maxA, 1), B: fill(maxB, 2), C: new Float32Array(maxC) };

function ours(s: Shape, threads: number, kernel: 'c' | 'ts' = 'c'): number {
  const A = buf.A.subarray(0, s.M * s.K), B = buf.B.subarray(0, s.K * s.N), C = buf.C.subarray(0, s.M * s.N);
  const run = () => gemm({ transA: s.op[0] === 'T', transB: s.op[1] === 'T', M: s.M, N: s.N, K: s.K, A, B, C, threads, kernel });
  const t = kernel === 'ts' ? bestTime(run, { warmup: 1, min: 1, budget: 0 }) : bestTime(run, { warmup: 1, min: quick ? 2 : 3, budget: quick ? 0.5 : 1.5 });
  return (2 * s.M * s.N * s.K) / t / 1e9;
}

const native = loadNative();
if ('error' in native) {
  console.error(`C kernel unavailable: ${native.error}`);
  process.exit(1);
}
const cores = typeof os.availableParallelism === 'function' ? os.availableParallelism() : os.cpus().length;
console.log(`# CPU GEMM: ${gemmKernelName('c')} (${native.path})`);
console.log(`# ${os.cpus()[0]?.model ?? 'cpu'}, ${cores} cores, Node ${process.version}, ${new Date().toISOString().slice(0, 10)}`);

const oursBest = new Map<string, number>(), peerBest = new Map<string, number>();
const notes: string[] = [];
let peerInfo: PeerOut | undefined;
for (let round = 0; round < rounds; round++) {
  for (const threads of threadList) {
    if (!argv.has('--no-peers')) {
      const p = runPeer(threads);
      if (typeof p === 'string') {
        if (!notes.includes(p)) notes.push(p);
      } else {
        peerInfo = p;
        for (const r of p.results) {
          const k = `${r.op}:${r.M}x${r.N}x${r.K}/${threads}`;
          peerBest.set(k, Math.max(peerBest.get(k) ?? 0, r.gflops));
        }
      }
    }
    for (const s of shapes) {
      const k = `${key(s)}/${threads}`;
      const g = ours(s, threads);
      oursBest.set(k, Math.max(oursBest.get(k) ?? 0, g));
      process.stderr.write(`  round ${round + 1} ${k}: ${g.toFixed(1)} GFLOP/s (numpy ${peerBest.get(k)?.toFixed(1) ?? '-'})\n`);
    }
  }
}
const tsRate = argv.has('--no-ts') ? undefined : ours(shapes[0], 1, 'ts');

if (peerInfo) console.log(`# peer: NumPy ${peerInfo.numpy}, ${peerInfo.blas}; OpenBLAS core ${peerInfo.core ?? 'unknown'}`);
for (const n of notes) console.log(`# peer skipped: ${n}`);
console.log('');
console.log('| shape M×N×K | op | use | threads | ours GFLOP/s | NumPy GFLOP/s | ours / NumPy |');
console.log('|---|---|---|---|---|---|---|');
for (const threads of threadList) {
  for (const s of shapes) {
    const k = `${key(s)}/${threads}`;
    const o = oursBest.get(k) ?? NaN, p = peerBest.get(k);
    const ratio = p ? `${Math.round((100 * o) / p)}%` : '-';
    console.log(`| ${s.M}×${s.N}×${s.K} | ${s.op} | ${s.label} | ${threads} | ${o.toFixed(1)} | ${p ? p.toFixed(1) : '-'} | ${ratio} |`);
  }
}
if (tsRate !== undefined) {
  const s = shapes[0];
  console.log(`| ${s.M}×${s.N}×${s.K} | ${s.op} | TypeScript fallback | 1 | ${tsRate.toFixed(2)} | - | - |`);
}
