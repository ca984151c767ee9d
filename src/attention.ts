import { InputError } from './core/errors.js';
import { checkInputs, checkInt, checkKernelChoice, checkRanks, MAX_THREADS, type Dims } from './core/inputs.js';
import type { F32Tensor } from './core/tensor.js';
import type { MaskSpec } from './core/mask.js';
import { shardPositions, gatherRows, scatterRows, type Layout } from './core/layout.js';
import type { TraceEvent } from './core/trace.js';
import type { RingSchedule } from './core/schedule.js';
import { computeDelta, type AttentionKernel } from './core/kernel.js';
import type { InjectedFailure } from './cpu/flags.js';

export interface AttentionOptions {
  causal?: boolean;
  window?: number;
  sinks?: number;
  /** Document id per position, `[S]` (packed sequences). */
  segments?: Int32Array;
  /** Softmax scale; default 1/sqrt(D). */
  scale?: number;
  blockQ?: number;
  blockK?: number;
  /** 'auto' (C if a compiler is found, else TypeScript), 'c' or 'ts'. */
  kernel?: 'auto' | 'c' | 'ts';
  /** Threads for single-device attention (default: all cores; at most MAX_THREADS). */
  threads?: number;
  /** Gradient of the output: computes dq, dk, dv too. */
  gradOut?: F32Tensor;
  /** Accept NaN/Infinity in inputs. */
  allowNonfinite?: boolean;
  /** Progress: (0, total) at the start, then (done, total) as the work goes (ring steps; query chunks on one device). */
  onProgress?: (done: number, total: number) => void;
}

/**
 * Single-device attention runs the kernel on QUERY_CHUNK query rows at a time (a fixed size, so the
 * result never depends on whether anyone watches), reporting progress between chunks: one call
 * over a long sequence gave no sign of life for minutes. Each chunk sees every key; the backward
 * adds each chunk's dK, dV into the same arrays.
 */
export const QUERY_CHUNK = 4096;

export interface RingAttentionOptions extends AttentionOptions {
  /** Number of ranks in the ring (worker threads on the CPU). */
  devices?: number;
  layout?: Layout;
  backend?: 'cpu';
  /** Test hook: make one rank fail. */
  fail?: InjectedFailure;
}

export interface AttentionResult {
  /** `[S, H, D]` or `[B, S, H, D]` like q. */
  out: F32Tensor;
  /** `[S, H]` or `[B, S, H]`, natural log of the softmax denominators; -Infinity where a row sees no key. */
  lse: F32Tensor;
  dq?: F32Tensor;
  dk?: F32Tensor;
  dv?: F32Tensor;
}

export interface RingStats {
  kernel: string;
  /** From the call to the last rank's result (summed over a batch's sequences), worker start-up included when not warm. */
  wallMs: number;
  /** Every run of the call found the ranks' workers warm (kept from an earlier call for IDLE_GROUP_MS). */
  warm: boolean;
  events: TraceEvent[];
  schedule: RingSchedule;
  positions: Int32Array[];
  bytesHeld: number[];
  bytesIn: number[];
}

export { checkInputs, type Dims } from './core/inputs.js';

export { MAX_THREADS } from './core/inputs.js';

/** The options that say how to run (not what to compute): each checked, naming the option. */
function checkRunOptions(o: AttentionOptions): void {
  checkKernelChoice(o.kernel);
  if (o.threads !== undefined) checkInt('threads', o.threads, 1, MAX_THREADS);
  if (o.blockQ !== undefined) checkInt('blockQ', o.blockQ, 1);
  if (o.blockK !== undefined) checkInt('blockK', o.blockK, 1);
}

export function maskOf(o: AttentionOptions): MaskSpec {
  return { causal: !!o.causal, window: o.window, sinks: o.sinks, segments: o.segments };
}

function outputs(d: Dims, grads: boolean): AttentionResult {
  const lead = d.batched ? [d.B] : [];
  const t = (shape: number[]): F32Tensor => ({ dtype: 'float32', shape, data: new Float32Array(shape.reduce((a, b) => a * b, 1)) });
  const res: AttentionResult = { out: t([...lead, d.S, d.H, d.D]), lse: t([...lead, d.S, d.H]) };
  if (grads) {
    res.dq = t([...lead, d.S, d.H, d.D]);
    res.dk = t([...lead, d.S, d.Hk, d.D]);
    res.dv = t([...lead, d.S, d.Hk, d.D]);
  }
  return res;
}

async function kernelFor(kind: AttentionOptions['kernel']): Promise<AttentionKernel> {
  const { getKernel } = await import('./cpu/attention.js');
  return getKernel({ kernel: kind ?? 'auto' });
}

