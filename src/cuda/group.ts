import { BackendError, RankError, RingAttnError } from '../core/errors.js';
import { CUDA_ERROR_NOT_READY, CU_EVENT_DISABLE_TIMING, CU_STREAM_NON_BLOCKING, type Handle } from './bindings/driver.js';
import { loadNccl, NCCL_DTYPE, NCCL_OP, NCCL_UNIQUE_ID_BYTES, type NcclApi } from './bindings/nccl.js';
import { cudaAvailable } from './check.js';
import { CudaContext, type DeviceBuffer } from './context.js';
import { Control, rankEnv, type ControlOptions, type RankEnv } from './control.js';
import { EXIT_SECONDARY } from './launch.js';

/**
 * One GPU rank of a job: the control channel (rendezvous, failure propagation), this process's
 * GPU (LOCAL_RANK), an NCCL communicator over all ranks and a communication stream beside the
 * compute stream. Every host wait polls (cuStreamQuery) and checks the control channel and
 * NCCL's asynchronous error between polls, so that a failure anywhere ends every rank with its
 * error instead of a hang.
 */

const NCCL_IN_PROGRESS = 7;

export interface GroupOptions extends ControlOptions {
  env?: RankEnv;
  /** Longest host wait on the GPU before giving up (ms; default RINGATTN_GPU_TIMEOUT or 10 min). */
  waitTimeoutMs?: number;
  /**
   * After another rank has ended normally, how long a collective of this rank that has started
   * (the work queued ahead of it is done) may still wait before the run ends with an error
   * naming that rank (ms; default 5000). A collective that the departed rank took part in ends
   * within milliseconds of its start; one it never called would wait for ever.
   */
  leftGraceMs?: number;
}

/** An NCCL call enqueued on a stream, between two events (see CudaGroup.checkLeft). */
interface CollectiveMark {
  before: Handle;
  after: Handle;
  what: string;
  /** The ranks it exchanges with (null: all). */
  peers: readonly number[] | null;
  /** When a wait first saw the work ahead of it done (performance.now()), or 0. */
  startedAt: number;
}

/** Collectives a stream may have marked and not yet seen done; later ones are not marked. */
const MAX_MARKS = 64;

export class CudaGroup {
  readonly rank: number;
  readonly world: number;
  /** Streams: compute is ctx.stream; comm carries every NCCL call (higher priority). */
  readonly comm: Handle;
  private aborted = false;
  /** The failure this group stopped on: every later wait throws it at once. */
  private failed: Error | null = null;
  private readonly sleeper = new Int32Array(new SharedArrayBuffer(4));
  private scratch: DeviceBuffer | null = null;
  private readonly waitTimeoutMs: number;
  /** Per stream, its marked collectives not yet seen done, oldest first. */
  private readonly marks = new Map<Handle, CollectiveMark[]>();
  /** Event pairs of marks seen done, for reuse. */
  private readonly spare: CollectiveMark[] = [];
  /** When a wait first saw that another rank had ended (performance.now()), or 0. */
  private leftSeenAt = 0;
  leftGraceMs = 5000;

  private constructor(readonly env: RankEnv, readonly control: Control | null, readonly ctx: CudaContext, readonly nccl: NcclApi, readonly ncclComm: unknown, waitTimeoutMs: number) {
    this.rank = env.rank;
    this.world = env.world;
    const least: [number] = [0];
    const greatest: [number] = [0];
    ctx.check('cuCtxGetStreamPriorityRange', ctx.drv.cuCtxGetStreamPriorityRange!(least, greatest));
    const s: [Handle] = [null];
    ctx.check('cuStreamCreateWithPriority', ctx.drv.cuStreamCreateWithPriority!(s, CU_STREAM_NON_BLOCKING, greatest[0]));
    this.comm = s[0];
    this.waitTimeoutMs = waitTimeoutMs;
  }

