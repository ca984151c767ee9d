import { computeDelta, type AttentionKernel } from '../../src/core/kernel.js';
import { randn, rng } from '../helpers/check.js';
import type { RefMask } from '../ref/attention64.js';

/**
 * Shared by the kernel tests: a random problem over global positions 0..S-1, and a driver that
 * runs a kernel the way a ring does (query sets against key blocks, forward merged block by
 * block, then the backward per block with the final LSE) and scatters the results back.
 */
export interface Problem {
  S: number;
  H: number;
  Hk: number;
  D: number;
  mask: RefMask & { segments?: Int32Array };
  scale: number;
  q: Float32Array;
  k: Float32Array;
  v: Float32Array;
  dO: Float32Array;
}

export interface MaskOpts {
  causal?: boolean;
  window?: number;
  sinks?: number;
  /** Number of packed documents (random boundaries). */
  docs?: number;
}

export function makeProblem(seed: number, S: number, H: number, Hk: number, D: number, m: MaskOpts, scale = 1 / Math.sqrt(D)): Problem {
  const r = rng(seed);
  const mask: Problem['mask'] = { causal: m.causal, window: m.window, sinks: m.sinks };
  if (m.docs) {
    const cuts = new Set<number>();
    while (cuts.size < Math.min(m.docs - 1, S - 1)) cuts.add(1 + Math.floor(r() * (S - 1)));
    const seg = new Int32Array(S);
    for (let i = 1, id = 0; i < S; i++) seg[i] = cuts.has(i) ? ++id : id;
    mask.segments = seg;
  }
  return { S, H, Hk, D, mask, scale, q: randn(S * H * D, r), k: randn(S * Hk * D, r), v: randn(S * Hk * D, r), dO: randn(S * H * D, r) };
}

export const range = (a: number, b: number) => Int32Array.from({ length: Math.max(0, b - a) }, (_, i) => a + i);
export const stripe = (S: number, P: number, r: number) => Int32Array.from({ length: Math.ceil((S - r) / P) }, (_, i) => r + i * P);

/** Rows `idx` of x (row width w). */
export function gather(x: Float32Array, idx: Int32Array, w: number): Float32Array {
  const out = new Float32Array(idx.length * w);
  idx.forEach((p, t) => out.set(x.subarray(p * w, (p + 1) * w), t * w));
  return out;
}

function scatterAdd(dst: Float32Array, src: Float32Array, idx: Int32Array, w: number): void {
  idx.forEach((p, t) => {
    for (let d = 0; d < w; d++) dst[p * w + d] += src[t * w + d];
  });
}

export interface RunOpts {
  blockQ?: number;
  blockK?: number;
  threads?: number;
  /** Query position sets (default: all); every set runs against every key block. */
  qSets?: Int32Array[];
  kBlocks?: Int32Array[];
  backward?: boolean;
}

export interface RunResult {
  o: Float32Array;
  lse: Float32Array;
  dq: Float32Array;
  dk: Float32Array;
  dv: Float32Array;
}

/** Forward (and backward) of the whole problem, results at global positions. */
export function runKernel(kernel: AttentionKernel, p: Problem, opts: RunOpts = {}): RunResult {
  const { S, H, Hk, D } = p;
  const qSets = opts.qSets ?? [range(0, S)];
  const kBlocks = opts.kBlocks ?? [range(0, S)];
  const seg = p.mask.segments;
  const base = {
    Sk: 0, H, Hk, D, causal: !!p.mask.causal, window: p.mask.window ?? 0, sinks: p.mask.sinks ?? 0, scale: p.scale,
    blockQ: opts.blockQ, blockK: opts.blockK, threads: opts.threads,
  };
  const blocks = kBlocks.map((kb) => ({
    kPos: kb, Sk: kb.length, k: gather(p.k, kb, Hk * D), v: gather(p.v, kb, Hk * D), kSeg: seg ? Int32Array.from(kb, (x) => seg[x]) : undefined,
  }));
  const res: RunResult = {
    o: new Float32Array(S * H * D), lse: new Float32Array(S * H).fill(-Infinity),
    dq: new Float32Array(S * H * D), dk: new Float32Array(S * Hk * D), dv: new Float32Array(S * Hk * D),
  };
  for (const qs of qSets) {
    const Sq = qs.length;
    const qa = { qPos: qs, Sq, q: gather(p.q, qs, H * D), qSeg: seg ? Int32Array.from(qs, (x) => seg[x]) : undefined };
    const o = new Float32Array(Sq * H * D);
    const lse = new Float32Array(Sq * H).fill(-Infinity);
    for (const b of blocks) kernel.forward({ ...base, ...qa, ...b, o, lse });
    idxRows(qs, H).forEach((x, t) => {
      res.lse[x] = lse[t];
      res.o.set(o.subarray(t * D, (t + 1) * D), x * D);
    });
    if (opts.backward === false) continue;
    const dO = gather(p.dO, qs, H * D);
    const delta = computeDelta(o, dO, Sq * H, D);
    const dq = new Float32Array(Sq * H * D);
    for (const b of blocks) {
      const dk = new Float32Array(b.Sk * Hk * D);
      const dv = new Float32Array(b.Sk * Hk * D);
      kernel.backward({ ...base, ...qa, ...b, dO, lse, delta, dq, dk, dv });
      scatterAdd(res.dk, dk, b.kPos, Hk * D);
      scatterAdd(res.dv, dv, b.kPos, Hk * D);
    }
    scatterAdd(res.dq, dq, qs, H * D);
  }
  return res;
}

/** Indices of the [pos, head] rows of a position set. */
function idxRows(qs: Int32Array, H: number): number[] {
  const out: number[] = [];
  for (const x of qs) for (let h = 0; h < H; h++) out.push(x * H + h);
  return out;
}