/** Single-device blockwise attention on this thread (and, with the C kernel, all cores). */
export async function attention(q: F32Tensor, k: F32Tensor, v: F32Tensor, opts: AttentionOptions = {}): Promise<AttentionResult> {
  const d = checkInputs(q, k, v, opts);
  checkRunOptions(opts);
  const kernel = await kernelFor(opts.kernel);
  const { cpus } = await import('node:os');
  const res = outputs(d, !!opts.gradOut);
  const pos = Int32Array.from({ length: d.S }, (_, i) => i);
  const n = d.S * d.H * d.D;
  const nk = d.S * d.Hk * d.D;
  res.lse.data.fill(-Infinity);
  const chunks = Math.ceil(d.S / QUERY_CHUNK);
  const total = d.B * chunks * (opts.gradOut ? 2 : 1);
  let done = 0;
  opts.onProgress?.(0, total);
  for (let b = 0; b < d.B; b++) {
    const args = {
      k: k.data.subarray(b * nk, (b + 1) * nk),
      v: v.data.subarray(b * nk, (b + 1) * nk),
      kPos: pos,
      kSeg: opts.segments,
      Sk: d.S,
      H: d.H,
      Hk: d.Hk,
      D: d.D,
      causal: !!opts.causal,
      window: opts.window ?? 0,
      sinks: opts.window !== undefined ? (opts.sinks ?? 0) : 0,
      scale: opts.scale ?? 1 / Math.sqrt(d.D),
      blockQ: opts.blockQ,
      blockK: opts.blockK,
      threads: opts.threads ?? cpus().length,
    };
    // The query chunk from row a of sequence b: its slices of every per-query array.
    const rowsOf = (a: number) => {
      const e = Math.min(d.S, a + QUERY_CHUNK);
      const qs = (x: Float32Array) => x.subarray(b * n + a * d.H * d.D, b * n + e * d.H * d.D);
      const rs = (x: Float32Array) => x.subarray((b * d.S + a) * d.H, (b * d.S + e) * d.H);
      return { qs, rs, rows: { ...args, q: qs(q.data), qPos: pos.subarray(a, e), qSeg: opts.segments?.subarray(a, e), Sq: e - a } };
    };
    for (let a = 0; a < d.S; a += QUERY_CHUNK) {
      const { qs, rs, rows } = rowsOf(a);
      kernel.forward({ ...rows, o: qs(res.out.data), lse: rs(res.lse.data) });
      opts.onProgress?.(++done, total);
    }
    if (!opts.gradOut) continue;
    for (let a = 0; a < d.S; a += QUERY_CHUNK) {
      const { qs, rs, rows } = rowsOf(a);
      const o = qs(res.out.data), dO = qs(opts.gradOut.data);
      kernel.backward({
        ...rows,
        dO,
        lse: rs(res.lse.data),
        delta: computeDelta(o, dO, rows.Sq * d.H, d.D),
        dq: qs(res.dq!.data),
        dk: res.dk!.data.subarray(b * nk, (b + 1) * nk),
        dv: res.dv!.data.subarray(b * nk, (b + 1) * nk),
      });
      opts.onProgress?.(++done, total);
    }
  }
  return res;
}

/**
 * Ring attention on whole tensors: shards q, k, v (and the gradient) over `devices` ranks by
 * `layout`, runs the ring (forward, and backward when `gradOut` is given) and gathers the
 * results back into global order.
 */
export async function ringAttention(q: F32Tensor, k: F32Tensor, v: F32Tensor, opts: RingAttentionOptions = {}): Promise<AttentionResult & { stats: RingStats }> {
  const d = checkInputs(q, k, v, opts);
  checkRunOptions(opts);
  const P = checkRanks('devices', opts.devices ?? 4);
  if ((opts.backend ?? 'cpu') !== 'cpu') throw new InputError('backend', `expected 'cpu' here, got '${opts.backend}'`);
  const layout = opts.layout ?? 'zigzag';
  const positions = shardPositions(d.S, P, layout);
  const { runCpuRing } = await import('./cpu/ring.js');
  const res = outputs(d, !!opts.gradOut);
  const rowQ = d.H * d.D;
  const rowK = d.Hk * d.D;
  let stats: RingStats | undefined;
  for (let b = 0; b < d.B; b++) {
    const sl = (a: Float32Array, row: number) => a.subarray(b * d.S * row, (b + 1) * d.S * row);
    const shards = positions.map((pos) => ({
      q: gatherRows(sl(q.data, rowQ), rowQ, pos),
      k: gatherRows(sl(k.data, rowK), rowK, pos),
      v: gatherRows(sl(v.data, rowK), rowK, pos),
      dO: opts.gradOut ? gatherRows(sl(opts.gradOut.data, rowQ), rowQ, pos) : undefined,
      pos: pos.slice(), // moved into the worker; `positions` stays here for the gather
      seg: opts.segments ? gatherRows(opts.segments, 1, pos) : undefined,
    }));
    const run = await runCpuRing(
      shards,
      {
        H: d.H,
        Hk: d.Hk,
        D: d.D,
        scale: opts.scale ?? 1 / Math.sqrt(d.D),
        causal: !!opts.causal,
        window: opts.window ?? 0,
        sinks: opts.window !== undefined ? (opts.sinks ?? 0) : 0,
        blockQ: opts.blockQ,
        blockK: opts.blockK,
        threads: 1,
      },
      maskOf(opts),
      { kernel: opts.kernel, backward: !!opts.gradOut, onProgress: opts.onProgress, fail: opts.fail, moveShards: true },
    );
    run.ranks.forEach((r, i) => {
      scatterRows(sl(res.out.data, rowQ), rowQ, positions[i], r.o);
      scatterRows(sl(res.lse.data, d.H), d.H, positions[i], r.lse);
      if (opts.gradOut) {
        scatterRows(sl(res.dq!.data, rowQ), rowQ, positions[i], r.dq!);
        scatterRows(sl(res.dk!.data, rowK), rowK, positions[i], r.dk!);
        scatterRows(sl(res.dv!.data, rowK), rowK, positions[i], r.dv!);
      }
    });
    stats = {
      kernel: run.kernel,
      wallMs: (stats?.wallMs ?? 0) + run.wallMs,
      warm: (stats?.warm ?? true) && run.warm,
      events: run.events,
      schedule: run.schedule,
      positions,
      bytesHeld: run.ranks.map((r) => r.bytesHeld),
      bytesIn: run.ranks.map((r) => r.bytesIn),
    };
  }
  return { ...res, stats: stats! };
}
