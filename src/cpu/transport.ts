import type { Pending, RingTransport, Tracer } from '../core/device.js';
import { RankError } from '../core/errors.js';
import { FLAG_ABORT, SharedFlags } from './flags.js';
import { blockAt, type RingSchedule } from '../core/schedule.js';
import { CpuBlock, blockOffsets } from './block.js';

/**
 * The CPU ring transport over shared memory. Every rank's block buffers are SharedArrayBuffers;
 * a transfer is a pull: the receiving rank copies the previous rank's block into its own
 * buffer. With the native library the copy runs on its own thread (copy.c), so it is really in
 * flight while the rank computes; without it the copy happens at wait().
 *
 * Every ring run of a group has an epoch e (1, 2, ...): its steps are numbered from
 * (e - 1) * 2P (forward) and (e - 1) * 2P + P (backward), and its one-shot flags are set to e,
 * so the same buffers and flags serve every layer of a model without being reset.
 *
 * Flags (an Int32Array in shared memory), for P ranks, each holding the seq of a step:
 *   [0] abort
 *   [1 + r]      r posted its K/V block         [1 + P + r]  r pulled its previous rank's K/V
 *   [1 + 2P + r] r's own dK/dV arrived home     [1 + 3P + r] r posted accumulated dK/dV
 *   [1 + 4P + r] r pulled its previous rank's dK/dV
 *   [1 + 5P + r] r published its sink rows      [1 + 6P + r] r posted its dK/dV partials for all sinks
 */
export const flagCount = (P: number) => 1 + 7 * P;
/** The first step number of a ring run's forward (its backward follows at + P). */
export const seqBase = (epoch: number, P: number) => (epoch - 1) * 2 * P;
const POSTED = 1, PULLED = 2, HOME = 3, GPOSTED = 4, GPULLED = 5, SINKS = 6, SINKGRADS = 7;

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
  /** Rows each rank's ring block carries (its shard less its sink rows), and whether blocks carry segment ids. */
  counts: number[];
  segments: boolean;
  /** Sink rows each rank owns (a prefix of its shard), and every rank's [own sinks, gathered sinks] blocks. */
  sinkRows: number[];
  sinks: [CpuBlock, CpuBlock][] | null;
}

interface CpuPending extends Pending {
  step: number;
  seq: number;
  send: boolean;
  recv: boolean;
  /** Where the pull lands and where it comes from, with (dstOff, srcOff, bytes) ranges. */
  dst: Uint8Array;
  src: Uint8Array;
  ranges: [number, number, number][];
  flag: number;
  handle: unknown;
  phase: 'forward' | 'backward';
}


export class CpuTransport implements RingTransport<CpuBlock> {
  readonly ranks: number;
  private readonly times = new BigInt64Array(2);
  private readonly clockOffsetMs: number;
  /** Incoming accumulated dK/dV (backward): [dK | dV] of up to cap rows. */
  private gradIn: Float32Array = new Float32Array(0);
  /** The seq at which dK/dV were last posted from each of this rank's buffers. */
  private readonly postedFrom = new Map<CpuBlock, number>();
  private phase: 'forward' | 'backward' = 'forward';
  private readonly sig: SharedFlags;
  private epoch = 0;
  private sched!: RingSchedule;
  /** Bytes this rank received, for the report. */
  bytesIn = 0;

  /** Native copy threads started and not yet joined. */
  private readonly inFlight = new Set<unknown>();

  constructor(
    readonly rank: number,
    private readonly flags: Int32Array,
    private readonly peers: Peers,
    private readonly trace: Tracer,
    private readonly native: NativePull | null,
  ) {
    this.ranks = peers.blocks.length;
    this.sig = new SharedFlags(flags, rank);
    this.clockOffsetMs = native ? trace.now() - Number(native.nowNs()) / 1e6 : 0;
  }

  /** Bytes of transport-owned buffers (counted in the rank's memory). */
  get bytesHeld(): number {
    return this.gradIn.byteLength;
  }

  /** Start a ring run (epoch e) in the forward phase. */
  begin(epoch: number, sched: RingSchedule): void {
    this.epoch = epoch;
    this.sched = sched;
    this.phase = 'forward';
    this.postedFrom.clear();
  }

