/**
 * fp32 <-> 16-bit conversions for uploads (round to nearest even, NaN kept quiet, fp16
 * overflow to ±inf, subnormals kept), in bulk over Uint32 views: no per-element allocation.
 */

export type CudaDType = 'bfloat16' | 'float16' | 'float32';

export function bytesOf(dtype: CudaDType): number {
  return dtype === 'float32' ? 4 : 2;
}

export function toBf16(src: Float32Array): Uint16Array {
  const u = new Uint32Array(src.buffer, src.byteOffset, src.length);
  const out = new Uint16Array(src.length);
  for (let i = 0; i < u.length; i++) {
    const x = u[i];
    out[i] = (x & 0x7fffffff) > 0x7f800000 ? (x >>> 16) | 0x40 : ((x + 0x7fff + ((x >>> 16) & 1)) >>> 16) & 0xffff;
  }
  return out;
}

function f16Bits(x: number): number {
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  let mant = x & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  const e = exp - 127 + 15;
  if (e >= 31) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    let h = mant >>> shift;
    const rem = mant & ((1 << shift) - 1);
    const half = 1 << (shift - 1);
    if (rem > half || (rem === half && h & 1)) h++;
    return sign | h;
  }
  let h = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && h & 1)) h++;
  return sign | h;
}

export function toF16(src: Float32Array): Uint16Array {
  const u = new Uint32Array(src.buffer, src.byteOffset, src.length);
  const out = new Uint16Array(src.length);
  for (let i = 0; i < u.length; i++) out[i] = f16Bits(u[i]);
  return out;
}

function f16ToF32(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const m = h & 0x3ff;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * 2 ** (e - 15);
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
