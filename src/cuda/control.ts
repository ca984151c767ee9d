import { Worker } from 'node:worker_threads';
import { InputError, RankError } from '../core/errors.js';
import { startWorker } from '../core/worker.js';
import { HEARTBEAT_MS, recordFailure, SLOT, STATE, type ControlInit } from './control-proto.js';

/**
 * A GPU rank's place in a job started by `ringattn launch` (or torchrun): torchrun's variables,
 * RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT.
 */
export interface RankEnv {
  rank: number;
  world: number;
  localRank: number;
  masterAddr: string;
  masterPort: number;
}

const VARS = ['RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT'] as const;

/** This process's rank, from the environment; null when no launcher set WORLD_SIZE. */
export function rankEnv(env: NodeJS.ProcessEnv = process.env): RankEnv | null {
  if (env.WORLD_SIZE === undefined && env.RANK === undefined) return null;
  const int = (name: (typeof VARS)[number], min: number, max: number, fallback?: string): number => {
    const raw = env[name] ?? fallback;
    if (raw === undefined) throw new InputError(name, `expected the environment variable to be set (with ${VARS.join(', ')})`);
    const n = Number(raw);
    if (!/^\d+$/.test(raw.trim()) || !Number.isSafeInteger(n) || n < min || n > max) throw new InputError(name, `expected an integer in ${min}..${max}, got '${raw}'`);
    return n;
  };
  const world = int('WORLD_SIZE', 1, 65536);
  const rank = int('RANK', 0, world - 1);
  const localRank = int('LOCAL_RANK', 0, 1023, String(rank));
  const masterAddr = env.MASTER_ADDR ?? (world === 1 ? '127.0.0.1' : undefined);
  if (!masterAddr) throw new InputError('MASTER_ADDR', 'expected the address of rank 0 (set by the launcher)');
  const masterPort = int('MASTER_PORT', 1, 65535, world === 1 ? '29500' : undefined);
  return { rank, world, localRank, masterAddr, masterPort };
}

export interface ControlOptions {
  /** Rank 0: makes the id handed to every rank (the NCCL unique id). */
  makeId?: () => Uint8Array;
  /** Rendezvous deadline (default RINGATTN_RENDEZVOUS_TIMEOUT ms or 60 s). */
  timeoutMs?: number;
  /** After an abort, how long the main thread has to stop before the process is ended (default 5 s; 0: never). */
  graceMs?: number;
  /** A control thread whose heartbeat has not moved for this long has died: the rank fails (ms, default 15 s). */
  heartbeatTimeoutMs?: number;
  /**
   * Rank 0: how long close() waits at most for the other ranks to end, relaying their goodbyes
   * and failures meanwhile (ms, default Infinity: each of them ends, fails by its own GPU timeout
   * or watchdog, or dies, which closes its connection). After it, those still running only lose
   * the relay (each prints a warning).
   */
  lingerMs?: number;
}

export interface Failure {
  rank: number;
  message: string;
}

/**
 * The control channel of one rank (its TCP side runs on a worker thread, control-worker.ts):
 * rendezvous, then failure propagation. `failure()` is cheap and is polled by every GPU wait.
 */
export class Control {
  private readonly flags: Int32Array;
  private readonly text: Uint8Array;
  private readonly leftFlags: Int32Array;
  private closed = false;
  private lastBeat = -1;
  private beatSeenAt = 0;
  private checkedAt = 0;
  /** The control thread is gone (lost()): nothing to tell it, nothing to wait for. */
  private dead = false;
  heartbeatTimeoutMs = 15_000;
  lingerMs = Infinity;

  private constructor(readonly env: RankEnv, readonly id: Uint8Array, private readonly worker: Worker, flagsBuf: SharedArrayBuffer, textBuf: SharedArrayBuffer, leftBuf: SharedArrayBuffer) {
    this.flags = new Int32Array(flagsBuf);
    this.text = new Uint8Array(textBuf);
    this.leftFlags = new Int32Array(leftBuf);
  }

  static async start(env: RankEnv, opts: ControlOptions = {}): Promise<Control> {
    if (opts.lingerMs !== undefined && !(opts.lingerMs >= 0)) throw new InputError('lingerMs', `expected a number of ms >= 0 (Infinity: until the other ranks end), got ${opts.lingerMs}`);
    const envTimeout = Number(process.env.RINGATTN_RENDEZVOUS_TIMEOUT);
    const timeoutMs = opts.timeoutMs ?? (Number.isFinite(envTimeout) && envTimeout > 0 ? envTimeout : 60_000);
    const flags = new SharedArrayBuffer(8 * 4);
    const text = new SharedArrayBuffer(4096);
    const left = new SharedArrayBuffer(4 * env.world);
    let id: Uint8Array | undefined;
    if (env.rank === 0) id = opts.makeId ? opts.makeId() : new Uint8Array(128);
    const init: ControlInit = {
      rank: env.rank, world: env.world, host: env.masterAddr, port: env.masterPort, timeoutMs,
      graceMs: opts.graceMs ?? 5000, id: id ? Buffer.from(id).toString('base64') : undefined, flags, text, left,
    };
    const worker = startWorker(new URL('./control-worker.js', import.meta.url), { workerData: init });
    const got = await new Promise<Uint8Array>((resolve, reject) => {
      worker.on('message', (m: { type: string; id?: string; rank?: number; message?: string }) => {
        if (m.type === 'ready' && id) resolve(id);
        else if (m.type === 'id' && m.id) resolve(new Uint8Array(Buffer.from(m.id, 'base64')));
        else if (m.type === 'abort') reject(new RankError(env.rank, m.rank === env.rank || m.rank === undefined ? m.message ?? 'rendezvous failed' : `rank ${m.rank}: ${m.message}`, m.rank !== env.rank));
      });
      worker.on('error', (e) => reject(new RankError(env.rank, `control thread failed: ${e.message}`)));
      worker.on('exit', () => reject(new RankError(env.rank, 'control thread ended during the rendezvous')));
    });
    // Past the rendezvous the channel must not keep the process alive.
    worker.unref();
    const control = new Control(env, got, worker, flags, text, left);
    if (opts.heartbeatTimeoutMs !== undefined) control.heartbeatTimeoutMs = opts.heartbeatTimeoutMs;
    if (opts.lingerMs !== undefined) control.lingerMs = opts.lingerMs;
    // A control thread that ends on its own (not by close) can no longer pass failures on.
    worker.on('exit', () => {
      if (!control.closed) control.lost('the control thread ended');
    });
    return control;
  }

