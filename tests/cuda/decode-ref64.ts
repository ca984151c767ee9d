// The float64 reference of decode attention and random decode problems, shared by
// decode.gpu.test.ts and the 2-GPU rank program decode-rank.ts.
import { roundTo, type CudaDType } from '../../src/cuda/convert.js';
import type { HostDecodeCache } from '../../src/cuda/decode.js';
import { randn } from '../helpers/check.js';

// ---- the float64 reference ----------------------------------------------------------------------

export interface Mask {
  causal: boolean;
  window?: number;
  sinks?: number;
}

export interface Problem {
  B: number;
  Sq: number;
  H: number;
  Hk: number;
  D: number;
  mask: Mask;
  q: Float32Array;
  qPos: Int32Array;
  qSeg?: Int32Array;
  caches: HostDecodeCache[];
  scale: number;
}

/** DESIGN.md's visibility of key position kj (segment ks) to query position qi (segment qs). */
export function visible(m: Mask, qi: number, kj: number, qs: number, ks: number): boolean {
  if (qs !== ks) return false;
  if (m.causal && kj > qi) return false;
  const w = m.window ?? 0;
  if (w === 0) return true;
  if (qi - kj < w && (m.causal || kj - qi < w)) return true;
  return kj < (m.sinks ?? 0);
}

/**
 * For every (sequence, query, head): the softmax over the visible cache rows, in float64, then
 * merged into the running (o, lse) (a row that sees nothing keeps them). Returns new arrays.
 */
export function reference(p: Problem, o0: Float32Array, lse0: Float32Array): { o: Float64Array; lse: Float64Array } {
  const { B, Sq, H, Hk, D } = p;
  const G = H / Hk;
  const o = Float64Array.from(o0);
  const lse = Float64Array.from(lse0);
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
          if (!visible(p.mask, qi, c.pos[j], qs, c.seg ? c.seg[j] : 0)) continue;
          let dot = 0;
          for (let d = 0; d < D; d++) dot += p.q[qo + d] * c.k[(j * Hk + kh) * D + d];
          s.push(dot * p.scale);
          rows.push(j);
        }
        if (rows.length === 0) continue;
        const mx = Math.max(...s);
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
        const m = Math.max(old, blockLse);
        const wa = old === -Infinity ? 0 : Math.exp(old - m), wb = Math.exp(blockLse - m);
        for (let d = 0; d < D; d++) o[row * D + d] = (wa * o[row * D + d] + (wb * acc[d]) / sum) / (wa + wb);
        lse[row] = m + Math.log(wa + wb);
      }
    }
  }
  return { o, lse };
}

// ---- problems -------------------------------------------------------------------------------

export type QueryPlace = 'end' | 'behind' | 'beyond';

export interface Spec {
  lens: number[];
  Sq: number;
  H: number;
  Hk: number;
  D: number;
  mask: Mask;
  /** Where the queries sit relative to the cache's positions. */
  place?: QueryPlace;
  /** Segment ids (packed documents). */
  segs?: boolean;
  /** Positions with gaps and repeats (still non-decreasing). */
  gaps?: boolean;
}

export function makeProblem(spec: Spec, dtype: CudaDType, r: () => number): Problem {
  const { lens, Sq, H, Hk, D } = spec;
  const B = lens.length;
  const caches: HostDecodeCache[] = lens.map((n) => {
    const pos = new Int32Array(n);
    let p = 0;
    for (let j = 0; j < n; j++) {
      pos[j] = p;
      p += spec.gaps ? Math.floor(r() * 3) : 1; // 0: a repeated position
    }
    const c: HostDecodeCache = { k: roundTo(randn(n * Hk * D, r), dtype), v: roundTo(randn(n * Hk * D, r), dtype), pos };
    if (spec.segs) {
      c.seg = new Int32Array(n);
      for (let j = 1, id = 0; j < n; j++) c.seg[j] = r() < 4 / n ? ++id : id;
    }
    return c;
  });
  const qPos = new Int32Array(B * Sq);
  const qSeg = spec.segs ? new Int32Array(B * Sq) : undefined;
  lens.forEach((n, b) => {
    const last = n > 0 ? caches[b].pos[n - 1] : 0;
    const start = spec.place === 'behind' ? Math.floor(last * (0.3 + 0.4 * r())) : spec.place === 'beyond' ? last + 1 + Math.floor(r() * 5) : Math.max(0, last - Sq + 1);
    for (let i = 0; i < Sq; i++) {
      qPos[b * Sq + i] = start + i;
      // mostly the last document; sometimes an earlier one
      if (qSeg) qSeg[b * Sq + i] = n === 0 ? 0 : r() < 0.75 ? caches[b].seg![n - 1] : caches[b].seg![Math.floor(r() * n)];
    }
  });
  return { B, Sq, H, Hk, D, mask: spec.mask, q: roundTo(randn(B * Sq * H * D, r), dtype), qPos, qSeg, caches, scale: 1 / Math.sqrt(D) };
}

/** Fresh (0, -inf) or a random running (o, lse) with some rows still empty. */
export function running(p: Problem, fresh: boolean, r: () => number): { o: Float32Array; lse: Float32Array } {
  const rows = p.B * p.Sq * p.H;
  if (fresh) return { o: new Float32Array(rows * p.D), lse: new Float32Array(rows).fill(-Infinity) };
  const o = randn(rows * p.D, r);
  const lse = new Float32Array(rows);
  for (let x = 0; x < rows; x++) {
    if (r() < 0.2) {
      lse[x] = -Infinity;
      o.fill(0, x * p.D, (x + 1) * p.D);
    } else {
      lse[x] = 2 + 4 * r();
    }
  }
  return { o, lse };
}

