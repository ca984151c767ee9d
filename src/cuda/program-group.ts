import { deserialize, serialize } from 'node:v8';
import { RankError } from '../core/errors.js';
import type { RankContext } from '../core/group.js';
import type { CudaDType } from './convert.js';
import { CudaGroup } from './group.js';
import { CudaRank } from './rank.js';

/**
 * A rank program (e.g. src/model/program.ts) on GPUs: the same `call(method, args)` as the CPU
 * group (src/cpu/group.ts), but every process is one rank (started by `ringattn launch`,
 * torchrun or the CLI itself) and runs its own part, `args[rank]`, then every rank receives
 * every rank's result (serialized, through one NCCL all-gather), so the driver code above it
 * runs identically on every rank. A rank that fails tells the others, which stop with its error.
 */

type Methods = Record<string, (ctx: RankContext, arg: unknown) => unknown>;

export interface CudaProgramOptions {
  /** Precision of the GPU work: float32 (exact, default) or bfloat16 (tensor cores). */
  dtype?: CudaDType;
}

export class CudaProgramGroup {
  private constructor(
    readonly g: CudaGroup,
    readonly ctx: CudaRank,
    private readonly methods: Methods,
  ) {}

  get ranks(): number {
    return this.g.world;
  }

  get rank(): number {
    return this.g.rank;
  }

  get kernel(): string {
    return `cuda/${this.ctx.dtype} on ${this.g.ctx.name}`;
  }

  static async start(program: string, opts: CudaProgramOptions = {}): Promise<CudaProgramGroup> {
    const mod = (await import(program)) as { methods: Methods };
    const g = await CudaGroup.init();
    try {
      return new CudaProgramGroup(g, new CudaRank(g, opts), mod.methods);
    } catch (e) {
      g.control?.fail(e instanceof Error ? e.message : String(e));
      g.abort();
      throw e;
    }
  }

  /** Run `method` on every rank with its own argument; every rank gets all results, in rank order. */
  async call<T>(method: string, args: unknown[]): Promise<T[]> {
    const fn = this.methods[method];
    if (!fn) throw new Error(`the program has no method '${method}'`);
    try {
      const mine = await fn(this.ctx, args[this.g.rank]);
      return this.gather(mine) as T[];
    } catch (e) {
      const secondary = e instanceof RankError && e.secondary;
      const detail = e instanceof RankError ? e.detail : e instanceof Error ? e.message : String(e);
      if (!secondary) this.g.control?.fail(detail);
      this.g.abort();
      throw e;
    }
  }

  /** Every rank's value (structured-clone serialized), through the GPUs. */
  private gather(value: unknown): unknown[] {
    if (this.g.world === 1) return [value];
    const bytes = serialize(value);
    const lens = this.g.allGatherF64([bytes.length]).map((x) => x[0]);
    const max = Math.max(...lens);
    const ctx = this.g.ctx;
    const send = ctx.alloc(max);
    const recv = ctx.alloc(max * this.g.world);
    try {
      const padded = Buffer.alloc(max);
      bytes.copy(padded);
      ctx.upload(send, padded);
      this.g.allGatherDevice(send.ptr, recv.ptr, max, 'uint8');
      const all = ctx.download(Buffer.alloc(max * this.g.world), recv);
      return lens.map((n, r) => deserialize(all.subarray(r * max, r * max + n)));
    } finally {
      ctx.free(send);
      ctx.free(recv);
    }
  }

  async close(): Promise<void> {
    this.ctx.dispose();
    await this.g.close();
  }
}
