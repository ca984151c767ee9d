import { InputError, INT32_MAX } from '../core/errors.js';
import type { Gemm, Linear } from '../core/group.js';
import type { CudaContext, DeviceBuffer } from './context.js';
import { packStruct, Staging } from './context.js';
import { toBf16 } from './convert.js';

/**
 * Matrix products on device buffers (kernels/gemm.cu), for the model on the CUDA backend:
 *
 *   C[M,N] = op(A)[M,K] · op(B)[K,N]  (+ beta·C)  (+ bias[N] on every row)
 *
 * row-major, as src/core/group.ts's Gemm: A is stored [M,K], or [K,M] when transA; B is stored
 * [K,N], or [N,K] when transB (y = x·Wᵀ with W [out,in] is transB). Two precisions:
 *   dtype 'float32'  : A, B, C fp32; fp32 FMA on the CUDA cores (exact tests against the CPU).
 *   dtype 'bfloat16' : A, B bf16; fp32 accumulation on the tensor cores; C fp32 or bf16 (outDtype).
 * Any M, N, K >= 0 and every transA/transB combination work in both. The fast bf16 kernels need
 * 16-byte rows (each stored row length a multiple of 8 elements, A and B 16-byte aligned); other
 * bf16 shapes take a slower element-wise-loading kernel. On sm_90a (H100/H200) aligned bf16
 * products run on the wgmma kernel (RINGATTN_NO_WGMMA=1 falls back to mma.sync); elsewhere
 * (sm_80+) on mma.sync. beta = 0 never reads C. Work is enqueued on the context's stream;
 * nothing waits. The first call compiles kernels/gemm.cu through NVRTC (about a minute; cached
 * on disk afterwards), so warm it up outside timed regions.
 */

export type GemmDType = 'float32' | 'bfloat16';

/**
 * Kernel families (gemm.cu): fp32 128x128 / 64x64 tiles; bf16 on mma.sync at 128x256, 128x128,
 * 64x64, and the unaligned 64x64; bf16 on Hopper's wgmma at 128x256 (sm_90a only).
 */
export type GemmTile = 'f32' | 'f32-s' | 'bf16-h' | 'bf16-l' | 'bf16-m' | 'bf16-s' | 'bf16-u';

/** What the choice depends on: the GPU's SM count and cubin target (ctx.smCount, ctx.arch). */
export interface GemmGpu {
  smCount: number;
  arch: string;
}

export interface DeviceGemmArgs {
  transA: boolean;
  transB: boolean;
  M: number;
  N: number;
  K: number;
  /** Device pointers: A, B in `dtype`, C in `outDtype`. */
  a: number;
  b: number;
  c: number;
  /** fp32 [N] added to every row of C; 0 or absent: none. */
  bias?: number;
  /** Multiplies the old C (default 0: C is only written). */
  beta?: number;
  dtype: GemmDType;
  /** Default float32; bfloat16 needs dtype bfloat16. */
  outDtype?: GemmDType;
  /** Force a kernel family (benchmarks, tests); it must fit dtype and alignment. */
  tile?: GemmTile;
}

interface TileInfo {
  prefix: string;
  bm: number;
  bn: number;
  threads: number;
  smem: number;
  /** CTAs resident per SM (shared memory / registers), for the wave estimate. */
  perSm: number;
  /** Relative speed per tile element (bigger tiles reuse more). */
  eff: number;
}

