import { cudaKernel } from '../src/cuda/attention.js';
import { CudaContext } from '../src/cuda/context.js';
import { encode } from '../src/cuda/convert.js';
import { fill } from './common.js';
import { parseTiming, STEP_FORWARD, timeBlock } from './gpu-block.js';

/**
 * The mask path of the block kernels on one GPU (issue 5: full blocks inside a ring step lose
 * nothing to the mask path; partial blocks cost at most their share). One S x S block at the
 * ring's head shape (bf16, H=32, Hk=8, D=128) with the positions a ring step gives it:
 *   none              no mask (the reference rate)
 *   causal, all seen  causal, every key before every query (an earlier rank's block)
 *   causal, diagonal  causal, the same positions on both sides (the rank's own block)
 *   zigzag step       causal, queries = chunks 0 and 3 of 4, keys = chunks 1 and 2 (2-rank zigzag)
 *   window edge       causal window S/2, keys one block behind the queries
 *   causal, none seen every key after every query (skipped: launch cost only)
 * Visible pairs are counted on the host; TFLOP/s = 4·pairs·H·D / time (backward 2.5x), and "of
 * none" is that rate over the unmasked block's: 1.00 means the mask path costs nothing beyond the
 * work it leaves out.
 * What is timed (bench/gpu-block.ts blockCalls): `step` (the default) what a ring step runs for
 * the block, the forward merging into a running (o, lse) and the backward adding into the
 * gradients, 4 calls queued an interval as a ring's steps follow one another; `pass` a whole
 * one-block pass as sessions before 34 timed it (the resets, finishForward and delta included, one
 * call an interval; the forward reads no old o). The per-pass work costs the same whatever the mask,
 * so it weighs on the light blocks: at 16k the window edge's pass zeroes the o of its 8k rows that
 * see nothing (128 MB) and its backward's 384 MB of gradients, against ~1 ms and ~3.7 ms of kernel;
 * a step's forward reads the old o of the rows it merges (kernels/NOTES.md run 118); `fresh` a step's
 * calls with lse reset to -inf before each forward (nothing merged, no finishForward); `finite` and
 * `spaced` as bench/gpu-block.ts says.
 *   node dist/bench/gpu.js masks [S=16384] [reps=5] [step|pass|fresh|finite|spaced]
 */

const H = 32, Hk = 8, D = 128;

const range = (a: number, n: number) => Array.from({ length: n }, (_, i) => a + i);

/** Keys (sorted positions) that query position x sees: k <= x and x - k < window (0 = none). */
export function seen(kPos: Int32Array, x: number, window: number): number {
  const upTo = (v: number) => { // keys with position <= v
    let lo = 0, hi = kPos.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (kPos[mid] <= v) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  };
  return upTo(x) - (window > 0 ? upTo(x - window) : 0);
}

export function maskBench(S: number, reps: number, mode = 'step'): void {
  if (!Number.isInteger(S) || S < 256 || S % 4 !== 0) throw new Error(`S: expected a multiple of 4 of at least 256, got ${S}`);
  if (!Number.isInteger(reps) || reps < 1) throw new Error(`reps: expected a positive integer, got ${reps}`);
  const timing = parseTiming('masks', mode), queue = timing === 'pass' ? 1 : 4;
  const ctx = CudaContext.open(0);
  const kern = cudaKernel(ctx);
  const q4 = S / 4;
  const cases: { name: string; causal: boolean; window: number; qPos: number[]; kPos: number[] }[] = [
    { name: 'none', causal: false, window: 0, qPos: range(0, S), kPos: range(0, S) },
    { name: 'causal, all seen', causal: true, window: 0, qPos: range(S, S), kPos: range(0, S) },
    { name: 'causal, diagonal', causal: true, window: 0, qPos: range(0, S), kPos: range(0, S) },
    { name: 'zigzag step', causal: true, window: 0, qPos: [...range(0, 2 * q4), ...range(6 * q4, 2 * q4)], kPos: range(2 * q4, 4 * q4) },
    { name: 'window edge', causal: true, window: S / 2, qPos: range(S, S), kPos: range(0, S) },
    { name: 'causal, none seen', causal: true, window: 0, qPos: range(0, S), kPos: range(S, S) },
  ];
  const n = S * H * D, nk = S * Hk * D;
  const up = (x: ArrayBufferView) => {
    const b = ctx.alloc(x.byteLength);
    ctx.upload(b, x);
    return b;
  };
  const q = up(encode(fill(n, 1), 'bfloat16')), k = up(encode(fill(nk, 2), 'bfloat16')), v = up(encode(fill(nk, 3), 'bfloat16')), dO = up(encode(fill(n, 4), 'bfloat16'));
  const qp = ctx.alloc(S * 4), kp = ctx.alloc(S * 4);
  console.log(`device: ${ctx.name} (${ctx.arch}); one ${S} x ${S} block, bf16 H=${H} Hk=${Hk} D=${D}; ${kern.name({ dtype: 'bfloat16', D })}; median of ${reps}; ${timing === 'pass' ? 'a whole pass a call' : `a ring step's calls (${STEP_FORWARD[timing]}), ${queue} queued`}`);
  console.log('case                visible  | fwd ms   TF/s  of none | bwd ms   TF/s  of none');
  let ref = { f: 0, b: 0 };
  for (const c of cases) {
    const kPos = Int32Array.from(c.kPos), qPos = Int32Array.from(c.qPos);
    ctx.upload(qp, qPos);
    ctx.upload(kp, kPos);
    let pairs = 0;
    for (const x of qPos) pairs += c.causal ? seen(kPos, x, c.window) : S;
    const a = { q: q.ptr, k: k.ptr, v: v.ptr, qPos: qp.ptr, kPos: kp.ptr, Sq: S, Sk: S, H, Hk, D, dtype: 'bfloat16' as const, causal: c.causal, window: c.window, sinks: 0, scale: 1 / Math.sqrt(D) };
    const { f, b } = timeBlock(ctx, kern, a, dO.ptr, reps, timing, queue);
    const flops = 4 * pairs * H * D;
    const rf = flops / f / 1e9, rb = (2.5 * flops) / b / 1e9;
    if (c.name === 'none') ref = { f: rf, b: rb };
    const share = (x: number, r: number) => (pairs > 0 ? (x / r).toFixed(2) : '-');
    console.log(
      `${c.name.padEnd(18)} ${(pairs / (S * S)).toFixed(3).padStart(7)}  | ${f.toFixed(3).padStart(7)} ${rf.toFixed(0).padStart(5)} ${share(rf, ref.f).padStart(8)} | ${b.toFixed(3).padStart(7)} ${rb.toFixed(0).padStart(5)} ${share(rb, ref.b).padStart(8)}`,
    );
    console.log(`JSON ${JSON.stringify({ case: c.name, S, timing: mode, visible: pairs / (S * S), fwdMs: f, fwdTflops: rf, bwdMs: b, bwdTflops: rb, fwdOfNone: rf / ref.f, bwdOfNone: rb / ref.b })}`);
  }
  for (const x of [q, k, v, dO, qp, kp]) ctx.free(x);
  kern.dispose();
  ctx.dispose();
}
