import koffi from 'koffi';
import { InputError, INT32_MAX, throwReason } from '../core/errors.js';
import type { CudaContext, DeviceBuffer, Arg } from './context.js';
import { argBuffers, packStruct } from './context.js';
import { nvrtcDefines } from './compile.js';
import type { CudaDType } from './convert.js';

/**
 * The block attention kernels (kernels/attn_fwd.cu, attn_bwd.cu) on device buffers: the CUDA
 * side of the kernel contract in src/core/kernel.ts. Shapes (row-major, device pointers):
 *   q, o, dO, dq : [Sq, H, D]      k, v, dk, dv : [Sk, Hk, D]      lse, delta : [Sq, H]
 *   qPos, qSeg : int32 [Sq]        kPos, kSeg : int32 [Sk]
 * q, k, v, dO hold `dtype`; o, lse, delta, dq, dk, dv are fp32. Forward merges into the running
 * (o, lse); backward adds into dq, dk, dv using the final lse and delta = rowsum(dO * O). All
 * work is enqueued on the context's stream.
 */

export type KernelTag = 'mma16-d64' | 'mma16-d128' | 'generic';

/** Tensor cores (mma.sync, bf16/fp16, sm_80+) at D 64 and 128; the simple warp-per-row path otherwise. */
export function chooseKernel(spec: { dtype: CudaDType; D: number }, computeCapability: readonly [number, number]): KernelTag {
  if (spec.dtype !== 'float32' && computeCapability[0] >= 8) {
    if (spec.D === 64) return 'mma16-d64';
    if (spec.D === 128) return 'mma16-d128';
  }
  return 'generic';
}

/** The Hopper forward's consumer schedules (kernels/attn_fwd_h.cu), by RINGATTN_WGMMA_ATTN value. */
export const WGMMA_FORWARDS = { '1': 'h', '2': 'hp', '3': 'hs', '4': 'hq', '5': 'ht', '6': 'hw', '7': 'hl', '8': 'hc' } as const;
export type WgmmaForward = (typeof WGMMA_FORWARDS)[keyof typeof WGMMA_FORWARDS];

/**
 * Which Hopper warpgroup-MMA forward (kernels/attn_fwd_h.cu) a tensor-core tag runs, or null for
 * mma.sync (attn_fwd.cu). On sm_90a it is the default, with the ht schedule at D=128 (TMA loads
 * from one producer thread; software-pipelined inside each consumer warpgroup, ping-pong turns
 * between the two): on an H200, D=128 bf16 H=32, 543-576 TFLOP/s non-causal and 456-535 causal
 * against 172 for mma.sync (kernels/NOTES.md run 12); and hw at D=64 (the same with three consumer
 * warpgroups: 7-17% faster than ht there, run 26). RINGATTN_WGMMA_ATTN=0 picks mma.sync; 1..8 pick a
 * schedule: 1 h (one tile at a time), 2 hp (pipelined), 3 hs (ping-pong), 4 hq (both), 5 ht (hq
 * loading with TMA; the kernel object runs hq where the driver lacks TMA), 6 hw (ht with three
 * consumer warpgroups and 192-row query tiles; D=64 only, ht at D=128), 7 hl (ht with 176-key
 * tiles, FlashAttention-3's choice for D=128 without a mask; D=128 only, hw at D=64; 5-11% slower
 * than ht on an H100: kernels/NOTES.md run 54), 8 hc (ht in clusters of two CTAs multicasting K/V,
 * for blocks without a mask and with an even number of 128-row query tiles; other blocks run ht,
 * D=64 hw; RINGATTN_HEAD_GROUP does not apply; 30% slower than ht unmasked on an H100, run 59).
 * A scale <= 0 runs mma.sync. RINGATTN_NO_WGMMA=1 turns them off with the wgmma GEMM. Read at
 * each call, so tests can run every path on one GPU.
 */
export function wgmmaForward(tag: KernelTag, computeCapability: readonly [number, number], scale = 1): WgmmaForward | null {
  // The wgmma kernels fold the scale into the exponent after taking the raw row maximum: scale > 0.
  if (tag === 'generic' || !(scale > 0) || computeCapability[0] !== 9 || computeCapability[1] !== 0) return null;
  const v = process.env.RINGATTN_WGMMA_ATTN;
  if (v !== undefined && v !== '' && v !== '0' && !Object.hasOwn(WGMMA_FORWARDS, v)) {
    throw new InputError('RINGATTN_WGMMA_ATTN', `expected 0 (mma.sync) or 1-8 (h, hp, hs, hq, ht, hw, hl, hc), got '${v}'`);
  }
  if (process.env.RINGATTN_NO_WGMMA === '1' || v === '0') return null;
  let wg: WgmmaForward = v ? WGMMA_FORWARDS[v as keyof typeof WGMMA_FORWARDS] : 'hw';
  if ((wg === 'hl' || wg === 'hc') && tag !== 'mma16-d128') wg = 'hw';
  return wg === 'hw' && tag !== 'mma16-d64' ? 'ht' : wg;
}

