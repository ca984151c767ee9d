/**
 * A travelling KV block in shared memory (one SharedArrayBuffer, so a neighbouring rank can pull
 * it without the owner's help). Regions, each 64-byte aligned, sized for `cap` rows:
 *   header (count) | positions | segments | K [cap, Hk, D] | V | dK | dV (backward only)
 */
export interface BlockLayout {
  cap: number;
  /** Values per row of K (Hk * D). */
  row: number;
  grads: boolean;
}

const align = (n: number) => Math.ceil(n / 64) * 64;

export function blockOffsets(l: BlockLayout) {
  const header = 0;
  const pos = 64;
  const seg = pos + align(l.cap * 4);
  const k = seg + align(l.cap * 4);
  const kv = align(l.cap * l.row * 4);
  const v = k + kv;
  const dk = v + kv;
  const dv = dk + kv;
  const end = l.grads ? dv + kv : dk;
  return { header, pos, seg, k, v, dk, dv, end };
}

export class CpuBlock {
  readonly header: Int32Array;
  readonly pos: Int32Array;
  readonly seg: Int32Array;
  readonly k: Float32Array;
  readonly v: Float32Array;
  readonly dk: Float32Array;
  readonly dv: Float32Array;
  readonly bytes: Uint8Array;

  constructor(readonly sab: SharedArrayBuffer, readonly layout: BlockLayout) {
    const o = blockOffsets(layout);
    const n = layout.cap * layout.row;
    this.bytes = new Uint8Array(sab);
    this.header = new Int32Array(sab, o.header, 16);
    this.pos = new Int32Array(sab, o.pos, layout.cap);
    this.seg = new Int32Array(sab, o.seg, layout.cap);
    this.k = new Float32Array(sab, o.k, n);
    this.v = new Float32Array(sab, o.v, n);
    this.dk = layout.grads ? new Float32Array(sab, o.dk, n) : new Float32Array(0);
    this.dv = layout.grads ? new Float32Array(sab, o.dv, n) : new Float32Array(0);
  }

  static alloc(layout: BlockLayout): CpuBlock {
    return new CpuBlock(new SharedArrayBuffer(blockOffsets(layout).end), layout);
  }

  get count(): number {
    return this.header[0];
  }

  set count(n: number) {
    this.header[0] = n;
  }

  /** Byte ranges (offset, length) holding `n` rows: what a transfer must move. */
  ranges(n: number, withSegments: boolean, withGrads: boolean): [number, number][] {
    const o = blockOffsets(this.layout);
    const kv = n * this.layout.row * 4;
    const out: [number, number][] = [[o.header, 64], [o.pos, n * 4]];
    if (withSegments) out.push([o.seg, n * 4]);
    out.push([o.k, kv], [o.v, kv]);
    if (withGrads) out.push([o.dk, kv], [o.dv, kv]);
    return out.filter(([, len]) => len > 0);
  }
}
