// Random decode problems for the GPU decode tests, shared by decode.gpu.test.ts and the 2-GPU rank
// program decode-rank.ts; their float64 reference is refDecode (tests/ref/decode64.ts).
import { roundTo, type CudaDType } from '../../src/cuda/convert.js';
import type { HostDecodeCache } from '../../src/cuda/decode.js';
import { randn } from '../helpers/check.js';
import type { RefDecodeMask, RefDecodeProblem } from '../ref/decode64.js';

export type Mask = RefDecodeMask;

/** A reference problem with the host arrays decodeAttentionCuda takes. */
export interface Problem extends RefDecodeProblem {
  q: Float32Array;
  qPos: Int32Array;
  qSeg?: Int32Array;
  caches: HostDecodeCache[];
}

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

