import { Worker } from 'node:worker_threads';
import { performance } from 'node:perf_hooks';
import { InputError, RankError } from '../core/errors.js';
import { ringSchedule, type RingSchedule } from '../core/schedule.js';
import type { MaskSpec } from '../core/mask.js';
import type { TraceEvent } from '../core/trace.js';
import type { BlockLayout } from './block.js';
import type { AttnParams, RankShard } from './device.js';
import { FLAG_ABORT, flagCount } from './transport.js';
import type { WorkerDone, WorkerInit, WorkerPeers, WorkerReady } from './worker.js';

export interface CpuRingOptions {
  kernel?: 'auto' | 'c' | 'ts';
  backward?: boolean;
  /** Called as ranks finish compute steps: (done, total). */
  onProgress?: (done: number, total: number) => void;
  /** Move the shards' buffers into the workers (the caller's arrays are detached) instead of copying. */
  moveShards?: boolean;
  /** Test hook: make one rank fail. */
  fail?: { rank: number; step: number; mode: 'throw' | 'exit' };
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

/** Global segment ids gathered from the shards' own ids (for the schedule's boxes). */
function globalSegments(shards: RankShard[]): Int32Array | undefined {
  if (!shards.some((s) => s.seg)) return undefined;
  let max = -1;
  for (const s of shards) for (const p of s.pos) max = Math.max(max, p);
  const seg = new Int32Array(max + 1);
  for (const s of shards) s.pos.forEach((p, i) => (seg[p] = s.seg![i]));
  return seg;
}

/**
 * Runs the ring on P worker threads, one per shard. Each worker owns its shard (moved to it,
 * not copied) and allocates its own ring buffers. Any failing rank stops every rank: the
 * shared abort flag wakes them all, and the returned promise rejects with that rank's error.
 */
export async function runCpuRing(shards: RankShard[], params: AttnParams, mask: MaskSpec, opts: CpuRingOptions = {}): Promise<CpuRingResult> {
  const P = shards.length;
  const segments = globalSegments(shards);
  // Sink keys (window + sinks) go to every rank once; the ring carries the rest.
  const sinkPos = params.window > 0 ? params.sinks : 0;
  const sinkRows = shards.map((s) => {
    let n = 0;
    while (n < s.pos.length && s.pos[n] < sinkPos) n++;
    for (let i = n; i < s.pos.length; i++) if (s.pos[i] < sinkPos) throw new InputError('pos', `rank positions must be ascending (rank ${shards.indexOf(s)})`);
    return n;
  });
  const sinkTotal = sinkRows.reduce((a, b) => a + b, 0);
  const schedule = ringSchedule(
    shards.map((s, r) => s.pos.subarray(sinkRows[r])),
    { ...mask, segments },
  );
  const counts = shards.map((s, r) => s.pos.length - sinkRows[r]);
  const layout: BlockLayout = { cap: Math.max(1, ...counts), row: params.Hk * params.D, grads: !!opts.backward };
  const sinkLayout: BlockLayout | null = sinkTotal > 0 ? { cap: sinkTotal, row: params.Hk * params.D, grads: !!opts.backward } : null;
  const flagsSab = new SharedArrayBuffer(flagCount(P) * 4);
  const flags = new Int32Array(flagsSab);
  const runStart = performance.timeOrigin + performance.now();
  const totalSteps = schedule.compute.flat().filter((c) => c !== 'empty').length * (opts.backward ? 2 : 1);
  let stepsDone = 0;
  const workers: Worker[] = [];
  const url = new URL('./worker.js', import.meta.url);

  return await new Promise<CpuRingResult>((resolve, reject) => {
    let settled = false;
    const ready: (WorkerReady | undefined)[] = new Array(P);
    const done: (WorkerDone | undefined)[] = new Array(P);
    let kernel = '';
    const stopAll = () => {
      Atomics.store(flags, FLAG_ABORT, 1);
      for (let i = 0; i < flags.length; i++) Atomics.notify(flags, i);
      // Every rank notices the flag at its next wait and exits by itself. (terminate() is not
      // used: ending a thread inside a native call aborts the whole process.)
      for (const w of workers) w.unref();
    };
    const reported: boolean[] = new Array(P).fill(false);
    let secondary: RankError | null = null;
    const fail = (rank: number, message: string, isSecondary = false) => {
      if (settled) return;
      if (isSecondary) {
        // Give the rank that failed first a moment to report its own error.
        if (!secondary) {
          secondary = new RankError(rank, message, true);
          setTimeout(() => fail(rank, message), 500).unref();
        }
        return;
      }
      settled = true;
      stopAll();
      reject(new RankError(rank, message));
    };
    for (let r = 0; r < P; r++) {
      const s = shards[r];
      const init: WorkerInit = {
        rank: r,
        shard: s,
        params,
        layout,
        sinkLayout,
        sinkRows,
        schedule,
        counts,
        segments: !!segments,
        flags: flagsSab,
        backward: !!opts.backward,
        kernel: opts.kernel ?? 'auto',
        runStart,
        fail: opts.fail && opts.fail.rank === r ? { step: opts.fail.step, mode: opts.fail.mode } : undefined,
      };
      const w = new Worker(url);
      workers.push(w);
      w.on('message', (m: WorkerReady | WorkerDone | { type: 'error'; message: string; secondary: boolean } | { type: 'progress' }) => {
        if (m.type === 'error') {
          reported[r] = true;
          return fail(r, m.message, m.secondary);
        }
        if (m.type === 'progress') {
          opts.onProgress?.(++stepsDone, totalSteps);
          return;
        }
        if (m.type === 'ready') {
          ready[r] = m;
          kernel = m.kernel;
          if (ready.every(Boolean) && ready.length === P && !ready.includes(undefined)) {
            const peers: WorkerPeers = {
              type: 'peers',
              blocks: ready.map((x) => x!.blocks),
              dk: ready.map((x) => x!.dk),
              dv: ready.map((x) => x!.dv),
              sinks: sinkLayout ? ready.map((x) => x!.sinks!) : null,
            };
            for (const x of workers) x.postMessage(peers);
          }
          return;
        }
        done[r] = m;
        if (!done.includes(undefined) && !settled) {
          settled = true;
          const wallMs = performance.timeOrigin + performance.now() - runStart;
          resolve({
            ranks: done.map((d, i) => ({
              o: d!.o,
              lse: d!.lse,
              dq: d!.dq,
              dk: opts.backward ? new Float32Array(ready[i]!.dk) : undefined,
              dv: opts.backward ? new Float32Array(ready[i]!.dv) : undefined,
              bytesIn: d!.bytesIn,
              bytesHeld: d!.bytesHeld,
            })),
            events: done.flatMap((d) => d!.events).sort((a, b) => a.start - b.start),
            schedule,
            kernel,
            wallMs,
          });
        }
      });
      w.on('error', (err) => fail(r, err.message));
      w.on('exit', (code) => {
        if (!settled && done[r] === undefined && !reported[r]) fail(r, `worker exited with code ${code}`);
      });
      // Move (not copy) the shard's buffers into the worker when the caller allows it.
      const transfer = !opts.moveShards ? [] : [s.q, s.k, s.v, s.dO, s.pos, s.seg].filter((a): a is Float32Array | Int32Array => !!a).map((a) => a.buffer);
      w.postMessage({ type: 'init', ...init }, uniqueBuffers(transfer));
    }
  });
}

function uniqueBuffers(bufs: ArrayBufferLike[]): ArrayBuffer[] {
  return [...new Set(bufs)].filter((b): b is ArrayBuffer => b instanceof ArrayBuffer);
}
