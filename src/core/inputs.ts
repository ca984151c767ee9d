import { check, describe, InputError, INT32_MAX } from './errors.js';
import { validateMask } from './mask.js';
import { assertFinite, numel, shapeStr, type F32Tensor } from './tensor.js';

/** The options every backend checks the same way. */
export interface InputOptions {
  causal?: boolean;
  window?: number;
  sinks?: number;
  segments?: Int32Array;
  scale?: number;
  gradOut?: F32Tensor;
  allowNonfinite?: boolean;
}

export interface Dims {
  B: number;
  S: number;
  H: number;
  Hk: number;
  D: number;
  batched: boolean;
}

/** Validate q, k, v (and dO) shapes and values; returns the dimensions. */
export function checkInputs(q: F32Tensor, k: F32Tensor, v: F32Tensor, opts: InputOptions): Dims {
  for (const [name, t] of [['q', q], ['k', k], ['v', v]] as const) {
    check(t && t.shape && (t.shape.length === 3 || t.shape.length === 4), name, `expected shape [S, H, D] or [B, S, H, D], got ${t?.shape ? shapeStr(t.shape) : String(t)}`);
    checkData(name, t);
  }
  check(q.shape.length === k.shape.length && k.shape.length === v.shape.length, 'k', `expected the same rank as q ${shapeStr(q.shape)}, got ${shapeStr(k.shape)}`);
  const batched = q.shape.length === 4;
  const [B, S, H, D] = batched ? q.shape : [1, ...q.shape];
  const [Bk, Sk, Hk, Dk] = batched ? k.shape : [1, ...k.shape];
  check(B === Bk, 'k', `expected batch ${B} like q, got ${Bk}`);
  check(S === Sk, 'k', `expected sequence length ${S} like q (self-attention over one sequence), got ${Sk}`);
  check(D === Dk, 'k', `expected head dim ${D} like q, got ${Dk}`);
  check(Hk >= 1 && H % Hk === 0, 'k', `expected KV heads dividing the ${H} query heads, got ${Hk}`);
  check(v.shape.every((s, i) => s === k.shape[i]), 'v', `expected the shape of k ${shapeStr(k.shape)}, got ${shapeStr(v.shape)}`);
  check(B >= 1 && D >= 1 && S >= 1 && H >= 1, 'q', `expected non-empty dimensions, got ${shapeStr(q.shape)}`);
  if (opts.gradOut) {
    check(opts.gradOut.shape?.length === q.shape.length && opts.gradOut.shape.every((s, i) => s === q.shape[i]), 'gradOut', `expected the shape of q ${shapeStr(q.shape)}, got ${opts.gradOut.shape ? shapeStr(opts.gradOut.shape) : String(opts.gradOut.shape)}`);
    checkData('gradOut', opts.gradOut);
  }
  validateMask({ causal: opts.causal, window: opts.window, sinks: opts.sinks, segments: opts.segments }, S);
  if (opts.scale !== undefined) check(Number.isFinite(opts.scale), 'scale', `expected a finite number, got ${opts.scale}`);
  if (!opts.allowNonfinite) {
    const qMax = assertFinite('q', q.data);
    const kMax = assertFinite('k', k.data);
    assertFinite('v', v.data);
    if (opts.gradOut) assertFinite('gradOut', opts.gradOut.data);
    // Finite inputs whose scores could leave fp32's range would give NaN, or rows that look as if
    // they saw no key, depending on the kernel: refused, with the bound that says why.
    const bound = qMax * kMax * D * Math.abs(opts.scale ?? 1 / Math.sqrt(D));
    check(bound <= MAX_SCORE, opts.scale === undefined ? 'q' : 'scale', `expected scores q·k·scale within ±${MAX_SCORE.toExponential(0)} (fp32 softmax), but max|q| ${qMax.toExponential(2)} x max|k| ${kMax.toExponential(2)} x D ${D} x scale ${Math.abs(opts.scale ?? 1 / Math.sqrt(D)).toExponential(2)} = ${bound.toExponential(2)}; scale the inputs down`);
  }
  return { B, S, H, Hk, D, batched };
}

/** Largest |score| the checks let through: fp32 holds 3.4e38, and the kernels scale scores by log2(e) and subtract maxima. */
export const MAX_SCORE = 1e30;

/** A tensor's data: a Float32Array holding exactly the elements its shape says. */
function checkData(name: string, t: F32Tensor): void {
  check(t.data instanceof Float32Array, name, `expected float32 data (a Float32Array), got ${describe(t.data)}`);
  const n = numel(t.shape);
  check(t.data.length === n, name, `expected ${n} elements for shape ${shapeStr(t.shape)}, got ${t.data.length}`);
}


