import { InputError, INT32_MAX } from '../core/errors.js';
import type { Rope } from '../model/rope.js';
import type { Arg, CudaContext, DeviceBuffer } from './context.js';
import { argBuffers, Staging } from './context.js';
import { toBf16 } from './convert.js';

/**
 * The decoder's elementwise and row kernels (kernels/model.cu) on device buffers, matching
 * src/model/layers.ts and rope.ts: precision conversion, SwiGLU, RMSNorm, residual add, RoPE
 * (in place) and the embedding gather. Device pointers are numbers; `dtype`s name the storage
 * (bfloat16 = raw bf16 bits). Work is enqueued on the context's stream; nothing waits. The
 * `*Host` wrappers upload, run, download and wait (tests, small tools).
 */

export type OpDType = 'float32' | 'bfloat16';

const FILE = 'model.cu';
/** Elements per launch of the flat kernels (they index with int32 counts). */
const CHUNK = 2 ** 30;

const SFX: Record<OpDType, string> = { float32: 'f32', bfloat16: 'bf16' };
const BYTES: Record<OpDType, number> = { float32: 4, bfloat16: 2 };

function count(name: string, x: number, max = Number.MAX_SAFE_INTEGER): void {
  if (!Number.isInteger(x) || x < 0 || x > max) throw new InputError(name, `expected an integer in 0..${max}, got ${x}`);
}

function positive(name: string, x: number, max = INT32_MAX): void {
  if (!Number.isInteger(x) || x < 1 || x > max) throw new InputError(name, `expected an integer in 1..${max}, got ${x}`);
}

function pointer(name: string, p: number | undefined, required = true): void {
  if (p === undefined || p === 0) {
    if (required) throw new InputError(name, 'expected a device pointer, got none');
    return;
  }
  if (!Number.isSafeInteger(p) || p < 0) throw new InputError(name, `expected a device pointer (a non-negative integer), got ${p}`);
}

function dtypeOf(name: string, t: OpDType | undefined): OpDType {
  const d = t ?? 'float32';
  if (d !== 'float32' && d !== 'bfloat16') throw new InputError(name, `expected 'float32' or 'bfloat16', got ${t}`);
  return d;
}

/** A float64 as two int32 kernel arguments (low word, high word). */
function f64Args(x: number): Arg[] {
  const b = Buffer.alloc(8);
  b.writeDoubleLE(x, 0);
  return [{ i32: b.readInt32LE(0) }, { i32: b.readInt32LE(4) }];
}

function gridFor(n: number, ctx: CudaContext, perThread: number): number {
  return Math.max(1, Math.min(Math.ceil(n / perThread / 256), ctx.smCount * 16));
}

/**
 * Runs a flat kernel over n elements in launches of at most 2^30, each pointer advanced by its
 * element size; vec (4-wide accesses) when every pointer is 16-byte aligned and the count a
 * multiple of 4.
 */
function flat(ctx: CudaContext, name: string, n: number, ptrs: [number, number][]): void {
  for (let off = 0; off < n; off += CHUNK) {
    const len = Math.min(CHUNK, n - off);
    const ps = ptrs.map(([p, size]) => p + off * size);
    const vec = len % 4 === 0 && ps.every((p) => p % 16 === 0) ? 1 : 0;
    const args: Arg[] = [...ps.map((p) => ({ ptr: p })), { i32: len }, { i32: vec }];
    ctx.launch(ctx.fn(FILE, name), name, [gridFor(len, ctx, vec ? 4 : 1), 1, 1], 256, 0, argBuffers(args));
  }
}

/** dst = src converted between fp32 and bf16 (round to nearest even); same dtype: a device copy. */
export function convertDevice(ctx: CudaContext, a: { src: number; dst: number; n: number; from: OpDType; to: OpDType }): void {
  count('n', a.n);
  const from = dtypeOf('from', a.from), to = dtypeOf('to', a.to);
  pointer('src', a.src, a.n > 0);
  pointer('dst', a.dst, a.n > 0);
  if (a.n === 0) return;
  if (from === to) {
    ctx.check('cuMemcpyDtoDAsync_v2', ctx.drv.cuMemcpyDtoDAsync_v2(a.dst, a.src, a.n * BYTES[from], ctx.stream));
    return;
  }
  flat(ctx, `cvt_${SFX[from]}_${SFX[to]}`, a.n, [[a.src, BYTES[from]], [a.dst, BYTES[to]]]);
}

