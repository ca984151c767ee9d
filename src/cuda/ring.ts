import type { Tracer } from '../core/device.js';
import { InputError, RankError } from '../core/errors.js';
import type { InputOptions } from '../core/inputs.js';
import { gatherRows, scatterRows, shardPositions, type Layout } from '../core/layout.js';
import { validateMask, type MaskSpec } from '../core/mask.js';
import { ringSchedule, sinkRows, type RingSchedule } from '../core/schedule.js';
import { shapeStr, type F32Tensor } from '../core/tensor.js';
import type { TraceEvent } from '../core/trace.js';
import { ringBackward } from '../ring/backward.js';
import { ringForward } from '../ring/forward.js';
import { cudaKernel, supported, type CudaAttentionKernel } from './attention.js';
import { NCCL_DTYPE } from './bindings/nccl.js';
import type { DeviceBuffer } from './context.js';
import type { CudaDType } from './convert.js';
import { CudaRankDevice, type CudaAttnParams, type CudaRankShard } from './device.js';
import { CudaGroup } from './group.js';
import { Timeline } from './timeline.js';
import { CudaTransport } from './transport.js';

/**
 * Ring attention on GPUs, one process per GPU (started by `ringattn launch`, torchrun, or the
 * CLI itself). `ringAttentionCuda` is the per-rank API: this process's shard in, its rows of
 * the output (and gradients) out. `CudaRing` keeps the buffers for repeated runs (benchmarks).
 * `ringAttentionCudaWhole` is the whole-tensor helper behind `ringattn attend --backend cuda`:
 * every rank reads the full inputs, takes its shard by layout, rank 0 gathers the results.
 */

export interface CudaRingOptions {
  /** Global positions held by every rank (ascending), e.g. shardPositions(S, P, 'zigzag'). */
  positions: Int32Array[];
  causal?: boolean;
  window?: number;
  sinks?: number;
  /** Document id per global position (packed sequences). */
  segments?: Int32Array;
  scale?: number;
  dtype?: CudaDType;
  H: number;
  Hk: number;
  D: number;
  /** Compute dQ, dK, dV too (the shard needs dO). */
  backward?: boolean;
}

/** Everything every rank must agree on; a pure function of positions and mask. */
export interface CudaRingPlan {
  schedule: RingSchedule;
  /** Rows each rank's travelling block carries (its shard less its sink rows). */
  counts: number[];
  /** Sink rows each rank owns (a prefix of its shard). */
  sinkRows: number[];
}

export function cudaRingPlan(positions: Int32Array[], mask: MaskSpec): CudaRingPlan {
  const sinkCounts = sinkRows(positions, mask.window !== undefined && mask.window > 0 ? (mask.sinks ?? 0) : 0, 'positions');
  const schedule = ringSchedule(positions.map((p, r) => p.subarray(sinkCounts[r])), mask, positions);
  return { schedule, counts: positions.map((p, r) => p.length - sinkCounts[r]), sinkRows: sinkCounts };
}

export interface PhaseTiming {
  /** GPU time of the phase on this rank (ms, first event to last). */
  ms: number;
  events: TraceEvent[];
}

export interface CudaRingResult {
  o: Float32Array;
  lse: Float32Array;
  dq?: Float32Array;
  dk?: Float32Array;
  dv?: Float32Array;
  events: TraceEvent[];
  forwardMs: number;
  backwardMs: number;
  bytesIn: number;
  bytesHeld: number;
  kernel: string;
}

/** One rank's ring over a fixed shard, runnable many times. */
export class CudaRing {
  readonly dev: CudaRankDevice;
  readonly net: CudaTransport;
  readonly plan: CudaRingPlan;
  readonly kernel: CudaAttentionKernel;
  private readonly timeline: Timeline;
  private readonly tracer: Tracer;
  private forwardDone = false;

