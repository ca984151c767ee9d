/**
 * A CPU rank: a worker thread running calls from the main thread (CpuGroup) against its own
 * state. Built-in method 'attend' runs one ring attention; a program module (given at init by
 * URL) adds methods such as a model's prefill and decode. Calls run in order; an error stops
 * every rank through the shared abort flag.
 */
import { parentPort } from 'node:worker_threads';
import { RankError } from '../core/errors.js';
import type { TraceEvent } from '../core/trace.js';
import { getKernel } from './attention.js';
import type { AttnParams, RankShard } from './device.js';
import type { RingPlan } from './ring-plan.js';
import { CpuRank, MAILBOX_BYTES } from './rank.js';
import { raiseAbort, type InjectedFailure } from './flags.js';

export interface GroupInit {
  type: 'init';
  rank: number;
  ranks: number;
  flags: SharedArrayBuffer;
  transportFlags: number;
  kernel: 'auto' | 'c' | 'ts';
  runStart: number;
  /** URL of a program module exporting `methods: Record<string, (rank: CpuRank, arg: unknown) => unknown>`. */
  program?: string;
  fail?: InjectedFailure;
}

export interface AttendArg {
  plan: RingPlan;
  params: AttnParams;
  shard: RankShard;
  /** The run's time zero, ms after the group's: its events are reported from it (a group serves many runs). */
  zero: number;
}

export interface AttendResult {
  o: Float32Array;
  lse: Float32Array;
  dq?: Float32Array;
  dk?: Float32Array;
  dv?: Float32Array;
  events: TraceEvent[];
  bytesIn: number;
  bytesHeld: number;
}

export type RankMethod = (rank: CpuRank, arg: unknown) => unknown;

const builtins: Record<string, RankMethod> = {
  async attend(rank, a) {
    const { plan, params, shard, zero } = a as AttendArg;
    rank.events.length = 0;
    await rank.prepareRing(plan, params, shard.pos.length);
    const r = rank.ringAttention(shard, params);
    // dk/dv are views of shared buffers: copy them out with the result.
    const events = rank.events.map((e) => ({ ...e, start: e.start - zero, end: e.end - zero }));
    const res: AttendResult = { ...r, dk: r.dk?.slice(), dv: r.dv?.slice(), events, bytesIn: rank.bytesIn, bytesHeld: rank.bytesHeld };
    // The group may be kept for another run: keep no references to this one's buffers (they are
    // freed at the worker's next collection; runCpuRing keeps only groups of small runs).
    rank.releaseRing();
    return res;
  },
};

const port = parentPort!;
let rank: CpuRank | null = null;
let flags: Int32Array | null = null;
let methods: Record<string, RankMethod> = builtins;
const exchanges = new Map<string, (bufs: SharedArrayBuffer[][]) => void>();

function fail(err: unknown): void {
  // Stop every rank; and before this worker can end, join its copy threads (they write into its
  // buffers: see CpuTransport.drain).
  if (rank) rank.abortAndDrain();
  else if (flags) raiseAbort(flags);
  // A rank woken by the abort flag reports a secondary error; the failing rank's own error wins.
  const secondary = err instanceof RankError && err.secondary;
  const message = err instanceof RankError ? err.detail : err instanceof Error ? err.message : String(err);
  port.postMessage({ type: 'error', message, secondary });
  port.close();
}

async function init(m: GroupInit): Promise<void> {
  flags = new Int32Array(m.flags);
  const kernel = getKernel({ kernel: m.kernel });
  const exchange = (name: string, bufs: SharedArrayBuffer[]) =>
    new Promise<SharedArrayBuffer[][]>((resolve) => {
      exchanges.set(name, resolve);
      port.postMessage({ type: 'exchange', name, bufs });
    });
  rank = new CpuRank(m.rank, m.ranks, flags, m.transportFlags, kernel, m.runStart, exchange, () => port.postMessage({ type: 'progress' }));
  rank.fail = m.fail;
  if (m.program) {
    const mod = (await import(m.program)) as { methods: Record<string, RankMethod> };
    methods = { ...builtins, ...mod.methods };
  }
  const mail = new SharedArrayBuffer(MAILBOX_BYTES);
  rank.mailboxes = (await exchange('mailbox', [mail])).map((b) => new Float32Array(b[0]));
  port.postMessage({ type: 'ready', kernel: kernel.name });
}

/** Transferable buffers inside a result (plain arrays and objects, one level of nesting). */
function transferables(v: unknown, out: Set<ArrayBuffer> = new Set(), depth = 0): Set<ArrayBuffer> {
  if (ArrayBuffer.isView(v)) {
    if (v.buffer instanceof ArrayBuffer && v.byteOffset === 0 && v.byteLength === v.buffer.byteLength) out.add(v.buffer);
  } else if (v && typeof v === 'object' && depth < 3) {
    for (const x of Object.values(v)) transferables(x, out, depth + 1);
  }
  return out;
}

port.on('message', (m: GroupInit | { type: 'call'; id: number; method: string; arg: unknown } | { type: 'exchanged'; name: string; bufs: SharedArrayBuffer[][] } | { type: 'stop' }) => {
  if (m.type === 'stop') {
    // Another rank failed: end this worker (its copy threads joined first).
    rank?.abortAndDrain();
    port.close();
    return;
  }
  if (m.type === 'exchanged') {
    exchanges.get(m.name)?.(m.bufs);
    exchanges.delete(m.name);
    return;
  }
  void (async () => {
    try {
      if (m.type === 'init') return await init(m);
      if (m.type !== 'call') return;
      const fn = methods[m.method];
      if (!fn) throw new Error(`unknown rank method '${m.method}'`);
      const value = await fn(rank!, m.arg);
      port.postMessage({ type: 'result', id: m.id, value }, [...transferables(value)]);
    } catch (err) {
      fail(err);
    }
  })();
});