  /**
   * Join the job: rendezvous (rank 0 makes the NCCL unique id and hands it out over TCP), open
   * GPU LOCAL_RANK, then ncclCommInitRank. Without launcher variables: a group of one.
   */
  static async init(opts: GroupOptions = {}): Promise<CudaGroup> {
    const env = opts.env ?? rankEnv() ?? { rank: 0, world: 1, localRank: 0, masterAddr: '127.0.0.1', masterPort: 0 };
    // The driver first: without one, "NCCL not found" (or its absence) would hide the real cause.
    const cuda = cudaAvailable();
    if (!cuda.ok) throw new BackendError(cuda.reason);
    const loaded = loadNccl();
    if ('error' in loaded) throw new BackendError(loaded.error);
    const nccl = loaded;
    const ncclCheck = (call: string, rc: number) => {
      if (rc !== 0) throw new BackendError(`${call} failed: ${nccl.ncclGetErrorString(rc)} [ncclResult ${rc}]`);
    };
    let control: Control | null = null;
    let id: Uint8Array;
    const makeId = () => {
      const b = Buffer.alloc(NCCL_UNIQUE_ID_BYTES);
      ncclCheck('ncclGetUniqueId', nccl.ncclGetUniqueId(b));
      return new Uint8Array(b);
    };
    if (env.world > 1) {
      control = await Control.start(env, { ...opts, makeId });
      id = control.id;
    } else {
      id = makeId();
    }
    try {
      const ctx = CudaContext.open(env.localRank);
      const out: [unknown] = [null];
      ncclCheck(`ncclCommInitRank(rank ${env.rank} of ${env.world}, GPU ${env.localRank})`, nccl.ncclCommInitRank(out, env.world, { internal: id }, env.rank));
      const t = Number(process.env.RINGATTN_GPU_TIMEOUT);
      const g = new CudaGroup(env, control, ctx, nccl, out[0], opts.waitTimeoutMs ?? (Number.isFinite(t) && t > 0 ? t * 1000 : 600_000));
      if (opts.leftGraceMs !== undefined) g.leftGraceMs = opts.leftGraceMs;
      return g;
    } catch (e) {
      control?.fail(e instanceof Error ? e.message : String(e));
      throw e;
    }
  }

  ncclCheck(call: string, rc: number): void {
    if (rc !== 0) {
      this.poll();
      this.stop(new BackendError(`${call} failed: ${this.nccl.ncclGetErrorString(rc)} [ncclResult ${rc}]`));
    }
  }

  /**
   * The group cannot go on: abort NCCL at once (its kernels may be waiting for a dead peer, and
   * a free or a synchronize behind them would wait for ever), free no more device memory, and
   * throw `e`, as every later wait will.
   */
  private stop(e: Error): never {
    if (!this.failed) {
      this.failed = e;
      this.ctx.abandoned = true;
      this.abort();
    }
    throw e;
  }

  /** Throw if any rank failed (this one included) or NCCL reports an asynchronous error. */
  poll(): void {
    if (this.failed) throw this.failed;
    try {
      this.control?.throwIfFailed();
    } catch (e) {
      this.stop(e as Error);
    }
    const err: [number] = [0];
    const rc = this.nccl.ncclCommGetAsyncError(this.ncclComm, err);
    if (rc === 0 && err[0] !== 0 && err[0] !== NCCL_IN_PROGRESS) {
      this.stop(new BackendError(`NCCL asynchronous error: ${this.nccl.ncclGetErrorString(err[0])} [ncclResult ${err[0]}]`));
    }
  }

