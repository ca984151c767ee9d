import type { Pending, RingTransport } from '../core/device.js';
import { blockAt, type RingSchedule } from '../core/schedule.js';
import { NCCL_DTYPE, NCCL_OP } from './bindings/nccl.js';
import type { Handle } from './bindings/driver.js';
import { argBuffers, type DeviceBuffer } from './context.js';
import { kvOffsets, type CudaBlock, type CudaRankDevice } from './device.js';
import type { CudaGroup } from './group.js';
import type { Timeline } from './timeline.js';

/**
 * The ring transport over NCCL. All NCCL calls go to the group's communication stream; compute
 * runs on the context's stream; CUDA events order the two, and the host never waits:
 *
 * - Before a transfer, the comm stream waits for the compute enqueued so far (the spare buffer
 *   is free once the previous step's compute has read it; dK/dV are sent after the compute
 *   that last wrote them).
 * - Before the block it receives is used, the compute stream waits for the transfer's end.
 *
 * Note [aligned groups]: a lone ncclSend of a large buffer blocks its stream until the peer's
 * matching receive runs, so sends and receives that two ranks post at "the same time" must sit
 * in one ncclGroupStart/End, or each rank's send waits behind its own receive (a deadlock on
 * every ring). Every NCCL call of step s therefore goes into one group G_s on every rank:
 *   G_s = the dK/dV posted after the compute of step s-1 (postGrads), and their receive;
 *         the K/V shift of step s; dK/dV sent home after step s-1 (sendHome), and their receive.
 * G_s needs only compute up to step s-1 and groups before it, and compute of step s needs only
 * groups up to G_s, so by induction no rank ever waits on another in a cycle. Within a group
 * the ops to one peer keep a fixed order (dK/dV, then K/V, then home), the same on both sides.
 * The group of step s is issued at the first of shift(s), startGrads(s), reuseGrads(s) (one of
 * which the executor calls every step), and the last one, G_P, at awaitHome.
 */

interface Op {
  send: boolean;
  ptr: number;
  bytes: number;
  peer: number;
}

interface Queue {
  grads: Op[];
  kv: Op[];
  home: Op[];
  /** Blocks whose dK/dV go out in this group (their buffers wait for its end before reuse). */
  from: CudaBlock[];
}

interface CudaPending extends Pending {
  recv: boolean;
  end: Handle;
}

const emptyQueue = (): Queue => ({ grads: [], kv: [], home: [], from: [] });

export class CudaTransport implements RingTransport<CudaBlock> {
  readonly rank: number;
  readonly ranks: number;
  private phase: 'forward' | 'backward' = 'forward';
  private queue: Queue = emptyQueue();
  /** Step of the backward whose group was issued last (-1: none yet). */
  private issued = -1;
  /** Calls of reuseGrads so far in this backward (= the current step). */
  private bwStep = 0;
  /** The group that received the dK/dV of the current step, and the one that brought this rank's own dK/dV home. */
  private gradsIn: { step: number; end: Handle } | null = null;
  private homeEnd: Handle | null = null;
  private homeStep = -1;
  private readonly postedFrom = new Map<CudaBlock, Handle>();
  private gradIn: DeviceBuffer | null = null;
  /** Bytes this rank received, for the report. */
  bytesIn = 0;

  constructor(
    private readonly g: CudaGroup,
    private readonly dev: CudaRankDevice,
    private readonly sched: RingSchedule,
    /** Rows each rank's travelling block carries, and the sink rows each rank owns. */
    private readonly counts: number[],
    private readonly sinkRows: number[],
    private readonly timeline: Timeline,
  ) {
    this.rank = g.rank;
    this.ranks = g.world;
  }

  private get next(): number {
    return (this.rank + 1) % this.ranks;
  }

  private get prev(): number {
    return (this.rank - 1 + this.ranks) % this.ranks;
  }

