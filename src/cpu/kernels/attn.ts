import { classifyBlock, type BlockClass, type MaskSpec } from '../../core/mask.js';
import { throwReason } from '../../core/errors.js';
import { mergeRow } from '../../core/merge.js';
import { checkBlockArgs, DEFAULT_BLOCK_K, DEFAULT_BLOCK_Q, type AttentionKernel, type BackwardArgs, type BlockArgs, type ForwardArgs } from '../../core/kernel.js';

/**
 * The TypeScript kernel: the plain definition of block semantics, and the fallback where no C
 * compiler is found. Tiled like the C kernel (memory O(blockQ * blockK)), empty tiles skipped,
 * full tiles without mask arithmetic. Single-threaded.
 */

/** Visibility of local key j to local query i, evaluated on global positions and local segments. */
function visibleAt(a: BlockArgs, i: number, j: number): boolean {
  if (a.qSeg && a.kSeg && a.qSeg[i] !== a.kSeg[j]) return false;
  const qi = a.qPos[i];
  const kj = a.kPos[j];
  if (a.causal && kj > qi) return false;
  if (a.window <= 0) return true;
  if (qi - kj < a.window && (a.causal || kj - qi < a.window)) return true;
  return kj < a.sinks;
}

/** Classify a tile from the min/max of its positions and segments. */
export function classifyTile(a: BlockArgs, q0: number, q1: number, k0: number, k1: number): BlockClass {
  let qLo = Infinity, qHi = -Infinity, kLo = Infinity, kHi = -Infinity;
  let qSegLo = Infinity, qSegHi = -Infinity, kSegLo = Infinity, kSegHi = -Infinity;
  for (let i = q0; i < q1; i++) {
    qLo = Math.min(qLo, a.qPos[i]);
    qHi = Math.max(qHi, a.qPos[i]);
    if (a.qSeg) { qSegLo = Math.min(qSegLo, a.qSeg[i]); qSegHi = Math.max(qSegHi, a.qSeg[i]); }
  }
  for (let j = k0; j < k1; j++) {
    kLo = Math.min(kLo, a.kPos[j]);
    kHi = Math.max(kHi, a.kPos[j]);
    if (a.kSeg) { kSegLo = Math.min(kSegLo, a.kSeg[j]); kSegHi = Math.max(kSegHi, a.kSeg[j]); }
  }
  const spec: MaskSpec = { causal: a.causal, window: a.window > 0 ? a.window : undefined, sinks: a.sinks };
  if (a.qSeg && a.kSeg) {
    spec.segments = new Int32Array(0); // presence flag: ids come from the box below
    return classifyBlock(spec, { qLo, qHi, kLo, kHi, qSegLo, qSegHi, kSegLo, kSegHi });
  }
  return classifyBlock(spec, { qLo, qHi, kLo, kHi });
}

