import type { BlockClass } from './mask.js';
import type { TraceEvent } from './trace.js';

/**
 * The two small interfaces a backend implements for the ring executor (src/ring/). `B` is the
 * backend's buffer for one travelling KV block: keys, values, their global positions (and
 * segment ids), and in the backward the dK/dV accumulators that travel with them.
 */
export interface RingDevice<B> {
  readonly rank: number;
  /** Two block buffers: [0] starts with this rank's own keys/values, [1] is the spare. */
  readonly blocks: [B, B];
  /** Put this rank's own KV shard, less its sink rows, into `block` (and zero its dK/dV in the backward). */
  loadOwn(block: B, withGrads: boolean): void;
  /**
   * Attention sinks (window + sinks): [this rank's own sink rows, all sink rows gathered], or
   * null when there are none. The few sink keys reach every rank once instead of travelling
   * with the first shard as far as the ring goes.
   */
  readonly sinks: [B, B] | null;
  /** Put this rank's own sink rows into `block`. */
  loadSinks(block: B): void;
  /** Forward: this rank's queries against `block`, merged into the running (O, LSE) in fp32. */
  forward(block: B, cls: BlockClass): void;
  /** Before the backward: delta = rowsum(dO * O), dQ = 0. */
  beginBackward(): void;
  /** Backward: zero the block's dK/dV partials (this rank's contribution at this step). */
  zeroGrads(block: B): void;
  /** Backward: dQ accumulates (it stays home); the block's dK/dV partials receive this rank's share. */
  backward(block: B, cls: BlockClass): void;
}

/** A transfer in progress. */
export interface Pending {
  readonly started: number;
}

export interface RingTransport<B> {
  readonly rank: number;
  readonly ranks: number;
  /**
   * Start step `step` of a phase: post `hand` for the next rank (send) and start receiving the
   * previous rank's block into `spare` (recv). `seq` increases over every step of a run.
   */
  shift(seq: number, step: number, hand: B, spare: B, send: boolean, recv: boolean): Pending;
  /** Wait until the receive is complete and the next rank no longer reads `hand`. */
  wait(p: Pending): void;
  /**
   * Backward: start receiving the accumulated dK/dV of the block now in hand, which the previous
   * rank posted at the end of step `step - 1`; it travels while this rank computes.
   */
  startGrads(seq: number, step: number): Pending;
  /** Wait for those dK/dV and add them into the partials of `block`. */
  finishGrads(p: Pending, block: B): void;
  /** Before a block's dK/dV partials are overwritten: wait until the next rank has read the ones posted from it. */
  reuseGrads(block: B): void;
  /** Post the accumulated dK/dV of `block` for the next rank (it pulls them at its next step). */
  postGrads(seq: number, step: number, block: B): void;
  /** Backward: send the dK/dV of `block` (which started on rank `home`) home. */
  sendHome(block: B, home: number): void;
  /** Sinks: publish `own` and gather every rank's sink rows into `into`. */
  gatherSinks(own: B, into: B): void;
  /** Sinks, backward: every rank's dK/dV partials for this rank's sink rows, summed into its outputs. */
  reduceSinkGrads(gathered: B): void;
  /** Backward: wait until this rank's own dK/dV have arrived (from another rank or itself). */
  awaitHome(): void;
}

/** Records timeline events for the report; a no-op tracer costs nothing. */
export interface Tracer {
  now(): number;
  event(e: TraceEvent): void;
}

export const NO_TRACE: Tracer = { now: () => 0, event: () => {} };