/**
 * Which Hopper warpgroup-MMA backward (kernels/attn_bwd_h.cu) a tensor-core tag runs, or null for
 * attn_bwd.cu's mma.sync kernel: on sm_90a 'ht' by default (Q/dO by TMA from one thread; 5-9%
 * faster than 'h': kernels/NOTES.md run 19); RINGATTN_WGMMA_BWD=1 selects 'h' (Q/dO by cp.async
 * from every thread); =0 (or RINGATTN_NO_WGMMA=1) selects mma.sync.
 */
export function wgmmaBackward(tag: KernelTag, computeCapability: readonly [number, number]): 'h' | 'ht' | null {
  const v = process.env.RINGATTN_WGMMA_BWD;
  if (v !== undefined && v !== '' && v !== '0' && v !== '1' && v !== '2') throw new InputError('RINGATTN_WGMMA_BWD', `expected 0 (mma.sync), 1 (h) or 2 (ht), got '${v}'`);
  if (tag === 'generic' || computeCapability[0] !== 9 || computeCapability[1] !== 0 || v === '0' || process.env.RINGATTN_NO_WGMMA === '1') return null;
  return v === '1' ? 'h' : 'ht';
}

/**
 * The tensor-core kernels (cp.async, TMA) load q, k, v (and dO) in 16-byte pieces: why these
 * device addresses cannot run there, or null.
 */
export function misaligned(ptrs: Record<string, number>): string | null {
  for (const [name, p] of Object.entries(ptrs)) {
    if (p % 16 !== 0) return `${name}: expected a 16-byte-aligned device address for the tensor-core kernels, got 0x${p.toString(16)}`;
  }
  return null;
}

export interface DeviceBlockArgs {
  q: number;
  k: number;
  v: number;
  qPos: number;
  kPos: number;
  /** Segment ids: both or neither (0 = none). */
  qSeg?: number;
  kSeg?: number;
  Sq: number;
  Sk: number;
  H: number;
  Hk: number;
  D: number;
  dtype: CudaDType;
  causal: boolean;
  /** 0 = no window. */
  window: number;
  /** Only with a window. */
  sinks: number;
  scale: number;
}

export interface DeviceForwardArgs extends DeviceBlockArgs {
  o: number;
  lse: number;
  /**
   * Instrumentation: a device buffer of 64 bytes (8 u64) per CTA of the launch (at least
   * ceil(Sq / 64) x H records covers every Hopper forward's grid) that a Hopper forward built with
   * RINGATTN_NVRTC_DEFINES=-DFWD_TRACE fills with per-CTA timestamps (hop::Trace in
   * kernels/hopper.cuh; bench/gpu-trace.ts). Ignored by every other build.
   */
  trace?: number;
}

export interface DeviceBackwardArgs extends DeviceBlockArgs {
  dO: number;
  lse: number;
  delta: number;
  dq: number;
  dk: number;
  dv: number;
  /**
   * Instrumentation, as DeviceForwardArgs.trace: 64 bytes per CTA (ceil(Sk / 128) x Hk x the GQA
   * split records), filled by a Hopper backward built with -DBWD_TRACE.
   */
  trace?: number;
}

export const MAX_D = 256;

/** Why these arguments cannot run on the GPU kernels (null when they can). */
export function supported(a: Omit<DeviceBlockArgs, 'q' | 'k' | 'v' | 'qPos' | 'kPos' | 'qSeg' | 'kSeg'>): string | null {
  for (const [name, x] of [['Sq', a.Sq], ['Sk', a.Sk], ['H', a.H], ['Hk', a.Hk], ['D', a.D]] as const) {
    if (!Number.isInteger(x) || x < 0 || x > INT32_MAX) return `${name}: expected a non-negative int32, got ${x}`;
  }
  if (!['bfloat16', 'float16', 'float32'].includes(a.dtype)) return `dtype: expected bfloat16, float16 or float32, got ${a.dtype}`;
  if (a.D < 1 || a.D > MAX_D) return `D: expected 1..${MAX_D} (head dims above ${MAX_D} have no kernel), got ${a.D}`;
  if (a.H < 1 || a.Hk < 1 || a.H % a.Hk !== 0) return `H: expected a positive multiple of Hk = ${a.Hk}, got ${a.H}`;
  if (a.H > 65535) return `H: expected at most 65535 heads (grid y), got ${a.H}`;
  if (!Number.isInteger(a.window) || a.window < 0 || a.window > INT32_MAX) return `window: expected an int32 >= 0, got ${a.window}`;
  if (!Number.isInteger(a.sinks) || a.sinks < 0 || a.sinks > INT32_MAX) return `sinks: expected an int32 >= 0, got ${a.sinks}`;
  if (!Number.isFinite(a.scale)) return `scale: expected a finite number, got ${a.scale}`;
  return null;
}

