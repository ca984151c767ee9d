/**
 * fp32 <-> 16-bit conversions for uploads (round to nearest even, NaN kept quiet, fp16
 * overflow to ±inf, subnormals kept), in bulk over Uint32 views: no per-element allocation.
 */

import { f16BitsToF32 as f16ToF32, f32BitsToBf16Bits, f32BitsToF16Bits } from '../core/tensor.js';

export type CudaDType = 'bfloat16' | 'float16' | 'float32';

export function bytesOf(dtype: CudaDType): number {
  return dtype === 'float32' ? 4 : 2;
}

export function toBf16(src: Float32Array): Uint16Array {
  const u = new Uint32Array(src.buffer, src.byteOffset, src.length);
  const out = new Uint16Array(src.length);
  for (let i = 0; i < u.length; i++) out[i] = f32BitsToBf16Bits(u[i]);
  return out;
}

export function toF16(src: Float32Array): Uint16Array {
  const u = new Uint32Array(src.buffer, src.byteOffset, src.length);
  const out = new Uint16Array(src.length);
  for (let i = 0; i < u.length; i++) out[i] = f32BitsToF16Bits(u[i]);
  return out;
}

/** The device representation of `src` in `dtype`. */
export function encode(src: Float32Array, dtype: CudaDType): Float32Array | Uint16Array {
  return dtype === 'float32' ? src : dtype === 'bfloat16' ? toBf16(src) : toF16(src);
}

/** `src` rounded to `dtype` and back to fp32: what the GPU computes on. */
export function roundTo(src: Float32Array, dtype: CudaDType): Float32Array {
  if (dtype === 'float32') return src.slice();
  const bits = encode(src, dtype) as Uint16Array;
  const out = new Float32Array(src.length);
  if (dtype === 'bfloat16') {
    const u = new Uint32Array(out.buffer);
    for (let i = 0; i < bits.length; i++) u[i] = bits[i] << 16;
  } else {
    for (let i = 0; i < bits.length; i++) out[i] = f16ToF32(bits[i]);
  }
  return out;
}
