import { requireGpu } from './gpu-guard.js';
import { CudaContext } from '../src/cuda/context.js';
import { maskBench } from './gpu-masks.js';
import { traceBench } from './gpu-trace.js';
import { ringBench } from './gpu-ring.js';
import { cudaKernel } from '../src/cuda/attention.js';
import { encode, type CudaDType } from '../src/cuda/convert.js';
import { fill } from './common.js';
import { blockCalls, timeCalls, warmUp } from './gpu-block.js';
import { comparisonTable, fmt, measurePeers, roundsSummary, type OursRow, type Peers } from './gpu-peers.js';

/**
 * Times the CUDA block kernels on one GPU: forward (with resetting o and lse) and backward (with
 * zeroing dq/dk/dv, then delta and the main kernel: what a ring step's block costs, and what
 * bench/gpu-block.ts's timeBlock times) at a few shapes, median of N event-timed runs after
 * warm-up (warmUp: until the host code runs compiled), reported as TFLOP/s with the usual
 * attention FLOP count (forward 4·S²·H·D, halved for causal; backward 2.5× forward).
 * With --queue=K each timed interval holds K calls enqueued back to back (the time reported is
 * a call's share), as a ring's steps follow one another: the host's work for a call (tile
 * boxes, tensor maps, launches) then overlaps the GPU's work on the last one instead of
 * leaving the GPU idle between a call's small kernels and its main one. K = 1 (the default)
 * times one call alone, host gaps included. --fwd-only / --bwd-only time one pass alone (the
 * forward still runs in the warm-up, for the backward's o and lse): a clock sampler beside the
 * run (bench/gpu-clocks.sh) then sees that pass's clocks and power only.
 * With --peers (npm run bench:gpu passes it) PyTorch SDPA's flash and cuDNN backends at the same
 * shapes and a cuBLAS bf16 matmul (the measured peak) run first, in their own processes
 * (bench/gpu-peers.ts), and a last table sets our rows beside them: forward / cuDNN, backward /
 * flash and / cuDNN, and each as a fraction of the peak. --python=PATH picks the interpreter.
 * With --rounds=R the whole measurement (ours, and with --peers the peers) runs R times, the order
 * alternating (peers first in odd rounds, ours first in even ones), each round's table printed,
 * then every row's forward / cuDNN and backward / flash as the median over the rounds and each
 * round's: at 8k one run's ratio moved by up to 8% between identical commands (BENCHMARKS.md,
 * session 27), and the spread says how far a ratio can be trusted.
 * Usage: node dist/bench/gpu.js [S=8192] [H=16] [reps=10] [--d=64,128] [--hk=H] [--fwd-only | --bwd-only] [--queue=1] [--causal=0,1] [--peers] [--rounds=1] [--python=python3]
 *        node dist/bench/gpu.js ring [devices=2] [reps=3] [S,S,...=16384,32768,65536]
 *          the ring on `devices` GPUs against one GPU on the same work (bench/gpu-ring.ts)
 *        node dist/bench/gpu.js masks [S=16384] [reps=5] [step|pass|fresh|finite|spaced] [cases=all-cases] [--peers] [--python=PATH]
 *          one block under each mask a ring step gives it, against no mask (bench/gpu-masks.ts; with --peers FlexAttention's beside it):
 *          a ring step's calls (step), a whole one-block pass (pass), a step's calls on lse reset (fresh), on lse set to 0 (finite), or with another fill between (spaced)
 *        node dist/bench/gpu.js trace [S=8192] [H=32] [D=128] [causal=1|0|edge] [reps=20] [fwd|items|epi|bwd] [pass|step|fresh|finite|spaced]
 *          a Hopper kernel's time CTA by CTA: phases, per-item and per-CTA cost, gaps, tail (bench/gpu-trace.ts)
 */

