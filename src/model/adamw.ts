/**
 * AdamW (Loshchilov & Hutter 2019) as torch.optim.AdamW computes it, plus global gradient-norm
 * clipping as torch.nn.utils.clip_grad_norm_ does:
 *
 *   p ← p·(1 − lr·wd)                       (decoupled decay, only where `decay` is set)
 *   m ← β1·m + (1 − β1)·g,  v ← β2·v + (1 − β2)·g²
 *   p ← p − (lr / (1 − β1ᵗ)) · m / (sqrt(v) / sqrt(1 − β2ᵗ) + eps)
 *
 * Moments are stored in fp32 (as torch keeps them for fp32 params); each update is formed in
 * float64 and rounded once.
 */
import { InputError } from '../core/errors.js';

export interface AdamWParam {
  param: Float32Array;
  grad: Float32Array;
  /** Apply weight decay (false for norms and biases). */
  decay: boolean;
  /** Key of this parameter's state in `stateDict()`; defaults to its index. */
  name?: string;
}

export interface AdamWOptions {
  lr: number;
  betas?: [number, number];
  eps?: number;
  weightDecay?: number;
}

export class AdamW {
  lr: number;
  readonly beta1: number;
  readonly beta2: number;
  readonly eps: number;
  readonly weightDecay: number;
  /** Steps taken so far (the next step's bias correction uses t = stepCount + 1). */
  stepCount = 0;
  private readonly params: AdamWParam[];
  private readonly m: Float32Array[];
  private readonly v: Float32Array[];
  private readonly names: string[];

  constructor(params: AdamWParam[], opts: AdamWOptions) {
    const [b1, b2] = opts.betas ?? [0.9, 0.999];
    const eps = opts.eps ?? 1e-8;
    const wd = opts.weightDecay ?? 0.01;
    if (!(opts.lr >= 0) || !Number.isFinite(opts.lr)) throw new InputError('lr', `is ${opts.lr}; expected a finite number >= 0`);
    if (!(b1 >= 0 && b1 < 1)) throw new InputError('betas[0]', `is ${b1}; expected 0 <= beta1 < 1`);
    if (!(b2 >= 0 && b2 < 1)) throw new InputError('betas[1]', `is ${b2}; expected 0 <= beta2 < 1`);
    if (!(eps >= 0)) throw new InputError('eps', `is ${eps}; expected a number >= 0`);
    if (!(wd >= 0)) throw new InputError('weightDecay', `is ${wd}; expected a number >= 0`);
    const names = params.map((p, i) => p.name ?? String(i));
    if (new Set(names).size !== names.length) throw new InputError('params', 'parameter names repeat; expected unique names');
    params.forEach((p, i) => {
      if (p.grad.length !== p.param.length) {
        throw new InputError(`params[${i}]`, `grad has ${p.grad.length} elements; expected ${p.param.length} like its param`);
      }
    });
    this.lr = opts.lr;
    this.beta1 = b1;
    this.beta2 = b2;
    this.eps = eps;
    this.weightDecay = wd;
    this.params = params;
    this.names = names;
    this.m = params.map((p) => new Float32Array(p.param.length));
    this.v = params.map((p) => new Float32Array(p.param.length));
  }

  /** One update of every parameter from its current gradient; `lr` overrides this.lr (schedules). */
  step(lr = this.lr): void {
    this.stepCount++;
    const t = this.stepCount;
    const b1 = this.beta1;
    const b2 = this.beta2;
    const bc1 = 1 - Math.pow(b1, t);
    const bc2Sqrt = Math.sqrt(1 - Math.pow(b2, t));
    const stepSize = lr / bc1;
    for (let k = 0; k < this.params.length; k++) {
      const { param, grad, decay } = this.params[k];
      const m = this.m[k];
      const v = this.v[k];
      const keep = decay ? 1 - lr * this.weightDecay : 1;
      for (let i = 0; i < param.length; i++) {
        const g = grad[i];
        const mi = b1 * m[i] + (1 - b1) * g;
        const vi = b2 * v[i] + (1 - b2) * g * g;
        m[i] = mi;
        v[i] = vi;
        param[i] = param[i] * keep - (stepSize * m[i]) / (Math.sqrt(v[i]) / bc2Sqrt + this.eps);
      }
    }
  }

  /** Optimizer state as plain Float32Arrays: `step` ([1]), `exp_avg.<name>`, `exp_avg_sq.<name>`. */
  stateDict(): Record<string, Float32Array> {
    const out: Record<string, Float32Array> = { step: Float32Array.of(this.stepCount) };
    this.names.forEach((n, k) => {
      out[`exp_avg.${n}`] = this.m[k].slice();
      out[`exp_avg_sq.${n}`] = this.v[k].slice();
    });
    return out;
  }

  /** Restore what `stateDict()` produced (same parameters, same names). */
  loadStateDict(state: Record<string, Float32Array>): void {
    const step = state.step;
    if (!(step instanceof Float32Array) || step.length !== 1 || !Number.isInteger(step[0]) || step[0] < 0) {
      throw new InputError('state.step', 'missing or malformed; expected a Float32Array holding one non-negative integer');
    }
    const known = new Set(['step']);
    this.names.forEach((n, k) => {
      for (const [key, dst] of [[`exp_avg.${n}`, this.m[k]], [`exp_avg_sq.${n}`, this.v[k]]] as const) {
        const src = state[key];
        known.add(key);
        if (!(src instanceof Float32Array)) throw new InputError(`state.${key}`, 'missing; expected a Float32Array');
        if (src.length !== dst.length) throw new InputError(`state.${key}`, `has ${src.length} elements; expected ${dst.length}`);
      }
    });
    const extra = Object.keys(state).filter((k) => !known.has(k));
    if (extra.length > 0) throw new InputError(`state.${extra[0]}`, 'is not a state entry of this optimizer; expected the same parameter names');
    this.names.forEach((n, k) => {
      this.m[k].set(state[`exp_avg.${n}`]);
      this.v[k].set(state[`exp_avg_sq.${n}`]);
    });
    this.stepCount = step[0];
  }
}

/**
 * Scale `grads` in place so their global L2 norm (float64) is at most `maxNorm`, as
 * clip_grad_norm_ does (coefficient maxNorm / (norm + 1e-6), only when below 1). Returns the
 * norm before clipping. A non-finite norm leaves the gradients untouched, so the caller can
 * see it and skip the step.
 */
export function clipGradNorm(grads: Float32Array[], maxNorm: number): number {
  if (!(maxNorm > 0)) throw new InputError('maxNorm', `is ${maxNorm}; expected a positive number`);
  let ss = 0;
  for (const g of grads) for (let i = 0; i < g.length; i++) ss += g[i] * g[i];
  const norm = Math.sqrt(ss);
  if (!Number.isFinite(norm)) return norm;
  const coef = maxNorm / (norm + 1e-6);
  if (coef < 1) for (const g of grads) for (let i = 0; i < g.length; i++) g[i] *= coef;
  return norm;
}
