/**
 * One CPU rank: a worker thread that owns only its shard. It builds its device and transport,
 * runs the ring forward (and backward), and returns its outputs and timeline.
 */
import { parentPort } from 'node:worker_threads';
import { performance } from 'node:perf_hooks';
import type { TraceEvent } from '../core/trace.js';
import { RankError } from '../core/errors.js';
import type { Tracer } from '../core/device.js';
import type { RingSchedule } from '../core/schedule.js';
import { ringForward } from '../ring/forward.js';
import { ringBackward } from '../ring/backward.js';
import { CpuBlock, type BlockLayout } from './block.js';
import { CpuRankDevice, type AttnParams, type RankShard } from './device.js';
import { CpuTransport, FLAG_ABORT, type NativePull } from './transport.js';
import { getKernel } from './attention.js';
import { loadNative } from './build.js';

export interface WorkerInit {
  rank: number;
  shard: RankShard;
  params: AttnParams;
  layout: BlockLayout;
  sinkLayout: BlockLayout | null;
  sinkRows: number[];
  schedule: RingSchedule;
  counts: number[];
  segments: boolean;
  flags: SharedArrayBuffer;
  backward: boolean;
  kernel: 'auto' | 'c' | 'ts';
  /** Absolute ms (timeOrigin + now) at which the run began: the timeline's zero. */
  runStart: number;
  /** Test hook: fail at this step ('throw' an error, or 'exit' the thread). */
  fail?: { step: number; mode: 'throw' | 'exit' };
}

export interface WorkerReady {
  type: 'ready';
  blocks: [SharedArrayBuffer, SharedArrayBuffer];
  dk: SharedArrayBuffer;
  dv: SharedArrayBuffer;
  sinks: [SharedArrayBuffer, SharedArrayBuffer] | null;
  kernel: string;
}

export interface WorkerPeers {
  type: 'peers';
  blocks: [SharedArrayBuffer, SharedArrayBuffer][];
  dk: SharedArrayBuffer[];
  dv: SharedArrayBuffer[];
  sinks: [SharedArrayBuffer, SharedArrayBuffer][] | null;
}

export interface WorkerDone {
  type: 'done';
  o: Float32Array;
  lse: Float32Array;
  dq?: Float32Array;
  events: TraceEvent[];
  bytesIn: number;
  bytesHeld: number;
}

function nativePull(): NativePull | null {
  const n = loadNative();
  if (!('lib' in n)) return null;
  const lib = n.lib;
  const start = lib.func('void* ra_pull_start(uint8_t* dst, const uint8_t* src, const int64_t* ranges, int nseg, int32_t* flags, int readyIdx, int want, int abortIdx)');
  const wait = lib.func('int ra_pull_wait(void* handle, _Out_ int64_t* times)');
  const now = lib.func('int64_t ra_now_ns()');
  return {
    start: (...a) => start(...a),
    wait: (h, times) => wait(h, times) as number,
    nowNs: () => BigInt(now() as number | bigint),
  };
}

const port = parentPort!;
let init: WorkerInit;
let device: CpuRankDevice;
let dkSab: SharedArrayBuffer;
let dvSab: SharedArrayBuffer;

port.on('message', (msg: { type: 'init' } & WorkerInit | WorkerPeers) => {
  try {
    if (msg.type === 'init') setup(msg);
    else run(msg);
  } catch (err) {
    const flags = init ? new Int32Array(init.flags) : null;
    if (flags) {
      Atomics.store(flags, FLAG_ABORT, 1);
      for (let i = 0; i < flags.length; i++) Atomics.notify(flags, i);
    }
    // A rank woken by the abort flag reports a secondary error; the failing rank's own error wins.
    const secondary = err instanceof RankError && err.secondary;
    const message = err instanceof RankError ? err.detail : err instanceof Error ? err.message : String(err);
    port.postMessage({ type: 'error', message, secondary });
    port.close(); // the thread ends once the error is sent
  }
});

function setup(msg: WorkerInit): void {
  init = msg;
  const kernel = getKernel({ kernel: msg.kernel });
  const rows = msg.shard.pos.length * msg.params.Hk * msg.params.D;
  dkSab = new SharedArrayBuffer(rows * 4);
  dvSab = new SharedArrayBuffer(rows * 4);
  device = new CpuRankDevice(msg.rank, msg.shard, msg.params, kernel, msg.layout, msg.sinkRows[msg.rank], msg.sinkLayout, new Float32Array(dkSab), new Float32Array(dvSab));
  const sinks = device.sinks ? ([device.sinks[0].sab, device.sinks[1].sab] as [SharedArrayBuffer, SharedArrayBuffer]) : null;
  const ready: WorkerReady = { type: 'ready', blocks: [device.blocks[0].sab, device.blocks[1].sab], dk: dkSab, dv: dvSab, sinks, kernel: kernel.name };
  port.postMessage(ready);
}

function run(peers: WorkerPeers): void {
  const events: TraceEvent[] = [];
  const origin = performance.timeOrigin;
  const fail = init.fail;
  const trace: Tracer = {
    now: () => origin + performance.now() - init.runStart,
    event: (e) => {
      events.push(e);
      if (e.kind === 'compute') port.postMessage({ type: 'progress' });
      if (fail && e.kind === 'compute' && e.step === fail.step) {
        if (fail.mode === 'exit') process.exit(3);
        throw new Error(`injected failure at step ${fail.step}`);
      }
    },
  };
  const flags = new Int32Array(init.flags);
  const transport = new CpuTransport(
    init.rank,
    flags,
    {
      blocks: peers.blocks.map(([a, b]) => [new CpuBlock(a, init.layout), new CpuBlock(b, init.layout)] as [CpuBlock, CpuBlock]),
      dk: peers.dk.map((s) => new Float32Array(s)),
      dv: peers.dv.map((s) => new Float32Array(s)),
      counts: init.counts,
      sinkRows: init.sinkRows,
      sinks: peers.sinks && init.sinkLayout ? peers.sinks.map(([a, b]) => [new CpuBlock(a, init.sinkLayout!), new CpuBlock(b, init.sinkLayout!)] as [CpuBlock, CpuBlock]) : null,
      segments: init.segments,
    },
    init.schedule,
    trace,
    nativePull(),
  );
  let seq = ringForward(device, transport, init.schedule, trace, 0);
  if (init.backward) {
    transport.beginBackward();
    seq = ringBackward(device, transport, init.schedule, trace, seq);
  }
  const done: WorkerDone = {
    type: 'done',
    o: device.o,
    lse: device.lse,
    dq: init.backward ? device.dq : undefined,
    events,
    bytesIn: transport.bytesIn,
    bytesHeld: device.bytesHeld() + transport.bytesHeld,
  };
  port.postMessage(done, [device.o.buffer, device.lse.buffer, ...(done.dq ? [done.dq.buffer] : [])] as ArrayBuffer[]);
  port.close();
}