  /** Start a phase: the comm stream waits for what the compute stream did before it. */
  begin(phase: 'forward' | 'backward'): void {
    this.phase = phase;
    this.queue = emptyQueue();
    this.postedFrom.clear();
    this.gradsIn = null;
    this.homeEnd = null;
    this.issued = -1;
    this.bwStep = 0;
    if (phase === 'backward') {
      const cap = Math.max(...this.counts, 1);
      const bytes = 2 * cap * this.dev.geom.row * 4;
      if (!this.gradIn || this.gradIn.bytes < bytes) {
        if (this.gradIn) this.g.syncAll();
        this.g.ctx.free(this.gradIn ?? undefined);
        this.gradIn = this.g.ctx.alloc(bytes);
      }
      // This rank's own block: home after its last needed step, from the rank holding it then.
      const last = Math.max(0, this.sched.lastStep[this.rank]);
      this.homeStep = (this.rank + last) % this.ranks !== this.rank ? last + 1 : -1;
    }
  }

  /** End of a phase: the compute stream waits for every transfer. */
  finish(): void {
    const ev = this.timeline.record(this.g.comm);
    this.computeWaits(ev);
  }

  private computeWaits(ev: Handle): void {
    this.g.ctx.check('cuStreamWaitEvent', this.g.ctx.drv.cuStreamWaitEvent(this.g.ctx.stream, ev, 0));
  }

  private commWaitsCompute(): void {
    const ev = this.timeline.record(this.g.ctx.stream);
    this.g.ctx.check('cuStreamWaitEvent', this.g.ctx.drv.cuStreamWaitEvent(this.g.comm, ev, 0));
  }

  /** Issue one NCCL group of `ops` on the comm stream; returns the event at its end. */
  private issue(step: number, ops: Op[]): Handle {
    this.commWaitsCompute();
    const start = this.timeline.record(this.g.comm);
    const { nccl, ncclComm, comm } = this.g;
    let bytes = 0;
    this.g.collective(`ring step ${step} sends / receives`, comm, () => {
      this.g.ncclCheck('ncclGroupStart', nccl.ncclGroupStart());
      try {
        for (const op of ops) {
          if (op.bytes <= 0) continue;
          if (op.send) this.g.ncclCheck(`ncclSend(${op.bytes} bytes to rank ${op.peer})`, nccl.ncclSend(op.ptr, op.bytes, NCCL_DTYPE.uint8, op.peer, ncclComm, comm));
          else {
            this.g.ncclCheck(`ncclRecv(${op.bytes} bytes from rank ${op.peer})`, nccl.ncclRecv(op.ptr, op.bytes, NCCL_DTYPE.uint8, op.peer, ncclComm, comm));
            bytes += op.bytes;
          }
        }
      } finally {
        this.g.ncclCheck('ncclGroupEnd', nccl.ncclGroupEnd());
      }
    }, [...new Set(ops.filter((op) => op.bytes > 0).map((op) => op.peer))]);
    const end = this.timeline.record(this.g.comm);
    this.timeline.transfer(step, this.phase, bytes, start, end);
    this.bytesIn += bytes;
    return end;
  }

  /** Issue the backward's group of `step` (once), with what is queued. */
  private flush(step: number): Handle | null {
    if (this.issued >= step) return null;
    this.issued = step;
    if (step === this.homeStep) this.queueHomeRecv();
    const q = this.queue;
    this.queue = emptyQueue();
    const ops = [...q.grads, ...q.kv, ...q.home];
    if (!ops.length) return null;
    const end = this.issue(Math.min(step, this.ranks - 1), ops);
    for (const b of q.from) this.postedFrom.set(b, end);
    if (q.home.some((o) => !o.send)) this.homeEnd = end;
    return end;
  }

  private queueHomeRecv(): void {
    const dev = this.dev;
    const n = this.counts[this.rank];
    const row = dev.geom.row;
    const at = this.sinkRows[this.rank] * row * 4;
    const holder = (this.rank + Math.max(0, this.sched.lastStep[this.rank])) % this.ranks;
    this.queue.home.push({ send: false, ptr: dev.dkOut!.ptr + at, bytes: n * row * 4, peer: holder });
    this.queue.home.push({ send: false, ptr: dev.dvOut!.ptr + at, bytes: n * row * 4, peer: holder });
  }

