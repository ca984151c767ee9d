/**
 * Float64 block reference with arbitrary global positions (a ring step: queries of one shard
 * against a KV block elsewhere in the sequence). Independent of src/: the mask is restated
 * from DESIGN.md. q [Sq,H,D], k/v [Sk,Hk,D]; rows that see no key get o = 0, lse = -inf.
 */
export interface BlockMask {
  causal: boolean;
  window?: number;
  sinks?: number;
}

export interface BlockInputs {
  q: ArrayLike<number>;
  k: ArrayLike<number>;
  v: ArrayLike<number>;
  qPos: ArrayLike<number>;
  kPos: ArrayLike<number>;
  qSeg?: ArrayLike<number>;
  kSeg?: ArrayLike<number>;
  Sq: number;
  Sk: number;
  H: number;
  Hk: number;
  D: number;
  scale: number;
}

function sees(m: BlockMask, a: BlockInputs, i: number, j: number): boolean {
  if (a.qSeg && a.kSeg && a.qSeg[i] !== a.kSeg[j]) return false;
  const qi = a.qPos[i], kj = a.kPos[j];
  if (m.causal && kj > qi) return false;
  if (m.window === undefined) return true;
  if (qi - kj < m.window && (m.causal || kj - qi < m.window)) return true;
  return kj < (m.sinks ?? 0);
}

/** o, lse, and with dO the gradients (using the block's own lse, i.e. the block is the whole key set). */
export function refBlock(a: BlockInputs, m: BlockMask, dO?: ArrayLike<number>) {
  const { Sq, Sk, H, Hk, D, scale } = a;
  const g = H / Hk;
  const o = new Float64Array(Sq * H * D);
  const lse = new Float64Array(Sq * H).fill(-Infinity);
  const dq = new Float64Array(Sq * H * D);
  const dk = new Float64Array(Sk * Hk * D);
  const dv = new Float64Array(Sk * Hk * D);
  const s = new Float64Array(Sk);
  for (let h = 0; h < H; h++) {
    const kh = Math.floor(h / g);
    for (let i = 0; i < Sq; i++) {
      const qo = (i * H + h) * D;
      let mx = -Infinity;
      for (let j = 0; j < Sk; j++) {
        if (!sees(m, a, i, j)) { s[j] = -Infinity; continue; }
        let dot = 0;
        for (let d = 0; d < D; d++) dot += a.q[qo + d] * a.k[(j * Hk + kh) * D + d];
        s[j] = dot * scale;
        if (s[j] > mx) mx = s[j];
      }
      if (mx === -Infinity) continue;
      let sum = 0;
      for (let j = 0; j < Sk; j++) if (s[j] !== -Infinity) sum += Math.exp(s[j] - mx);
      const L = mx + Math.log(sum);
      lse[i * H + h] = L;
      for (let j = 0; j < Sk; j++) {
        if (s[j] === -Infinity) continue;
        const p = Math.exp(s[j] - L);
        for (let d = 0; d < D; d++) o[qo + d] += p * a.v[(j * Hk + kh) * D + d];
      }
      if (!dO) continue;
      let delta = 0;
      for (let d = 0; d < D; d++) delta += dO[qo + d] * o[qo + d];
      for (let j = 0; j < Sk; j++) {
        if (s[j] === -Infinity) continue;
        const p = Math.exp(s[j] - L);
        const ko = (j * Hk + kh) * D;
        let dp = 0;
        for (let d = 0; d < D; d++) dp += dO[qo + d] * a.v[ko + d];
        const ds = p * (dp - delta) * scale;
        for (let d = 0; d < D; d++) {
          dv[ko + d] += p * dO[qo + d];
          dq[qo + d] += ds * a.k[ko + d];
          dk[ko + d] += ds * a.q[qo + d];
        }
      }
    }
  }
  return { o, lse, dq, dk, dv };
}