const BK = 64;
/**
 * Query and key tiles of each path (the tile boxes are computed at these sizes): the forward's
 * by its Hopper schedule (null: mma.sync), the backward's by whether it runs attn_bwd_h.cu.
 */
function fwdTiles(tag: KernelTag, wg: WgmmaForward | null): [number, number] {
  if (tag === 'generic') return [64, BK]; // query boxes unused by the generic kernels
  return wg ? [wg === 'hw' ? WG_WIDE_BQ : WG_TILE, wg === 'hl' ? WG_LONG_BK : WG_TILE] : [64, BK];
}
function bwdTiles(tag: KernelTag, wgmma: boolean): [number, number] {
  if (tag === 'generic') return [64, BK];
  if (wgmma) return [wgBwdBq(tag === 'mma16-d64' ? 64 : 128), WG_TILE];
  return [tag === 'mma16-d64' ? 64 : 32, BK];
}

/** The Hopper forwards that load by TMA (they take tensor maps; hq runs where the driver has none). */
const tmaForward = (wg: WgmmaForward | null): boolean => wg === 'ht' || wg === 'hw' || wg === 'hl' || wg === 'hc';

/**
 * attn_fwd_h.cu: 128-key tiles (176 for hl), K/V stages by head dim and key tile (fwdh::Cfg); 128
 * query rows (two consumer warpgroups, 384 threads), or 192 for hw (three, 512 threads).
 */
const WG_TILE = 128;
const WG_WIDE_BQ = 192;
const WG_LONG_BK = 176;
export function wgFwdSmem(D: number, bq: number, bk = WG_TILE): number {
  const stages = D === 64 ? 4 : bk === WG_TILE ? 3 : 2;
  // alignment slack, Q, the stages' K and V, their full and empty barriers, then Q's barrier and ht's qFree and item slot
  return 1024 + bq * D * 2 + stages * 2 * bk * D * 2 + 2 * stages * 8 + 72;
}

/** Whether RINGATTN_NVRTC_DEFINES defines NAME (with or without a value: #ifdef sees either). */
function nvrtcDefined(name: string): boolean {
  return nvrtcDefines().some((d) => d === `-D${name}` || d.startsWith(`-D${name}=`));
}

/**
 * The Hopper forward's grid: for ht (the default at D=128) a persistent grid of min(items, SMs)
 * CTAs that take (query tile, head) items from a counter (kernels/attn_fwd_h.cu, which traps on a
 * 2-D grid); for the others, and for ht in the trace build (-DFWD_TRACE in RINGATTN_NVRTC_DEFINES,
 * with or without a value: #ifdef sees either) unless -DFWD_TRACE_ITEMS keeps it persistent, one
 * CTA a (query tile, head). RINGATTN_FWD_CTAS caps the persistent grid (the tests use it to give
 * each CTA many items on a small problem).
 * Like every define, RINGATTN_NVRTC_DEFINES is meant to be set for a whole process: a context
 * keeps the modules it loaded, so changing it midway would pair a kernel with the other build's grid.
 */
export function wgFwdGrid(wg: WgmmaForward, tiles: number, heads: number, smCount: number): [number, number, number] {
  if (wg !== 'ht' || (nvrtcDefined('FWD_TRACE') && !nvrtcDefined('FWD_TRACE_ITEMS'))) return [tiles, heads, 1];
  const v = process.env.RINGATTN_FWD_CTAS;
  if (v !== undefined && v !== '' && !/^[1-9][0-9]*$/.test(v)) throw new InputError('RINGATTN_FWD_CTAS', `expected a positive integer (the persistent forward's CTAs at most), got '${v}'`);
  const cap = v === undefined || v === '' ? Infinity : Number(v);
  return [Math.min(tiles * heads, smCount, cap), 1, 1];
}