/** out = silu(gate)·up elementwise; gate and up in `dtype`, out in `outDtype` (out may alias either when the dtypes agree). */
export function swigluDevice(ctx: CudaContext, a: { gate: number; up: number; out: number; n: number; dtype?: OpDType; outDtype?: OpDType }): void {
  count('n', a.n);
  const ti = dtypeOf('dtype', a.dtype), to = dtypeOf('outDtype', a.outDtype);
  for (const k of ['gate', 'up', 'out'] as const) pointer(k, a[k], a.n > 0);
  if (a.n === 0) return;
  flat(ctx, `swiglu_${SFX[ti]}_${SFX[to]}`, a.n, [[a.gate, BYTES[ti]], [a.up, BYTES[ti]], [a.out, BYTES[to]]]);
}

/** h += y elementwise (h fp32; y in `dtype`). */
export function addDevice(ctx: CudaContext, a: { h: number; y: number; n: number; dtype?: OpDType }): void {
  count('n', a.n);
  const ty = dtypeOf('dtype', a.dtype);
  pointer('h', a.h, a.n > 0);
  pointer('y', a.y, a.n > 0);
  if (a.n === 0) return;
  flat(ctx, `add_f32_${SFX[ty]}`, a.n, [[a.h, 4], [a.y, BYTES[ty]]]);
}

/**
 * RMSNorm per row: out = x / sqrt(mean(x²) + eps) · weight (layers.ts's rmsNorm: float64 sum of
 * squares and product, rounded once). x [rows, dim] fp32, weight [dim] fp32, out [rows, dim] in
 * `outDtype` (may be x when fp32); invRms [rows] fp32 receives 1/sqrt(mean + eps) when given.
 */
export function rmsNormDevice(ctx: CudaContext, a: { x: number; weight: number; out: number; rows: number; dim: number; eps: number; outDtype?: OpDType; invRms?: number }): void {
  count('rows', a.rows, INT32_MAX);
  positive('dim', a.dim);
  if (typeof a.eps !== 'number' || !Number.isFinite(a.eps) || a.eps < 0) throw new InputError('eps', `expected a finite number >= 0, got ${a.eps}`);
  const to = dtypeOf('outDtype', a.outDtype);
  for (const k of ['x', 'weight', 'out'] as const) pointer(k, a[k], a.rows > 0);
  pointer('invRms', a.invRms, false);
  if (a.rows === 0) return;
  const name = `rmsnorm_f32_${SFX[to]}`;
  const args: Arg[] = [{ ptr: a.x }, { ptr: a.weight }, { ptr: a.out }, { ptr: a.invRms ?? 0 }, { i32: a.dim }, ...f64Args(a.eps)];
  ctx.launch(ctx.fn(FILE, name), name, [a.rows, 1, 1], 256, 0, argBuffers(args));
}

export const ROPE_MAX_HEAD_DIM = 1024;

/**
 * Rotate-half RoPE in place on x [rows, heads, headDim] fp32, row r at position positions[r]
 * (int32 [rows]); invFreq: float64 [headDim/2] on the device (Rope.invFreq uploaded as is);
 * cos and sin are multiplied by attentionScaling; `inverse` applies the transposed map (the
 * backward). Exactly rope.ts's applyRope: float64 angles and products, one rounding to fp32.
 */
