import { RankError } from '../core/errors.js';
import type { RingSchedule } from '../core/schedule.js';
import type { MaskSpec } from '../core/mask.js';
import type { TraceEvent } from '../core/trace.js';
import type { AttnParams, RankShard } from './device.js';
import { CpuGroup } from './group.js';
import type { AttendArg, AttendResult } from './group-worker.js';
import { ringPlan } from './ring-plan.js';
import type { InjectedFailure } from './flags.js';

export interface CpuRingOptions {
  kernel?: 'auto' | 'c' | 'ts';
  backward?: boolean;
  /** Called as ranks finish compute steps: (done, total). */
  onProgress?: (done: number, total: number) => void;
  /** Move the shards' buffers into the workers (the caller's arrays are detached) instead of copying. */
  moveShards?: boolean;
  /** Test hook: make one rank fail. */
  fail?: InjectedFailure;
}

export interface RankResult {
  o: Float32Array;
  lse: Float32Array;
  dq?: Float32Array;
  dk?: Float32Array;
  dv?: Float32Array;
  bytesIn: number;
  bytesHeld: number;
}

export interface CpuRingResult {
  ranks: RankResult[];
  events: TraceEvent[];
  schedule: RingSchedule;
  kernel: string;
  wallMs: number;
}

/**
 * The per-rank API: ring attention over P worker threads, one per shard (`shard.pos` are the
 * global positions of its rows, ascending; `shard.dO` present on every rank runs the backward
 * too). Each worker owns its shard and allocates its own ring buffers. Any failing rank stops
 * every rank, and the promise rejects with that rank's error.
 */
export async function runCpuRing(shards: RankShard[], params: AttnParams, mask: MaskSpec, opts: CpuRingOptions = {}): Promise<CpuRingResult> {
  const P = shards.length;
  const backward = !!opts.backward;
  if (backward && shards.some((s) => !s.dO)) throw new RankError(shards.findIndex((s) => !s.dO), 'backward needs dO on every rank');
  const plan = ringPlan(shards, params, mask, backward);
  const group = await CpuGroup.start(P, { kernel: opts.kernel, fail: opts.fail });
  try {
    const sinkSteps = plan.sinkLayout ? 1 : 0;
    const total = (plan.schedule.compute.flat().filter((c) => c !== 'empty').length + P * sinkSteps) * (backward ? 2 : 1);
    let done = 0;
    group.onProgress = () => opts.onProgress?.(++done, total);
    const args: AttendArg[] = shards.map((s) => ({ plan, params, shard: backward ? s : { ...s, dO: undefined } }));
    const transfer = opts.moveShards ? shards.map((s) => uniqueBuffers([s.q, s.k, s.v, s.dO, s.pos, s.seg])) : undefined;
    const results = await group.call<AttendResult>('attend', args, transfer);
    const wallMs = performance.timeOrigin + performance.now() - group.runStart;
    return {
      ranks: results.map((r) => ({ o: r.o, lse: r.lse, dq: r.dq, dk: r.dk, dv: r.dv, bytesIn: r.bytesIn, bytesHeld: r.bytesHeld })),
      events: results.flatMap((r) => r.events).sort((a, b) => a.start - b.start),
      schedule: plan.schedule,
      kernel: group.kernel,
      wallMs,
    };
  } finally {
    await group.close();
  }
}

function uniqueBuffers(arrays: (Float32Array | Int32Array | undefined)[]): ArrayBuffer[] {
  const bufs = arrays.filter((a): a is Float32Array | Int32Array => !!a).map((a) => a.buffer);
  return [...new Set(bufs)].filter((b): b is ArrayBuffer => b instanceof ArrayBuffer);
}