  constructor(readonly g: CudaGroup, shard: CudaRankShard, readonly opts: CudaRingOptions) {
    const P = opts.positions.length;
    if (P !== g.world) throw new InputError('positions', `expected one entry per rank (${g.world}), got ${P}`);
    const mine = opts.positions[g.rank];
    if (mine.length !== shard.pos.length || mine.some((t, i) => t !== shard.pos[i])) throw new InputError('shard.pos', `expected the positions of rank ${g.rank} in positions[${g.rank}]`);
    const S = opts.positions.reduce((n, p) => Math.max(n, p.length ? p[p.length - 1] + 1 : 0), 0);
    const mask: MaskSpec = { causal: !!opts.causal, window: opts.window, sinks: opts.sinks, segments: opts.segments };
    validateMask(mask, opts.segments ? S : undefined);
    if (opts.segments && !shard.seg) shard = { ...shard, seg: gatherRows(opts.segments, 1, shard.pos) };
    const p: CudaAttnParams = {
      H: opts.H, Hk: opts.Hk, D: opts.D, dtype: opts.dtype ?? 'bfloat16', scale: opts.scale ?? 1 / Math.sqrt(opts.D),
      causal: !!opts.causal, window: opts.window ?? 0, sinks: opts.window ? (opts.sinks ?? 0) : 0,
    };
    const why = supported({ ...p, Sq: shard.pos.length, Sk: shard.pos.length });
    if (why) throw new InputError(why.slice(0, why.indexOf(':')), why.slice(why.indexOf(':') + 2));
    this.plan = cudaRingPlan(opts.positions, mask);
    const { counts, sinkRows } = this.plan;
    const sinkTotal = sinkRows.reduce((a, b) => a + b, 0);
    this.kernel = cudaKernel(g.ctx);
    this.timeline = new Timeline(g.ctx);
    this.dev = new CudaRankDevice(g.rank, g.ctx, this.kernel, p, shard, sinkRows[g.rank], Math.max(1, ...counts), sinkTotal, !!opts.backward);
    this.dev.mark = () => this.timeline.record(g.ctx.stream);
    this.net = new CudaTransport(g, this.dev, this.plan.schedule, counts, sinkRows, this.timeline);
    this.tracer = {
      now: () => 0,
      event: (e) => {
        const c = this.dev.lastCompute;
        if (e.kind === 'compute' && c) {
          this.timeline.compute(e.step, e.phase, c.start, c.end);
          this.dev.lastCompute = null;
        }
      },
    };
  }

  private phase(name: 'forward' | 'backward', body: () => void): PhaseTiming {
    const g = this.g;
    const base = this.timeline.begin(g.ctx.stream);
    g.ctx.check('cuStreamWaitEvent', g.ctx.drv.cuStreamWaitEvent(g.comm, base, 0));
    this.net.begin(name);
    body();
    this.net.finish();
    const end = this.timeline.record(g.ctx.stream);
    g.syncStream();
    g.poll();
    return { ms: this.timeline.elapsed(end), events: this.timeline.events(g.rank) };
  }

  /** The ring forward: (O, LSE) of this rank's rows, on the GPU. */
  forward(): PhaseTiming {
    this.dev.resetForward();
    const t = this.phase('forward', () => {
      ringForward(this.dev, this.net, this.plan.schedule, this.tracer, 0);
      this.dev.finishForward();
    });
    this.forwardDone = true;
    return t;
  }

  /** The ring backward (after a forward): dQ of this rank's rows, dK/dV of its keys. */
  backward(): PhaseTiming {
    if (!this.opts.backward) throw new InputError('backward', 'construct the ring with backward: true (and dO on the shard)');
    if (!this.forwardDone) throw new InputError('backward', 'run the forward first');
    return this.phase('backward', () => ringBackward(this.dev, this.net, this.plan.schedule, this.tracer, this.g.world));
  }

  download() {
    return this.dev.download();
  }