// Must match gemm.cu (SMEM_* and the entry templates).
const TILES: Record<GemmTile, TileInfo> = {
  f32: { prefix: 'gemm_f32', bm: 128, bn: 128, threads: 256, smem: 0, perSm: 2, eff: 1 },
  'f32-s': { prefix: 'gemm_f32_s', bm: 64, bn: 64, threads: 256, smem: 0, perSm: 4, eff: 0.7 },
  'bf16-h': { prefix: 'gemm_bf16_h', bm: 128, bn: 256, threads: 384, smem: 4 * (128 + 256) * 64 * 2 + 1024 + 64, perSm: 1, eff: 1.8 },
  'bf16-l': { prefix: 'gemm_bf16_l', bm: 128, bn: 256, threads: 256, smem: 3 * (128 + 256) * 64 * 2, perSm: 1, eff: 1 },
  'bf16-m': { prefix: 'gemm_bf16_m', bm: 128, bn: 128, threads: 128, smem: 3 * (128 + 128) * 64 * 2, perSm: 2, eff: 0.85 },
  'bf16-s': { prefix: 'gemm_bf16_s', bm: 64, bn: 64, threads: 128, smem: 4 * (64 + 64) * 64 * 2, perSm: 3, eff: 0.55 },
  'bf16-u': { prefix: 'gemm_bf16_u', bm: 64, bn: 64, threads: 128, smem: 4 * (64 + 64) * 64 * 2, perSm: 3, eff: 0.3 },
};

export const GEMM_TILES = Object.keys(TILES) as GemmTile[];

function dims(a: Pick<DeviceGemmArgs, 'M' | 'N' | 'K'>): void {
  for (const [name, x] of [['M', a.M], ['N', a.N], ['K', a.K]] as const) {
    if (!Number.isInteger(x) || x < 0 || x > INT32_MAX) throw new InputError(name, `expected an integer in 0..${INT32_MAX}, got ${x}`);
  }
}

function ptr(name: string, p: number | undefined, required: boolean): void {
  if (p === undefined || p === 0) {
    if (required) throw new InputError(name, 'expected a device pointer, got none');
    return;
  }
  if (!Number.isSafeInteger(p) || p < 0) throw new InputError(name, `expected a device pointer (a non-negative integer), got ${p}`);
}

/** Whether the bf16 operands allow the 16-byte (cp.async) kernels. */
export function bf16Aligned(a: Pick<DeviceGemmArgs, 'transA' | 'transB' | 'M' | 'N' | 'K' | 'a' | 'b'>): boolean {
  const rowA = a.transA ? a.M : a.K;
  const rowB = a.transB ? a.K : a.N;
  return rowA % 8 === 0 && rowB % 8 === 0 && a.a % 16 === 0 && a.b % 16 === 0;
}

/** Families that run on this target (bf16-h needs sm_90a; RINGATTN_NO_WGMMA=1 turns it off). */
export function tileRuns(tile: GemmTile, arch: string): boolean {
  return tile !== 'bf16-h' || (arch === 'sm_90a' && process.env.RINGATTN_NO_WGMMA !== '1');
}

/** The family for these arguments on this GPU (the fewest estimated waves of work, weighted by speed). */
export function chooseTile(a: DeviceGemmArgs, gpu: GemmGpu): GemmTile {
  const aligned: GemmTile[] = ['bf16-h', 'bf16-l', 'bf16-m', 'bf16-s'];
  const cands: GemmTile[] = a.dtype === 'float32' ? ['f32', 'f32-s'] : bf16Aligned(a) ? aligned.filter((t) => tileRuns(t, gpu.arch)) : ['bf16-u'];
  const smCount = gpu.smCount;
  let best = cands[0];
  let bestCost = Infinity;
  for (const t of cands) {
    const ti = TILES[t];
    const tiles = Math.ceil(a.M / ti.bm) * Math.ceil(a.N / ti.bn);
    const waves = Math.ceil(tiles / (smCount * ti.perSm));
    // One wave: perSm tiles of bm·bn outputs per SM, at the family's relative speed.
    const cost = (waves * ti.perSm * ti.bm * ti.bn) / ti.eff;
    if (cost < bestCost) {
      best = t;
      bestCost = cost;
    }
  }
  return best;
}

