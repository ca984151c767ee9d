/**
 * The decoder's pointwise and row-wise layers, fp32 in and out with float64 reductions:
 * RMSNorm, SwiGLU, token embedding, cross-entropy, and the sampling helpers of decode.
 * Every backward here writes its input gradients and accumulates (+=) parameter gradients,
 * so several micro-batches or sequence blocks can add into one gradient buffer.
 */
import { InputError } from '../core/errors.js';

/** out[rows, outDim] = x[rows, inDim] · wᵀ with w [outDim, inDim] (the nn.Linear layout). */
export type Matmul = (x: Float32Array, w: Float32Array, rows: number, inDim: number, outDim: number, out: Float32Array) => void;

function len(arr: ArrayLike<number>, n: number, arg: string, shape: string): void {
  if (arr.length !== n) throw new InputError(arg, `has ${arr.length} elements; expected ${n} for ${shape}`);
}

/** Plain TypeScript Matmul (float64 accumulation per output); the reference the native GEMM is tested against. */
export const naiveMatmul: Matmul = (x, w, rows, inDim, outDim, out) => {
  len(x, rows * inDim, 'x', `[${rows}, ${inDim}]`);
  len(w, outDim * inDim, 'w', `[${outDim}, ${inDim}]`);
  len(out, rows * outDim, 'out', `[${rows}, ${outDim}]`);
  for (let r = 0; r < rows; r++) {
    const xo = r * inDim;
    for (let o = 0; o < outDim; o++) {
      const wo = o * inDim;
      let acc = 0;
      for (let k = 0; k < inDim; k++) acc += x[xo + k] * w[wo + k];
      out[r * outDim + o] = acc;
    }
  }
};

/**
 * RMSNorm: out = x / sqrt(mean(x²) + eps) · weight, per row of `dim`. The mean of squares is
 * taken in float64. transformers' LlamaRMSNorm (and Mistral's, Qwen2's) computes in fp32,
 * rounds the normalised row back to the input dtype, then multiplies by the weight; here the
 * product is formed in float64 and rounded once, so fp32 results differ by at most an ulp or so.
 * `out` may be `x`. `saveInvRms` [rows] receives 1/sqrt(mean + eps) for the backward pass.
 */
export function rmsNorm(
  x: Float32Array,
  rows: number,
  dim: number,
  weight: Float32Array,
  eps: number,
  out: Float32Array,
  saveInvRms?: Float32Array,
): void {
  len(x, rows * dim, 'x', `[${rows}, ${dim}]`);
  len(weight, dim, 'weight', `[${dim}]`);
  len(out, rows * dim, 'out', `[${rows}, ${dim}]`);
  if (saveInvRms) len(saveInvRms, rows, 'saveInvRms', `[${rows}]`);
  for (let r = 0; r < rows; r++) {
    const o = r * dim;
    let ss = 0;
    for (let i = 0; i < dim; i++) ss += x[o + i] * x[o + i];
    const inv = 1 / Math.sqrt(ss / dim + eps);
    if (saveInvRms) saveInvRms[r] = inv;
    for (let i = 0; i < dim; i++) out[o + i] = x[o + i] * inv * weight[i];
  }
}

/**
 * RMSNorm backward. With r = invRms, y_i = w_i·x_i·r:
 *   dx_i = r·w_i·dy_i − x_i·r³/dim · Σ_j w_j·dy_j·x_j,   dweight_i += Σ_rows dy_i·x_i·r.
 * `invRms` null recomputes it (float64) from x. `dx` is written (it may alias dy).
 */
export function rmsNormBackward(
  x: Float32Array,
  rows: number,
  dim: number,
  weight: Float32Array,
  invRms: Float32Array | null,
  dy: Float32Array,
  dx: Float32Array,
  dweight: Float32Array,
  eps = 1e-6,
): void {
  len(x, rows * dim, 'x', `[${rows}, ${dim}]`);
  len(weight, dim, 'weight', `[${dim}]`);
  len(dy, rows * dim, 'dy', `[${rows}, ${dim}]`);
  len(dx, rows * dim, 'dx', `[${rows}, ${dim}]`);
  len(dweight, dim, 'dweight', `[${dim}]`);
  if (invRms) len(invRms, rows, 'invRms', `[${rows}]`);
  for (let r = 0; r < rows; r++) {
    const o = r * dim;
    let inv: number;
    if (invRms) {
      inv = invRms[r];
    } else {
      let ss = 0;
      for (let i = 0; i < dim; i++) ss += x[o + i] * x[o + i];
      inv = 1 / Math.sqrt(ss / dim + eps);
    }
    let dot = 0;
    for (let i = 0; i < dim; i++) dot += weight[i] * dy[o + i] * x[o + i];
    const c = (dot * inv * inv * inv) / dim;
    for (let i = 0; i < dim; i++) {
      const xi = x[o + i];
      const g = dy[o + i];
      dweight[i] += g * xi * inv;
      dx[o + i] = inv * weight[i] * g - xi * c;
    }
  }
}