  /** dK/dV of the block held at `step` arrive from the previous rank (posted after its step - 1). */
  private gradsExpected(step: number): boolean {
    return this.phase === 'backward' && step > 0 && this.sched.recv[this.rank][step - 1];
  }

  private queueGradsRecv(step: number): void {
    const n = this.counts[blockAt(this.rank, step, this.ranks)];
    this.queue.grads.push({ send: false, ptr: this.gradIn!.ptr, bytes: 2 * n * this.dev.geom.row * 4, peer: this.prev });
  }

  shift(_seq: number, step: number, hand: CudaBlock, spare: CudaBlock, send: boolean, recv: boolean): CudaPending {
    const geom = this.dev.geom;
    if (send) this.queue.kv.push({ send: true, ptr: hand.kv.ptr, bytes: kvOffsets(hand.count, geom).bytes, peer: this.next });
    if (recv) {
      spare.count = this.counts[blockAt(this.prev, step, this.ranks)];
      this.queue.kv.push({ send: false, ptr: spare.kv.ptr, bytes: kvOffsets(spare.count, geom).bytes, peer: this.prev });
    }
    let end: Handle;
    if (this.phase === 'backward') {
      if (this.gradsExpected(step)) this.queueGradsRecv(step);
      end = this.flush(step);
      if (this.gradsExpected(step)) this.gradsIn = { step, end };
    } else {
      end = this.issue(step, this.queue.kv);
      this.queue = emptyQueue();
    }
    return { started: 0, recv, end };
  }

  wait(pending: Pending): void {
    const p = pending as CudaPending;
    if (p.recv && p.end) this.computeWaits(p.end);
  }

  startGrads(_seq: number, step: number): CudaPending {
    if (!this.gradsIn || this.gradsIn.step !== step) {
      this.queueGradsRecv(step);
      const end = this.flush(step);
      this.gradsIn = { step, end };
    }
    return { started: 0, recv: true, end: this.gradsIn.end };
  }

  finishGrads(pending: Pending, block: CudaBlock): void {
    const p = pending as CudaPending;
    this.computeWaits(p.end);
    const n = 2 * block.count * this.dev.geom.row;
    const ctx = this.g.ctx;
    if (n > 0) {
      const grid = Math.min(Math.ceil(n / 4 / 256), ctx.smCount * 8);
      ctx.launch(ctx.fn('ring.cu', 'ring_add_f32'), 'ring_add_f32', [Math.max(1, grid), 1, 1], 256, 0, argBuffers([{ ptr: block.grads!.ptr }, { ptr: this.gradIn!.ptr }, { i32: n }]));
    }
  }

  reuseGrads(block: CudaBlock): void {
    const step = this.bwStep++;
    this.flush(step);
    const ev = this.postedFrom.get(block);
    if (ev) {
      this.computeWaits(ev);
      this.postedFrom.delete(block);
    }
  }

  postGrads(_seq: number, _step: number, block: CudaBlock): void {
    // Goes out with the next step's group (Note [aligned groups]).
    this.queue.grads.push({ send: true, ptr: block.grads!.ptr, bytes: 2 * block.count * this.dev.geom.row * 4, peer: this.next });
    this.queue.from.push(block);
  }

  sendHome(block: CudaBlock, home: number): void {
    const row = this.dev.geom.row;
    const n = this.counts[home] * row * 4;
    if (home === this.rank) {
      const at = this.sinkRows[home] * row * 4;
      const ctx = this.g.ctx;
      for (const [dst, off] of [[this.dev.dkOut!, 0], [this.dev.dvOut!, n]] as const) {
        if (n > 0) ctx.check('cuMemcpyDtoDAsync_v2', ctx.drv.cuMemcpyDtoDAsync_v2(dst.ptr + at, block.grads!.ptr + off, n, ctx.stream));
      }
      return;
    }
    this.queue.home.push({ send: true, ptr: block.grads!.ptr, bytes: n, peer: home });
    this.queue.home.push({ send: true, ptr: block.grads!.ptr + n, bytes: n, peer: home });
    this.queue.from.push(block);
  }