  /**
   * Enqueue NCCL call(s) on `stream` between two events: `call` makes them (a single call, or a
   * ncclGroupStart ... ncclGroupEnd) with `peers` (default: every rank). A later wait can then
   * tell a collective that has started and waits for a rank that has ended (checkLeft) from work
   * queued ahead of it. Every call on a stream is marked while fewer than MAX_MARKS of its
   * marked calls are not yet seen done (the stream runs them in order, so only the oldest can be
   * the one waiting); past that, calls go unmarked and a stuck one is left to RINGATTN_GPU_TIMEOUT.
   */
  collective(what: string, stream: Handle, call: () => void, peers: readonly number[] | null = null): void {
    let queue = this.marks.get(stream);
    if (!queue) this.marks.set(stream, (queue = []));
    // Only a full queue is pruned here (checkLeft prunes its own): no driver query per NCCL call.
    if (queue.length >= MAX_MARKS) this.pruneDone(queue);
    let mk: CollectiveMark | undefined;
    if (queue.length < MAX_MARKS) {
      mk = this.spare.pop();
      if (!mk) {
        const a: [Handle] = [null];
        const b: [Handle] = [null];
        this.ctx.check('cuEventCreate', this.ctx.drv.cuEventCreate(a, CU_EVENT_DISABLE_TIMING));
        this.ctx.check('cuEventCreate', this.ctx.drv.cuEventCreate(b, CU_EVENT_DISABLE_TIMING));
        mk = { before: a[0], after: b[0], what, peers, startedAt: 0 };
      }
      this.ctx.check('cuEventRecord', this.ctx.drv.cuEventRecord(mk.before, stream));
    }
    try {
      call();
    } catch (e) {
      if (mk) this.spare.push(mk);
      throw e;
    }
    if (mk) {
      this.ctx.check('cuEventRecord', this.ctx.drv.cuEventRecord(mk.after, stream));
      mk.what = what;
      mk.peers = peers;
      mk.startedAt = 0;
      queue.push(mk);
    }
  }

  /**
   * A failed GPU query (a sticky error: the context is lost): stop the group like any failure, so
   * that NCCL is aborted and no free runs on the dead context and hides this error behind its own.
   */
  private deviceError(what: string, rc: number): never {
    try {
      this.ctx.check(what, rc);
    } catch (e) {
      this.stop(e as Error);
    }
    this.stop(new BackendError(`${what} failed [CUresult ${rc}]`));
  }

  /** Drop the marks at the head of `queue` whose collective is done (their events are reused). */
  private pruneDone(queue: CollectiveMark[]): void {
    while (queue.length > 0 && this.eventDone(queue[0].after)) this.spare.push(queue.shift()!);
  }

  /** Whether the work before `ev` on its stream is done (any answer but done or not-ready is an error). */
  private eventDone(ev: Handle): boolean {
    const rc = this.ctx.drv.cuEventQuery!(ev);
    if (rc !== 0 && rc !== CUDA_ERROR_NOT_READY) this.deviceError('cuEventQuery', rc);
    return rc === 0;
  }

  /** One NCCL call on `stream` (see collective). */
  ncclOn(what: string, stream: Handle, call: () => number, peers: readonly number[] | null = null): void {
    this.collective(what, stream, () => this.ncclCheck(what, call()), peers);
  }

  /**
   * Another rank has ended normally (it said goodbye): a collective of this rank with it that has
   * started and is still not done `leftGraceMs` later waits for a rank that is gone, so the run
   * ends with an error that says so instead of waiting out RINGATTN_GPU_TIMEOUT. (A collective it
   * took part in ends within milliseconds of starting here: its side is done.)
   */
  private checkLeft(what: string): void {
    const control = this.control;
    if (!control || this.marks.size === 0 || control.leftCount() === 0) return;
    const now = performance.now();
    if (!this.leftSeenAt) this.leftSeenAt = now;
    for (const queue of this.marks.values()) {
      // Only a stream's oldest unfinished collective can be the one waiting: the rest queue behind it.
      this.pruneDone(queue);
      const mk = queue[0];
      if (!mk) continue;
      // A departed rank proves a mismatch for a collective of all ranks or a transfer with it
      // alone; a group with several peers (a ring step: send to one, receive from another) may
      // still wait, rightly, on a live one after the departed peer's part is done.
      if (mk.peers && mk.peers.length !== 1) continue;
      let gone = -1;
      if (mk.peers) gone = control.hasLeft(mk.peers[0]) ? mk.peers[0] : -1;
      else for (let r = 0; r < this.world && gone < 0; r++) if (control.hasLeft(r)) gone = r;
      if (gone < 0) continue;
      if (!mk.startedAt) {
        if (!this.eventDone(mk.before)) continue; // the work ahead of it is still running
        mk.startedAt = now;
      }
      if (now - Math.max(mk.startedAt, this.leftSeenAt) > this.leftGraceMs) {
        const e = new RankError(this.rank, `${what}: rank ${gone} has ended while this rank's ${mk.what} still waits for it ${(this.leftGraceMs / 1000).toFixed(1)} s later (the ranks did not make the same collective calls)`);
        this.control?.fail(e.detail);
        this.stop(e);
      }
    }
  }

