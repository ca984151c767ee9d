import { Worker } from 'node:worker_threads';
import { performance } from 'node:perf_hooks';
import { RankError } from '../core/errors.js';
import { startWorker } from '../core/worker.js';
import { flagCount } from './transport.js';
import { raiseAbort, type InjectedFailure } from './flags.js';
import { groupFlagCount } from './rank.js';
import type { GroupInit } from './group-worker.js';

export interface CpuGroupOptions {
  kernel?: 'auto' | 'c' | 'ts';
  /** URL of a program module whose `methods` the ranks can run (see group-worker.ts). */
  program?: string;
  /** Test hook: make one rank fail at a compute step. */
  fail?: InjectedFailure;
}

type FromWorker =
  | { type: 'ready'; kernel: string }
  | { type: 'result'; id: number; value: unknown }
  | { type: 'exchange'; name: string; bufs: SharedArrayBuffer[] }
  | { type: 'progress' }
  | { type: 'error'; message: string; secondary: boolean };

/**
 * A group of P CPU ranks, each a worker thread with its own state, driven by calls that every
 * rank runs together (SPMD). The ring and the collectives run between the ranks through shared
 * memory; the main thread only starts calls, hands shared buffers around and collects results.
 * Any failing rank stops every rank (the shared abort flag wakes them all), and every pending
 * and later call rejects with that rank's error.
 */
export class CpuGroup {
  readonly kernel: string;
  /** Absolute ms at which the group started: the zero of its timelines. */
  readonly runStart: number;
  /** Called once per compute step finished on any rank. */
  onProgress: (() => void) | null = null;
  private error: RankError | null = null;
  private pending = new Map<number, { results: unknown[]; left: number; resolve: (v: unknown[]) => void; reject: (e: Error) => void }>();
  private nextId = 1;

  /** Resolve as each worker's thread ends. */
  private readonly exited: Promise<void>[];

  private constructor(private readonly workers: Worker[], private readonly flags: Int32Array, kernel: string, runStart: number, exited: Promise<void>[]) {
    this.kernel = kernel;
    this.runStart = runStart;
    this.exited = exited;
  }

  get ranks(): number {
    return this.workers.length;
  }

  /** Neither failed nor closed: calls can still run. */
  get usable(): boolean {
    return !this.error && !this.closed;
  }

  /**
   * Whether the workers keep the process alive (they do from start): an idle group kept for
   * later calls is unreferenced so that a program can end while it waits.
   */
  setReferenced(on: boolean): void {
    for (const w of this.workers) {
      if (on) w.ref();
      else w.unref();
    }
  }

  static async start(ranks: number, opts: CpuGroupOptions = {}): Promise<CpuGroup> {
    const transportFlags = flagCount(ranks);
    const flagsSab = new SharedArrayBuffer(groupFlagCount(ranks, transportFlags) * 4);
    const flags = new Int32Array(flagsSab);
    const runStart = performance.timeOrigin + performance.now();
    const url = new URL('./group-worker.js', import.meta.url);
    const workers = Array.from({ length: ranks }, () => startWorker(url));
    const exited = workers.map((w) => new Promise<void>((resolve) => w.once('exit', () => resolve())));
    let group: CpuGroup | null = null;
    const exchanges = new Map<string, SharedArrayBuffer[][]>();
    const reported = new Array<boolean>(ranks).fill(false);
    let secondary = false;

    return await new Promise<CpuGroup>((resolve, reject) => {
      let ready = 0;
      let kernel = '';
      const fail = (rank: number, message: string, isSecondary = false) => {
        const g = group;
        if (isSecondary) {
          // Give the rank that failed first a moment to report its own error.
          if (!secondary) {
            secondary = true;
            setTimeout(() => fail(rank, message), 500).unref();
          }
          return;
        }
        const err = new RankError(rank, message);
        raiseAbort(flags);
        // Every rank notices the flag at its next wait and exits by itself; an idle one is told to
        // (it reads the message once any call it is in returns). terminate() is not used: ending
        // a thread inside a native call aborts the whole process.
        for (const w of workers) {
          w.postMessage({ type: 'stop' });
          w.unref();
        }
        if (g) {
          if (g.error) return;
          g.error = err;
          for (const p of g.pending.values()) p.reject(err);
          g.pending.clear();
        } else reject(err);
      };
      workers.forEach((w, r) => {
        w.on('message', (m: FromWorker) => {
          switch (m.type) {
            case 'error':
              reported[r] = true;
              return fail(r, m.message, m.secondary);
            case 'progress':
              return group?.onProgress?.();
            case 'ready':
              kernel = m.kernel;
              if (++ready === ranks) {
                group = new CpuGroup(workers, flags, kernel, runStart, exited);
                resolve(group);
              }
              return;
            case 'exchange': {
              const got = exchanges.get(m.name) ?? new Array<SharedArrayBuffer[]>(ranks);
              got[r] = m.bufs;
              exchanges.set(m.name, got);
              if (got.filter(Boolean).length === ranks) {
                exchanges.delete(m.name);
                for (const x of workers) x.postMessage({ type: 'exchanged', name: m.name, bufs: got });
              }
              return;
            }
            case 'result': {
              const p = group?.pending.get(m.id);
              if (!p) return;
              p.results[r] = m.value;
              if (--p.left === 0) {
                group!.pending.delete(m.id);
                p.resolve(p.results);
              }
            }
          }
        });
        w.on('error', (err) => fail(r, err.message));
        w.on('exit', (code) => {
          if (!reported[r] && !(group && group.closed)) fail(r, `worker exited with code ${code}`);
        });
        const init: GroupInit = {
          type: 'init',
          rank: r,
          ranks,
          flags: flagsSab,
          transportFlags,
          kernel: opts.kernel ?? 'auto',
          runStart,
          program: opts.program,
          fail: opts.fail?.rank === r ? opts.fail : undefined,
        };
        w.postMessage(init);
      });
    });
  }

  private closed = false;

  /**
   * Run `method` on every rank with its own argument; resolves to the results in rank order.
   * `transfer[r]` lists buffers moved (not copied) into rank r.
   */
  call<R>(method: string, args: unknown[], transfer?: ArrayBuffer[][]): Promise<R[]> {
    if (this.error) return Promise.reject(this.error);
    if (this.closed) return Promise.reject(new Error('the rank group is closed'));
    if (args.length !== this.ranks) throw new Error(`call '${method}': expected ${this.ranks} arguments, got ${args.length}`);
    const id = this.nextId++;
    return new Promise<R[]>((resolve, reject) => {
      this.pending.set(id, { results: new Array(this.ranks), left: this.ranks, resolve: resolve as (v: unknown[]) => void, reject });
      this.workers.forEach((w, r) => w.postMessage({ type: 'call', id, method, arg: args[r] }, transfer?.[r] ?? []));
    });
  }

  /**
   * End the workers (after the calls in flight). After a failure the ranks end by themselves
   * (see fail) once the call they are in returns; close waits for that, up to `afterFailureMs`,
   * so that a caller that exits right after the error does not end a worker inside a native call
   * (which aborts the whole process).
   */
  async close(afterFailureMs = 30_000): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (!this.error) {
      await Promise.all(this.workers.map((w) => w.terminate()));
      return;
    }
    let timer: NodeJS.Timeout | undefined;
    // (a referenced timer: it keeps the process alive while the workers wind down)
    const deadline = new Promise<void>((resolve) => (timer = setTimeout(resolve, afterFailureMs)));
    await Promise.race([Promise.all(this.exited), deadline]);
    clearTimeout(timer);
  }
}
