import { check } from './errors.js';
import { validateMask } from './mask.js';
import { assertFinite, shapeStr, type F32Tensor } from './tensor.js';

/** The options every backend checks the same way. */
export interface InputOptions {
  causal?: boolean;
  window?: number;
  sinks?: number;
  segments?: Int32Array;
  scale?: number;
  gradOut?: F32Tensor;
  allowNonfinite?: boolean;
}

export interface Dims {
  B: number;
  S: number;
  H: number;
  Hk: number;
  D: number;
  batched: boolean;
}

/** Validate q, k, v (and dO) shapes and values; returns the dimensions. */
export function checkInputs(q: F32Tensor, k: F32Tensor, v: F32Tensor, opts: InputOptions): Dims {
  for (const [name, t] of [['q', q], ['k', k], ['v', v]] as const) {
    check(t && t.shape && (t.shape.length === 3 || t.shape.length === 4), name, `expected shape [S, H, D] or [B, S, H, D], got ${t?.shape ? shapeStr(t.shape) : String(t)}`);
    check(t.data instanceof Float32Array, name, `expected float32 data`);
  }
  check(q.shape.length === k.shape.length && k.shape.length === v.shape.length, 'k', `expected the same rank as q ${shapeStr(q.shape)}, got ${shapeStr(k.shape)}`);
  const batched = q.shape.length === 4;
  const [B, S, H, D] = batched ? q.shape : [1, ...q.shape];
  const [Bk, Sk, Hk, Dk] = batched ? k.shape : [1, ...k.shape];
  check(B === Bk, 'k', `expected batch ${B} like q, got ${Bk}`);
  check(S === Sk, 'k', `expected sequence length ${S} like q (self-attention over one sequence), got ${Sk}`);
  check(D === Dk, 'k', `expected head dim ${D} like q, got ${Dk}`);
  check(Hk >= 1 && H % Hk === 0, 'k', `expected KV heads dividing the ${H} query heads, got ${Hk}`);
  check(v.shape.every((s, i) => s === k.shape[i]), 'v', `expected the shape of k ${shapeStr(k.shape)}, got ${shapeStr(v.shape)}`);
  check(D >= 1 && S >= 1 && H >= 1, 'q', `expected non-empty dimensions, got ${shapeStr(q.shape)}`);
  if (opts.gradOut) {
    check(opts.gradOut.shape.every((s, i) => s === q.shape[i]) && opts.gradOut.shape.length === q.shape.length, 'gradOut', `expected the shape of q ${shapeStr(q.shape)}, got ${shapeStr(opts.gradOut.shape)}`);
  }
  validateMask({ causal: opts.causal, window: opts.window, sinks: opts.sinks, segments: opts.segments }, S);
  if (opts.scale !== undefined) check(Number.isFinite(opts.scale), 'scale', `expected a finite number, got ${opts.scale}`);
  if (!opts.allowNonfinite) {
    assertFinite('q', q.data);
    assertFinite('k', k.data);
    assertFinite('v', v.data);
    if (opts.gradOut) assertFinite('gradOut', opts.gradOut.data);
  }
  return { B, S, H, Hk, D, batched };
}