  private waitUntil(what: string, query: () => number): void {
    if (this.failed) throw this.failed;
    const t0 = performance.now();
    for (;;) {
      const rc = query();
      if (rc === 0) return;
      if (rc !== CUDA_ERROR_NOT_READY) this.deviceError(what, rc);
      this.poll();
      this.checkLeft(what);
      const waited = performance.now() - t0;
      if (waited > this.waitTimeoutMs) {
        // This rank's failure: the others stop now, not at their own timeouts.
        const e = new RankError(this.rank, `${what}: still waiting after ${this.waitTimeoutMs} ms (set RINGATTN_GPU_TIMEOUT, seconds, to wait longer)`);
        this.control?.fail(e.detail);
        this.stop(e);
      }
      // Spin for the first 5 ms (a decode step or a ring step ends within it, and a sleep would
      // add its own granularity to the step), then sleep in small slices.
      if (waited > 5) Atomics.wait(this.sleeper, 0, 0, 0.1);
    }
  }

  /** Wait for everything enqueued on a stream (default: compute), polling for failures. */
  syncStream(stream: Handle = this.ctx.stream): void {
    this.waitUntil('cuStreamQuery', () => this.ctx.drv.cuStreamQuery!(stream));
  }

  syncEvent(ev: Handle): void {
    this.waitUntil('cuEventQuery', () => this.ctx.drv.cuEventQuery!(ev));
  }

  /** Both streams idle. */
  syncAll(): void {
    this.syncStream(this.ctx.stream);
    this.syncStream(this.comm);
  }

  private word(): DeviceBuffer {
    return (this.scratch ??= this.ctx.alloc(8 * Math.max(1, this.world) * 8));
  }

  /** Every rank's `values` (the same count on each), through the GPU. */
  allGatherF64(values: number[]): number[][] {
    if (this.world === 1) return [values.slice()];
    const n = values.length;
    const send = this.ctx.alloc(n * 8);
    const recv = this.ctx.alloc(n * 8 * this.world);
    try {
      this.ctx.upload(send, Float64Array.from(values));
      this.syncStream();
      this.ncclOn('ncclAllGather', this.comm, () => this.nccl.ncclAllGather(send.ptr, recv.ptr, n, NCCL_DTYPE.float64, this.ncclComm, this.comm));
      this.syncStream(this.comm);
      const all = this.ctx.download(new Float64Array(n * this.world), recv);
      return Array.from({ length: this.world }, (_, r) => Array.from(all.subarray(r * n, (r + 1) * n)));
    } finally {
      this.ctx.free(send);
      this.ctx.free(recv);
    }
  }

  /**
   * NCCL all-gather of device memory on the comm stream, ordered after the compute stream's work
   * so far; returns when `recv` holds every rank's `count` elements in rank order.
   */
  allGatherDevice(send: number, recv: number, count: number, dtype: keyof typeof NCCL_DTYPE = 'float32'): void {
    this.syncStream();
    this.ncclOn('ncclAllGather', this.comm, () => this.nccl.ncclAllGather(send, recv, count, NCCL_DTYPE[dtype], this.ncclComm, this.comm));
    this.syncStream(this.comm);
  }