/** SiLU (swish): x·σ(x). */
export function silu(x: number): number {
  return x / (1 + Math.exp(-x));
}

/** out = silu(gate)·up, elementwise (`out` may be gate or up). */
export function swiglu(gate: Float32Array, up: Float32Array, out: Float32Array): void {
  len(up, gate.length, 'up', 'the shape of gate');
  len(out, gate.length, 'out', 'the shape of gate');
  for (let i = 0; i < gate.length; i++) {
    const g = gate[i];
    out[i] = (g / (1 + Math.exp(-g))) * up[i];
  }
}

/**
 * SwiGLU backward: with s = σ(g), silu'(g) = s·(1 + g·(1 − s)):
 * dgate = dy·up·silu'(g), dup = dy·silu(g). Written, not accumulated; dgate/dup may alias gate/up.
 */
export function swigluBackward(gate: Float32Array, up: Float32Array, dy: Float32Array, dgate: Float32Array, dup: Float32Array): void {
  const n = gate.length;
  len(up, n, 'up', 'the shape of gate');
  len(dy, n, 'dy', 'the shape of gate');
  len(dgate, n, 'dgate', 'the shape of gate');
  len(dup, n, 'dup', 'the shape of gate');
  for (let i = 0; i < n; i++) {
    const g = gate[i];
    const u = up[i];
    const d = dy[i];
    const s = 1 / (1 + Math.exp(-g));
    dgate[i] = d * u * s * (1 + g * (1 - s));
    dup[i] = d * g * s;
  }
}

function checkIds(ids: Int32Array, vocab: number): void {
  for (let t = 0; t < ids.length; t++) {
    const id = ids[t];
    if (id < 0 || id >= vocab) throw new InputError(`ids[${t}]`, `token id ${id} is out of range; expected 0 <= id < ${vocab} (vocab size)`);
  }
}

/** out[t] = table[ids[t]] for table [vocab, hidden]; an id outside the vocabulary names its index. */
export function embed(ids: Int32Array, table: Float32Array, hidden: number, out: Float32Array): void {
  if (!Number.isInteger(hidden) || hidden <= 0 || table.length % hidden !== 0) {
    throw new InputError('hidden', `is ${hidden}; expected a positive divisor of the table size ${table.length}`);
  }
  len(out, ids.length * hidden, 'out', `[${ids.length}, ${hidden}]`);
  checkIds(ids, table.length / hidden);
  for (let t = 0; t < ids.length; t++) out.set(table.subarray(ids[t] * hidden, (ids[t] + 1) * hidden), t * hidden);
}

/** dtable[ids[t]] += dy[t] (repeated ids accumulate). */
export function embedBackward(ids: Int32Array, dy: Float32Array, hidden: number, dtable: Float32Array): void {
  if (!Number.isInteger(hidden) || hidden <= 0 || dtable.length % hidden !== 0) {
    throw new InputError('hidden', `is ${hidden}; expected a positive divisor of the table size ${dtable.length}`);
  }
  len(dy, ids.length * hidden, 'dy', `[${ids.length}, ${hidden}]`);
  checkIds(ids, dtable.length / hidden);
  for (let t = 0; t < ids.length; t++) {
    const o = ids[t] * hidden;
    const d = t * hidden;
    for (let i = 0; i < hidden; i++) dtable[o + i] += dy[d + i];
  }
}

/** The target value that excludes a row from the loss (PyTorch's ignore_index default). */
export const IGNORE_INDEX = -100;

export interface CrossEntropyResult {
  /** Mean over counted rows (0 when no row counts). */
  loss: number;
  /** Sum over counted rows, for averaging across ranks. */
  sum: number;
  /** Rows whose target is not IGNORE_INDEX. */
  count: number;
}

