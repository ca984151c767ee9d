import { InputError } from './errors.js';
import { classifyBlock, type BlockBox, type BlockClass, type MaskSpec } from './mask.js';

/**
 * The ring schedule: a pure function of where tokens live and the mask. At step s rank r holds
 * the KV block that started on rank (r - s) mod P. Everything the executors skip comes from here
 * (as PyTorch's `_is_causal_behavior` decides per step), never from copies of the ring loop.
 *
 * Note [transfer reach]: block b is needed up to lastStep[b], the last step at which some rank
 * sees any of its keys. It is passed on only while a later step still needs it, so under a
 * sliding window a block travels just as far as the window reaches, and under contiguous causal
 * masking block b stops after P-1-b hops. In the backward its dK/dV accumulators go home from
 * the rank that holds it at lastStep[b] (for full attention that is the ring's last hop).
 */
export interface RingSchedule {
  ranks: number;
  /** compute[r][s]: what rank r's queries make of the block it holds at step s. */
  compute: BlockClass[][];
  /** lastStep[b]: the last step at which block b is needed (-1: never, not even at home). */
  lastStep: number[];
  /** send[r][s]: rank r passes its block on to rank r+1 during step s. */
  send: boolean[][];
  /** recv[r][s]: rank r receives the previous rank's block during step s (to hold at s+1). */
  recv: boolean[][];
}

export function blockAt(rank: number, step: number, ranks: number): number {
  return (((rank - step) % ranks) + ranks) % ranks;
}

/** Maximal runs of consecutive positions, with segment ranges: the boxes a shard is made of. */
export function runsOf(pos: Int32Array, segments?: Int32Array): BlockBox[] {
  const out: BlockBox[] = [];
  let start = 0;
  for (let i = 1; i <= pos.length; i++) {
    if (i === pos.length || pos[i] !== pos[i - 1] + 1) {
      if (i > start) {
        const box: BlockBox = { qLo: pos[start], qHi: pos[i - 1], kLo: pos[start], kHi: pos[i - 1] };
        if (segments) {
          let lo = Infinity, hi = -Infinity;
          for (let t = start; t < i; t++) {
            lo = Math.min(lo, segments[pos[t]]);
            hi = Math.max(hi, segments[pos[t]]);
          }
          box.qSegLo = box.kSegLo = lo;
          box.qSegHi = box.kSegHi = hi;
        }
        out.push(box);
      }
      start = i;
    }
  }
  return out;
}

/** Above this many runs a shard is classified as one box (sound, coarser: striped layouts). */
const MAX_RUNS = 16;

function boxes(pos: Int32Array, segments?: Int32Array): BlockBox[] {
  const runs = runsOf(pos, segments);
  if (runs.length <= MAX_RUNS) return runs;
  const all: BlockBox = { qLo: runs[0].qLo, qHi: runs[runs.length - 1].qHi, kLo: runs[0].kLo, kHi: runs[runs.length - 1].kHi };
  if (segments) {
    all.qSegLo = all.kSegLo = Math.min(...runs.map((r) => r.qSegLo!));
    all.qSegHi = all.kSegHi = Math.max(...runs.map((r) => r.qSegHi!));
  }
  return [all];
}

/** Classify a set of queries against a set of keys, each given as boxes. */
export function classifyShards(spec: MaskSpec, qBoxes: BlockBox[], kBoxes: BlockBox[]): BlockClass {
  let seen: BlockClass | null = null;
  for (const q of qBoxes) {
    for (const k of kBoxes) {
      const c = classifyBlock(spec, { qLo: q.qLo, qHi: q.qHi, kLo: k.kLo, kHi: k.kHi, qSegLo: q.qSegLo, qSegHi: q.qSegHi, kSegLo: k.kSegLo, kSegHi: k.kSegHi });
      if (seen === null) seen = c;
      else if (seen !== c) return 'partial';
    }
  }
  return seen ?? 'empty';
}

/**
 * The schedule of a ring whose shards hold `queryPositions` (each rank's rows) and whose travelling
 * blocks hold `keyPositions` (the same, unless sink keys stay out of the ring: then each shard's
 * rows past its sink prefix, sinkRows). A rank's queries are all its rows: a sink query sees the
 * keys after it inside a window that is not causal, on whichever block holds them.
 */
export function ringSchedule(keyPositions: Int32Array[], spec: MaskSpec, queryPositions: Int32Array[] = keyPositions): RingSchedule {
  const P = keyPositions.length;
  if (queryPositions.length !== P) throw new Error(`ringSchedule: ${queryPositions.length} query shards for ${P} key shards`);
  const kb = keyPositions.map((p) => boxes(p, spec.segments));
  const qb = queryPositions === keyPositions ? kb : queryPositions.map((p) => boxes(p, spec.segments));
  const compute: BlockClass[][] = [];
  for (let r = 0; r < P; r++) {
    compute.push([]);
    for (let s = 0; s < P; s++) compute[r].push(classifyShards(spec, qb[r], kb[blockAt(r, s, P)]));
  }
  const lastStep = Array.from({ length: P }, (_, b) => {
    let last = -1;
    for (let s = 0; s < P; s++) if (compute[(b + s) % P][s] !== 'empty') last = s;
    return last;
  });
  const send = compute.map((_, r) => Array.from({ length: P }, (_, s) => s < P - 1 && s < lastStep[blockAt(r, s, P)]));
  const recv = compute.map((_, r) => Array.from({ length: P }, (_, s) => send[(r - 1 + P) % P][s]));
  return { ranks: P, compute, lastStep, send, recv };
}

/** Number of block transfers in the forward, and the rank that holds block b at its last step. */
export function transfers(s: RingSchedule): number {
  return s.send.reduce((n, row) => n + row.filter(Boolean).length, 0);
}

export function finalHolder(s: RingSchedule, block: number): number {
  return (block + Math.max(0, s.lastStep[block])) % s.ranks;
}

/**
 * Rows of each shard at positions below sinkPos: a prefix, since positions must ascend on every
 * rank (checked here; `arg` names them in the error). Sink keys (window + sinks) go to every rank
 * once; the ring carries each shard's other rows.
 */
export function sinkRows(positions: Int32Array[], sinkPos: number, arg: string): number[] {
  return positions.map((p, r) => {
    for (let i = 1; i < p.length; i++) if (p[i] <= p[i - 1]) throw new InputError(arg, `expected ascending positions on rank ${r}`);
    let n = 0;
    while (n < p.length && p[n] < sinkPos) n++;
    return n;
  });
}