export function ropeDevice(
  ctx: CudaContext,
  a: { x: number; rows: number; heads: number; headDim: number; positions: number; invFreq: number; attentionScaling?: number; inverse?: boolean },
): void {
  count('rows', a.rows, INT32_MAX);
  positive('heads', a.heads);
  if (!Number.isInteger(a.headDim) || a.headDim < 2 || a.headDim % 2 !== 0 || a.headDim > ROPE_MAX_HEAD_DIM) {
    throw new InputError('headDim', `expected an even integer in 2..${ROPE_MAX_HEAD_DIM}, got ${a.headDim}`);
  }
  if (a.heads * a.headDim > INT32_MAX) throw new InputError('heads', `heads·headDim = ${a.heads * a.headDim}; expected at most ${INT32_MAX}`);
  const s = a.attentionScaling ?? 1;
  if (typeof s !== 'number' || !Number.isFinite(s)) throw new InputError('attentionScaling', `expected a finite number, got ${a.attentionScaling}`);
  for (const k of ['x', 'positions', 'invFreq'] as const) pointer(k, a[k], a.rows > 0);
  if (a.rows === 0) return;
  const args: Arg[] = [{ ptr: a.x }, { ptr: a.positions }, { ptr: a.invFreq }, { i32: a.heads }, { i32: a.headDim }, ...f64Args(s), { i32: a.inverse ? 1 : 0 }];
  ctx.launch(ctx.fn(FILE, 'rope_f32'), 'rope_f32', [a.rows, 1, 1], 128, 0, argBuffers(args));
}

/**
 * out[t] = table[ids[t]] (int32 ids [n], table [vocab, hidden] fp32, out [n, hidden] fp32). An
 * id outside [0, vocab) fills its row with NaN and, when `bad` (one int32 on the device,
 * initialised by the caller to 0x7fffffff) is given, lowers it to that t.
 */
export function embedDevice(ctx: CudaContext, a: { ids: number; table: number; out: number; n: number; vocab: number; hidden: number; bad?: number }): void {
  count('n', a.n, INT32_MAX);
  positive('vocab', a.vocab);
  positive('hidden', a.hidden);
  for (const k of ['ids', 'table', 'out'] as const) pointer(k, a[k], a.n > 0);
  pointer('bad', a.bad, false);
  if (a.n === 0) return;
  const vec = a.hidden % 4 === 0 && a.table % 16 === 0 && a.out % 16 === 0 ? 1 : 0;
  const args: Arg[] = [{ ptr: a.ids }, { ptr: a.table }, { ptr: a.out }, { i32: a.hidden }, { i32: a.vocab }, { ptr: a.bad ?? 0 }, { i32: vec }];
  ctx.launch(ctx.fn(FILE, 'embed_f32'), 'embed_f32', [a.n, 1, 1], 128, 0, argBuffers(args));
}

// ---- host wrappers (upload, run, download; they wait) -------------------------------------------

function widen(bits: Uint16Array): Float32Array {
  const out = new Float32Array(bits.length);
  const u = new Uint32Array(out.buffer);
  for (let i = 0; i < bits.length; i++) u[i] = bits[i] << 16;
  return out;
}

function enc(x: Float32Array, t: OpDType): Float32Array | Uint16Array {
  return t === 'float32' ? x : toBf16(x);
}

function download(ctx: CudaContext, p: number, n: number, t: OpDType): Float32Array {
  return t === 'float32' ? ctx.download(new Float32Array(n), p) : widen(ctx.download(new Uint16Array(n), p));
}

/** x converted to `to` on the device and back as fp32 values (bf16 results widened). */
export function convertHost(ctx: CudaContext, x: Float32Array | Uint16Array, from: OpDType, to: OpDType): Float32Array {
  const s = new Staging(ctx);
  try {
    const n = x.length;
    const src = s.up(x), dst = s.poisoned(n * BYTES[to]);
    convertDevice(ctx, { src, dst, n, from, to });
    return download(ctx, dst, n, to);
  } finally {
    s.free();
  }
}

/** silu(gate)·up; inputs rounded to `dtype` on upload. */
export function swigluHost(ctx: CudaContext, gate: Float32Array, up: Float32Array, dtype: OpDType = 'float32', outDtype: OpDType = 'float32'): Float32Array {
  if (up.length !== gate.length) throw new InputError('up', `has ${up.length} elements; expected ${gate.length} (the shape of gate)`);
  const s = new Staging(ctx);
  try {
    const n = gate.length;
    const g = s.up(enc(gate, dtype)), u = s.up(enc(up, dtype)), out = s.poisoned(n * BYTES[outDtype]);
    swigluDevice(ctx, { gate: g, up: u, out, n, dtype, outDtype });
    return download(ctx, out, n, outDtype);
  } finally {
    s.free();
  }
}

