/**
 * Independent float64 reference decode attention: a few query tokens per sequence against that
 * sequence's cache rows, which may hold any positions (gaps, repeats, any order) and segment ids,
 * merged into a running (o, lse). Imports nothing from src/; the visibility is refVisible's
 * (attention64.ts), on the rows' global positions. Shared by the CPU decode tests and the GPU ones
 * (tests/cuda/decode.gpu.test.ts, decode-rank.ts).
 */
import { refVisible, type RefMask } from './attention64.js';

export interface RefDecodeMask {
  causal: boolean;
  /** 0 or absent: no window. */
  window?: number;
  sinks?: number;
}

/** One sequence's cache rows: k, v [n, Hk, D], their global positions and segment ids [n]. */
export interface RefDecodeCache {
  k: ArrayLike<number>;
  v: ArrayLike<number>;
  pos: ArrayLike<number>;
  seg?: ArrayLike<number>;
  /** Rows in use (default pos.length). */
  n?: number;
}

export interface RefDecodeProblem {
  B: number;
  Sq: number;
  H: number;
  Hk: number;
  D: number;
  mask: RefDecodeMask;
  q: ArrayLike<number>; // [B, Sq, H, D]
  qPos: ArrayLike<number>; // [B, Sq]
  qSeg?: ArrayLike<number>; // [B, Sq]; given for the queries and every cache, or for none
  caches: RefDecodeCache[];
  scale: number;
}

/**
 * For every (sequence, query, head): the softmax over the visible cache rows, in float64, then
 * merged into the running (o0, lse0) (a row that sees nothing keeps them; absent: fresh 0 and
 * -inf). Returns new arrays.
 */
export function refDecode(p: RefDecodeProblem, o0?: ArrayLike<number>, lse0?: ArrayLike<number>): { o: Float64Array; lse: Float64Array } {
  const { B, Sq, H, Hk, D } = p;
  const G = H / Hk;
  const o = o0 ? Float64Array.from(o0) : new Float64Array(B * Sq * H * D);
  const lse = lse0 ? Float64Array.from(lse0) : new Float64Array(B * Sq * H).fill(-Infinity);
  // a key is visible when its segment is the query's and refVisible says so on the positions
  const m: RefMask = { causal: p.mask.causal, window: p.mask.window || undefined, sinks: p.mask.sinks };
  for (let b = 0; b < B; b++) {
    const c = p.caches[b];
    const n = c.n ?? c.pos.length;
    for (let i = 0; i < Sq; i++) {
      const qi = p.qPos[b * Sq + i];
      const qs = p.qSeg ? p.qSeg[b * Sq + i] : 0;
      for (let h = 0; h < H; h++) {
        const kh = Math.floor(h / G);
        const qo = ((b * Sq + i) * H + h) * D;
        const s: number[] = [];
        const rows: number[] = [];
        for (let j = 0; j < n; j++) {
          if ((c.seg ? c.seg[j] : 0) !== qs || !refVisible(m, qi, c.pos[j])) continue;
          let dot = 0;
          for (let d = 0; d < D; d++) dot += p.q[qo + d] * c.k[(j * Hk + kh) * D + d];
          s.push(dot * p.scale);
          rows.push(j);
        }
        if (rows.length === 0) continue;
        const mx = s.reduce((a, x) => Math.max(a, x), -Infinity);
        let sum = 0;
        const acc = new Float64Array(D);
        for (let x = 0; x < rows.length; x++) {
          const w = Math.exp(s[x] - mx);
          sum += w;
          for (let d = 0; d < D; d++) acc[d] += w * c.v[(rows[x] * Hk + kh) * D + d];
        }
        const blockLse = mx + Math.log(sum);
        const row = (b * Sq + i) * H + h;
        const old = lse[row];
        const mm = Math.max(old, blockLse);
        const wa = old === -Infinity ? 0 : Math.exp(old - mm), wb = Math.exp(blockLse - mm);
        for (let d = 0; d < D; d++) o[row * D + d] = (wa * o[row * D + d] + (wb * acc[d]) / sum) / (wa + wb);
        lse[row] = mm + Math.log(wa + wb);
      }
    }
  }
  return { o, lse };
}

/**
 * The size of the outputs' terms before they cancel: max over every (row, d) of
 * sum_j p_j |v_jd| merged with |o0| (refDecode on |v| and |o0|; the weights do not change). An
 * output averaged over many keys is small against its terms, and a 16-bit cache's rounding (or a
 * GPU's 16-bit P) errs in proportion to the terms, so tolerances on o are relative to this.
 */
export function refDecodeTermScale(p: RefDecodeProblem, o0?: ArrayLike<number>, lse0?: ArrayLike<number>): number {
  const abs = (x: ArrayLike<number>) => Float64Array.from(x, Math.abs);
  const { o } = refDecode({ ...p, caches: p.caches.map((c) => ({ ...c, v: abs(c.v) })) }, o0 && abs(o0), lse0);
  return o.reduce((a, x) => Math.max(a, x), 0);
}