  /** The backward needs a buffer for incoming dK/dV. */
  beginBackward(): void {
    this.phase = 'backward';
    const l = this.peers.blocks[this.rank][0].layout;
    if (this.gradIn.length < 2 * l.cap * l.row) this.gradIn = new Float32Array(new SharedArrayBuffer(2 * l.cap * l.row * 4));
  }

  private flag(kind: number, r: number): number {
    return kind * this.ranks + 1 + r - this.ranks;
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
    this.sig.checkAbort();
  }

  private waitFlag(idx: number, want: number): void {
    this.sig.wait(idx, want);
  }

  private post(idx: number, value: number): void {
    this.sig.post(idx, value);
  }

  /** Start a pull of `ranges` from src to dst once flags[flag] >= seq (on a thread if native). */
  private startPull(p: CpuPending): CpuPending {
    if (this.native) {
      const flat = new BigInt64Array(p.ranges.length * 3);
      p.ranges.forEach((r, i) => flat.set(r.map(BigInt), 3 * i));
      p.handle = this.native.start(p.dst, p.src, flat, p.ranges.length, this.flags, p.flag, p.seq, FLAG_ABORT);
      if (!p.handle) throw new RankError(this.rank, 'could not start a transfer thread');
      this.inFlight.add(p.handle);
    }
    return p;
  }

  /**
   * Join every copy thread still running (after a failure: the abort flag must already be set,
   * so each ends at its next look at the flags). A copy thread writes through raw pointers into
   * this rank's buffers; a worker that ended with one still running would free them under it
   * (the incoming dK/dV buffer is this rank's alone) and corrupt the process's heap.
   */
  drain(): void {
    if (!this.native) return;
    for (const h of this.inFlight) this.native.wait(h, this.times);
    this.inFlight.clear();
  }

  /** Finish a pull: join the copy thread, or copy now. Records the transfer. */
  private finishPull(p: CpuPending): void {
    let start: number;
    let end: number;
    if (this.native) {
      this.inFlight.delete(p.handle);
      const status = this.native.wait(p.handle, this.times);
      if (status !== 0) {
        this.checkAbort();
        throw new RankError(this.rank, 'transfer aborted');
      }
      start = Number(this.times[0]) / 1e6 + this.clockOffsetMs;
      end = Number(this.times[1]) / 1e6 + this.clockOffsetMs;
    } else {
      this.waitFlag(p.flag, p.seq);
      start = this.trace.now();
      for (const [d, s, len] of p.ranges) p.dst.set(p.src.subarray(s, s + len), d);
      end = this.trace.now();
    }
    const bytes = p.ranges.reduce((n, r) => n + r[2], 0);
    this.bytesIn += bytes;
    this.trace.event({ rank: this.rank, step: p.step, kind: 'transfer', phase: p.phase, start, end, bytes });
  }

  shift(seq: number, step: number, hand: CpuBlock, spare: CpuBlock, send: boolean, recv: boolean): CpuPending {
    if (send) this.post(this.flag(POSTED, this.rank), seq);
    const src = this.peers.blocks[this.prev][this.handIndex(this.prev, step)];
    const n = this.peers.counts[blockAt(this.prev, step, this.ranks)];
    const p: CpuPending = {
      started: this.trace.now(), step, seq, send, recv, phase: this.phase,
      dst: spare.bytes, src: src.bytes,
      ranges: src.ranges(n, this.peers.segments, false).map(([off, len]) => [off, off, len]),
      flag: this.flag(POSTED, this.prev), handle: null,
    };
    return recv ? this.startPull(p) : p;
  }

  wait(pending: Pending): void {
    const p = pending as CpuPending;
    if (p.recv) {
      this.finishPull(p);
      this.post(this.flag(PULLED, this.rank), p.seq);
    }
    // The next rank reads our hand until it has pulled it: only then may we reuse the buffer.
    if (p.send) this.waitFlag(this.flag(PULLED, this.next), p.seq);
  }

  startGrads(seq: number, step: number): CpuPending {
    // The previous rank posted them from the buffer it held at step - 1, with that step's seq.
    const src = this.peers.blocks[this.prev][this.handIndex(this.prev, step - 1)];
    const o = blockOffsets(src.layout);
    const len = this.peers.counts[blockAt(this.rank, step, this.ranks)] * src.layout.row * 4;
    const dst = new Uint8Array(this.gradIn.buffer);
    const p: CpuPending = {
      started: this.trace.now(), step, seq: seq - 1, send: false, recv: true, phase: 'backward',
      dst, src: src.bytes, ranges: [[0, o.dk, len], [src.layout.cap * src.layout.row * 4, o.dv, len]],
      flag: this.flag(GPOSTED, this.prev), handle: null,
    };
    return this.startPull(p);
  }