/** h + y (y rounded to `dtype` on upload). */
export function addHost(ctx: CudaContext, h: Float32Array, y: Float32Array, dtype: OpDType = 'float32'): Float32Array {
  if (y.length !== h.length) throw new InputError('y', `has ${y.length} elements; expected ${h.length} (the shape of h)`);
  const s = new Staging(ctx);
  try {
    const hp = s.up(h), yp = s.up(enc(y, dtype));
    addDevice(ctx, { h: hp, y: yp, n: h.length, dtype });
    return ctx.download(new Float32Array(h.length), hp);
  } finally {
    s.free();
  }
}

export function rmsNormHost(
  ctx: CudaContext,
  x: Float32Array,
  rows: number,
  dim: number,
  weight: Float32Array,
  eps: number,
  outDtype: OpDType = 'float32',
): { out: Float32Array; invRms: Float32Array } {
  count('rows', rows, INT32_MAX);
  positive('dim', dim);
  if (x.length !== rows * dim) throw new InputError('x', `has ${x.length} elements; expected ${rows * dim} for [${rows}, ${dim}]`);
  if (weight.length !== dim) throw new InputError('weight', `has ${weight.length} elements; expected ${dim}`);
  const s = new Staging(ctx);
  try {
    const xp = s.up(x), wp = s.up(weight), out = s.poisoned(rows * dim * BYTES[outDtype]), inv = s.poisoned(rows * 4);
    rmsNormDevice(ctx, { x: xp, weight: wp, out, rows, dim, eps, outDtype, invRms: inv });
    return { out: download(ctx, out, rows * dim, outDtype), invRms: ctx.download(new Float32Array(rows), inv) };
  } finally {
    s.free();
  }
}

/** applyRope on the device: x [rows, heads, headDim] rotated (a new array). */
export function ropeHost(ctx: CudaContext, x: Float32Array, rows: number, heads: number, headDim: number, positions: Int32Array, rope: Rope, inverse = false): Float32Array {
  if (x.length !== rows * heads * headDim) throw new InputError('x', `has ${x.length} elements; expected ${rows * heads * headDim} for [${rows}, ${heads}, ${headDim}]`);
  if (positions.length !== rows) throw new InputError('positions', `has ${positions.length} entries; expected ${rows} (one per row)`);
  if (rope.invFreq.length !== headDim / 2) throw new InputError('rope.invFreq', `has ${rope.invFreq.length} entries; expected ${headDim / 2} (headDim / 2)`);
  const s = new Staging(ctx);
  try {
    const xp = s.up(x), pp = s.up(positions), fp = s.up(Float64Array.from(rope.invFreq));
    ropeDevice(ctx, { x: xp, rows, heads, headDim, positions: pp, invFreq: fp, attentionScaling: rope.attentionScaling, inverse });
    return ctx.download(new Float32Array(x.length), xp);
  } finally {
    s.free();
  }
}

/** table rows gathered by ids; an id out of range throws InputError naming its index (as layers.ts's embed). */
export function embedHost(ctx: CudaContext, ids: Int32Array, table: Float32Array, hidden: number): Float32Array {
  positive('hidden', hidden);
  if (table.length % hidden !== 0 || table.length === 0) throw new InputError('hidden', `is ${hidden}; expected a positive divisor of the table size ${table.length}`);
  const vocab = table.length / hidden;
  const s = new Staging(ctx);
  try {
    const n = ids.length;
    const ip = s.up(ids), tp = s.up(table), out = s.poisoned(n * hidden * 4), bad = s.up(Int32Array.of(INT32_MAX));
    embedDevice(ctx, { ids: ip, table: tp, out, n, vocab, hidden, bad });
    const first = ctx.download(new Int32Array(1), bad)[0];
    if (first !== INT32_MAX) throw new InputError(`ids[${first}]`, `token id ${ids[first]} is out of range; expected 0 <= id < ${vocab} (vocab size)`);
    return ctx.download(new Float32Array(n * hidden), out);
  } finally {
    s.free();
  }
}