/** One 3-D TMA map to encode: a [rows, heads, D] tensor, `elem` bytes an element, box 32/64 x 1 x boxRows. */
interface MapSpec {
  what: string;
  ptr: number;
  rows: number;
  heads: number;
  boxRows: number;
  /** 2: 16-bit (uint16 maps), 4: fp32. */
  elem: 2 | 4;
}

/**
 * TMA descriptors, one 128-byte slot each, 64-byte aligned (the kernels' map structs), in the
 * 128-byte swizzle with boxes of 128 bytes x 1 head x boxRows rows; out-of-range elements read as
 * zeros (and are skipped by reduces). Null where the driver has no cuTensorMapEncodeTiled (before
 * CUDA 12). Addresses are 16-byte aligned (misaligned, checked before any tensor-core kernel).
 * A descriptor is plain data, a function of these arguments alone, so the last MAP_CACHE sets are
 * kept and reused: a ring's steps cycle through a few K/V buffers, and encoding was most of a
 * forward call's host time (~50 us of ~60 with the driver stubbed: bench/host-overhead.ts).
 * The launch copies the bytes, so one buffer can serve every call.
 */
const MAP_CACHE = 64;
const mapCache = new Map<string, Buffer>();
function encodeMaps(ctx: CudaContext, D: number, specs: readonly MapSpec[]): Buffer | null {
  const encode = ctx.drv.cuTensorMapEncodeTiled;
  if (!encode) return null;
  let key = String(D);
  for (const m of specs) key += `|${m.ptr},${m.rows},${m.heads},${m.boxRows},${m.elem}`;
  const hit = mapCache.get(key);
  if (hit) {
    mapCache.delete(key);  // most recently used last
    mapCache.set(key, hit);
    return hit;
  }
  const raw = Buffer.alloc(specs.length * 128 + 64);
  const at = (64 - Number(koffi.address(raw) % 64n)) % 64;  // the first 64-byte-aligned byte
  const maps = raw.subarray(at, at + specs.length * 128);
  const u64 = (...x: number[]) => Buffer.from(BigUint64Array.from(x.map(BigInt)).buffer);
  const u32 = (...x: number[]) => Buffer.from(Uint32Array.from(x).buffer);
  const UINT16 = 1, FLOAT32 = 7, INTERLEAVE_NONE = 0, SWIZZLE_128B = 3, L2_256B = 3, OOB_ZERO = 0;
  specs.forEach((m, i) => {
    const code = encode(maps.subarray(i * 128, i * 128 + 128), m.elem === 2 ? UINT16 : FLOAT32, 3, m.ptr, u64(D, m.heads, m.rows), u64(D * m.elem, m.heads * D * m.elem),
      u32(128 / m.elem, 1, m.boxRows), u32(1, 1, 1), INTERLEAVE_NONE, SWIZZLE_128B, L2_256B, OOB_ZERO);
    ctx.check(`cuTensorMapEncodeTiled(${m.what} [${m.rows}, ${m.heads}, ${D}])`, code);
  });
  mapCache.set(key, maps);
  if (mapCache.size > MAP_CACHE) mapCache.delete(mapCache.keys().next().value as string);
  return maps;
}

/**
 * TMA descriptors of q [Sq, H, D], k and v [Sk, Hk, D] for the ht, hw and hl forwards
 * (attn_fwd_h.cu's TmaMaps): uint16, boxes of 64 elements x 1 head x `qRows` rows (q, the query
 * tile) or `kRows` (k and v, the key tile). Null without the driver function: the caller then runs hq.
 */
export function fwdTensorMaps(ctx: CudaContext, a: DeviceBlockArgs, qRows = WG_TILE, kRows = WG_TILE): Buffer | null {
  return encodeMaps(ctx, a.D, [
    { what: 'q', ptr: a.q, rows: a.Sq, heads: a.H, boxRows: qRows, elem: 2 },
    { what: 'k', ptr: a.k, rows: a.Sk, heads: a.Hk, boxRows: kRows, elem: 2 },
    { what: 'v', ptr: a.v, rows: a.Sk, heads: a.Hk, boxRows: kRows, elem: 2 },
  ]);
}

/**
 * TMA descriptors for attn_bwd_h.cu (its BwdMaps): dq [Sq, H, D] fp32 for the dQ reduce-adds, boxes
 * of 32 floats x 1 head x 16 rows (one warp's staging); q and dO [Sq, H, D] 16-bit for the ht
 * variant's loads, boxes of 64 elements x 1 head x the query tile's rows (wgBwdBq). Null without
 * the driver function: the caller then runs the mma.sync backward.
 */
