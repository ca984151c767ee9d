/**
 * Rotary position embeddings (Su et al. 2021) with the scalings transformers implements.
 *
 * Inverse frequencies follow transformers' `_compute_default_rope_parameters`,
 * `_compute_linear_scaling_rope_parameters`, `_compute_llama3_parameters` and
 * `_compute_yarn_parameters` (src/transformers/modeling_rope_utils.py, 5.x), in float64. The
 * result is then rounded to float32 by default, because transformers keeps `inv_freq` as an
 * fp32 buffer and that buffer is what checkpoints were trained with; the angle
 * `position * inv_freq` and its cos/sin are then computed in float64 from the global position,
 * so every rank rotates its shard identically whatever its offset.
 *
 * Pairing is HF's `rotate_half`: dimension d pairs with d + headDim/2 (not interleaved):
 *   out[d]        = x[d] cos - x[d + half] sin
 *   out[d + half] = x[d + half] cos + x[d] sin
 * with cos and sin both multiplied by `attentionScaling` (LlamaRotaryEmbedding multiplies
 * cos/sin by `attention_scaling`, so q·k picks up its square; only yarn makes it differ from 1).
 */
import { InputError } from '../core/errors.js';
import type { ModelConfig } from './config.js';

export interface Rope {
  /** headDim / 2 inverse frequencies (radians per position). */
  invFreq: Float64Array;
  /** Multiplies cos and sin (yarn's attention factor; 1 otherwise). */
  attentionScaling: number;
}

/** The number of rotations formula inverted: the dimension index whose wavelength fits `rot` times in `maxPos`. */
function correctionDim(rot: number, dim: number, base: number, maxPos: number): number {
  return (dim * Math.log(maxPos / (rot * 2 * Math.PI))) / (2 * Math.log(base));
}

/** yarn's attention-factor helper: 0.1·m·ln(s) + 1 for s > 1. */
function yarnMscale(scale: number, m = 1): number {
  return scale <= 1 ? 1 : 0.1 * m * Math.log(scale) + 1;
}

function need(v: number | undefined, key: string, type: string): number {
  if (v === undefined || !Number.isFinite(v)) throw new InputError(`rope.${key}`, `missing; expected a number for RoPE type ${type}`);
  return v;
}

/**
 * Inverse frequencies and attention scaling for `cfg.rope`. `precision: 'fp32'` (the default)
 * rounds each inverse frequency to float32 as transformers stores them; 'fp64' keeps the
 * float64 values.
 */