// ---- decode arguments (src/cpu/decode.ts, src/cuda/decode.ts) -----------------------------------

/**
 * Most CPU ranks of one ring: a CPU rank is a worker thread of this process (~25 MB of its own
 * before any data), so 513 of them exhausted a 24 GB machine's memory. (GPU ranks are processes.)
 */
export const MAX_RANKS = 256;

/** `devices` (ranks of a ring) as a positive integer up to MAX_RANKS, else an InputError naming `name`. */
export function checkRanks(name: string, x: unknown): number {
  if (typeof x !== 'number' || !Number.isInteger(x) || x < 1 || x > MAX_RANKS) {
    throw new InputError(name, `expected a positive integer up to ${MAX_RANKS} (CPU ranks of one ring), got ${String(x)}`);
  }
  return x;
}

/** Most threads one CPU kernel call may start (OpenMP with 100,000 of them crashed the process). */
export const MAX_THREADS = 1024;

/** The CPU kernel choice of an options object: 'auto', 'c' or 'ts' (or absent). */
export function checkKernelChoice(x: unknown): void {
  if (x !== undefined && x !== 'auto' && x !== 'c' && x !== 'ts') throw new InputError('kernel', `expected 'auto', 'c' or 'ts', got ${describe(x)}`);
}

/** A decimal number ('12', '-0.5', '1e6') or NaN: Number() alone also reads '0x10', '0b1', '' and ' '. */
export function parseDecimal(s: string): number {
  return /^[+-]?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?$/i.test(s.trim()) ? Number(s) : NaN;
}

/** `x` as an integer in [min, max]; an InputError naming `name` otherwise. */
export function checkInt(name: string, x: unknown, min: number, max = INT32_MAX): number {
  if (typeof x !== 'number' || !Number.isInteger(x) || x < min || x > max) {
    throw new InputError(name, `expected an integer in [${min}, ${max}], got ${String(x)}`);
  }
  return x;
}

/** An InputError naming `name` unless `arr` is given and holds at least `n` elements (`what`: their shape). */
export function checkAtLeast(name: string, arr: ArrayLike<number> | undefined, n: number, what: string): void {
  if (!arr) throw new InputError(name, `missing (expected ${what})`);
  if (arr.length < n) throw new InputError(name, `expected at least ${n} elements (${what}), got ${arr.length}`);
}

/** The decode arguments that every decode entry point checks first, the same way. */
export interface DecodeHeadArgs {
  caches: readonly unknown[];
  H: number;
  Hk: number;
  D: number;
  /** 0 or absent: no window. */
  window?: number;
  /** Only meaningful with a window. */
  sinks?: number;
  /** Default 1/sqrt(D). */
  scale?: number;
}

/**
 * A decode call's arguments as the CPU (src/cpu/decode.ts) and GPU (src/cuda/decode.ts) entry
 * points share them; `C` is the entry point's cache type.
 */
export interface DecodeCallArgs<C> extends DecodeHeadArgs {
  /** [B, Sq, H, D] fp32. */
  q: Float32Array;
  /** [B, Sq] global positions of the query tokens. */
  qPos: Int32Array;
  qSeg?: Int32Array;
  /** One cache per sequence (B = caches.length); lengths may differ, 0 included. */
  caches: C[];
  causal: boolean;
  /** Running results [B, Sq, H, D] and [B, Sq, H], merged in place; fresh (0, -Infinity) when absent. */
  o?: Float32Array;
  lse?: Float32Array;
  /**
   * true: every cache's positions are non-decreasing (a cache appended in token order), so only the
   * visible rows are read; false: every row is read and masked; absent: checked per sequence.
   */
  kvSorted?: boolean;
}

export interface DecodeHeads {
  /** Sequences: caches.length. */
  B: number;
  H: number;
  Hk: number;
  D: number;
  /** 0: no window. */
  window: number;
  /** 0 without a window (sinks only matter with one). */
  sinks: number;
  /** The given scale or 1 / sqrt(D). */
  scale: number;
}

/**
 * The first checks of the CPU and GPU decode entry points, in this order: an argument object
 * with an array of per-sequence caches; H and Hk integers in [1, maxHeads]; D (a positive integer,
 * or what `checkD` requires: it throws or returns D); Hk dividing H; window and sinks non-negative
 * integers (absent: 0); a finite scale (absent: 1 / sqrt(D)).
 */
