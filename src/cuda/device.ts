import type { RingDevice } from '../core/device.js';
import { InputError } from '../core/errors.js';
import type { BlockClass } from '../core/mask.js';
import type { CudaAttentionKernel } from './attention.js';
import type { Handle } from './bindings/driver.js';
import type { CudaContext, DeviceBuffer } from './context.js';
import { bytesOf, encode, type CudaDType } from './convert.js';

/**
 * A GPU rank as a ring device (src/core/device.ts): its shard of Q (and dO), K, V, positions and
 * segment ids in device memory, fp32 (O, LSE), dQ and its own dK/dV outputs, and two travelling
 * block buffers. Everything is enqueued on the context's (compute) stream; the transport orders
 * the communication stream against it with events, so nothing here blocks the host.
 */

export interface CudaAttnParams {
  H: number;
  Hk: number;
  D: number;
  dtype: CudaDType;
  scale: number;
  causal: boolean;
  /** 0 = none. */
  window: number;
  sinks: number;
}

/** Shape of one travelling block: values per K row, bytes per element, segment ids or not. */
export interface BlockGeom {
  row: number;
  el: number;
  segments: boolean;
}

const ALIGN = 256;
const up = (n: number) => Math.ceil(n / ALIGN) * ALIGN;

/**
 * Byte offsets of a block holding n rows: K [n, Hk, D] | V | positions | segment ids, packed for
 * n so that one message moves them all (sender and receiver both know n from the plan).
 */
export function kvOffsets(n: number, g: BlockGeom): { k: number; v: number; pos: number; seg: number; bytes: number } {
  const kv = up(n * g.row * g.el);
  const pos = 2 * kv;
  const seg = pos + up(n * 4);
  return { k: 0, v: kv, pos, seg, bytes: g.segments ? seg + up(n * 4) : seg };
}

/** A travelling KV block on the GPU; `grads` holds its fp32 dK/dV partials, [dK n rows | dV n rows]. */
export class CudaBlock {
  count = 0;
  constructor(readonly kv: DeviceBuffer, readonly grads: DeviceBuffer | null, readonly cap: number) {}
}

/** One rank's inputs: host arrays in fp32 (converted to `dtype` on upload) or already encoded. */
export interface CudaRankShard {
  q: Float32Array | Uint16Array;
  k: Float32Array | Uint16Array;
  v: Float32Array | Uint16Array;
  dO?: Float32Array | Uint16Array;
  /** Global positions of the rows, ascending. */
  pos: Int32Array;
  seg?: Int32Array;
}

/** The start and end events of the last block computed, picked up by the timeline. */
export interface ComputeMark {
  start: Handle;
  end: Handle;
  pairs?: number;
}

export class CudaRankDevice implements RingDevice<CudaBlock> {
  readonly blocks: [CudaBlock, CudaBlock];
  readonly sinks: [CudaBlock, CudaBlock] | null;
  readonly geom: BlockGeom;
  readonly rows: number;
  private readonly bufs: DeviceBuffer[] = [];
  private readonly q: DeviceBuffer;
  private readonly k: DeviceBuffer;
  private readonly v: DeviceBuffer;
  private readonly pos: DeviceBuffer;
  private readonly seg: DeviceBuffer | null;
  private dO: DeviceBuffer | null = null;
  readonly o: DeviceBuffer;
  readonly lse: DeviceBuffer;
  delta: DeviceBuffer | null = null;
  dq: DeviceBuffer | null = null;
  /** This rank's dK/dV (fp32, shard rows; sink rows first), written by the rank that finishes them. */
  dkOut: DeviceBuffer | null = null;
  dvOut: DeviceBuffer | null = null;
  /** Set by forward/backward: the events around the last block computed (for the timeline). */
  lastCompute: ComputeMark | null = null;
  /** Records an event on the compute stream (the timeline's). */
  mark: () => Handle = () => null;

