import { RankError } from '../core/errors.js';
import { checkRanks } from '../core/inputs.js';
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
  /** The ranks' worker threads were warm, kept from an earlier run (no start-up in wallMs). */
  warm: boolean;
}

/** How long a group of ranks stays warm after a run, for the next run of the same size. */
export const IDLE_GROUP_MS = 10_000;

/**
 * Runs whose ranks held more than this (ring buffers, shards, accumulators) close their workers
 * instead: an idle worker frees a run's buffers only when its heap is next collected, which may
 * not happen while it waits, and start-up (~0.1 s) is small beside such a run anyway.
 */
export const WARM_MAX_BYTES = 32 * 2 ** 20;

/** Idle groups by what their workers were started with (ranks, kernel choice, the environment they read). */
const idle = new Map<string, { group: CpuGroup; timer: NodeJS.Timeout }>();

function groupKey(ranks: number, kernel: CpuRingOptions['kernel']): string {
  const env = ['RINGATTN_KERNEL', 'RINGATTN_CPU_ISA', 'RINGATTN_CPU_DEFINES', 'RINGATTN_CACHE', 'CC', 'PATH', 'HOME', 'TMPDIR'].map((n) => process.env[n] ?? '');
  return JSON.stringify([ranks, kernel ?? 'auto', ...env]);
}

/** A warm group for these ranks when one is idle, else a new one (a test hook's run always gets its own). */
async function acquire(ranks: number, opts: CpuRingOptions): Promise<{ group: CpuGroup; key: string | null; warm: boolean }> {
  if (opts.fail) return { group: await CpuGroup.start(ranks, { kernel: opts.kernel, fail: opts.fail }), key: null, warm: false };
  const key = groupKey(ranks, opts.kernel);
  const warm = idle.get(key);
  if (warm) {
    idle.delete(key);
    clearTimeout(warm.timer);
    if (warm.group.usable) {
      warm.group.setReferenced(true);
      return { group: warm.group, key, warm: true };
    }
    await warm.group.close(0); // a worker died while it waited
  }
  return { group: await CpuGroup.start(ranks, { kernel: opts.kernel }), key, warm: false };
}

/** After a run: keep the group warm (unreferenced: the program may end meanwhile) or close it. */
async function release(group: CpuGroup, key: string | null, keep: boolean): Promise<void> {
  if (!keep || key === null || !group.usable || idle.has(key)) return group.close();
  group.onProgress = null;
  group.setReferenced(false);
  const timer = setTimeout(() => {
    if (idle.get(key)?.group === group) idle.delete(key);
    group.close().catch(() => {}); // nothing waits for it: the workers end regardless
  }, IDLE_GROUP_MS);
  timer.unref();
  idle.set(key, { group, timer });
}

/**
 * End the worker threads kept warm between runs now (they end by themselves after IDLE_GROUP_MS
 * idle, and never keep a program from exiting). Runs in flight keep theirs, and may leave them
 * warm when they end.
 */
export async function closeIdleRingWorkers(): Promise<void> {
  const groups = [...idle.values()];
  idle.clear();
  for (const g of groups) clearTimeout(g.timer);
  await Promise.all(groups.map((g) => g.group.close()));
}

/**
 * The per-rank API: ring attention over P worker threads, one per shard (`shard.pos` are the
 * global positions of its rows, ascending; `shard.dO` present on every rank runs the backward
 * too). Each worker owns its shard and allocates its own ring buffers, released when the run
 * ends. After a run whose ranks held at most WARM_MAX_BYTES each, the workers stay warm for
 * IDLE_GROUP_MS for the next run of the same ring size (start-up is ~0.1 s a worker). Any failing
 * rank stops every rank, and the promise rejects with that rank's error. `wallMs` and the events'
 * times count from the call.
 */
export async function runCpuRing(shards: RankShard[], params: AttnParams, mask: MaskSpec, opts: CpuRingOptions = {}): Promise<CpuRingResult> {
  const callStart = performance.timeOrigin + performance.now();
  const P = checkRanks('shards', shards.length);
  const backward = !!opts.backward;
  if (backward && shards.some((s) => !s.dO)) throw new RankError(shards.findIndex((s) => !s.dO), 'backward needs dO on every rank');
  const plan = ringPlan(shards, params, mask, backward);
  const { group, key, warm } = await acquire(P, opts);
  let keep = false; // a failed run closes its group
  try {
    const sinkSteps = plan.sinkLayout ? 1 : 0;
    const total = (plan.schedule.compute.flat().filter((c) => c !== 'empty').length + P * sinkSteps) * (backward ? 2 : 1);
    let done = 0;
    group.onProgress = () => opts.onProgress?.(++done, total);
    opts.onProgress?.(0, total); // (a bar starts, and its clock, when the work does: not after the first step)
    const zero = callStart - group.runStart;
    const args: AttendArg[] = shards.map((s) => ({ plan, params, shard: backward ? s : { ...s, dO: undefined }, zero }));
    const transfer = opts.moveShards ? shards.map((s) => uniqueBuffers([s.q, s.k, s.v, s.dO, s.pos, s.seg])) : undefined;
    const results = await group.call<AttendResult>('attend', args, transfer);
    const wallMs = performance.timeOrigin + performance.now() - callStart;
    keep = results.every((r) => r.bytesHeld <= WARM_MAX_BYTES);
    return {
      ranks: results.map((r) => ({ o: r.o, lse: r.lse, dq: r.dq, dk: r.dk, dv: r.dv, bytesIn: r.bytesIn, bytesHeld: r.bytesHeld })),
      events: results.flatMap((r) => r.events).sort((a, b) => a.start - b.start),
      schedule: plan.schedule,
      kernel: group.kernel,
      wallMs,
      warm,
    };
  } finally {
    await release(group, key, keep);
  }
}

function uniqueBuffers(arrays: (Float32Array | Int32Array | undefined)[]): ArrayBuffer[] {
  const bufs = arrays.filter((a): a is Float32Array | Int32Array => !!a).map((a) => a.buffer);
  return [...new Set(bufs)].filter((b): b is ArrayBuffer => b instanceof ArrayBuffer);
}
