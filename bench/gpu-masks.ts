import { cudaKernel } from '../src/cuda/attention.js';
import { CudaContext } from '../src/cuda/context.js';
import { encode } from '../src/cuda/convert.js';
import { fill } from './common.js';
import { fmt, runPeer } from './gpu-peers.js';
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
 * `cases` picks some of them by key (MASK_CASES: none, all, diagonal, zigzag, edge, unseen). With
 * --peers, PyTorch's FlexAttention runs the same cases first (flexPeer) and a second table sets
 * its "of none" beside ours. Each case's JSON line carries the wall-clock spans of its two timed
 * passes (fwdAt, bwdAt: epoch ms), which bench/gpu-masks-clocks.sh matches to its samples.
 *   node dist/bench/gpu.js masks [S=16384] [reps=5] [step|pass|fresh|finite|spaced] [cases=all-cases] [--peers] [--python=PATH]
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

/**
 * The cases, each by a key for the `cases` argument (in this order; bench/peers/torch_flex_masks.py
 * builds the same positions): qPos / kPos the query and key positions of one S x S block.
 */
export const MASK_CASES: readonly { key: string; name: string; causal: boolean; window: (S: number) => number; qPos: (S: number) => number[]; kPos: (S: number) => number[] }[] = [
  { key: 'none', name: 'none', causal: false, window: () => 0, qPos: (S) => range(0, S), kPos: (S) => range(0, S) },
  { key: 'all', name: 'causal, all seen', causal: true, window: () => 0, qPos: (S) => range(S, S), kPos: (S) => range(0, S) },
  { key: 'diagonal', name: 'causal, diagonal', causal: true, window: () => 0, qPos: (S) => range(0, S), kPos: (S) => range(0, S) },
  { key: 'zigzag', name: 'zigzag step', causal: true, window: () => 0, qPos: (S) => [...range(0, S / 2), ...range((3 * S) / 2, S / 2)], kPos: (S) => range(S / 2, S) },
  { key: 'edge', name: 'window edge', causal: true, window: (S) => S / 2, qPos: (S) => range(S, S), kPos: (S) => range(0, S) },
  { key: 'unseen', name: 'causal, none seen', causal: true, window: () => 0, qPos: (S) => range(0, S), kPos: (S) => range(S, S) },
];

/** The `cases` argument: a comma-separated list of MASK_CASES keys (undefined or 'all-cases': every one). */
export function parseCases(list: string | undefined): string[] {
  const keys = MASK_CASES.map((c) => c.key);
  if (list === undefined || list === 'all-cases') return keys;
  const want = list.split(',').map((x) => x.trim());
  const bad = want.filter((x) => !keys.includes(x));
  if (bad.length > 0 || want.length === 0) throw new Error(`masks: the cases are a comma-separated list of ${keys.join(', ')} (or all-cases), got '${list}'`);
  return keys.filter((k) => want.includes(k));
}

/** One of our cases as timed: ms and TFLOP/s forward (f, rf) and backward (b, rb), and its visible pairs. */
export interface MaskRow { name: string; key: string; f: number; b: number; rf: number; rb: number; pairs: number }

/** A FlexAttention row (bench/peers/torch_flex_masks.py's JSON). */
interface FlexRow { case: string; fwdMs?: number; fwdTflops?: number; bwdMs?: number; bwdTflops?: number; error?: string }

/**
 * PyTorch's FlexAttention (torch.compile, its block mask skipping the empty tiles and its mask
 * function only on the partial ones) on the same cases, shape and FLOP count, in its own process
 * before ours opens the GPU: the peer of "of none" (issue 5: partial blocks cost at most their share).
 */
function flexPeer(S: number, reps: number, keys: string[], py: string): { rows: FlexRow[]; notes: string[] } {
  const r = runPeer(py, 'torch_flex_masks.py', [String(S), String(reps), keys.join(',')], { FLEX_H: String(H), FLEX_HK: String(Hk), FLEX_D: String(D) });
  return { rows: r.rows as unknown as FlexRow[], notes: r.notes };
}