/**
 * Cross-entropy of logits [rows, vocab] against targets (IGNORE_INDEX skips a row), through a
 * float64 log-sum-exp. With `dlogits`, writes d(loss)/d(logits) = (softmax − onehot)·gradScale
 * per counted row and 0 on ignored rows; gradScale defaults to 1/count (the mean). Pass
 * 1/globalCount when the mean runs over several ranks.
 */
export function crossEntropy(
  logits: Float32Array,
  rows: number,
  vocab: number,
  targets: Int32Array,
  dlogits?: Float32Array,
  opts: { gradScale?: number } = {},
): CrossEntropyResult {
  len(logits, rows * vocab, 'logits', `[${rows}, ${vocab}]`);
  len(targets, rows, 'targets', `[${rows}]`);
  if (dlogits) len(dlogits, rows * vocab, 'dlogits', `[${rows}, ${vocab}]`);
  let count = 0;
  for (let r = 0; r < rows; r++) {
    const t = targets[r];
    if (t === IGNORE_INDEX) continue;
    if (t < 0 || t >= vocab) throw new InputError(`targets[${r}]`, `is ${t}; expected 0 <= target < ${vocab} or ${IGNORE_INDEX} (ignore)`);
    count++;
  }
  const scale = opts.gradScale ?? (count > 0 ? 1 / count : 0);
  let sum = 0;
  for (let r = 0; r < rows; r++) {
    const o = r * vocab;
    const t = targets[r];
    if (t === IGNORE_INDEX) {
      if (dlogits) dlogits.fill(0, o, o + vocab);
      continue;
    }
    let m = -Infinity;
    for (let i = 0; i < vocab; i++) if (logits[o + i] > m) m = logits[o + i];
    let z = 0;
    for (let i = 0; i < vocab; i++) z += Math.exp(logits[o + i] - m);
    const lse = m + Math.log(z);
    sum += lse - logits[o + t];
    if (dlogits) {
      for (let i = 0; i < vocab; i++) dlogits[o + i] = Math.exp(logits[o + i] - lse) * scale;
      dlogits[o + t] -= scale;
    }
  }
  return { loss: count > 0 ? sum / count : 0, sum, count };
}

/** Index of the largest entry (the first on ties; NaN never wins). */
export function argmax(row: ArrayLike<number>): number {
  let best = -1;
  let bv = -Infinity;
  for (let i = 0; i < row.length; i++) {
    if (row[i] > bv || (best < 0 && row[i] === -Infinity)) {
      bv = row[i];
      best = i;
    }
  }
  if (best < 0) throw new InputError('row', `has no comparable entry (${row.length} entries, all NaN?); expected at least one number`);
  return best;
}

/**
 * Sample a token from logits with temperature and nucleus (top-p) filtering; temperature 0 is
 * greedy (argmax). Top-p keeps the most probable tokens until their mass reaches topP (the token
 * that crosses is kept, so at least one always is), as transformers' TopPLogitsWarper does;
 * `rand` returns uniform numbers in [0, 1).
 */
export function sampleTopP(logits: Float32Array, temperature: number, topP: number, rand: () => number): number {
  if (!(temperature >= 0) || !Number.isFinite(temperature)) throw new InputError('temperature', `is ${temperature}; expected a finite number >= 0`);
  if (!(topP > 0 && topP <= 1)) throw new InputError('topP', `is ${topP}; expected 0 < topP <= 1`);
  if (temperature === 0) return argmax(logits);
  const n = logits.length;
  const m = logits[argmax(logits)];
  const p = new Float64Array(n);
  let z = 0;
  for (let i = 0; i < n; i++) {
    const e = Number.isNaN(logits[i]) ? 0 : Math.exp((logits[i] - m) / temperature);
    p[i] = e;
    z += e;
  }
  const order = Array.from({ length: n }, (_, i) => i).sort((a, b) => p[b] - p[a] || a - b);
  let kept = 0;
  let mass = 0;
  while (kept < n && (kept === 0 || mass < topP * z)) mass += p[order[kept++]];
  let u = rand() * mass;
  for (let k = 0; k < kept; k++) {
    u -= p[order[k]];
    if (u < 0) return order[k];
  }
  return order[kept - 1];
}
