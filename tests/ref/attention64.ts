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

/** q [S,H,D], k/v [Sk,Hk,D] with Sk = S (global positions 0..S-1). */
export function refForward(q: ArrayLike<number>, k: ArrayLike<number>, v: ArrayLike<number>, S: number, H: number, Hk: number, D: number, m: RefMask, scale = 1 / Math.sqrt(D)): RefResult {
  const o = new Float64Array(S * H * D);
  const lse = new Float64Array(S * H).fill(-Infinity);
  const g = H / Hk;
  const s = new Float64Array(S);
  for (let h = 0; h < H; h++) {
    const kh = Math.floor(h / g);
    for (let i = 0; i < S; i++) {
      let mx = -Infinity;
      for (let j = 0; j < S; j++) {
        if (!refVisible(m, i, j)) { s[j] = -Infinity; continue; }
        let dot = 0;
        for (let d = 0; d < D; d++) dot += q[(i * H + h) * D + d] * k[(j * Hk + kh) * D + d];
        s[j] = dot * scale;
        mx = Math.max(mx, s[j]);
      }
      if (mx === -Infinity) continue;
      let sum = 0;
      for (let j = 0; j < S; j++) sum += s[j] === -Infinity ? 0 : Math.exp(s[j] - mx);
      lse[i * H + h] = mx + Math.log(sum);
      for (let j = 0; j < S; j++) {
        if (s[j] === -Infinity) continue;
        const p = Math.exp(s[j] - mx) / sum;
        for (let d = 0; d < D; d++) o[(i * H + h) * D + d] += p * v[(j * Hk + kh) * D + d];
      }
    }
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
  for (let h = 0; h < H; h++) {
    const kh = Math.floor(h / g);
    for (let i = 0; i < S; i++) {
      const L = lse[i * H + h];
      if (L === -Infinity) continue;
      let delta = 0;
      for (let d = 0; d < D; d++) delta += dO[(i * H + h) * D + d] * o[(i * H + h) * D + d];
      for (let j = 0; j < S; j++) {
        if (!refVisible(m, i, j)) continue;
        let dot = 0, dp = 0;
        for (let d = 0; d < D; d++) {
          dot += q[(i * H + h) * D + d] * k[(j * Hk + kh) * D + d];
          dp += dO[(i * H + h) * D + d] * v[(j * Hk + kh) * D + d];
        }
        const p = Math.exp(dot * scale - L);
        const ds = p * (dp - delta) * scale;
        for (let d = 0; d < D; d++) {
          dv[(j * Hk + kh) * D + d] += p * dO[(i * H + h) * D + d];
          dq[(i * H + h) * D + d] += ds * k[(j * Hk + kh) * D + d];
          dk[(j * Hk + kh) * D + d] += ds * q[(i * H + h) * D + d];
        }
      }
    }
  }
  return { dq, dk, dv, o, lse };
}
