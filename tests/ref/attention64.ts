/**
 * Independent float64 reference attention: naive, O(S^2) memory, imports nothing from src/.
 * Semantics restated from DESIGN.md so that a bug in src/core/mask.ts cannot hide itself.
 */
export interface RefMask {
  causal?: boolean;
  window?: number;
  sinks?: number;
  segments?: ArrayLike<number>;
}

export function refVisible(m: RefMask, i: number, j: number): boolean {
  if (m.segments && m.segments[i] !== m.segments[j]) return false;
  if (m.causal && j > i) return false;
  if (m.window === undefined) return true;
  if (i - j < m.window && (m.causal || j - i < m.window)) return true;
  return j < (m.sinks ?? 0);
}

export interface RefResult {
  o: Float64Array; // [S, H, D]
  lse: Float64Array; // [S, H]
}

/**
 * Head `h` of x [S, Hn, D] as contiguous float64 rows [S, D]. The loops below read these rather
 * than the strided inputs (several times faster in V8); each sum runs in the same order either way.
 */
function headRows(x: ArrayLike<number>, S: number, Hn: number, h: number, D: number): Float64Array {
  const out = new Float64Array(S * D);
  for (let i = 0; i < S; i++) for (let d = 0; d < D; d++) out[i * D + d] = x[(i * Hn + h) * D + d];
  return out;
}

/** Writes rows [S, D] back as head `h` of out [S, Hn, D]. */
function putHeadRows(rows: Float64Array, out: Float64Array, S: number, Hn: number, h: number, D: number): void {
  for (let i = 0; i < S; i++) for (let d = 0; d < D; d++) out[(i * Hn + h) * D + d] = rows[i * D + d];
}

/** sum_d a[ai + d] * b[bi + d], d ascending. */
function dot(a: Float64Array, ai: number, b: Float64Array, bi: number, D: number): number {
  let s = 0;
  for (let d = 0; d < D; d++) s += a[ai + d] * b[bi + d];
  return s;
}

/** q [S,H,D], k/v [Sk,Hk,D] with Sk = S (global positions 0..S-1). */
export function refForward(q: ArrayLike<number>, k: ArrayLike<number>, v: ArrayLike<number>, S: number, H: number, Hk: number, D: number, m: RefMask, scale = 1 / Math.sqrt(D)): RefResult {
  const o = new Float64Array(S * H * D);
  const lse = new Float64Array(S * H).fill(-Infinity);
  const g = H / Hk;
  const s = new Float64Array(S);
  for (let h = 0; h < H; h++) {
    const kh = Math.floor(h / g);
    const qh = headRows(q, S, H, h, D), kr = headRows(k, S, Hk, kh, D), vr = headRows(v, S, Hk, kh, D);
    const oh = new Float64Array(S * D);
    for (let i = 0; i < S; i++) {
      let mx = -Infinity;
      for (let j = 0; j < S; j++) {
        if (!refVisible(m, i, j)) { s[j] = -Infinity; continue; }
        s[j] = dot(qh, i * D, kr, j * D, D) * scale;
        mx = Math.max(mx, s[j]);
      }
      if (mx === -Infinity) continue;
      let sum = 0;
      for (let j = 0; j < S; j++) sum += s[j] === -Infinity ? 0 : Math.exp(s[j] - mx);
      lse[i * H + h] = mx + Math.log(sum);
      for (let j = 0; j < S; j++) {
        if (s[j] === -Infinity) continue;
        const p = Math.exp(s[j] - mx) / sum;
        for (let d = 0; d < D; d++) oh[i * D + d] += p * vr[j * D + d];
      }
    }
    putHeadRows(oh, o, S, H, h, D);
  }
  return { o, lse };
}

export interface RefGrads {
  dq: Float64Array;
  dk: Float64Array;
  dv: Float64Array;
}

/**
 * Gradients of sum(O * dO) with respect to q, k, v, in float64, with the forward (o, lse) they
 * were computed from: refForward's result exactly, so a caller that needs both calls this once.
 */
export function refBackward(q: ArrayLike<number>, k: ArrayLike<number>, v: ArrayLike<number>, dO: ArrayLike<number>, S: number, H: number, Hk: number, D: number, m: RefMask, scale = 1 / Math.sqrt(D)): RefGrads & RefResult {
  const { o, lse } = refForward(q, k, v, S, H, Hk, D, m, scale);
  const dq = new Float64Array(S * H * D);
  const dk = new Float64Array(S * Hk * D);
  const dv = new Float64Array(S * Hk * D);
  const g = H / Hk;
  for (let kh = 0; kh < Hk; kh++) {
    const kr = headRows(k, S, Hk, kh, D), vr = headRows(v, S, Hk, kh, D);
    const dkh = new Float64Array(S * D), dvh = new Float64Array(S * D);
    // the group's query heads in ascending order
    for (let h = 0; h < H; h++) {
      if (Math.floor(h / g) !== kh) continue;
      const qh = headRows(q, S, H, h, D), dOh = headRows(dO, S, H, h, D), oh = headRows(o, S, H, h, D);
      const dqh = new Float64Array(S * D);
      for (let i = 0; i < S; i++) {
        const L = lse[i * H + h];
        if (L === -Infinity) continue;
        const delta = dot(dOh, i * D, oh, i * D, D);
        for (let j = 0; j < S; j++) {
          if (!refVisible(m, i, j)) continue;
          const p = Math.exp(dot(qh, i * D, kr, j * D, D) * scale - L);
          const ds = p * (dot(dOh, i * D, vr, j * D, D) - delta) * scale;
          for (let d = 0; d < D; d++) {
            dvh[j * D + d] += p * dOh[i * D + d];
            dqh[i * D + d] += ds * kr[j * D + d];
            dkh[j * D + d] += ds * qh[i * D + d];
          }
        }
      }
      putHeadRows(dqh, dq, S, H, h, D);
    }
    putHeadRows(dkh, dk, S, Hk, kh, D);
    putHeadRows(dvh, dv, S, Hk, kh, D);
  }
  return { dq, dk, dv, o, lse };
}