  finishGrads(pending: Pending, block: CpuBlock): void {
    const p = pending as CpuPending;
    this.finishPull(p);
    this.post(this.flag(GPULLED, this.rank), p.seq);
    const len = p.ranges[0][2] / 4;
    const off = block.layout.cap * block.layout.row;
    for (let i = 0; i < len; i++) {
      block.dk[i] += this.gradIn[i];
      block.dv[i] += this.gradIn[off + i];
    }
  }

  reuseGrads(block: CpuBlock): void {
    const seq = this.postedFrom.get(block);
    if (seq !== undefined) this.waitFlag(this.flag(GPULLED, this.next), seq);
  }

  postGrads(seq: number, _step: number, block: CpuBlock): void {
    this.postedFrom.set(block, seq);
    this.post(this.flag(GPOSTED, this.rank), seq);
  }

  sendHome(block: CpuBlock, home: number): void {
    const row = block.layout.row;
    const len = this.peers.counts[home] * row;
    const at = this.peers.sinkRows[home] * row; // the home's sink rows come first
    const t0 = this.trace.now();
    this.peers.dk[home].set(block.dk.subarray(0, len), at);
    this.peers.dv[home].set(block.dv.subarray(0, len), at);
    if (home !== this.rank) {
      this.trace.event({ rank: this.rank, step: this.ranks - 1, kind: 'transfer', phase: 'backward', start: t0, end: this.trace.now(), bytes: 2 * len * 4 });
    }
    this.post(this.flag(HOME, home), this.epoch);
  }

  awaitHome(): void {
    this.waitFlag(this.flag(HOME, this.rank), this.epoch);
  }

  /** Row offset of rank q's sink rows in every gathered sink block (ranks in order). */
  private sinkOffset(q: number): number {
    return this.peers.sinkRows.slice(0, q).reduce((a, b) => a + b, 0);
  }

  gatherSinks(own: CpuBlock, into: CpuBlock): void {
    this.post(this.flag(SINKS, this.rank), this.epoch);
    const t0 = this.trace.now();
    const row = own.layout.row;
    let bytes = 0;
    for (let q = 0; q < this.ranks; q++) {
      const n = this.peers.sinkRows[q];
      if (n === 0) continue;
      const src = q === this.rank ? own : this.peers.sinks![q][0];
      if (q !== this.rank) this.waitFlag(this.flag(SINKS, q), this.epoch);
      const at = this.sinkOffset(q);
      into.pos.set(src.pos.subarray(0, n), at);
      if (this.peers.segments) into.seg.set(src.seg.subarray(0, n), at);
      into.k.set(src.k.subarray(0, n * row), at * row);
      into.v.set(src.v.subarray(0, n * row), at * row);
      if (q !== this.rank) bytes += n * (2 * row + 2) * 4;
    }
    into.count = this.sinkOffset(this.ranks);
    if (bytes > 0) this.trace.event({ rank: this.rank, step: 0, kind: 'transfer', phase: 'forward', start: t0, end: this.trace.now(), bytes });
    this.bytesIn += bytes;
  }

  reduceSinkGrads(gathered: CpuBlock): void {
    this.post(this.flag(SINKGRADS, this.rank), this.epoch);
    const n = this.peers.sinkRows[this.rank];
    if (n === 0) return;
    const row = gathered.layout.row;
    const at = this.sinkOffset(this.rank) * row;
    const dk = this.peers.dk[this.rank];
    const dv = this.peers.dv[this.rank];
    dk.fill(0, 0, n * row);
    dv.fill(0, 0, n * row);
    for (let q = 0; q < this.ranks; q++) {
      const src = q === this.rank ? gathered : this.peers.sinks![q][1];
      if (q !== this.rank) this.waitFlag(this.flag(SINKGRADS, q), this.epoch);
      for (let i = 0; i < n * row; i++) {
        dk[i] += src.dk[at + i];
        dv[i] += src.dv[at + i];
      }
    }
  }
}