export function ropeInvFreq(
  cfg: Pick<ModelConfig, 'headDim' | 'rope' | 'maxPositionEmbeddings'>,
  precision: 'fp32' | 'fp64' = 'fp32',
): Rope {
  const dim = cfg.headDim;
  if (!Number.isInteger(dim) || dim <= 0 || dim % 2 !== 0) throw new InputError('headDim', `is ${dim}; expected a positive even integer`);
  const rope = cfg.rope;
  const base = rope.theta;
  if (!(base > 1)) throw new InputError('rope.theta', `is ${base}; expected a number > 1`);
  const half = dim / 2;
  const inv = new Float64Array(half);
  for (let i = 0; i < half; i++) inv[i] = 1 / Math.pow(base, (2 * i) / dim);
  let attentionScaling = 1;

  switch (rope.type) {
    case 'default':
      break;
    case 'linear': {
      // Scaling positions by 1/factor is the same as scaling inv_freq by 1/factor.
      const factor = need(rope.factor, 'factor', 'linear');
      for (let i = 0; i < half; i++) inv[i] /= factor;
      break;
    }
    case 'llama3': {
      const factor = need(rope.factor, 'factor', 'llama3');
      const low = need(rope.lowFreqFactor, 'lowFreqFactor', 'llama3');
      const high = need(rope.highFreqFactor, 'highFreqFactor', 'llama3');
      const oldCtx = need(rope.originalMaxPositionEmbeddings, 'originalMaxPositionEmbeddings', 'llama3');
      const lowWavelen = oldCtx / low;
      const highWavelen = oldCtx / high;
      for (let i = 0; i < half; i++) {
        const f = inv[i];
        const wavelen = (2 * Math.PI) / f;
        if (wavelen < highWavelen) continue; // high frequencies: unchanged
        if (wavelen > lowWavelen) {
          inv[i] = f / factor; // low frequencies: interpolated
        } else {
          const smooth = (oldCtx / wavelen - low) / (high - low);
          inv[i] = ((1 - smooth) * f) / factor + smooth * f;
        }
      }
      break;
    }
    case 'yarn': {
      const factor = need(rope.factor, 'factor', 'yarn');
      const origMax = need(rope.originalMaxPositionEmbeddings ?? cfg.maxPositionEmbeddings, 'originalMaxPositionEmbeddings', 'yarn');
      if (rope.attentionFactor !== undefined) attentionScaling = rope.attentionFactor;
      else if (rope.mscale && rope.mscaleAllDim) attentionScaling = yarnMscale(factor, rope.mscale) / yarnMscale(factor, rope.mscaleAllDim);
      else attentionScaling = yarnMscale(factor);
      const betaFast = rope.betaFast || 32;
      const betaSlow = rope.betaSlow || 1;
      let lo = correctionDim(betaFast, dim, base, origMax);
      let hi = correctionDim(betaSlow, dim, base, origMax);
      if (rope.truncate ?? true) {
        lo = Math.floor(lo);
        hi = Math.ceil(hi);
      }
      lo = Math.max(lo, 0);
      hi = Math.min(hi, dim - 1);
      if (lo === hi) hi += 0.001; // as transformers: avoid a zero-width ramp
      for (let i = 0; i < half; i++) {
        // ramp = 0 below the correction range (extrapolate: keep the frequency),
        // 1 above it (interpolate: divide by factor), linear in between.
        const ramp = Math.min(1, Math.max(0, (i - lo) / (hi - lo)));
        const extrapolation = inv[i];
        const interpolation = inv[i] / factor;
        inv[i] = interpolation * ramp + extrapolation * (1 - ramp);
      }
      break;
    }
    default:
      throw new InputError('rope.type', `unsupported RoPE type ${JSON.stringify((rope as { type: unknown }).type)}; expected default, linear, llama3 or yarn`);
  }
  if (precision === 'fp32') for (let i = 0; i < half; i++) inv[i] = Math.fround(inv[i]);
  return { invFreq: inv, attentionScaling };
}

/**
 * Rotate `x` [rows, heads, headDim] in place; row r sits at global position `positions[r]`.
 * `inverse` applies the transposed map (attentionScaling·Rᵀ), which is what the backward pass
 * needs (dx = Aᵀ dy for y = A x); it undoes the forward exactly when attentionScaling is 1.
 */
export function applyRope(
  x: Float32Array,
  rows: number,
  heads: number,
  headDim: number,
  positions: Int32Array,
  rope: Rope,
  inverse = false,
): void {
  const half = headDim / 2;
  if (!Number.isInteger(half) || half <= 0) throw new InputError('headDim', `is ${headDim}; expected a positive even integer`);
  if (!Number.isInteger(rows) || rows < 0 || !Number.isInteger(heads) || heads <= 0) {
    throw new InputError('rows', `rows ${rows}, heads ${heads}; expected non-negative rows and positive heads`);
  }
  if (x.length !== rows * heads * headDim) {
    throw new InputError('x', `has ${x.length} elements; expected ${rows * heads * headDim} for [${rows}, ${heads}, ${headDim}]`);
  }
  if (positions.length !== rows) throw new InputError('positions', `has ${positions.length} entries; expected ${rows} (one per row)`);
  if (rope.invFreq.length !== half) {
    throw new InputError('rope.invFreq', `has ${rope.invFreq.length} entries; expected ${half} (headDim / 2)`);
  }
  const cos = new Float64Array(half);
  const sin = new Float64Array(half);
  const s = rope.attentionScaling;
  const sign = inverse ? -1 : 1;
  const inv = rope.invFreq;
  for (let r = 0; r < rows; r++) {
    const p = positions[r];
    for (let i = 0; i < half; i++) {
      const a = p * inv[i];
      cos[i] = Math.cos(a) * s;
      sin[i] = sign * Math.sin(a) * s;
    }
    for (let h = 0; h < heads; h++) {
      const b = (r * heads + h) * headDim;
      for (let i = 0; i < half; i++) {
        const x1 = x[b + i];
        const x2 = x[b + i + half];
        x[b + i] = x1 * cos[i] - x2 * sin[i];
        x[b + i + half] = x2 * cos[i] + x1 * sin[i];
      }
    }
  }
}
