import type { RingDevice } from '../core/device.js';
import { computeDelta, type AttentionKernel, type AttnParams, type BlockArgs, type RankShard } from '../core/kernel.js';
import type { BlockClass } from '../core/mask.js';
import { CpuBlock, type BlockLayout } from './block.js';

export type { RankShard, AttnParams } from '../core/kernel.js';

/** A CPU rank as a ring device: owns its shard, its two block buffers and its accumulators. */
export class CpuRankDevice implements RingDevice<CpuBlock> {
  readonly blocks: [CpuBlock, CpuBlock];
  readonly sinks: [CpuBlock, CpuBlock] | null;
  o: Float32Array;
  lse: Float32Array;
  dq: Float32Array = new Float32Array(0);
  private delta: Float32Array = new Float32Array(0);

  constructor(
    readonly rank: number,
    private shard: RankShard,
    private p: AttnParams,
    private readonly kernel: AttentionKernel,
    layout: BlockLayout,
    /** Rows of this shard that are attention sinks (a prefix: positions are ascending), and the layout of sink blocks. */
    private readonly sinkRows: number,
    sinkLayout: BlockLayout | null,
    /** This rank's dK/dV outputs (shared: the rank that finishes them writes them here). */
    readonly dkOut: Float32Array,
    readonly dvOut: Float32Array,
  ) {
    this.blocks = [CpuBlock.alloc(layout), CpuBlock.alloc(layout)];
    this.sinks = sinkLayout ? [CpuBlock.alloc(sinkLayout), CpuBlock.alloc(sinkLayout)] : null;
    const rows = shard.pos.length * p.H;
    this.o = new Float32Array(rows * p.D);
    this.lse = new Float32Array(rows).fill(-Infinity);
  }

  /** Work on a new shard (another layer, another call) with the same buffers. */
  setShard(shard: RankShard, p: AttnParams): void {
    this.shard = shard;
    this.p = p;
    const rows = shard.pos.length * p.H;
    this.o = new Float32Array(rows * p.D);
    this.lse = new Float32Array(rows).fill(-Infinity);
  }

  /** Bytes this rank holds at its peak. */
  bytesHeld(): number {
    const s = this.shard;
    const arrays = [s.q, s.k, s.v, s.dO, s.pos, s.seg, this.o, this.lse, this.dq, this.delta, this.dkOut, this.dvOut];
    const blocks = [...this.blocks, ...(this.sinks ?? [])];
    return arrays.reduce((n, a) => n + (a ? a.byteLength : 0), 0) + blocks.reduce((n, b) => n + b.sab.byteLength, 0);
  }

  /** Copy shard rows [from, to) into `block`. */
  private loadRows(block: CpuBlock, from: number, to: number): void {
    const s = this.shard;
    const row = this.p.Hk * this.p.D;
    block.count = to - from;
    block.pos.set(s.pos.subarray(from, to));
    if (s.seg) block.seg.set(s.seg.subarray(from, to));
    block.k.set(s.k.subarray(from * row, to * row));
    block.v.set(s.v.subarray(from * row, to * row));
  }

  loadSinks(block: CpuBlock): void {
    this.loadRows(block, 0, this.sinkRows);
  }

  loadOwn(block: CpuBlock, withGrads: boolean): void {
    const n = this.shard.pos.length - this.sinkRows;
    this.loadRows(block, this.sinkRows, this.shard.pos.length);
    if (withGrads) {
      const len = n * this.p.Hk * this.p.D;
      block.dk.fill(0, 0, len);
      block.dv.fill(0, 0, len);
    }
  }

  private args(block: CpuBlock): BlockArgs {
    const n = block.count;
    const row = this.p.Hk * this.p.D;
    const s = this.shard;
    return {
      q: s.q,
      k: block.k.subarray(0, n * row),
      v: block.v.subarray(0, n * row),
      qPos: s.pos,
      kPos: block.pos.subarray(0, n),
      qSeg: s.seg,
      kSeg: s.seg ? block.seg.subarray(0, n) : undefined,
      Sq: s.pos.length,
      Sk: n,
      ...this.p,
    };
  }

  forward(block: CpuBlock, _cls: BlockClass): void {
    this.kernel.forward({ ...this.args(block), o: this.o, lse: this.lse });
  }

  beginBackward(): void {
    if (!this.shard.dO) throw new Error('backward needs dO');
    this.delta = computeDelta(this.o, this.shard.dO, this.shard.pos.length * this.p.H, this.p.D);
    this.dq = new Float32Array(this.o.length);
  }

  zeroGrads(block: CpuBlock): void {
    const n = block.count * this.p.Hk * this.p.D;
    block.dk.fill(0, 0, n);
    block.dv.fill(0, 0, n);
  }

  backward(block: CpuBlock, _cls: BlockClass): void {
    const a = this.args(block);
    const n = block.count * this.p.Hk * this.p.D;
    this.kernel.backward({ ...a, dO: this.shard.dO!, lse: this.lse, delta: this.delta, dq: this.dq, dk: block.dk.subarray(0, n), dv: block.dv.subarray(0, n) });
  }
}
