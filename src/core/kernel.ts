import { INT32_MAX } from './errors.js';

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

/**
 * Why these block-kernel arguments cannot run (null when they can): names the argument and the
 * expected shape. Every CPU kernel (C and TypeScript) checks its arguments with it.
 */
export function checkBlockArgs(a: BlockArgs): string | null {
  const { Sq, Sk, H, Hk, D } = a;
  for (const [name, x] of [['Sq', Sq], ['Sk', Sk], ['H', H], ['Hk', Hk], ['D', D]] as const) {
    if (!Number.isInteger(x) || x < 0 || x > INT32_MAX) return `${name}: expected a non-negative int32, got ${x}`;
  }
  if (H < 1 || Hk < 1 || D < 1) return `H, Hk, D: expected positive, got ${H}, ${Hk}, ${D}`;
  if (H % Hk !== 0) return `H: expected a multiple of Hk = ${Hk}, got ${H}`;
  if (!Number.isInteger(a.window) || a.window < 0 || a.window > INT32_MAX) return `window: expected an int32 >= 0, got ${a.window}`;
  if (!Number.isInteger(a.sinks) || a.sinks < 0 || a.sinks > INT32_MAX) return `sinks: expected an int32 >= 0, got ${a.sinks}`;
  if (!Number.isFinite(a.scale)) return `scale: expected a finite number, got ${a.scale}`;
  for (const [name, x] of [['blockQ', a.blockQ], ['blockK', a.blockK], ['threads', a.threads]] as const) {
    if (x !== undefined && (!Number.isInteger(x) || x < 1 || x > INT32_MAX)) return `${name}: expected a positive integer, got ${x}`;
  }
  const len = (name: string, arr: ArrayLike<number> | undefined, n: number): string | null =>
    !arr ? `${name}: missing` : arr.length < n ? `${name}: expected at least ${n} elements, got ${arr.length}` : null;
  const checks: [string, ArrayLike<number> | undefined, number][] = [
    ['q', a.q, Sq * H * D],
    ['k', a.k, Sk * Hk * D],
    ['v', a.v, Sk * Hk * D],
    ['qPos', a.qPos, Sq],
    ['kPos', a.kPos, Sk],
  ];
  if (a.qSeg || a.kSeg) {
    if (!a.qSeg || !a.kSeg) return `${a.qSeg ? 'kSeg' : 'qSeg'}: segments must be given for both queries and keys`;
    checks.push(['qSeg', a.qSeg, Sq], ['kSeg', a.kSeg, Sk]);
  }
  const fa = a as Partial<ForwardArgs & BackwardArgs>;
  if (fa.o) checks.push(['o', fa.o, Sq * H * D]);
  if (fa.dO) {
    checks.push(['dO', fa.dO, Sq * H * D], ['lse', fa.lse, Sq * H], ['delta', fa.delta, Sq * H]);
    checks.push(['dq', fa.dq, Sq * H * D], ['dk', fa.dk, Sk * Hk * D], ['dv', fa.dv, Sk * Hk * D]);
  } else if (fa.o) {
    checks.push(['lse', fa.lse, Sq * H]);
  }
  for (const [name, arr, n] of checks) {
    const r = len(name, arr, n);
    if (r) return r;
  }
  return null;
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