  awaitHome(): void {
    this.flush(this.ranks);
    if (this.homeEnd) this.computeWaits(this.homeEnd);
  }

  /** Row offset of rank q's sink rows in the gathered sink block (ranks in order). */
  private sinkOffset(q: number): number {
    return this.sinkRows.slice(0, q).reduce((a, b) => a + b, 0);
  }

  gatherSinks(own: CudaBlock, into: CudaBlock): void {
    const geom = this.dev.geom;
    const total = this.sinkOffset(this.ranks);
    into.count = total;
    const to = kvOffsets(total, geom);
    const rb = geom.row * geom.el;
    const regions = (n: number, at: number, o: ReturnType<typeof kvOffsets>, base: number): [number, number][] => {
      const r: [number, number][] = [
        [base + o.k + at * rb, n * rb],
        [base + o.v + at * rb, n * rb],
        [base + o.pos + at * 4, n * 4],
      ];
      if (geom.segments) r.push([base + o.seg + at * 4, n * 4]);
      return r;
    };
    const mine = this.sinkRows[this.rank];
    const ownRegions = regions(mine, 0, kvOffsets(mine, geom), own.kv.ptr);
    // This rank's own rows: a copy on the compute stream.
    const at = this.sinkOffset(this.rank);
    const ctx = this.g.ctx;
    regions(mine, at, to, into.kv.ptr).forEach(([dst, bytes], i) => {
      if (bytes > 0) ctx.check('cuMemcpyDtoDAsync_v2', ctx.drv.cuMemcpyDtoDAsync_v2(dst, ownRegions[i][0], bytes, ctx.stream));
    });
    const ops: Op[] = [];
    for (let q = 0; q < this.ranks; q++) {
      if (q === this.rank) continue;
      if (mine > 0) for (const [ptr, bytes] of ownRegions) ops.push({ send: true, ptr, bytes, peer: q });
      const n = this.sinkRows[q];
      if (n > 0) for (const [ptr, bytes] of regions(n, this.sinkOffset(q), to, into.kv.ptr)) ops.push({ send: false, ptr, bytes, peer: q });
    }
    if (ops.length) this.computeWaits(this.issue(0, ops));
  }

  reduceSinkGrads(gathered: CudaBlock): void {
    const row = this.dev.geom.row;
    const total = gathered.count;
    const g = this.g;
    if (this.ranks > 1 && total > 0) {
      this.commWaitsCompute();
      const start = this.timeline.record(g.comm);
      g.ncclOn('ncclAllReduce(sink dK/dV)', g.comm, () => g.nccl.ncclAllReduce(gathered.grads!.ptr, gathered.grads!.ptr, 2 * total * row, NCCL_DTYPE.float32, NCCL_OP.sum, g.ncclComm, g.comm));
      const end = this.timeline.record(g.comm);
      this.timeline.transfer(this.ranks - 1, 'backward', 2 * total * row * 4, start, end);
      this.computeWaits(end);
    }
    const n = this.sinkRows[this.rank] * row * 4;
    const at = this.sinkOffset(this.rank) * row * 4;
    const ctx = g.ctx;
    if (n > 0) {
      ctx.check('cuMemcpyDtoDAsync_v2', ctx.drv.cuMemcpyDtoDAsync_v2(this.dev.dkOut!.ptr, gathered.grads!.ptr + at, n, ctx.stream));
      ctx.check('cuMemcpyDtoDAsync_v2', ctx.drv.cuMemcpyDtoDAsync_v2(this.dev.dvOut!.ptr, gathered.grads!.ptr + total * row * 4 + at, n, ctx.stream));
    }
  }

  dispose(): void {
    this.g.ctx.free(this.gradIn ?? undefined);
    this.gradIn = null;
  }
}