  constructor(
    readonly rank: number,
    readonly ctx: CudaContext,
    private readonly kernel: CudaAttentionKernel,
    readonly p: CudaAttnParams,
    shard: CudaRankShard,
    /** Rows of this shard that are attention sinks (a prefix), rows of the largest ring block, and of all sinks. */
    readonly sinkRows: number,
    cap: number,
    sinkCap: number,
    readonly withGrads: boolean,
  ) {
    const { H, Hk, D, dtype } = p;
    const n = shard.pos.length;
    this.rows = n;
    const el = bytesOf(dtype);
    this.geom = { row: Hk * D, el, segments: !!shard.seg };
    const expect = (name: string, a: ArrayBufferView | undefined, len: number) => {
      if (!a) throw new InputError(name, `expected ${len} values for ${n} rows`);
      const got = a instanceof Uint16Array ? a.length : (a as Float32Array).length;
      if (got !== len) throw new InputError(name, `expected ${len} values (${n} rows x ${len / Math.max(1, n)}), got ${got}`);
      if (a instanceof Uint16Array && dtype === 'float32') throw new InputError(name, 'expected float32 data for dtype float32');
    };
    expect('q', shard.q, n * H * D);
    expect('k', shard.k, n * Hk * D);
    expect('v', shard.v, n * Hk * D);
    if (withGrads) expect('dO', shard.dO, n * H * D);
    if (shard.seg && shard.seg.length !== n) throw new InputError('seg', `expected ${n} segment ids, got ${shard.seg.length}`);
    const dev = (x: Float32Array | Uint16Array) => (x instanceof Uint16Array ? x : encode(x, dtype));
    this.q = this.upload(dev(shard.q));
    this.k = this.upload(dev(shard.k));
    this.v = this.upload(dev(shard.v));
    this.pos = this.upload(shard.pos);
    this.seg = shard.seg ? this.upload(shard.seg) : null;
    if (withGrads) {
      this.dO = this.upload(dev(shard.dO!));
      this.delta = this.alloc(n * H * 4);
      this.dq = this.alloc(n * H * D * 4);
      this.dkOut = this.alloc(n * Hk * D * 4);
      this.dvOut = this.alloc(n * Hk * D * 4);
    }
    this.o = this.alloc(n * H * D * 4);
    this.lse = this.alloc(n * H * 4);
    const block = (rows: number) => new CudaBlock(this.alloc(kvOffsets(rows, this.geom).bytes), withGrads ? this.alloc(2 * rows * this.geom.row * 4) : null, rows);
    this.blocks = [block(cap), block(cap)];
    this.sinks = sinkCap > 0 ? [block(sinkCap), block(sinkCap)] : null;
    this.ctx.fill32(this.o, 0, n * H * D); // (a download before any forward reads zeros)
    this.resetForward();
  }

  /**
   * New inputs for the same rows (a model's next layer, or the backward after a forward): q, k,
   * v (and dO) are copied into this device's buffers; positions and segments stay.
   */
  setInputs(shard: Pick<CudaRankShard, 'q' | 'k' | 'v' | 'dO'>): void {
    const { H, Hk, D, dtype } = this.p;
    const n = this.rows;
    const put = (name: string, dst: DeviceBuffer | null, x: Float32Array | Uint16Array | undefined, len: number) => {
      if (!x) return;
      if (!dst) throw new InputError(name, 'this ring was prepared without a backward: no dO buffer');
      if (x.length !== len) throw new InputError(name, `expected ${len} values (${n} rows x ${len / Math.max(1, n)}), got ${x.length}`);
      this.ctx.upload(dst, x instanceof Uint16Array ? x : encode(x, dtype));
    };
    put('q', this.q, shard.q, n * H * D);
    put('k', this.k, shard.k, n * Hk * D);
    put('v', this.v, shard.v, n * Hk * D);
    put('dO', this.dO, shard.dO, n * H * D);
  }

  /**
   * New inputs already on this GPU, fp32 (the model's projections): converted into this
   * device's q, k, v buffers in its dtype, on the compute stream.
   */
  setInputsDevice(q: number, k: number, v: number, convert: (src: number, dst: number, n: number) => void): void {
    const { H, Hk, D } = this.p;
    convert(q, this.q.ptr, this.rows * H * D);
    convert(k, this.k.ptr, this.rows * Hk * D);
    convert(v, this.v.ptr, this.rows * Hk * D);
  }

  private alloc(bytes: number): DeviceBuffer {
    const b = this.ctx.alloc(bytes);
    this.bufs.push(b);
    return b;
  }

  private upload(x: ArrayBufferView): DeviceBuffer {
    const b = this.alloc(x.byteLength);
    this.ctx.upload(b, x);
    return b;
  }

  /** Bytes of device memory this rank holds. */
  bytesHeld(): number {
    return this.bufs.reduce((n, b) => n + b.bytes, 0);
  }

  /** LSE = -inf before a forward (O is not read where LSE is -inf: finishForward zeroes the rows that stay so). */
  resetForward(): void {
    this.ctx.fill32(this.lse, 0xff800000, this.rows * this.p.H);
  }

