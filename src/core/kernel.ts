/**
 * The block attention kernel contract, shared by the C kernel, the TypeScript fallback and
 * (with device buffers) the CUDA kernels. Shapes (row-major):
 *   q, o, dO, dq : [Sq, H, D]      k, v, dk, dv : [Sk, Hk, D]      lse, delta : [Sq, H]
 * Query head h reads KV head floor(h / (H / Hk)). Masks are evaluated on global positions
 * qPos[i], kPos[j] (and segment ids qSeg[i], kSeg[j] when present), so a ring step masks a
 * shard against any KV block correctly.
 */
export interface BlockArgs {
  q: Float32Array;
  k: Float32Array;
  v: Float32Array;
  qPos: Int32Array;
  kPos: Int32Array;
  /** Segment id per local query row / key row; both or neither. */
  qSeg?: Int32Array;
  kSeg?: Int32Array;
  Sq: number;
  Sk: number;
  H: number;
  Hk: number;
  D: number;
  causal: boolean;
  /** 0 means no window. */
  window: number;
  /** Only meaningful with a window. */
  sinks: number;
  scale: number;
  /** Tile sizes; the kernel may round them. */
  blockQ?: number;
  blockK?: number;
  /** Threads the kernel may use (1 = the calling thread only). */
  threads?: number;
}

/** Forward: attention of q against this k/v block, merged in place into the running (o, lse). */
export interface ForwardArgs extends BlockArgs {
  o: Float32Array;
  /** Natural-log LSE of the scaled logits; -Infinity where a row has seen no key yet. */
  lse: Float32Array;
}

/** Backward for one block: adds into dq, dk, dv. `lse` is the final (global) LSE, `delta` = rowsum(dO * O). */
export interface BackwardArgs extends BlockArgs {
  dO: Float32Array;
  lse: Float32Array;
  delta: Float32Array;
  dq: Float32Array;
  dk: Float32Array;
  dv: Float32Array;
}

export interface AttentionKernel {
  /** e.g. 'c/avx512', 'ts'. */
  readonly name: string;
  forward(a: ForwardArgs): void;
  backward(a: BackwardArgs): void;
}

export const DEFAULT_BLOCK_Q = 64;
export const DEFAULT_BLOCK_K = 64;

/** delta[i, h] = sum_d dO[i, h, d] * O[i, h, d] (FlashAttention-2's D). */
export function computeDelta(o: Float32Array, dO: Float32Array, rows: number, D: number): Float32Array {
  const delta = new Float32Array(rows);
  for (let r = 0; r < rows; r++) {
    let s = 0;
    const off = r * D;
    for (let d = 0; d < D; d++) s += dO[off + d] * o[off + d];
    delta[r] = s;
  }
  return delta;
}

/** What one rank holds for a ring run: its shards of Q, K, V (and dO), positions and segment ids. */
export interface RankShard {
  q: Float32Array;
  k: Float32Array;
  v: Float32Array;
  dO?: Float32Array;
  pos: Int32Array;
  /** Segment id of each local row (packed documents), if any. */
  seg?: Int32Array;
}

/** Attention dimensions and mask of a ring run (window 0 = none; sinks only with a window). */
export interface AttnParams {
  H: number;
  Hk: number;
  D: number;
  scale: number;
  causal: boolean;
  window: number;
  sinks: number;
  blockQ?: number;
  blockK?: number;
  threads?: number;
}