  /**
   * NCCL all-gather enqueued on the compute stream behind its work so far, with no host wait:
   * work enqueued after it sees `recv` filled. The caller ends with syncStream(), which polls for
   * a failed rank (a bare stream synchronize would wait forever on a dead peer's collective).
   */
  allGatherOnStream(send: number, recv: number, count: number, dtype: keyof typeof NCCL_DTYPE = 'float32'): void {
    this.ncclOn('ncclAllGather', this.ctx.stream, () => this.nccl.ncclAllGather(send, recv, count, NCCL_DTYPE[dtype], this.ncclComm, this.ctx.stream));
  }

  /** NCCL all-reduce (sum) of device memory, in place when send === recv; returns when done. */
  allReduceSumDevice(send: number, recv: number, count: number, dtype: keyof typeof NCCL_DTYPE = 'float32'): void {
    this.syncStream();
    this.ncclOn('ncclAllReduce', this.comm, () => this.nccl.ncclAllReduce(send, recv, count, NCCL_DTYPE[dtype], NCCL_OP.sum, this.ncclComm, this.comm));
    this.syncStream(this.comm);
  }

  /** Every rank waits here (an all-reduce of one word on the comm stream, then both streams idle). */
  barrier(): void {
    this.syncStream();
    if (this.world === 1) return;
    const w = this.word();
    this.ncclOn('ncclAllReduce(barrier)', this.comm, () => this.nccl.ncclAllReduce(w.ptr, w.ptr, 1, NCCL_DTYPE.float32, NCCL_OP.sum, this.ncclComm, this.comm));
    this.syncStream(this.comm);
  }

  /** Max of one number over the ranks. */
  max(x: number): number {
    return Math.max(...this.allGatherF64([x]).map((v) => v[0]));
  }

  /** After a failure: stop NCCL's kernels and threads so that this process can exit. */
  abort(): void {
    if (this.aborted) return;
    this.aborted = true;
    try {
      this.nccl.ncclCommAbort(this.ncclComm);
    } catch {
      // nothing more to do
    }
  }

  async close(): Promise<void> {
    if (!this.aborted) {
      this.syncAll();
      for (const mk of [...[...this.marks.values()].flat(), ...this.spare]) {
        this.ctx.drv.cuEventDestroy_v2(mk.before);
        this.ctx.drv.cuEventDestroy_v2(mk.after);
      }
      this.marks.clear();
      this.spare.length = 0;
      this.ctx.free(this.scratch ?? undefined);
      this.nccl.ncclCommDestroy(this.ncclComm);
      this.ctx.drv.cuStreamDestroy_v2(this.comm);
    }
    await this.control?.close();
  }
}

/**
 * Run `body` as this process's rank and exit: 0 on success; on an error, tell the other ranks
 * (so they stop within seconds), abort NCCL, print `ringattn: rank r: ...` and exit 1 (or
 * EXIT_SECONDARY when this rank only stopped because another failed).
 */
export async function rankMain(body: (g: CudaGroup) => Promise<void>, opts: GroupOptions = {}): Promise<never> {
  let group: CudaGroup | null = null;
  let code = 0;
  try {
    group = await CudaGroup.init(opts);
    await body(group);
    await group.close();
  } catch (e) {
    const secondary = e instanceof RankError && e.secondary;
    const msg = e instanceof Error ? e.message : String(e);
    let rank = group?.rank ?? opts.env?.rank ?? 0;
    try {
      rank = e instanceof RankError ? e.rank : (group?.rank ?? opts.env?.rank ?? rankEnv()?.rank ?? 0);
    } catch {
      // a bad environment is the error being reported
    }
    const detail = e instanceof RankError ? e.detail : msg;
    group?.control?.fail(detail);
    group?.abort();
    // A bug's stack first; the last line is the one the launcher reports.
    if (!(e instanceof RingAttnError) && e instanceof Error && e.stack) process.stderr.write(`${e.stack}\n`);
    process.stderr.write(`ringattn: rank ${rank}: ${detail}\n`);
    code = secondary ? EXIT_SECONDARY : 1;
  }
  group?.control?.acknowledge(); // stopped: the watchdog need not end it
  // Exit explicitly: NCCL's threads (after an abort) must not keep the process alive.
  process.exit(code);
}