export function bwdTensorMaps(ctx: CudaContext, a: { dq: number; q: number; dO: number; Sq: number; H: number; D: number }): Buffer | null {
  return encodeMaps(ctx, a.D, [
    { what: 'dq', ptr: a.dq, rows: a.Sq, heads: a.H, boxRows: 16, elem: 4 },
    { what: 'q', ptr: a.q, rows: a.Sq, heads: a.H, boxRows: wgBwdBq(a.D), elem: 2 },
    { what: 'dO', ptr: a.dO, rows: a.Sq, heads: a.H, boxRows: wgBwdBq(a.D), elem: 2 },
  ]);
}

/**
 * attn_bwd_h.cu: 128 keys a CTA (256 threads), query tiles of wgBwdBq(D) rows in 3 stages, dS^T,
 * row arrays, dQ staging (16 rows of 256 bytes a warp), two bits a query tile (at most
 * WG_BWD_MAX_QTILES), the stages' three mbarriers and ht's three `empty` ones.
 */
const WG_BWD_MAX_QTILES = 16384;
/** attn_bwd_h.cu's query tile: 128 rows at D=64 (kernels/NOTES.md run 29), 64 at D=128. */
export function wgBwdBq(D: number): number {
  return D === 64 ? 128 : 64;
}
function wgBwdSmem(D: number): number {
  const bq = wgBwdBq(D);
  return 1024 + 2 * WG_TILE * D * 2 + 3 * 2 * bq * D * 2 + WG_TILE * bq * 2 + 3 * 4 * bq * 4 + 2 * WG_TILE * 4 + 8 * 16 * 256 + (2 * WG_BWD_MAX_QTILES) / 8 + 6 * 8;
}

function fwdSmem(D: number): number {
  const LD = D + 8;
  return (64 * LD + 4 * BK * LD) * 2 + 4 * BK * 4;
}

function bwdSmem(D: number, BQ: number): number {
  const LD = D + 8;
  return (2 * BK * LD + 2 * BQ * LD + BK * (BQ + 8)) * 2 + 4 * BQ * 4 + 2 * BK * 4;
}

/** Device workspace for one call: tile boxes (16 bytes a tile), then query tiles' key-tile spans (8). */
export function workspaceBytes(Sq: number, Sk: number): number {
  return (Math.ceil(Sq / 32) + Math.ceil(Sk / BK)) * 16 + (Math.ceil(Sq / 32) + 1) * 8;  // + 1: ht's item counter past the spans
}

const SUFFIX: Record<CudaDType, string> = { bfloat16: 'bf16', float16: 'f16', float32: 'f32' };

export interface CudaAttentionKernel {
  /** e.g. 'cuda/mma16-d128/bfloat16'. */
  /** The kernels a call with this spec runs (the forward's depends on the scale's sign: default 1 / sqrt(D) > 0). */
  name(spec: { dtype: CudaDType; D: number; scale?: number }): string;
  forward(a: DeviceForwardArgs): void;
  backward(a: DeviceBackwardArgs): void;
  /** delta[r] = sum_d dO[r, d] * o[r, d] over rows = Sq * H (dO in `dtype`, o fp32). */
  delta(dO: number, o: number, delta: number, rows: number, D: number, dtype: CudaDType): void;
  /**
   * After the last forward into (o, lse): o[r] = 0 for the rows r < rows (= Sq * H) whose lse is
   * still -inf. A forward reads a row's old o only where its old lse is finite, so (o, lse) start
   * from lse = -inf alone (o may hold anything) and this makes the rows that saw no key 0.
   */
  finishForward(o: number, lse: number, rows: number, D: number): void;
  dispose(): void;
}

// The scalar tail shared by FwdParams and BwdParams (kernels/common.cuh).
const tailFields = (a: DeviceBlockArgs): Arg[] => [
  { i32: a.Sq }, { i32: a.Sk }, { i32: a.H }, { i32: a.Hk }, { i32: a.D },
  { i32: a.causal ? 1 : 0 }, { i32: a.window }, { i32: a.window > 0 ? a.sinks : 0 }, { f32: a.scale },
];

/**
 * FwdParams (kernels/common.cuh) field by field, for packStruct: tile boxes, the launch order's
 * head group and the query tiles' key-tile spans (0 for the generic kernel) as the caller made
 * them. tests/cuda/layout.test.ts checks the packed bytes against the C struct's offsets.
 */
