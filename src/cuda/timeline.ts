import type { TraceEvent } from '../core/trace.js';
import { CU_EVENT_DEFAULT, type Handle } from './bindings/driver.js';
import type { CudaContext } from './context.js';

/**
 * GPU-side timing of a ring run: CUDA events recorded on the compute and communication streams
 * as the work is enqueued, turned into TraceEvents (ms since `begin`) once the streams are done.
 * The host enqueues a whole ring phase without waiting, so host clocks would say nothing.
 */
interface Rec {
  kind: 'compute' | 'transfer';
  step: number;
  phase: 'forward' | 'backward';
  start: Handle;
  end: Handle;
  bytes?: number;
}

export class Timeline {
  private readonly recs: Rec[] = [];
  private readonly pool: Handle[] = [];
  private used = 0;
  private base: Handle = null;

  constructor(private readonly ctx: CudaContext) {}

  /** Record a (timing) event on `stream`. Events are reused across runs after `reset`. */
  record(stream: Handle): Handle {
    if (this.used === this.pool.length) {
      const e: [Handle] = [null];
      this.ctx.check('cuEventCreate', this.ctx.drv.cuEventCreate(e, CU_EVENT_DEFAULT));
      this.pool.push(e[0]);
    }
    const ev = this.pool[this.used++];
    this.ctx.check('cuEventRecord', this.ctx.drv.cuEventRecord(ev, stream));
    return ev;
  }

  /** Start of a run: the base event on the compute stream; previous records are dropped. */
  begin(stream: Handle): Handle {
    this.recs.length = 0;
    this.used = 0;
    this.base = this.record(stream);
    return this.base;
  }

  compute(step: number, phase: 'forward' | 'backward', start: Handle, end: Handle): void {
    this.recs.push({ kind: 'compute', step, phase, start, end });
  }

  transfer(step: number, phase: 'forward' | 'backward', bytes: number, start: Handle, end: Handle): void {
    this.recs.push({ kind: 'transfer', step, phase, start, end, bytes });
  }

  private since(ev: Handle): number {
    const ms: [number] = [0];
    this.ctx.check('cuEventElapsedTime', this.ctx.drv.cuEventElapsedTime(ms, this.base, ev));
    return ms[0];
  }

  /** ms from `begin` to `ev` (both complete). */
  elapsed(ev: Handle): number {
    return this.since(ev);
  }

  /** The trace (call once both streams are done). */
  events(rank: number): TraceEvent[] {
    return this.recs.map((r) => ({ rank, step: r.step, kind: r.kind, phase: r.phase, start: this.since(r.start), end: this.since(r.end), ...(r.bytes !== undefined ? { bytes: r.bytes } : {}) }));
  }

  dispose(): void {
    for (const e of this.pool) this.ctx.drv.cuEventDestroy_v2(e);
    this.pool.length = 0;
    this.used = 0;
  }
}