function forward(a: ForwardArgs): void {
  throwReason(checkBlockArgs(a));
  const { Sq, Sk, H, Hk, D, scale } = a;
  const bq = a.blockQ ?? DEFAULT_BLOCK_Q;
  const bk = a.blockK ?? DEFAULT_BLOCK_K;
  const group = H / Hk;
  const s = new Float64Array(bk);
  const acc = new Float32Array(bq * D);
  const m = new Float64Array(bq);
  const l = new Float64Array(bq);
  const rowO = new Float32Array(D);
  for (let q0 = 0; q0 < Sq; q0 += bq) {
    const q1 = Math.min(Sq, q0 + bq);
    const classes: BlockClass[] = [];
    for (let k0 = 0; k0 < Sk; k0 += bk) classes.push(classifyTile(a, q0, q1, k0, Math.min(Sk, k0 + bk)));
    if (classes.every((c) => c === 'empty')) continue;
    for (let h = 0; h < H; h++) {
      const kh = Math.floor(h / group);
      acc.fill(0);
      m.fill(-Infinity);
      l.fill(0);
      for (let k0 = 0, t = 0; k0 < Sk; k0 += bk, t++) {
        const cls = classes[t];
        if (cls === 'empty') continue;
        const k1 = Math.min(Sk, k0 + bk);
        for (let i = q0; i < q1; i++) {
          const qo = (i * H + h) * D;
          const r = i - q0;
          let mx = -Infinity;
          for (let j = k0; j < k1; j++) {
            if (cls === 'partial' && !visibleAt(a, i, j)) {
              s[j - k0] = -Infinity;
              continue;
            }
            const ko = (j * Hk + kh) * D;
            let dot = 0;
            for (let d = 0; d < D; d++) dot += a.q[qo + d] * a.k[ko + d];
            const v = dot * scale;
            s[j - k0] = v;
            if (v > mx || v !== v) mx = v; // a NaN score (a NaN input) stays: its row is NaN, not empty
          }
          if (mx === -Infinity) continue;
          const mNew = Math.max(m[r], mx);
          const corr = Math.exp(m[r] - mNew);
          const ao = r * D;
          if (corr !== 1) for (let d = 0; d < D; d++) acc[ao + d] *= corr;
          let sum = 0;
          for (let j = k0; j < k1; j++) {
            const sv = s[j - k0];
            if (sv === -Infinity) continue;
            const p = Math.exp(sv - mNew);
            sum += p;
            const vo = (j * Hk + kh) * D;
            for (let d = 0; d < D; d++) acc[ao + d] += p * a.v[vo + d];
          }
          l[r] = l[r] * corr + sum;
          m[r] = mNew;
        }
      }
      for (let i = q0; i < q1; i++) {
        const r = i - q0;
        if (l[r] === 0) continue;
        const inv = 1 / l[r];
        for (let d = 0; d < D; d++) rowO[d] = acc[r * D + d] * inv;
        const row = i * H + h;
        a.lse[row] = mergeRow(a.o, row * D, D, a.lse[row], rowO, 0, m[r] + Math.log(l[r]));
      }
    }
  }
}

function backward(a: BackwardArgs): void {
  throwReason(checkBlockArgs(a));
  const { Sq, Sk, H, Hk, D, scale } = a;
  const bq = a.blockQ ?? DEFAULT_BLOCK_Q;
  const bk = a.blockK ?? DEFAULT_BLOCK_K;
  const group = H / Hk;
  const p = new Float64Array(bk);
  for (let q0 = 0; q0 < Sq; q0 += bq) {
    const q1 = Math.min(Sq, q0 + bq);
    for (let k0 = 0; k0 < Sk; k0 += bk) {
      const k1 = Math.min(Sk, k0 + bk);
      const cls = classifyTile(a, q0, q1, k0, k1);
      if (cls === 'empty') continue;
      for (let h = 0; h < H; h++) {
        const kh = Math.floor(h / group);
        for (let i = q0; i < q1; i++) {
          const row = i * H + h;
          const lse = a.lse[row];
          if (lse === -Infinity) continue;
          const qo = row * D;
          for (let j = k0; j < k1; j++) {
            if (cls === 'partial' && !visibleAt(a, i, j)) {
              p[j - k0] = 0;
              continue;
            }
            const ko = (j * Hk + kh) * D;
            let dot = 0;
            for (let d = 0; d < D; d++) dot += a.q[qo + d] * a.k[ko + d];
            p[j - k0] = Math.exp(dot * scale - lse);
          }
          const delta = a.delta[row];
          for (let j = k0; j < k1; j++) {
            const pj = p[j - k0];
            if (pj === 0) continue;
            const ko = (j * Hk + kh) * D;
            let dp = 0;
            for (let d = 0; d < D; d++) {
              dp += a.dO[qo + d] * a.v[ko + d];
              a.dv[ko + d] += pj * a.dO[qo + d];
            }
            const ds = pj * (dp - delta) * scale;
            for (let d = 0; d < D; d++) {
              a.dq[qo + d] += ds * a.k[ko + d];
              a.dk[ko + d] += ds * a.q[qo + d];
            }
          }
        }
      }
    }
  }
}

export const tsKernel: AttentionKernel = { name: 'ts', forward, backward };