export function fwdParamFields(a: DeviceForwardArgs, qTiles: number, kTiles: number, group: number, spans: number): Arg[] {
  return [
    { ptr: a.q }, { ptr: a.k }, { ptr: a.v }, { ptr: a.qPos }, { ptr: a.kPos }, { ptr: a.qSeg ?? 0 }, { ptr: a.kSeg ?? 0 },
    { ptr: qTiles }, { ptr: kTiles }, { ptr: a.o }, { ptr: a.lse }, ...tailFields(a), { i32: group }, { ptr: spans }, { ptr: a.trace ?? 0 },
  ];
}

/** BwdParams (kernels/common.cuh) field by field, for packStruct (checked as fwdParamFields is). */
export function bwdParamFields(a: DeviceBackwardArgs, qTiles: number, kTiles: number, split: number, group: number): Arg[] {
  return [
    { ptr: a.q }, { ptr: a.k }, { ptr: a.v }, { ptr: a.dO }, { ptr: a.lse }, { ptr: a.delta }, { ptr: a.qPos }, { ptr: a.kPos },
    { ptr: a.qSeg ?? 0 }, { ptr: a.kSeg ?? 0 }, { ptr: qTiles }, { ptr: kTiles }, { ptr: a.dq }, { ptr: a.dk }, { ptr: a.dv }, ...tailFields(a),
    { i32: split }, { i32: group }, { ptr: a.trace ?? 0 },
  ];
}

function validate(a: DeviceBlockArgs): void {
  throwReason(supported(a));
  if (!!a.qSeg !== !!a.kSeg) throw new InputError(a.qSeg ? 'kSeg' : 'qSeg', 'segments must be given for both queries and keys');
}

/**
 * CTAs per key tile in the tensor-core backward: the GQA group's query heads are shared out
 * (their dK/dV then meet by atomics) while the launch would be under 8 CTAs per SM, so that a
 * ring step's smaller block still runs in many short waves. RINGATTN_BWD_SPLIT overrides it.
 */
export function bwdSplit(ctas: number, group: number, smCount: number): number {
  const forced = Number(process.env.RINGATTN_BWD_SPLIT);
  if (Number.isInteger(forced) && forced >= 1) return group % forced === 0 ? forced : 1;
  let split = 1;
  while (ctas * split < 8 * smCount && group % (split * 2) === 0) split *= 2;
  return split;
}

/**
 * Heads interleaved per group in the tensor-core kernels' launch order (launchTile in
 * kernels/common.cuh). Under a mask the tiles of one head differ in work (a causal query tile
 * sees as many key tiles as precede it) and the kernels start each head's heaviest first; with
 * heads one after another, the last heads' heavy tiles start last and the SMs wait on them. Groups
 * of g heads interleaved start g heads' heavy tiles together; g is the fewest heads whose tiles
 * make two waves (2 x SMs CTAs), at most 4: on an H100 at 8k, causal, forward TFLOP/s (medians of
 * six runs) went 458 (one head at a time) -> 477 (groups of 2 or 4) -> 452 (5) at D=128 H=32,
 * and 195 -> 202 / 210 -> 179 (7) at D=64 H=8 (kernels/NOTES.md run 51). g divides the heads: a
 * short last group (32 heads in groups of 3: the last of 2) starts its heavy tiles late with too
 * few light ones left to fill in beside them; a list-scheduling model of 132 SMs put 16k causal at
 * H=16 from a 4.9% idle tail (g = 3) to 0.8% (g = 4), and a window's edge at H=32 from 4.6% to
 * 1.1% (kernels/NOTES.md session 31). So g is the smallest divisor of the heads, at most 4, that
 * makes the two waves, else the largest divisor at most 4. Unmasked blocks keep one head at a
 * time (every tile the same work). RINGATTN_HEAD_GROUP overrides it (1: one head at a time).
 */
const MAX_HEAD_GROUP = 4;
export function headGroup(tiles: number, heads: number, masked: boolean, smCount: number): number {
  const forced = Number(process.env.RINGATTN_HEAD_GROUP);
  if (Number.isInteger(forced) && forced >= 1) return Math.min(forced, heads);
  if (!masked || tiles <= 0) return 1;
  const want = Math.ceil((2 * smCount) / tiles);
  let g = 1;
  for (let d = 1; d <= Math.min(heads, MAX_HEAD_GROUP); d++) {
    if (heads % d !== 0) continue;
    g = d;
    if (d >= want) break;
  }
  return g;
}