/** Checks the arguments (InputError naming the bad one) and returns the kernel to run. */
export function planGemm(a: DeviceGemmArgs, gpu: GemmGpu): { tile: GemmTile; name: string; grid: number; threads: number; smem: number } {
  if (typeof a.transA !== 'boolean') throw new InputError('transA', `expected a boolean, got ${a.transA}`);
  if (typeof a.transB !== 'boolean') throw new InputError('transB', `expected a boolean, got ${a.transB}`);
  dims(a);
  if (a.dtype !== 'float32' && a.dtype !== 'bfloat16') throw new InputError('dtype', `expected 'float32' or 'bfloat16', got ${a.dtype}`);
  const out = a.outDtype ?? 'float32';
  if (out !== 'float32' && out !== 'bfloat16') throw new InputError('outDtype', `expected 'float32' or 'bfloat16', got ${a.outDtype}`);
  if (out === 'bfloat16' && a.dtype !== 'bfloat16') throw new InputError('outDtype', "expected 'float32' with float32 inputs (a bf16 result needs dtype 'bfloat16')");
  const beta = a.beta ?? 0;
  if (typeof beta !== 'number' || !Number.isFinite(beta)) throw new InputError('beta', `expected a finite number, got ${a.beta}`);
  const work = a.M > 0 && a.N > 0;
  ptr('a', a.a, work && a.K > 0);
  ptr('b', a.b, work && a.K > 0);
  ptr('c', a.c, work);
  ptr('bias', a.bias, false);
  const elem = out === 'float32' ? 4 : 2;
  if (a.c % elem !== 0) throw new InputError('c', `expected a ${elem}-byte aligned pointer, got ${a.c}`);
  const inElem = a.dtype === 'float32' ? 4 : 2;
  if (a.a % inElem !== 0 || a.b % inElem !== 0) throw new InputError(a.a % inElem ? 'a' : 'b', `expected a ${inElem}-byte aligned pointer`);
  if (a.bias && a.bias % 4 !== 0) throw new InputError('bias', `expected a 4-byte aligned pointer, got ${a.bias}`);
  let tile = a.tile ?? chooseTile(a, gpu);
  if (a.tile !== undefined) {
    if (!(a.tile in TILES)) throw new InputError('tile', `expected one of ${GEMM_TILES.join(', ')}, got ${a.tile}`);
    const f32 = a.tile.startsWith('f32');
    if (f32 !== (a.dtype === 'float32')) throw new InputError('tile', `${a.tile} does not take dtype ${a.dtype}`);
    if (!tileRuns(a.tile, gpu.arch)) throw new InputError('tile', `${a.tile} runs only on sm_90a (H100/H200); this GPU is ${gpu.arch}`);
    if (!f32 && a.tile !== 'bf16-u' && !bf16Aligned(a)) {
      throw new InputError('tile', `${a.tile} needs 16-byte rows (stored row lengths multiples of 8, A and B 16-byte aligned); use bf16-u or let it choose`);
    }
    tile = a.tile;
  }
  const ti = TILES[tile];
  const suffix = `${a.transA ? 't' : 'n'}${a.transB ? 't' : 'n'}`;
  const grid = Math.ceil(a.M / ti.bm) * Math.ceil(a.N / ti.bn);
  if (grid > INT32_MAX) throw new InputError('M', `M=${a.M}, N=${a.N} make ${grid} tiles; expected at most ${INT32_MAX}`);
  return { tile, name: `${ti.prefix}_${suffix}`, grid, threads: ti.threads, smem: ti.smem };
}

/** Runs C = op(A)·op(B) (+ beta·C) (+ bias) on the context's stream. */
export function gemm(ctx: CudaContext, a: DeviceGemmArgs): void {
  const plan = planGemm(a, ctx);
  if (a.M === 0 || a.N === 0) return;
  const params = packStruct([
    { ptr: a.a || 0 }, { ptr: a.b || 0 }, { ptr: a.c }, { ptr: a.bias ?? 0 },
    { i32: a.M }, { i32: a.N }, { i32: a.K }, { f32: a.beta ?? 0 }, { i32: (a.outDtype ?? 'float32') === 'bfloat16' ? 1 : 0 }, { i32: 0 },
  ]);
  ctx.launch(ctx.fn('gemm.cu', plan.name, plan.smem), plan.name, [plan.grid, 1, 1], plan.threads, plan.smem, [params]);
}

/** 2·M·N·K. */
export function gemmFlops(M: number, N: number, K: number): number {
  return 2 * M * N * K;
}

