import type { MaskSpec } from './mask.js';
import { visible } from './mask.js';

/**
 * Visible (query, key) pairs of the mask over a sequence of S tokens: the work that cannot be
 * skipped. O(S) when segments are absent or non-decreasing (packed documents), by counting for
 * each query the keys of its row that pass: the window range [i-W+1, i(+W-1)] and the sinks.
 */
export function visiblePairs(S: number, spec: MaskSpec): number {
  const seg = spec.segments;
  let sorted = true;
  if (seg) for (let i = 1; i < S; i++) if (seg[i] < seg[i - 1]) sorted = false;
  if (!sorted) {
    let n = 0;
    for (let i = 0; i < S; i++) for (let j = 0; j < S; j++) if (visible(spec, i, j)) n++;
    return n;
  }
  // Document bounds per position when segments are sorted.
  const docLo = new Int32Array(S);
  const docHi = new Int32Array(S);
  for (let i = 0, start = 0; i <= S; i++) {
    if (i === S || (seg && i > 0 && seg[i] !== seg[i - 1])) {
      for (let t = start; t < i; t++) {
        docLo[t] = start;
        docHi[t] = i - 1;
      }
      start = i;
    }
  }
  const W = spec.window;
  const sinks = W === undefined ? 0 : (spec.sinks ?? 0);
  let total = 0;
  for (let i = 0; i < S; i++) {
    const lo = docLo[i];
    const hi = spec.causal ? i : docHi[i];
    if (W === undefined) {
      total += Math.max(0, hi - lo + 1);
      continue;
    }
    const wLo = Math.max(lo, i - W + 1);
    const wHi = spec.causal ? i : Math.min(hi, i + W - 1);
    const win = Math.max(0, wHi - wLo + 1);
    // Sinks: keys in [lo, min(sinks-1, hi)] not already inside the window range.
    const sHi = Math.min(sinks - 1, hi);
    let extra = 0;
    if (sHi >= lo) {
      extra = sHi - lo + 1;
      const overlap = Math.min(sHi, wHi) - Math.max(lo, wLo) + 1;
      if (overlap > 0 && win > 0) extra -= overlap;
    }
    total += win + extra;
  }
  return total;
}

/** Forward FLOPs: 2 matmuls of 2·D FLOPs per visible pair and head (QKᵀ and PV). */
export function attentionFlops(pairs: number, heads: number, headDim: number, backward = false): number {
  const fwd = 4 * pairs * heads * headDim;
  return backward ? 2.5 * fwd : fwd;
}
