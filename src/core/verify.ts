import { visible, type MaskSpec } from './mask.js';

/**
 * Spot check of a result: recompute sampled rows in float64, straight from the definition of
 * attention, and compare. Used by `ringattn attend --verify` and `ringattn demo`; the tests use
 * their own independent reference.
 */
export interface VerifyInput {
  q: Float32Array;
  k: Float32Array;
  v: Float32Array;
  out: Float32Array;
  lse: Float32Array;
  S: number;
  H: number;
  Hk: number;
  D: number;
  scale: number;
  mask: MaskSpec;
}

export interface VerifyResult {
  rows: number;
  /** max |out - ref| / max |ref| over the sampled rows. */
  maxRelErr: number;
  /** max |lse - ref| over rows that see a key. */
  maxLseErr: number;
  /** A sampled row that sees no key must have lse = -Infinity and out = 0. */
  emptyRowsOk: boolean;
}

/** Evenly spread sample of `n` row indices in [0, S), always including the first and last. */
export function sampleRows(S: number, n: number, seed = 1): number[] {
  const rows = new Set<number>([0, S - 1]);
  let x = seed >>> 0 || 1;
  while (rows.size < Math.min(n, S)) {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
    rows.add(x % S);
  }
  return [...rows].sort((a, b) => a - b);
}

export function verifyRows(inp: VerifyInput, rows: number[]): VerifyResult {
  const { S, H, Hk, D, scale } = inp;
  const g = H / Hk;
  let num = 0;
  let den = 0;
  let lseErr = 0;
  let emptyOk = true;
  const s = new Float64Array(S);
  const ref = new Float64Array(D);
  for (const i of rows) {
    for (let h = 0; h < H; h++) {
      const kh = Math.floor(h / g);
      let mx = -Infinity;
      for (let j = 0; j < S; j++) {
        if (!visible(inp.mask, i, j)) {
          s[j] = -Infinity;
          continue;
        }
        let dot = 0;
        for (let d = 0; d < D; d++) dot += inp.q[(i * H + h) * D + d] * inp.k[(j * Hk + kh) * D + d];
        s[j] = dot * scale;
        if (s[j] > mx) mx = s[j];
      }
      const o = (i * H + h) * D;
      if (mx === -Infinity) {
        if (inp.lse[i * H + h] !== -Infinity) emptyOk = false;
        for (let d = 0; d < D; d++) if (inp.out[o + d] !== 0) emptyOk = false;
        continue;
      }
      let sum = 0;
      ref.fill(0);
      for (let j = 0; j < S; j++) {
        if (s[j] === -Infinity) continue;
        const p = Math.exp(s[j] - mx);
        sum += p;
        for (let d = 0; d < D; d++) ref[d] += p * inp.v[(j * Hk + kh) * D + d];
      }
      for (let d = 0; d < D; d++) {
        const r = ref[d] / sum;
        num = Math.max(num, Math.abs(inp.out[o + d] - r));
        den = Math.max(den, Math.abs(r));
      }
      lseErr = Math.max(lseErr, Math.abs(inp.lse[i * H + h] - (mx + Math.log(sum))));
    }
  }
  return { rows: rows.length, maxRelErr: den > 0 ? num / den : num, maxLseErr: lseErr, emptyRowsOk: emptyOk };
}