export function cudaKernel(ctx: CudaContext): CudaAttentionKernel {
  let work: DeviceBuffer | undefined;
  const workspace = (bytes: number): number => {
    if (!work || work.bytes < bytes) {
      // The stream may still read the old one.
      if (work) ctx.sync();
      ctx.free(work);
      work = ctx.alloc(Math.max(bytes, 4096));
    }
    return work.ptr;
  };
  const ranges = (pos: number, seg: number, n: number, tile: number, out: number) => {
    const tiles = Math.ceil(n / tile);
    const args: Arg[] = [{ ptr: pos }, { ptr: seg }, { i32: n }, { i32: tile }, { ptr: out }];
    ctx.launch(ctx.fn('attn_fwd.cu', 'attn_tile_ranges'), 'attn_tile_ranges', [Math.ceil(tiles / 128), 1, 1], 128, 0, argBuffers(args));
  };
  const masked = (a: DeviceBlockArgs): boolean => a.causal || a.window > 0 || !!(a.qSeg && a.kSeg);
  // The forward's schedule on this device: ht, hw, hl and hc need cuTensorMapEncodeTiled, else hq.
  const forwardSchedule = (tag: KernelTag, scale?: number): WgmmaForward | null => {
    const wg = wgmmaForward(tag, ctx.computeCapability, scale);
    return tmaForward(wg) && !ctx.drv.cuTensorMapEncodeTiled ? 'hq' : wg;
  };
  // The workspace (workspaceBytes): query tiles' boxes, key tiles' boxes, then the query tiles'
  // key-tile spans (written for the tensor-core forwards, by spans()).
  const boxes = (a: DeviceBlockArgs, [bq, bk]: [number, number]): [number, number, number] => {
    const ws = workspace(workspaceBytes(a.Sq, a.Sk));
    const qTiles = ws;
    const kTiles = ws + Math.ceil(a.Sq / 32) * 16;
    ranges(a.qPos, a.qSeg ?? 0, a.Sq, bq, qTiles);
    ranges(a.kPos, a.kSeg ?? 0, a.Sk, bk, kTiles);
    return [qTiles, kTiles, kTiles + Math.ceil(a.Sk / BK) * 16];
  };
  // {first, one past the last} key tile each query tile sees anything of (attn_tile_spans), for
  // the tensor-core forwards (Hopper and mma.sync): a CTA no longer reads every key tile's box to find them.
  const spans = (a: DeviceBlockArgs, [bq, bk]: [number, number], qTiles: number, kTiles: number, out: number): number => {
    const args: Arg[] = [
      { ptr: qTiles }, { ptr: kTiles }, { i32: Math.ceil(a.Sk / bk) }, { i32: a.causal ? 1 : 0 }, { i32: a.window },
      { i32: a.window > 0 ? a.sinks : 0 }, { i32: a.qSeg && a.kSeg ? 1 : 0 }, { ptr: out },
    ];
    ctx.launch(ctx.fn('attn_fwd.cu', 'attn_tile_spans'), 'attn_tile_spans', [Math.ceil(a.Sq / bq), 1, 1], 128, 0, argBuffers(args));
    return out;
  };
  return {
    name: (spec) => {
      const tag = chooseKernel(spec, ctx.computeCapability);
      const wg = forwardSchedule(tag, spec.scale);
      const wgb = wgmmaBackward(tag, ctx.computeCapability);
      const bwd = wgb ? `+wgmma-bwd${wgb === 'ht' ? '-ht' : ''}` : '';
      return `cuda/${tag}${wg ? `+wgmma-fwd-${wg}` : ''}${bwd}/${spec.dtype}`;
    },

    forward(a: DeviceForwardArgs): void {
      validate(a);
      if (a.Sq === 0 || a.Sk === 0) return;
      const tag = chooseKernel(a, ctx.computeCapability);
      if (tag !== 'generic') throwReason(misaligned({ q: a.q, k: a.k, v: a.v }));
      const chosen = forwardSchedule(tag, a.scale);
      // hc's clusters pair query tiles that read the same key tiles: blocks under a mask, or with
      // an odd number of query tiles (one would have no partner), run ht.
      const wg = chosen === 'hc' && (masked(a) || Math.ceil(a.Sq / WG_TILE) % 2 === 1) ? 'ht' : chosen;
      const tile = fwdTiles(tag, wg);
      const [qTiles, kTiles, spanOut] = boxes(a, tile);
      const [bq, bk] = tile;
      const group = headGroup(Math.ceil(a.Sq / bq), a.H, masked(a), ctx.smCount);
      const params = packStruct(fwdParamFields(a, qTiles, kTiles, group, tag !== 'generic' ? spans(a, tile, qTiles, kTiles, spanOut) : 0));
      if (tag === 'generic') {
        const name = `attn_fwd_generic_${SUFFIX[a.dtype]}`;
        ctx.launch(ctx.fn('attn_fwd.cu', name), name, [Math.ceil(a.Sq / 4), a.H, 1], 128, 0, [params]);
      } else if (wg) {
        const maps = tmaForward(wg) ? fwdTensorMaps(ctx, a, bq, bk) : null;
        const name = `attn_fwd_${wg}_${SUFFIX[a.dtype]}_d${a.D}`;
        const smem = wgFwdSmem(a.D, bq, bk);
        // 64 query rows a consumer warpgroup, and the producer warpgroup (hc: an even count of
        // query tiles, in clusters of two).
        ctx.launch(ctx.fn('attn_fwd_h.cu', name, smem), name, wgFwdGrid(wg, Math.ceil(a.Sq / bq), a.H, ctx.smCount), 2 * bq + 128, smem, maps ? [params, maps] : [params]);
      } else {
        const name = `attn_fwd_mma_${SUFFIX[a.dtype]}_d${a.D}`;
        const smem = fwdSmem(a.D);
        ctx.launch(ctx.fn('attn_fwd.cu', name, smem), name, [Math.ceil(a.Sq / bq), a.H, 1], 128, smem, [params]);
      }
    },

    backward(a: DeviceBackwardArgs): void {
      validate(a);
      if (a.Sq === 0 || a.Sk === 0) return;
      const tag = chooseKernel(a, ctx.computeCapability);
      // dq is added by TMA reduce, dk/dv by 8-byte vector reductions (attn_bwd_h) or float2 atomics.
      if (tag !== 'generic') throwReason(misaligned({ q: a.q, k: a.k, v: a.v, dO: a.dO, dq: a.dq, dk: a.dk, dv: a.dv }));
      // attn_bwd_h keeps a bit per query tile in shared memory (longer query blocks go to
      // attn_bwd.cu) and adds dQ by TMA (a driver without tensor maps runs attn_bwd.cu too).
      const wgb = Math.ceil(a.Sq / wgBwdBq(a.D)) <= WG_BWD_MAX_QTILES ? wgmmaBackward(tag, ctx.computeCapability) : null;
      const maps = wgb ? bwdTensorMaps(ctx, a) : null;
      const wg = maps !== null;
      const tile = bwdTiles(tag, wg);
      const [qTiles, kTiles] = boxes(a, tile);
      const bq = tile[0], bk = tile[1];
      const split = tag === 'generic' ? 1 : bwdSplit(Math.ceil(a.Sk / bk) * a.Hk, a.H / a.Hk, ctx.smCount);
      const params = packStruct(bwdParamFields(a, qTiles, kTiles, split, headGroup(Math.ceil(a.Sk / bk), a.Hk * split, masked(a), ctx.smCount)));
      if (tag === 'generic') {
        const name = `attn_bwd_generic_${SUFFIX[a.dtype]}`;
        ctx.launch(ctx.fn('attn_bwd.cu', name), name, [Math.ceil(a.Sq / 4), a.H, 1], 128, 0, [params]);
      } else if (wg) {
        const name = `attn_bwd_${wgb}_${SUFFIX[a.dtype]}_d${a.D}`;
        const smem = wgBwdSmem(a.D);
        ctx.launch(ctx.fn('attn_bwd_h.cu', name, smem), name, [Math.ceil(a.Sk / bk), a.Hk * split, 1], 256, smem, [params, maps]);
      } else {
        const name = `attn_bwd_mma_${SUFFIX[a.dtype]}_d${a.D}`;
        const smem = bwdSmem(a.D, bq);
        ctx.launch(ctx.fn('attn_bwd.cu', name, smem), name, [Math.ceil(a.Sk / BK), a.Hk * split, 1], 128, smem, [params]);
      }
    },

    delta(dO, o, delta, rows, D, dtype): void {
      const name = `attn_delta_${SUFFIX[dtype]}`;
      ctx.launch(ctx.fn('attn_bwd.cu', name), name, [Math.ceil(rows / 4), 1, 1], 128, 0, argBuffers([{ ptr: dO }, { ptr: o }, { ptr: delta }, { i32: rows }, { i32: D }]));
    },

    finishForward(o, lse, rows, D): void {
      if (rows <= 0) return;
      ctx.launch(ctx.fn('attn_fwd.cu', 'attn_fwd_finish'), 'attn_fwd_finish', [Math.ceil(rows / 256), 1, 1], 256, 0, argBuffers([{ ptr: o }, { ptr: lse }, { i32: rows }, { i32: D }]));
    },

    dispose(): void {
      ctx.sync();
      ctx.free(work);
      work = undefined;
    },
  };
}