// Subcommands by the first argument that is not a flag (npm run bench:gpu passes --peers first;
// of the subcommands only masks takes flags: --peers and --python).
const flags = process.argv.slice(2).filter((x) => x.startsWith('--'));
const pos = process.argv.slice(2).filter((x) => !x.startsWith('--'));
if (pos[0] === 'masks' || pos[0] === 'trace' || pos[0] === 'ring') requireGpu();
if (pos[0] === 'masks') {
  for (const f of flags) if (f !== '--peers' && !f.startsWith('--python=')) throw new Error(`masks: unknown flag ${f}: expected --peers or --python=PATH`);
  const py = flags.find((f) => f.startsWith('--python='))?.slice(9);
  maskBench(Number(pos[1] ?? 16384), Number(pos[2] ?? 5), pos[3] ?? 'step', pos[4], flags.includes('--peers') ? { python: py } : undefined);
  process.exit(0);
}
if (pos[0] === 'trace') {
  const [S, H, D] = [8192, 32, 128].map((d, i) => Number(pos[1 + i] ?? d));
  const m = pos[4] ?? '1', reps = Number(pos[5] ?? 20);
  if (m !== '0' && m !== '1' && m !== 'edge') throw new Error(`trace: the mask is 1 (causal), 0 (none) or edge (a sliding window's edge), got ${m}`);
  traceBench(S, H, D, m === 'edge' ? 'edge' : m === '1' ? 'causal' : 'none', reps, (pos[6] ?? 'fwd') as 'fwd' | 'bwd' | 'items' | 'epi', pos[7] ?? 'pass');
  process.exit(0);
}
if (pos[0] === 'ring') {
  await ringBench(Number(pos[1] ?? 2), Number(pos[2] ?? 3), (pos[3] ?? '16384,32768,65536').split(',').map(Number));
  process.exit(0);
}

const S = Number(pos[0] ?? 8192);
const H = Number(pos[1] ?? 16);
const reps = Number(pos[2] ?? 10);
const dList = (flags.find((f) => f.startsWith('--d='))?.slice(4) ?? '64,128').split(',').map(Number);
const fwdOnly = flags.includes('--fwd-only'), bwdOnly = flags.includes('--bwd-only');
const Hk = Number(flags.find((f) => f.startsWith('--hk='))?.slice(5) ?? H);
const queue = Number(flags.find((f) => f.startsWith('--queue='))?.slice(8) ?? 1);
const causals = (flags.find((f) => f.startsWith('--causal='))?.slice(9) ?? '0,1').split(',').map((x) => x.trim());
const withPeers = flags.includes('--peers');
const python = flags.find((f) => f.startsWith('--python='))?.slice(9);
const rounds = Number(flags.find((f) => f.startsWith('--rounds='))?.slice(9) ?? 1);
for (const f of flags) if (!['--d=', '--hk=', '--queue=', '--causal=', '--python=', '--rounds='].some((p) => f.startsWith(p)) && f !== '--fwd-only' && f !== '--bwd-only' && f !== '--peers') throw new Error(`unknown flag ${f}: expected --d=64,128, --hk=N, --queue=K, --causal=0,1, --rounds=R, --fwd-only, --bwd-only, --peers or --python=PATH`);
if (fwdOnly && bwdOnly) throw new Error('--fwd-only and --bwd-only: expected at most one of them');
if (causals.some((c) => c !== '0' && c !== '1')) throw new Error(`--causal: expected 0 and/or 1, got '${causals.join(',')}'`);
if (!Number.isInteger(rounds) || rounds < 1) throw new Error(`--rounds: expected a positive integer, got ${rounds}`);
if (!Number.isInteger(queue) || queue < 1) throw new Error(`--queue: expected a positive integer, got ${queue}`);
if (!Number.isInteger(Hk) || Hk < 1 || H % Hk !== 0) throw new Error(`--hk: expected a divisor of H = ${H}, got ${Hk}`);
if (dList.some((d) => d !== 64 && d !== 128)) throw new Error(`--d: expected head dims 64 and/or 128, got '${dList.join(',')}'`);
requireGpu();