  /** After a forward's last block: O = 0 on the rows that saw no key. */
  finishForward(): void {
    this.kernel.finishForward(this.o.ptr, this.lse.ptr, this.rows * this.p.H, this.p.D);
  }

  private d2d(dst: number, src: number, bytes: number): void {
    if (bytes > 0) this.ctx.check('cuMemcpyDtoDAsync_v2', this.ctx.drv.cuMemcpyDtoDAsync_v2(dst, src, bytes, this.ctx.stream));
  }

  /** Copy shard rows [from, to) into `block` (packed for their count). */
  private loadRows(block: CudaBlock, from: number, to: number): void {
    const n = to - from;
    const g = this.geom;
    const o = kvOffsets(n, g);
    const rb = g.row * g.el;
    block.count = n;
    this.d2d(block.kv.ptr + o.k, this.k.ptr + from * rb, n * rb);
    this.d2d(block.kv.ptr + o.v, this.v.ptr + from * rb, n * rb);
    this.d2d(block.kv.ptr + o.pos, this.pos.ptr + from * 4, n * 4);
    if (this.seg) this.d2d(block.kv.ptr + o.seg, this.seg.ptr + from * 4, n * 4);
  }

  loadSinks(block: CudaBlock): void {
    this.loadRows(block, 0, this.sinkRows);
  }

  loadOwn(block: CudaBlock, withGrads: boolean): void {
    this.loadRows(block, this.sinkRows, this.rows);
    if (withGrads) this.zeroGrads(block);
  }

  zeroGrads(block: CudaBlock): void {
    if (!block.grads) throw new Error('backward needs blocks with dK/dV');
    this.ctx.fill32(block.grads, 0, 2 * block.count * this.geom.row);
  }

  private args(block: CudaBlock) {
    const o = kvOffsets(block.count, this.geom);
    return {
      ...this.p,
      q: this.q.ptr,
      k: block.kv.ptr + o.k,
      v: block.kv.ptr + o.v,
      qPos: this.pos.ptr,
      kPos: block.kv.ptr + o.pos,
      qSeg: this.seg ? this.seg.ptr : undefined,
      kSeg: this.seg ? block.kv.ptr + o.seg : undefined,
      Sq: this.rows,
      Sk: block.count,
      sinks: this.p.window > 0 ? this.p.sinks : 0,
    };
  }

  forward(block: CudaBlock, _cls: BlockClass): void {
    const start = this.mark();
    this.kernel.forward({ ...this.args(block), o: this.o.ptr, lse: this.lse.ptr });
    this.lastCompute = { start, end: this.mark() };
  }

  beginBackward(): void {
    if (!this.dO || !this.delta || !this.dq) throw new Error('backward needs dO (construct the device with gradients)');
    const rows = this.rows * this.p.H;
    this.kernel.delta(this.dO.ptr, this.o.ptr, this.delta.ptr, rows, this.p.D, this.p.dtype);
    this.ctx.fill32(this.dq, 0, rows * this.p.D);
    this.ctx.fill32(this.dkOut!, 0, this.rows * this.geom.row);
    this.ctx.fill32(this.dvOut!, 0, this.rows * this.geom.row);
  }

  backward(block: CudaBlock, _cls: BlockClass): void {
    const start = this.mark();
    const n = block.count * this.geom.row;
    this.kernel.backward({
      ...this.args(block), dO: this.dO!.ptr, lse: this.lse.ptr, delta: this.delta!.ptr, dq: this.dq!.ptr,
      dk: block.grads!.ptr, dv: block.grads!.ptr + n * 4,
    });
    this.lastCompute = { start, end: this.mark() };
  }

  /** Copy results to the host (after the streams are done). */
  download(): { o: Float32Array; lse: Float32Array; dq?: Float32Array; dk?: Float32Array; dv?: Float32Array } {
    const { H, D } = this.p;
    const n = this.rows;
    const res: { o: Float32Array; lse: Float32Array; dq?: Float32Array; dk?: Float32Array; dv?: Float32Array } = {
      o: this.ctx.download(new Float32Array(n * H * D), this.o),
      lse: this.ctx.download(new Float32Array(n * H), this.lse),
    };
    if (this.withGrads) {
      res.dq = this.ctx.download(new Float32Array(n * H * D), this.dq!);
      res.dk = this.ctx.download(new Float32Array(n * this.geom.row), this.dkOut!);
      res.dv = this.ctx.download(new Float32Array(n * this.geom.row), this.dvOut!);
    }
    return res;
  }

  dispose(): void {
    for (const b of this.bufs) this.ctx.free(b);
    this.bufs.length = 0;
  }
}
