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
        if (s[j] > mx || s[j] !== s[j]) mx = s[j]; // a NaN score (allowed non-finite input): the row is NaN
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
        num = Math.max(num, errAt(inp.out[o + d], r));
        if (Number.isFinite(r)) den = Math.max(den, Math.abs(r));
      }
      lseErr = Math.max(lseErr, errAt(inp.lse[i * H + h], mx + Math.log(sum)));
    }
  }
  return { rows: rows.length, maxRelErr: den > 0 ? num / den : num, maxLseErr: lseErr, emptyRowsOk: emptyOk };
}

/**
 * The gradient dQ of sampled rows, recomputed in float64 from the definition: with p_ij the
 * softmax of row i (its own float64 max and sum), dP_ij = dO_i · v_j and delta_i = sum_j p_ij dP_ij,
 * dq_i = scale · sum_j p_ij (dP_ij - delta_i) k_j. Each row needs only its own scores, so a sample
 * costs rows x S x H x D (dK and dV need every row: callers compare those with a single-device run).
 * Returns the norm-wise relative error ||dq - ref|| / ||ref|| over the rows: a gradient sums
 * over every key, so its largest element's error grows with S where the norm's does not.
 */
export function verifyGradRows(inp: VerifyInput & { dO: Float32Array; dq: Float32Array }, rows: number[]): { rows: number; normRelErr: number } {
  const { S, H, Hk, D, scale } = inp;
  const g = H / Hk;
  let num = 0;
  let den = 0;
  const s = new Float64Array(S);
  const dp = new Float64Array(S);
  const ref = new Float64Array(D);
  for (const i of rows) {
    for (let h = 0; h < H; h++) {
      const kh = Math.floor(h / g);
      const qo = (i * H + h) * D;
      let mx = -Infinity;
      for (let j = 0; j < S; j++) {
        if (!visible(inp.mask, i, j)) {
          s[j] = -Infinity;
          continue;
        }
        const ko = (j * Hk + kh) * D;
        let dot = 0;
        let dpj = 0;
        for (let d = 0; d < D; d++) {
          dot += inp.q[qo + d] * inp.k[ko + d];
          dpj += inp.dO[qo + d] * inp.v[ko + d];
        }
        s[j] = dot * scale;
        dp[j] = dpj;
        if (s[j] > mx || s[j] !== s[j]) mx = s[j];
      }
      ref.fill(0);
      if (mx !== -Infinity) {
        // s becomes p_ij (exp(-inf) = 0 for the keys the row does not see).
        let sum = 0;
        for (let j = 0; j < S; j++) sum += s[j] = Math.exp(s[j] - mx);
        let delta = 0;
        for (let j = 0; j < S; j++) delta += (s[j] /= sum) * dp[j];
        for (let j = 0; j < S; j++) {
          if (s[j] === 0) continue;
          const w = s[j] * (dp[j] - delta) * scale;
          const ko = (j * Hk + kh) * D;
          for (let d = 0; d < D; d++) ref[d] += w * inp.k[ko + d];
        }
      }
      for (let d = 0; d < D; d++) {
        num += errAt(inp.dq[qo + d], ref[d]) ** 2;
        if (Number.isFinite(ref[d])) den += ref[d] ** 2;
      }
    }
  }
  return { rows: rows.length, normRelErr: ratio(num, den) };
}

/**
 * |got - want|, where NaN against NaN agrees (0) and NaN against a number does not (Infinity):
 * with non-finite inputs allowed, a row that reads a NaN is NaN in the reference as in the result.
 */
function errAt(got: number, want: number): number {
  if (got === want) return 0; // (infinities included)
  if (Number.isNaN(want) || Number.isNaN(got)) return Number.isNaN(want) && Number.isNaN(got) ? 0 : Infinity;
  return Math.abs(got - want);
}

/** sqrt(num / den) from sums of squares of errors and of references (sqrt(num) where den is 0). */
function ratio(num: number, den: number): number {
  return den > 0 ? Math.sqrt(num / den) : Math.sqrt(num);
}

/** ||a - b|| / ||b|| (||a - b|| where b is all zeros), in float64. */
export function normRelErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let num = 0, den = 0;
  for (let i = 0; i < b.length; i++) {
    num += (a[i] - b[i]) ** 2;
    den += b[i] ** 2;
  }
  return ratio(num, den);
}

/**
 * The gradients dK and dV of sampled key rows in float64: dv_j = sum over the group's heads h and
 * every query i of p_ij dO_i, dk_j = scale · sum p_ij (dP_ij - delta_i) q_i. They need every
 * query's softmax statistics, which float64 would cost S² to recompute: `lseAll` comes from an
 * independent fp32 forward over all rows (not the run being checked), and delta_i = dO_i · o_i is
 * summed here in float64 from that forward's `oAll`. Returns the norm-wise relative errors.
 */
export function verifyKeyGradRows(
  inp: Omit<VerifyInput, 'out' | 'lse'> & { dO: Float32Array; dk: Float32Array; dv: Float32Array; oAll: Float32Array; lseAll: Float32Array },
  keyRows: number[],
): { rows: number; dkNormRelErr: number; dvNormRelErr: number } {
  const { S, H, Hk, D, scale } = inp;
  const g = H / Hk;
  const delta = new Float64Array(S * H);
  for (let r = 0; r < S * H; r++) {
    let x = 0;
    for (let d = 0; d < D; d++) x += inp.dO[r * D + d] * inp.oAll[r * D + d];
    delta[r] = x;
  }
  let kNum = 0, kDen = 0, vNum = 0, vDen = 0;
  const dk = new Float64Array(D);
  const dv = new Float64Array(D);
  for (const j of keyRows) {
    for (let kh = 0; kh < Hk; kh++) {
      dk.fill(0);
      dv.fill(0);
      const ko = (j * Hk + kh) * D;
      for (let h = kh * g; h < (kh + 1) * g; h++) {
        for (let i = 0; i < S; i++) {
          const lse = inp.lseAll[i * H + h];
          if (!visible(inp.mask, i, j) || lse === -Infinity) continue;
          const qo = (i * H + h) * D;
          let dot = 0, dp = 0;
          for (let d = 0; d < D; d++) {
            dot += inp.q[qo + d] * inp.k[ko + d];
            dp += inp.dO[qo + d] * inp.v[ko + d];
          }
          const p = Math.exp(dot * scale - lse);
          const w = p * (dp - delta[i * H + h]) * scale;
          for (let d = 0; d < D; d++) {
            dv[d] += p * inp.dO[qo + d];
            dk[d] += w * inp.q[qo + d];
          }
        }
      }
      for (let d = 0; d < D; d++) {
        kNum += errAt(inp.dk[ko + d], dk[d]) ** 2;
        if (Number.isFinite(dk[d])) kDen += dk[d] ** 2;
        vNum += errAt(inp.dv[ko + d], dv[d]) ** 2;
        if (Number.isFinite(dv[d])) vDen += dv[d] ** 2;
      }
    }
  }
  return { rows: keyRows.length, dkNormRelErr: ratio(kNum, kDen), dvNormRelErr: ratio(vNum, vDen) };
}
