import type { Pending, RingTransport, Tracer } from '../core/device.js';
import { RankError } from '../core/errors.js';
import type { RingSchedule } from '../core/schedule.js';
import { blockAt } from '../core/schedule.js';
import { CpuBlock } from './block.js';

/**
 * The CPU ring transport over shared memory. Every rank's two block buffers are
 * SharedArrayBuffers; a transfer is a pull: the receiving rank copies the previous rank's block
 * into its spare buffer. With the native library the copy runs on its own thread (copy.c), so
 * it is really in flight while the rank computes; without it the copy happens at wait().
 *
 * Flags (an Int32Array in shared memory), for P ranks:
 *   [0] abort   [1 + r] posted by r (seq)   [1 + P + r] pulled by r (seq)   [1 + 2P + r] home of r
 */
export const FLAG_ABORT = 0;
export const flagCount = (P: number) => 1 + 3 * P;

/** The native asynchronous copy (copy.c), when the C library is loaded. */
export interface NativePull {
  start(dst: Uint8Array, src: Uint8Array, ranges: BigInt64Array, nseg: number, flags: Int32Array, readyIdx: number, want: number, abortIdx: number): unknown;
  wait(handle: unknown, times: BigInt64Array): number;
  nowNs(): bigint;
}

export interface Peers {
  /** blocks[r] = rank r's two block buffers. */
  blocks: [CpuBlock, CpuBlock][];
  /** Each rank's dK/dV outputs (backward), written by the rank that sends them home. */
  dk: Float32Array[];
  dv: Float32Array[];
  /** Rows held by each rank, and whether blocks carry segment ids. */
  counts: number[];
  segments: boolean;
}

interface CpuPending extends Pending {
  step: number;
  seq: number;
  send: boolean;
  recv: boolean;
  spare: CpuBlock;
  handle: unknown;
  grads: boolean;
}

/** Longest any rank waits for a peer before it declares the ring stuck. */
const WAIT_SLICE_MS = 50;

export class CpuTransport implements RingTransport<CpuBlock> {
  readonly ranks: number;
  private readonly times = new BigInt64Array(2);
  private readonly clockOffsetMs: number;
  /** Bytes this rank received, for the report. */
  bytesIn = 0;

  constructor(
    readonly rank: number,
    private readonly flags: Int32Array,
    private readonly peers: Peers,
    private readonly sched: RingSchedule,
    private readonly trace: Tracer,
    private readonly native: NativePull | null,
    private grads = false,
  ) {
    this.ranks = peers.blocks.length;
    this.clockOffsetMs = native ? trace.now() - Number(native.nowNs()) / 1e6 : 0;
  }

  /** Switch to the backward: blocks carry dK/dV from now on. */
  setGrads(on: boolean): void {
    this.grads = on;
  }

  private get prev(): number {
    return (this.rank - 1 + this.ranks) % this.ranks;
  }

  private get next(): number {
    return (this.rank + 1) % this.ranks;
  }

  /** Which of rank u's two buffers it holds in hand at `step` (it swaps after each receive). */
  private handIndex(u: number, step: number): number {
    let n = 0;
    for (let t = 0; t < step; t++) if (this.sched.recv[u][t]) n++;
    return n % 2;
  }

  private checkAbort(): void {
    if (Atomics.load(this.flags, FLAG_ABORT) !== 0) throw new RankError(this.rank, 'stopped because another rank failed');
  }

  /** Wait until flags[idx] >= want, checking for abort between short sleeps. */
  private waitFlag(idx: number, want: number): void {
    for (;;) {
      const v = Atomics.load(this.flags, idx);
      if (v >= want) return;
      this.checkAbort();
      Atomics.wait(this.flags, idx, v, WAIT_SLICE_MS);
    }
  }

  private post(idx: number, value: number): void {
    Atomics.store(this.flags, idx, value);
    Atomics.notify(this.flags, idx);
  }

  shift(seq: number, step: number, hand: CpuBlock, spare: CpuBlock, send: boolean, recv: boolean): CpuPending {
    const P = this.ranks;
    if (send) this.post(1 + this.rank, seq);
    const p: CpuPending = { started: this.trace.now(), step, seq, send, recv, spare, handle: null, grads: this.grads };
    if (recv && this.native) {
      const src = this.upstreamHand(step);
      const ranges = this.rangesFor(step, src);
      const flat = new BigInt64Array(ranges.length * 3);
      ranges.forEach(([off, len], i) => {
        flat[3 * i] = BigInt(off);
        flat[3 * i + 1] = BigInt(off);
        flat[3 * i + 2] = BigInt(len);
      });
      p.handle = this.native.start(spare.bytes, src.bytes, flat, ranges.length, this.flags, 1 + this.prev, seq, FLAG_ABORT);
      if (!p.handle) throw new RankError(this.rank, 'could not start a transfer thread');
    }
    void P;
    return p;
  }

  private upstreamHand(step: number): CpuBlock {
    return this.peers.blocks[this.prev][this.handIndex(this.prev, step)];
  }

  private rangesFor(step: number, src: CpuBlock): [number, number][] {
    const n = this.peers.counts[blockAt(this.prev, step, this.ranks)];
    return src.ranges(n, this.peers.segments, this.grads);
  }

  wait(pending: Pending): void {
    const p = pending as CpuPending;
    if (p.recv) {
      let start: number;
      let end: number;
      const src = this.upstreamHand(p.step);
      const ranges = this.rangesFor(p.step, src);
      if (this.native) {
        const status = this.native.wait(p.handle, this.times);
        if (status !== 0) this.checkAbort();
        if (status !== 0) throw new RankError(this.rank, 'transfer aborted');
        start = Number(this.times[0]) / 1e6 + this.clockOffsetMs;
        end = Number(this.times[1]) / 1e6 + this.clockOffsetMs;
      } else {
        this.waitFlag(1 + this.prev, p.seq);
        start = this.trace.now();
        for (const [off, len] of ranges) p.spare.bytes.set(src.bytes.subarray(off, off + len), off);
        end = this.trace.now();
      }
      const bytes = ranges.reduce((s, [, len]) => s + len, 0);
      this.bytesIn += bytes;
      this.trace.event({ rank: this.rank, step: p.step, kind: 'transfer', phase: p.grads ? 'backward' : 'forward', start, end, bytes });
      this.post(1 + this.ranks + this.rank, p.seq);
    }
    // The next rank reads our hand until it has pulled it: only then may we reuse the buffer.
    if (p.send) this.waitFlag(1 + this.ranks + this.next, p.seq);
  }

  sendHome(block: CpuBlock, home: number): void {
    const n = this.peers.counts[home];
    const len = n * block.layout.row;
    const t0 = this.trace.now();
    this.peers.dk[home].set(block.dk.subarray(0, len));
    this.peers.dv[home].set(block.dv.subarray(0, len));
    if (home !== this.rank) {
      this.bytesIn += 0;
      this.trace.event({ rank: this.rank, step: this.ranks, kind: 'transfer', phase: 'backward', start: t0, end: this.trace.now(), bytes: 2 * len * 4 });
    }
    this.post(1 + 2 * this.ranks + home, 1);
  }

  awaitHome(): void {
    this.waitFlag(1 + 2 * this.ranks + this.rank, 1);
  }
}