  dispose(): void {
    this.g.syncAll();
    this.net.dispose();
    this.dev.dispose();
    this.kernel.dispose();
    this.timeline.dispose();
  }
}

/** The per-rank API: this rank's shard through the ring (forward, and backward with opts.backward). */
export async function ringAttentionCuda(g: CudaGroup, shard: CudaRankShard, opts: CudaRingOptions): Promise<CudaRingResult> {
  const ring = new CudaRing(g, shard, opts);
  try {
    const f = ring.forward();
    const b = opts.backward ? ring.backward() : null;
    const out = ring.download();
    return {
      ...out,
      events: [...f.events, ...(b ? b.events.map((e) => ({ ...e, start: e.start + f.ms, end: e.end + f.ms })) : [])],
      forwardMs: f.ms,
      backwardMs: b?.ms ?? 0,
      bytesIn: ring.net.bytesIn,
      bytesHeld: ring.dev.bytesHeld(),
      kernel: ring.kernel.name({ dtype: opts.dtype ?? 'bfloat16', D: opts.D }),
    };
  } finally {
    ring.dispose();
  }
}

/** Rank 0 receives every rank's `rows x width` fp32 device array (others send theirs); rank 0 gets them in rank order. */
export function gatherToRoot(g: CudaGroup, buf: DeviceBuffer, rows: number[], width: number): Float32Array[] | null {
  g.syncStream();
  if (g.rank !== 0) {
    const bytes = rows[g.rank] * width * 4;
    if (bytes > 0) {
      g.ncclOn('ncclSend(gather)', g.comm, () => g.nccl.ncclSend(buf.ptr, bytes, NCCL_DTYPE.uint8, 0, g.ncclComm, g.comm), [0]);
      g.syncStream(g.comm);
    }
    return null;
  }
  const out: Float32Array[] = [g.ctx.download(new Float32Array(rows[0] * width), buf)];
  const tmp = g.ctx.alloc(Math.max(4, ...rows.slice(1).map((n) => n * width * 4)));
  try {
    for (let q = 1; q < g.world; q++) {
      const bytes = rows[q] * width * 4;
      if (bytes > 0) {
        g.ncclOn('ncclRecv(gather)', g.comm, () => g.nccl.ncclRecv(tmp.ptr, bytes, NCCL_DTYPE.uint8, q, g.ncclComm, g.comm), [q]);
        g.syncStream(g.comm);
      }
      out.push(g.ctx.download(new Float32Array(rows[q] * width), tmp));
    }
  } finally {
    g.ctx.free(tmp);
  }
  return out;
}

export interface WholeOptions extends Omit<InputOptions, 'allowNonfinite'> {
  devices: number;
  layout: Layout;
  dtype?: CudaDType;
}

export interface WholeResult {
  out: F32Tensor;
  lse: F32Tensor;
  dq?: F32Tensor;
  dk?: F32Tensor;
  dv?: F32Tensor;
  stats: { kernel: string; forwardMs: number; backwardMs: number; overlap: number; devices: number };
}

/**
 * Inside a launched rank (RANK/WORLD_SIZE set): whole tensors in, this rank's shard by `layout`
 * through the ring, the results gathered on rank 0 (null on the other ranks). Any rank's
 * failure ends every rank with its error.
 */