  /** The first failure of any rank (this one included), or null. */
  failure(): Failure | null {
    if (Atomics.load(this.flags, SLOT.state) < STATE.aborted) return null;
    const n = Atomics.load(this.flags, SLOT.textLen);
    return { rank: Atomics.load(this.flags, SLOT.failedRank), message: Buffer.from(this.text.subarray(0, n)).toString('utf8') };
  }

  /** How many other ranks have ended normally (said goodbye) while this one runs. */
  leftCount(): number {
    return Atomics.load(this.flags, SLOT.left);
  }

  /** Whether rank `q` has ended normally. */
  hasLeft(q: number): boolean {
    return q >= 0 && q < this.leftFlags.length && Atomics.load(this.leftFlags, q) !== 0;
  }

  /**
   * Throw the RankError for a failure (another rank's or this one's). The watchdog stays armed:
   * the process has `graceMs` to end (rankMain exits) or to call acknowledge(), so that cleanup
   * which blocks on the GPU (a free behind a collective that waits for a dead peer) cannot hang it.
   */
  throwIfFailed(): void {
    this.checkHeartbeat();
    const f = this.failure();
    if (!f) return;
    if (f.rank === this.env.rank) throw new RankError(f.rank, f.message);
    throw new RankError(this.env.rank, `stopped because rank ${f.rank} failed: ${f.message}`, true);
  }

  /** The control thread is gone: record this rank's failure here (nothing else will). */
  private lost(why: string): void {
    this.dead = true;
    recordFailure(this.flags, this.text, this.env.rank, `${why}: failures of other ranks can no longer reach this one`, STATE.aborted);
  }

  /** Called by every poll: the control thread's heartbeat must move within heartbeatTimeoutMs. */
  private checkHeartbeat(): void {
    if (this.closed) return;
    const beat = Atomics.load(this.flags, SLOT.beat);
    const now = performance.now();
    // After a gap in this thread's own checks (a busy main thread, or the whole process
    // suspended: then the beat may not have caught up yet), the watch starts again.
    const gap = now - this.checkedAt > 4 * HEARTBEAT_MS;
    this.checkedAt = now;
    if (beat !== this.lastBeat || gap) {
      this.lastBeat = beat;
      this.beatSeenAt = now;
    } else if (now - this.beatSeenAt > Math.max(this.heartbeatTimeoutMs, 4 * HEARTBEAT_MS)) {
      this.lost(`the control thread stopped (no heartbeat for ${Math.round(now - this.beatSeenAt)} ms)`);
    }
  }

  /**
   * This rank failed: tell every rank (waits up to `waitMs` for the message to leave). A no-op
   * when another rank's failure is what stopped this one.
   */
  fail(message: string, waitMs = 2000): void {
    if (this.closed || this.dead) return;
    const f = this.failure();
    if (f && f.rank !== this.env.rank) return;
    this.worker.postMessage({ type: 'fail', message });
    Atomics.wait(this.flags, SLOT.sent, 0, waitMs);
  }

  /**
   * After a failure: this process has finished stopping and stays (or is about to exit), so the
   * watchdog must not end it. Without this, a process that outlives a failure by `graceMs` is
   * ended with the failure's message.
   */
  acknowledge(): void {
    Atomics.store(this.flags, SLOT.ack, 1);
  }

  /**
   * Normal end: say goodbye so that no rank takes the closing socket for a failure. Rank 0 is the
   * hub of the others' goodbyes and failures, so it returns once they have all ended (at most
   * lingerMs; the control thread says when it is done).
   */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    Atomics.store(this.flags, SLOT.ack, 1);
    if (this.dead) return;
    await new Promise<void>((resolve) => {
      const limit = this.env.rank === 0 && this.env.world > 1 ? this.lingerMs : 2000;
      const t = Number.isFinite(limit) ? setTimeout(resolve, Math.min(limit, 2 ** 31 - 1)) : null; // (setTimeout's range)
      const done = () => {
        if (t) clearTimeout(t);
        resolve();
      };
      this.worker.once('exit', done);
      this.worker.on('message', (m: { type?: string }) => {
        if (m?.type === 'closed') done();
      });
      this.worker.ref(); // (unreferenced since the rendezvous: the process must live while rank 0 relays)
      this.worker.postMessage({ type: 'close' });
    });
    await this.worker.terminate();
  }
}
