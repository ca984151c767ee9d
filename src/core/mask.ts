import { describe, InputError, INT32_MAX } from './errors.js';

/**
 * The mask contract (DESIGN.md). Key j is visible to query i (global positions) when
 *   sameSegment(i, j) && (!causal || j <= i)
 *     && (window === undefined || (i - j < window && (causal || j - i < window)) || j < sinks)
 * `window` counts the most recent keys a query sees (Mistral); `sinks` keys at the start stay
 * visible to every query that the window would hide (StreamingLLM); `segments` (one id per
 * global position) keeps packed documents apart.
 */
export interface MaskSpec {
  causal?: boolean;
  window?: number;
  sinks?: number;
  /** Document id per global position (length = sequence length). */
  segments?: Int32Array;
}

export function validateMask(spec: MaskSpec, seqLen?: number): void {
  // Positions are int32 and the kernels take window and sinks as int32: larger values are refused
  // here, before any worker starts (a window that reaches past the sequence is no window).
  if (spec.window !== undefined && (!Number.isInteger(spec.window) || spec.window <= 0 || spec.window > INT32_MAX)) {
    throw new InputError('window', `expected a positive integer at most ${INT32_MAX}, got ${spec.window}`);
  }
  if (spec.sinks !== undefined && (!Number.isInteger(spec.sinks) || spec.sinks < 0 || spec.sinks > INT32_MAX)) {
    throw new InputError('sinks', `expected a non-negative integer at most ${INT32_MAX}, got ${spec.sinks}`);
  }
  if (spec.sinks !== undefined && spec.sinks > 0 && spec.window === undefined) {
    // (DESIGN.md: sinks are the keys a sliding window keeps; without a window every key is visible)
    throw new InputError('sinks', `expected together with a window (sinks are the first keys a sliding window keeps visible), got sinks = ${spec.sinks} and no window`);
  }
  if (spec.segments !== undefined && !(spec.segments instanceof Int32Array)) {
    throw new InputError('segments', `expected an Int32Array of document ids, got ${describe(spec.segments)}`);
  }
  if (spec.segments !== undefined && seqLen !== undefined && spec.segments.length !== seqLen) {
    throw new InputError('segments', `expected ${seqLen} ids (one per position), got ${spec.segments.length}`);
  }
}

/** Elementwise visibility on global positions. */
export function visible(spec: MaskSpec, i: number, j: number): boolean {
  if (spec.segments && spec.segments[i] !== spec.segments[j]) return false;
  if (spec.causal && j > i) return false;
  const w = spec.window;
  if (w === undefined) return true;
  if (i - j < w && (spec.causal || j - i < w)) return true;
  return j < (spec.sinks ?? 0);
}

export type BlockClass = 'empty' | 'full' | 'partial';

/**
 * A block of queries and keys seen as the box of their global positions
 * [qLo, qHi] x [kLo, kHi] (inclusive) and, optionally, of their segment ids.
 * Classifying the box is sound for any subset of it (striped shards): `full` means every pair
 * in the box is visible, `empty` that none is. For contiguous positions it is exact.
 */
export interface BlockBox {
  qLo: number;
  qHi: number;
  kLo: number;
  kHi: number;
  /** Segment id range of the queries and keys; omit when the mask has no segments. */
  qSegLo?: number;
  qSegHi?: number;
  kSegLo?: number;
  kSegHi?: number;
}

/** Classify the differences d = i - j in [dLo, dHi] against the allowed interval [aLo, aHi]. */
function classifyDiff(dLo: number, dHi: number, aLo: number, aHi: number): BlockClass {
  if (dHi < aLo || dLo > aHi) return 'empty';
  if (dLo >= aLo && dHi <= aHi) return 'full';
  return 'partial';
}

function combine(a: BlockClass | null, b: BlockClass | null): BlockClass {
  if (a === null) return b!;
  if (b === null) return a;
  return a === b ? a : 'partial';
}

export function classifyBlock(spec: MaskSpec, box: BlockBox): BlockClass {
  const { qLo, qHi, kLo, kHi } = box;
  if (qLo > qHi || kLo > kHi) return 'empty';
  const causal = !!spec.causal;
  const w = spec.window;
  const sinks = w === undefined ? 0 : (spec.sinks ?? 0);
  // Allowed i - j: the window (or causality alone) for ordinary keys ...
  const aLo = causal ? 0 : w === undefined ? -Infinity : -(w - 1);
  const aHi = w === undefined ? Infinity : w - 1;
  // ... and causality alone for sink keys (j < sinks), which the window never hides.
  const sLo = causal ? 0 : -Infinity;
  let sinkPart: BlockClass | null = null;
  let restPart: BlockClass | null = null;
  if (kLo < sinks) {
    const hi = Math.min(kHi, sinks - 1);
    sinkPart = classifyDiff(qLo - hi, qHi - kLo, sLo, Infinity);
  }
  if (kHi >= sinks) {
    const lo = Math.max(kLo, sinks);
    restPart = classifyDiff(qLo - kHi, qHi - lo, aLo, aHi);
  }
  const pos = combine(sinkPart, restPart);
  if (!spec.segments || box.qSegLo === undefined) return spec.segments && pos !== 'empty' ? 'partial' : pos;
  const { qSegLo, qSegHi, kSegLo, kSegHi } = box as Required<BlockBox>;
  if (qSegHi < kSegLo || kSegHi < qSegLo) return 'empty';
  if (pos === 'empty') return 'empty';
  if (qSegLo === qSegHi && kSegLo === kSegHi && qSegLo === kSegLo) return pos;
  return 'partial';
}

/** The box of a set of positions (and their segments): min/max. Positions need not be sorted. */
export function boxOf(
  spec: MaskSpec,
  qPos: Int32Array,
  kPos: Int32Array,
  q0 = 0,
  q1 = qPos.length,
  k0 = 0,
  k1 = kPos.length,
): BlockBox {
  const [qLo, qHi, qSegLo, qSegHi] = range(qPos, q0, q1, spec.segments);
  const [kLo, kHi, kSegLo, kSegHi] = range(kPos, k0, k1, spec.segments);
  return spec.segments ? { qLo, qHi, kLo, kHi, qSegLo, qSegHi, kSegLo, kSegHi } : { qLo, qHi, kLo, kHi };
}

function range(pos: Int32Array, a: number, b: number, seg?: Int32Array): [number, number, number, number] {
  let lo = Infinity;
  let hi = -Infinity;
  let sLo = Infinity;
  let sHi = -Infinity;
  for (let t = a; t < b; t++) {
    const p = pos[t];
    if (p < lo) lo = p;
    if (p > hi) hi = p;
    if (seg) {
      const s = seg[p];
      if (s < sLo) sLo = s;
      if (s > sHi) sHi = s;
    }
  }
  return [lo, hi, sLo, sHi];
}