export function checkDecodeHeads(a: DecodeHeadArgs, maxHeads = INT32_MAX, checkD: (D: unknown) => number = (D) => checkInt('D', D, 1)): DecodeHeads {
  if (!a || typeof a !== 'object') throw new InputError('args', 'expected an object');
  if (!Array.isArray(a.caches)) throw new InputError('caches', 'expected an array of per-sequence caches');
  const H = checkInt('H', a.H, 1, maxHeads), Hk = checkInt('Hk', a.Hk, 1, maxHeads), D = checkD(a.D);
  if (H % Hk !== 0) throw new InputError('H', `expected a multiple of Hk = ${Hk}, got ${H}`);
  const window = checkInt('window', a.window ?? 0, 0), sinks = checkInt('sinks', a.sinks ?? 0, 0);
  const scale = a.scale ?? 1 / Math.sqrt(D);
  if (typeof scale !== 'number' || !Number.isFinite(scale)) throw new InputError('scale', `expected a finite number, got ${String(scale)}`);
  return { B: a.caches.length, H, Hk, D, window, sinks: window > 0 ? sinks : 0, scale };
}

/**
 * The queries of a decode call on host arrays: qPos an Int32Array [B, Sq] with 1 <= Sq <= maxSq
 * (Sq = 1 when B = 0), q a Float32Array of at least B * Sq * H * D, finite. Returns Sq.
 */
export function checkDecodeQueries(a: { q: unknown; qPos: unknown }, h: DecodeHeads, maxSq: number): number {
  const { B, H, D } = h;
  if (!(a.qPos instanceof Int32Array)) throw new InputError('qPos', 'expected an Int32Array [B, Sq]');
  if (!(a.q instanceof Float32Array)) throw new InputError('q', 'expected a Float32Array [B, Sq, H, D]');
  const Sq = B === 0 ? 1 : a.qPos.length / B;
  if (B > 0 && (!Number.isInteger(Sq) || Sq < 1 || Sq > maxSq)) {
    throw new InputError('qPos', `expected [B = ${B}, Sq] with 1 <= Sq <= ${maxSq}, got ${a.qPos.length} elements`);
  }
  checkAtLeast('q', a.q, B * Sq * H * D, `[B = ${B}, Sq = ${Sq}, H = ${H}, D = ${D}]`);
  // The queries are few: a NaN among them is refused here. The caches are the memory-bound part a
  // decode step reads once; they are not scanned (a NaN there makes NaN the rows that see it).
  for (let i = 0; i < B * Sq * H * D; i++) {
    if (!Number.isFinite(a.q[i])) throw new InputError('q', `element ${i} is ${a.q[i]}; expected finite queries`);
  }
  return Sq;
}

/**
 * The rows of cache `b` on host arrays (its k, v and pos types checked by the caller): n (default
 * pos.length) within pos, k and v of at least n * Hk * D elements, seg of at least n exactly when
 * the queries have segments (`segs`). Returns n.
 */
export function checkDecodeCacheRows(
  b: number,
  c: { k: ArrayLike<number>; v: ArrayLike<number>; pos: Int32Array; seg?: ArrayLike<number>; n?: number },
  h: DecodeHeads,
  segs: boolean,
): number {
  const tag = `caches[${b}]`, { Hk, D } = h;
  const n = checkInt(`${tag}.n`, c.n ?? c.pos.length, 0, Math.min(c.pos.length, INT32_MAX));
  checkAtLeast(`${tag}.k`, c.k, n * Hk * D, `[n = ${n}, Hk = ${Hk}, D = ${D}]`);
  checkAtLeast(`${tag}.v`, c.v, n * Hk * D, `[n = ${n}, Hk = ${Hk}, D = ${D}]`);
  if (segs !== (c.seg !== undefined)) throw new InputError(segs ? `${tag}.seg` : 'qSeg', 'segments must be given for the queries and every cache, or for none');
  if (c.seg) checkAtLeast(`${tag}.seg`, c.seg, n, `[n = ${n}]`);
  return n;
}

/** The running (o, lse) of a decode call: at least [B, Sq, H, D] and [B, Sq, H] elements. */
export function checkDecodeOut(o: ArrayLike<number>, lse: ArrayLike<number>, h: DecodeHeads, Sq: number): void {
  const { B, H, D } = h;
  checkAtLeast('o', o, B * Sq * H * D, `[B = ${B}, Sq = ${Sq}, H = ${H}, D = ${D}]`);
  checkAtLeast('lse', lse, B * Sq * H, `[B = ${B}, Sq = ${Sq}, H = ${H}]`);
}