// Our rows, one per (D, causal), each printed as it is measured. The context opens on the first
// call: the first round's peers run before it, so their processes free the GPU's memory before
// ours allocates.
let ctx: CudaContext | undefined;
let kern: ReturnType<typeof cudaKernel> | undefined;
function measureOurs(): OursRow[] {
  if (!ctx || !kern) {
    ctx = CudaContext.open(0);
    kern = cudaKernel(ctx);
    console.log(`device: ${ctx.name} (${ctx.arch}, ${ctx.smCount} SMs); S=${S} H=${H} Hk=${Hk} reps=${reps} queue=${queue}`);
  }
  const c = ctx, k = kern;
  const ours: OursRow[] = [];
  console.log('kernel                         D  causal  fwd ms   fwd TF/s  bwd ms   bwd TF/s');
  for (const dtype of ['bfloat16'] as CudaDType[]) {
    for (const D of dList) {
      for (const causal of causals.map((x) => x === '1')) {
        const n = S * H * D, nk = S * Hk * D;
        let seed = 1;
        const rnd = (len = n) => fill(len, seed++);
        const up = (x: ArrayBufferView) => {
          const b = c.alloc(x.byteLength);
          c.upload(b, x);
          return b;
        };
        const q = up(encode(rnd(), dtype)), kb = up(encode(rnd(nk), dtype)), v = up(encode(rnd(nk), dtype)), dO = up(encode(rnd(), dtype));
        const pos = up(Int32Array.from({ length: S }, (_, i) => i));
        const a = { q: q.ptr, k: kb.ptr, v: v.ptr, qPos: pos.ptr, kPos: pos.ptr, Sq: S, Sk: S, H, Hk, D, dtype, causal, window: 0, sinks: 0, scale: 1 / Math.sqrt(D) };
        const { fwd, bwd, bufs: outs } = blockCalls(c, k, a, dO.ptr);
        warmUp(c, () => {
          fwd();
          if (!fwdOnly) bwd();
        });
        const flops = (4 * S * S * H * D) / (causal ? 2 : 1);
        const mf = bwdOnly ? NaN : timeCalls(c, fwd, reps, queue), mb = fwdOnly ? NaN : timeCalls(c, bwd, reps, queue);
        const row: OursRow = { D, causal, fwd: flops / mf / 1e9, bwd: (2.5 * flops) / mb / 1e9 };
        ours.push(row);
        console.log(
          `${k.name({ dtype, D }).padEnd(30)} ${String(D).padStart(3)}  ${String(causal).padEnd(6)} ${fmt(mf, 3).padStart(7)}  ${fmt(row.fwd).padStart(8)}  ${fmt(mb, 3).padStart(7)}  ${fmt(row.bwd).padStart(8)}`,
        );
        c.sync();
        for (const b of [q, kb, v, dO, pos, ...outs]) c.free(b);
      }
    }
  }
  return ours;
}

// Rounds alternate the order (peers then ours, then ours then peers, ...), so that a GPU warming
// over the run does not favour one side.
const results: { ours: OursRow[]; peers: Peers }[] = [];
for (let r = 0; r < rounds; r++) {
  if (rounds > 1) console.log(`\n== round ${r + 1} of ${rounds}`);
  const peersFirst = r % 2 === 0;
  let peers = withPeers && peersFirst ? measurePeers(S, H, Hk, dList, reps, queue, python) : undefined;
  const ours = measureOurs();
  if (withPeers && !peersFirst) peers = measurePeers(S, H, Hk, dList, reps, queue, python);
  if (peers) {
    console.log(`\nbeside the peers, same run (TFLOP/s; FLOPs as above for every row):\n${comparisonTable(S, H, Hk, ours, peers)}`);
    results.push({ ours, peers });
  }
}
if (results.length > 1) console.log(`\n${roundsSummary(S, results)}`);
if (!ctx || !kern) throw new Error('no round ran'); // rounds >= 1 is checked above
for (const [file, log] of ctx.compileLogs) console.log(`--- NVRTC log ${file} (first lines)\n${log.split('\n').filter((l) => /mma|Used|spill/.test(l)).slice(0, 12).join('\n')}`);
kern.dispose();
ctx.dispose();