export async function ringAttentionCudaWhole(q: F32Tensor, k: F32Tensor, v: F32Tensor, opts: WholeOptions): Promise<WholeResult | null> {
  const batched = q.shape.length === 4;
  const [B, S, H, D] = batched ? q.shape : [1, ...q.shape];
  const Hk = k.shape[batched ? 2 : 1];
  if (k.shape.length !== q.shape.length || k.shape[batched ? 1 : 0] !== S || k.shape[batched ? 3 : 2] !== D || H % Hk !== 0) {
    throw new InputError('k', `expected [${batched ? `${B}, ` : ''}${S}, Hk, ${D}] with Hk dividing ${H}, got ${shapeStr(k.shape)}`);
  }
  const g = await CudaGroup.init();
  try {
    if (g.world !== opts.devices) throw new InputError('--devices', `expected ${g.world} (the ranks launched), got ${opts.devices}`);
    const positions = shardPositions(S, g.world, opts.layout);
    const mine = positions[g.rank];
    const rowsPer = positions.map((p) => p.length);
    const lead = batched ? [B] : [];
    const full = (shape: number[]): F32Tensor => ({ dtype: 'float32', shape, data: new Float32Array(shape.reduce((a, b) => a * b, 1)) });
    const res: WholeResult | null = g.rank === 0 ? { out: full([...lead, S, H, D]), lse: full([...lead, S, H]), stats: { kernel: '', forwardMs: 0, backwardMs: 0, overlap: 0, devices: g.world } } : null;
    if (res && opts.gradOut) {
      res.dq = full([...lead, S, H, D]);
      res.dk = full([...lead, S, Hk, D]);
      res.dv = full([...lead, S, Hk, D]);
    }
    let transfer = 0, hidden = 0;
    for (let b = 0; b < B; b++) {
      const slice = (t: F32Tensor, n: number) => t.data.subarray(b * S * n, (b + 1) * S * n);
      const shard: CudaRankShard = {
        q: gatherRows(slice(q, H * D), H * D, mine),
        k: gatherRows(slice(k, Hk * D), Hk * D, mine),
        v: gatherRows(slice(v, Hk * D), Hk * D, mine),
        dO: opts.gradOut ? gatherRows(slice(opts.gradOut, H * D), H * D, mine) : undefined,
        pos: mine,
      };
      const ring = new CudaRing(g, shard, {
        positions, causal: opts.causal, window: opts.window, sinks: opts.sinks, segments: opts.segments, scale: opts.scale,
        dtype: opts.dtype, H, Hk, D, backward: !!opts.gradOut,
      });
      try {
        const f = ring.forward();
        const bw = opts.gradOut ? ring.backward() : null;
        for (const ev of [...f.events, ...(bw?.events ?? [])]) {
          if (ev.kind !== 'transfer') continue;
          transfer += ev.end - ev.start;
          for (const c of [...f.events, ...(bw?.events ?? [])]) if (c.kind === 'compute' && c.phase === ev.phase) hidden += Math.max(0, Math.min(ev.end, c.end) - Math.max(ev.start, c.start));
        }
        const dev = ring.dev;
        const parts: [DeviceBuffer, number, F32Tensor | undefined][] = [[dev.o, H * D, res?.out], [dev.lse, H, res?.lse]];
        if (opts.gradOut) parts.push([dev.dq!, H * D, res?.dq], [dev.dkOut!, Hk * D, res?.dk], [dev.dvOut!, Hk * D, res?.dv]);
        for (const [buf, width, into] of parts) {
          const shards = gatherToRoot(g, buf, rowsPer, width);
          if (shards && into) shards.forEach((s, r) => scatterRows(slice(into, width), width, positions[r], s));
        }
        if (res) {
          res.stats.kernel = ring.kernel.name({ dtype: opts.dtype ?? 'bfloat16', D });
          res.stats.forwardMs += g.rank === 0 ? f.ms : 0;
          res.stats.backwardMs += bw?.ms ?? 0;
        }
      } finally {
        ring.dispose();
      }
    }
    const all = g.allGatherF64([transfer, hidden]);
    if (res) {
      const t = all.reduce((s, x) => s + x[0], 0);
      res.stats.overlap = t > 0 ? all.reduce((s, x) => s + x[1], 0) / t : 1;
    }
    await g.close();
    return res;
  } catch (e) {
    const detail = e instanceof RankError ? e.detail : e instanceof Error ? e.message : String(e);
    if (!(e instanceof RankError && e.secondary)) g.control?.fail(detail);
    g.abort();
    throw e instanceof RankError ? e : new RankError(g.rank, detail);
  }
}
