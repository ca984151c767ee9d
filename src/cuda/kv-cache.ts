import { InputError } from '../core/errors.js';
import type { DeviceBuffer } from './context.js';
import type { DeviceDecodeCache } from './decode.js';
import type { CudaGroup } from './group.js';
import { convertDevice, type OpDType } from './model-ops.js';

/**
 * One layer's KV cache shard on a GPU: keys (after RoPE) and values [cap, Hk·D] in the model's
 * dtype and their global positions int32 [cap], rows [0, n) in use. Rows arrive as fp32 device
 * arrays (the prefill's projections, a decoded token's upload) and are converted on the device;
 * the capacity doubles when an append does not fit (like the host cache in src/model/llama.ts),
 * so a decode longer than the prefill's reserve keeps going. The positions must ascend
 * (prompt shard, then decoded tokens), so the split-KV decode reads only the visible rows.
 */
export class DeviceKvCache {
  private k: DeviceBuffer;
  private v: DeviceBuffer;
  private pos: DeviceBuffer;
  private rows = 0;
  /** The last position cached (appends must follow it). */
  private last = -Infinity;
  private readonly el: number;

  constructor(
    /** The rank's group (its context; syncStream waits, noticing a failed peer). */
    private readonly g: Pick<CudaGroup, 'ctx' | 'syncStream'>,
    readonly dtype: OpDType,
    /** Elements per row: Hk·D. */
    readonly row: number,
    private cap: number,
  ) {
    if (!Number.isInteger(row) || row < 1) throw new InputError('row', `expected a positive integer, got ${row}`);
    this.el = dtype === 'bfloat16' ? 2 : 4;
    this.cap = Math.max(1, cap);
    [this.k, this.v, this.pos] = this.allocate(this.cap);
  }

  /** Rows in use. */
  get n(): number {
    return this.rows;
  }

  get capacity(): number {
    return this.cap;
  }

  get bytes(): number {
    return this.k.bytes + this.v.bytes + this.pos.bytes;
  }

  /** Three buffers or none: a failed allocation (out of memory) frees the ones already made. */
  private allocate(cap: number): [DeviceBuffer, DeviceBuffer, DeviceBuffer] {
    const ctx = this.g.ctx;
    const made: DeviceBuffer[] = [];
    try {
      for (const bytes of [cap * this.row * this.el, cap * this.row * this.el, cap * 4]) made.push(ctx.alloc(bytes));
    } catch (e) {
      for (const b of made) ctx.free(b);
      throw e;
    }
    return made as [DeviceBuffer, DeviceBuffer, DeviceBuffer];
  }

  /** Room for `rows` more rows: a larger allocation (double, at least 16 rows) holding the rows in use. */
  private reserve(rows: number): void {
    if (this.rows + rows <= this.cap) return;
    const cap = Math.max(16, 2 * this.cap, this.rows + rows);
    const ctx = this.g.ctx;
    const next = this.allocate(cap);
    const old = [this.k, this.v, this.pos];
    const used = [this.rows * this.row * this.el, this.rows * this.row * this.el, this.rows * 4];
    old.forEach((b, i) => {
      if (used[i]) ctx.check('cuMemcpyDtoDAsync_v2', ctx.drv.cuMemcpyDtoDAsync_v2(next[i].ptr, b.ptr, used[i], ctx.stream));
    });
    this.g.syncStream(); // the stream may still read the old buffers
    for (const b of old) ctx.free(b);
    [this.k, this.v, this.pos] = next;
    this.cap = cap;
  }

  /**
   * Append rows: keys and values fp32 [rows, Hk·D] on the device (converted on the stream) at
   * ascending positions (host), each after the last cached. The model's shard positions and
   * decode positions always ascend (the decode kernel runs with `sorted`); the check guards that
   * invariant, it is not input validation (it fails on one rank only).
   */
  append(k: number, v: number, pos: Int32Array): void {
    const rows = pos.length;
    if (rows === 0) return;
    for (let i = 0; i < rows; i++) {
      if (!(pos[i] > (i ? pos[i - 1] : this.last))) throw new InputError('pos', `expected positions ascending after ${i ? pos[i - 1] : this.last}, got ${pos[i]} at row ${i}`);
    }
    this.reserve(rows);
    const ctx = this.g.ctx;
    const off = this.rows * this.row * this.el;
    convertDevice(ctx, { src: k, dst: this.k.ptr + off, n: rows * this.row, from: 'float32', to: this.dtype });
    convertDevice(ctx, { src: v, dst: this.v.ptr + off, n: rows * this.row, from: 'float32', to: this.dtype });
    ctx.upload(this.pos, pos, this.rows * 4);
    this.rows += rows;
    this.last = pos[rows - 1];
  }

  /** The rows in use as the decode kernel's cache (sorted: positions ascend). */
  view(): DeviceDecodeCache {
    return { k: this.k.ptr, v: this.v.ptr, pos: this.pos.ptr, n: this.n, sorted: true };
  }

  /** The rows in use as fp32 host arrays with room for the capacity (the host decode's cache). */
  toHost(): { k: Float32Array; v: Float32Array; pos: Int32Array } {
    if (this.dtype !== 'float32') throw new InputError('dtype', `expected a float32 cache to bring to the host, got ${this.dtype}`);
    const ctx = this.g.ctx;
    const used = this.n * this.row;
    const k = new Float32Array(this.cap * this.row), v = new Float32Array(this.cap * this.row), pos = new Int32Array(this.cap);
    ctx.download(k.subarray(0, used), this.k);
    ctx.download(v.subarray(0, used), this.v);
    ctx.download(pos.subarray(0, this.n), this.pos);
    return { k, v, pos };
  }

  /** Free the buffers (the caller has waited for the stream). */
  dispose(): void {
    const ctx = this.g.ctx;
    for (const b of [this.k, this.v, this.pos]) ctx.free(b);
  }
}