export function maskBench(S: number, reps: number, mode = 'step', cases?: string, peers?: { python?: string }): void {
  if (!Number.isInteger(S) || S < 256 || S % 4 !== 0) throw new Error(`S: expected a multiple of 4 of at least 256, got ${S}`);
  if (!Number.isInteger(reps) || reps < 1) throw new Error(`reps: expected a positive integer, got ${reps}`);
  const timing = parseTiming('masks', mode), queue = timing === 'pass' ? 1 : 4;
  const keys = parseCases(cases);
  const flex = peers ? flexPeer(S, reps, keys, peers.python ?? process.env.PYTHON ?? 'python3') : undefined;
  const ctx = CudaContext.open(0);
  const kern = cudaKernel(ctx);
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
  let ref = { f: NaN, b: NaN };
  const ours: MaskRow[] = [];
  const share = (x: number, r: number, pairs: number) => (pairs > 0 && r > 0 ? (x / r).toFixed(2) : '-');
  for (const c of MASK_CASES.filter((m) => keys.includes(m.key))) {
    const kPos = Int32Array.from(c.kPos(S)), qPos = Int32Array.from(c.qPos(S)), window = c.window(S);
    ctx.upload(qp, qPos);
    ctx.upload(kp, kPos);
    let pairs = 0;
    for (const x of qPos) pairs += c.causal ? seen(kPos, x, window) : S;
    const a = { q: q.ptr, k: k.ptr, v: v.ptr, qPos: qp.ptr, kPos: kp.ptr, Sq: S, Sk: S, H, Hk, D, dtype: 'bfloat16' as const, causal: c.causal, window, sinks: 0, scale: 1 / Math.sqrt(D) };
    const { f, b, fAt, bAt } = timeBlock(ctx, kern, a, dO.ptr, reps, timing, queue);
    const flops = 4 * pairs * H * D;
    const rf = flops / f / 1e9, rb = (2.5 * flops) / b / 1e9;
    if (c.key === 'none') ref = { f: rf, b: rb };
    ours.push({ name: c.name, key: c.key, f, b, rf, rb, pairs });
    console.log(
      `${c.name.padEnd(18)} ${(pairs / (S * S)).toFixed(3).padStart(7)}  | ${f.toFixed(3).padStart(7)} ${rf.toFixed(0).padStart(5)} ${share(rf, ref.f, pairs).padStart(8)} | ${b.toFixed(3).padStart(7)} ${rb.toFixed(0).padStart(5)} ${share(rb, ref.b, pairs).padStart(8)}`,
    );
    console.log(`JSON ${JSON.stringify({ case: c.name, key: c.key, S, timing: mode, visible: pairs / (S * S), fwdMs: f, fwdTflops: rf, bwdMs: b, bwdTflops: rb, fwdOfNone: rf / ref.f, bwdOfNone: rb / ref.b, fwdAt: fAt, bwdAt: bAt })}`);
  }
  if (flex) console.log(flexTable(ours, flex));
  for (const x of [q, k, v, dO, qp, kp]) ctx.free(x);
  kern.dispose();
  ctx.dispose();
}

/**
 * FlexAttention's rows beside ours: each side's time and its rate as a fraction of its own unmasked
 * rate ("of none"), and flex's time over ours (above 1: ours faster). Flex's ms are a whole
 * call (its forward writes a fresh o, its backward returns fresh gradients), ours as `timing` says.
 */
export function flexTable(ours: MaskRow[], flex: { rows: FlexRow[]; notes: string[] }): string {
  const noneF = flex.rows.find((r) => r.case === 'none' && r.error === undefined);
  const of = (x: number | undefined, r: number | undefined) => (x !== undefined && r !== undefined && r > 0 ? (x / r).toFixed(2) : '-');
  const lines = ['FlexAttention (PyTorch, torch.compile) in the same run; of none = each side against its own unmasked rate',
    'case                 flex fwd ms  TF/s  of none | flex bwd ms  TF/s  of none | fwd flex/ours  bwd flex/ours'];
  for (const o of ours) {
    const r = flex.rows.find((x) => x.case === o.key && x.error === undefined);
    const speed = (a: number | undefined, b: number) => (a !== undefined && b > 0 && o.pairs > 0 ? (a / b).toFixed(2) : '-');
    lines.push(`${o.name.padEnd(18)} ${fmt(r?.fwdMs, 3).padStart(13)} ${fmt(r?.fwdTflops, 0).padStart(5)} ${(o.pairs > 0 ? of(r?.fwdTflops, noneF?.fwdTflops) : '-').padStart(8)} | ${fmt(r?.bwdMs, 3).padStart(11)} ${fmt(r?.bwdTflops, 0).padStart(5)} ${(o.pairs > 0 ? of(r?.bwdTflops, noneF?.bwdTflops) : '-').padStart(8)} | ${speed(r?.fwdMs, o.f).padStart(13)} ${speed(r?.bwdMs, o.b).padStart(14)}`);
  }
  return [...lines, ...flex.notes.map((n) => `peer unavailable: ${n}`)].join('\n');
}
