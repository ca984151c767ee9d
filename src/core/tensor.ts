import { describe, InputError } from './errors.js';

/** Element types a tensor may hold in memory. Compute is always fp32 on the CPU. */
export type DType = 'float32' | 'float64' | 'float16' | 'bfloat16' | 'int32' | 'int64' | 'uint8';

export type TypedArrayFor<T extends DType> = T extends 'float32'
  ? Float32Array
  : T extends 'float64'
    ? Float64Array
    : T extends 'float16' | 'bfloat16'
      ? Uint16Array
      : T extends 'int32'
        ? Int32Array
        : T extends 'int64'
          ? BigInt64Array
          : Uint8Array;

/** A dense row-major (C order) tensor: a plain object, no methods, no Proxy. */
export interface Tensor<T extends DType = DType> {
  dtype: T;
  shape: number[];
  data: TypedArrayFor<T>;
}

export type F32Tensor = Tensor<'float32'>;

const ARRAY_OF: Record<DType, { name: string; is: (x: unknown) => boolean }> = {
  float32: { name: 'Float32Array', is: (x) => x instanceof Float32Array },
  float64: { name: 'Float64Array', is: (x) => x instanceof Float64Array },
  float16: { name: 'Uint16Array (float16 bits)', is: (x) => x instanceof Uint16Array },
  bfloat16: { name: 'Uint16Array (bfloat16 bits)', is: (x) => x instanceof Uint16Array },
  int32: { name: 'Int32Array', is: (x) => x instanceof Int32Array },
  int64: { name: 'BigInt64Array', is: (x) => x instanceof BigInt64Array },
  uint8: { name: 'Uint8Array', is: (x) => x instanceof Uint8Array },
};

/**
 * The typed array a tensor of `dtype` must hold (TypedArrayFor), or null for an unknown dtype.
 * A writer that took the bytes of another array would write a file that reads back wrong.
 */
export function arrayMismatch(dtype: DType, data: unknown): string | null {
  const want = ARRAY_OF[dtype];
  if (!want || want.is(data)) return null;
  return `dtype ${dtype} holds a ${want.name}, got ${describe(data)}`;
}

export function numel(shape: readonly number[]): number {
  let n = 1;
  for (const s of shape) n *= s;
  return n;
}

export function tensor(shape: number[], data?: Float32Array): F32Tensor {
  const n = numel(shape);
  if (data && data.length !== n) {
    throw new InputError('data', `expected ${n} elements for shape [${shape.join(', ')}], got ${data.length}`);
  }
  return { dtype: 'float32', shape: [...shape], data: data ?? new Float32Array(n) };
}

export function shapeStr(shape: readonly number[]): string {
  return `[${shape.join(', ')}]`;
}

/** Throws naming `arg` if any element is NaN or ±Infinity; returns the largest |element| (0 if none). */
export function assertFinite(arg: string, data: Float32Array | Float64Array): number {
  let max = 0;
  for (let i = 0; i < data.length; i++) {
    const x = data[i];
    if (!Number.isFinite(x)) {
      throw new InputError(arg, `element ${i} is ${x}; expected finite values (pass --allow-nonfinite to accept them)`);
    }
    const a = Math.abs(x);
    if (a > max) max = a;
  }
  return max;
}

/** fp32 bit pattern -> bf16 bits, round to nearest even, NaN kept quiet. */
export function f32BitsToBf16Bits(u: number): number {
  if ((u & 0x7fffffff) > 0x7f800000) return (u >>> 16) | 0x40;
  return ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) & 0xffff;
}

const f32Scratch = new Float32Array(1);
const u32Scratch = new Uint32Array(f32Scratch.buffer);

/** Round-to-nearest-even fp32 -> bf16 bits. */
export function f32ToBf16Bits(x: number): number {
  f32Scratch[0] = x;
  return f32BitsToBf16Bits(u32Scratch[0]);
}

export function bf16BitsToF32(b: number): number {
  u32Scratch[0] = b << 16;
  return f32Scratch[0];
}

/** IEEE half bits -> number. */
export function f16BitsToF32(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const m = h & 0x3ff;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}

/** fp32 bit pattern -> IEEE half bits, round to nearest even (overflow to ±inf, subnormals kept). */
export function f32BitsToF16Bits(u: number): number {
  const sign = (u >>> 16) & 0x8000;
  const exp = (u >>> 23) & 0xff;
  let mant = u & 0x7fffff;
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

/** number -> IEEE half bits, round to nearest even. */
export function f32ToF16Bits(x: number): number {
  f32Scratch[0] = x;
  return f32BitsToF16Bits(u32Scratch[0]);
}