export interface HostGemmArgs {
  transA: boolean;
  transB: boolean;
  M: number;
  N: number;
  K: number;
  /** [M,K] or [K,M] (transA). */
  A: Float32Array;
  /** [K,N] or [N,K] (transB). */
  B: Float32Array;
  /** [M,N]; read when beta != 0 (rounded to outDtype first). */
  C?: Float32Array;
  bias?: Float32Array;
  beta?: number;
  /** Device storage of A and B (bfloat16: rounded to nearest even on upload). Default float32. */
  dtype?: GemmDType;
  outDtype?: GemmDType;
  tile?: GemmTile;
  /** Fill the device C with NaN before the call (only when beta is 0). */
  poison?: boolean;
}

function hostLen(name: string, x: Float32Array | undefined, n: number, shape: string): void {
  if (!(x instanceof Float32Array)) throw new InputError(name, `expected a Float32Array of ${n} elements (${shape})`);
  if (x.length !== n) throw new InputError(name, `has ${x.length} elements; expected ${n} for ${shape}`);
}

/**
 * Uploads, runs and downloads (waits): C [M,N] as a Float32Array (bf16 results widened), written
 * into `C` when given, else into a new array.
 */
export function gemmHost(ctx: CudaContext, h: HostGemmArgs): Float32Array {
  dims(h);
  const { M, N, K } = h;
  hostLen('A', h.A, M * K, h.transA ? `[K=${K}, M=${M}]` : `[M=${M}, K=${K}]`);
  hostLen('B', h.B, K * N, h.transB ? `[N=${N}, K=${K}]` : `[K=${K}, N=${N}]`);
  const beta = h.beta ?? 0;
  if (beta !== 0) hostLen('C', h.C, M * N, `[M=${M}, N=${N}] (read since beta != 0)`);
  else if (h.C) hostLen('C', h.C, M * N, `[M=${M}, N=${N}]`);
  if (h.bias) hostLen('bias', h.bias, N, `[N=${N}]`);
  const dtype = h.dtype ?? 'float32';
  const out = h.outDtype ?? 'float32';
  const st = new Staging(ctx);
  const up = (x: ArrayBufferView) => st.up(x);
  const enc = (x: Float32Array, t: GemmDType) => (t === 'float32' ? x : toBf16(x));
  try {
    const a = up(enc(h.A, dtype));
    const b = up(enc(h.B, dtype));
    const bias = h.bias ? up(h.bias) : 0;
    const cBytes = M * N * (out === 'float32' ? 4 : 2);
    let c: number;
    if (beta !== 0) {
      c = up(enc(h.C!, out));
    } else {
      c = h.poison ? st.poisoned(cBytes, out === 'float32' ? 0x7fc00000 : 0x7fc07fc0) : st.alloc(cBytes).ptr;
    }
    gemm(ctx, { transA: h.transA, transB: h.transB, M, N, K, a, b, c, bias, beta, dtype, outDtype: out, tile: h.tile });
    if (out === 'float32') return ctx.download(h.C ?? new Float32Array(M * N), c);
    const bits = ctx.download(new Uint16Array(M * N), c);
    const res = h.C ?? new Float32Array(M * N);
    const u = new Uint32Array(res.buffer);
    for (let i = 0; i < bits.length; i++) u[i] = bits[i] << 16;
    return res;
  } finally {
    st.free();
  }
}

/** group.ts's Gemm on host arrays through the fp32 GPU kernels (uploads and downloads per call). */
export function hostGemmFn(ctx: CudaContext): Gemm {
  return (transA, transB, M, N, K, A, B, beta, C) => {
    gemmHost(ctx, { transA, transB, M, N, K, A, B, C, beta });
  };
}

/** group.ts's Linear (y = x·wᵀ + bias) on host arrays through the fp32 GPU kernels. */
export function hostLinearFn(ctx: CudaContext): Linear {
  return (x, w, bias, rows, inDim, outDim, y) => {
    gemmHost(ctx, { transA: false, transB: true, M: rows, N: outDim, K: inDim, A: x, B: w, bias, C: y });
  };
}
