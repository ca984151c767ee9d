import { BackendError, InputError, throwReason } from '../core/errors.js';
import { checkAtLeast, checkDecodeCacheRows, checkDecodeHeads, checkDecodeOut, checkDecodeQueries, checkInt, type DecodeCallArgs } from '../core/inputs.js';
import type { DecodeCache } from '../cpu/decode.js';
import { CU_FUNC_ATTRIBUTE } from './bindings/driver.js';
import { argBuffers, CudaContext, packStruct, Staging, type Arg, type DeviceBuffer } from './context.js';
import { bytesOf, encode, type CudaDType } from './convert.js';
import type { CudaGroup } from './group.js';

/**
 * Split-KV ("flash-decoding") decode attention on the GPU (kernels/decode.cu): Sq (1..16) new
 * query tokens of each of B sequences against that sequence's KV cache, all sequences in one
 * launch, merged in place into the running fp32 (o, lse) exactly like the CPU decode
 * (src/cpu/decode.ts) and the block kernel's forward. Shapes (row-major):
 *   q [B, Sq, H, D] (dtype)   qPos, qSeg [B, Sq] int32   o [B, Sq, H, D], lse [B, Sq, H] fp32
 *   cache b: k, v [n_b, Hk, D] (dtype), pos [n_b] int32, seg [n_b] int32 (optional)
 * Masks are DESIGN.md's on global positions (causal, window, sinks, segments). When a cache's
 * positions ascend (`sorted`, the default on device pointers) only the rows some query can see
 * are read: the sinks prefix and the window (or causal) range, found on the GPU.
 *
 * Three entry points:
 *   - CudaDecode.plan / forward: device pointers (the model, the benchmark);
 *   - decodeAttentionCuda: host arrays (uploads, encodes to the cache dtype, runs, downloads);
 *   - decodeCombineRanks: ranks holding shards of one cache merge their partial (o, lse) so that
 *     every rank ends with the exact merged result (one all-gather, then a merge kernel).
 */

export const DECODE_MAX_SQ = 16;
/** Sequences per launch (their pointers travel in the kernel's parameter block); more are split. */
export const DECODE_MAX_SEQ = 64;
const SUFFIX: Record<CudaDType, string> = { bfloat16: 'bf16', float16: 'f16', float32: 'f32' };

/** One sequence's cache on the device. */
export interface DeviceDecodeCache {
  /** [>= n, Hk, D] in the call's dtype; 16-byte aligned. */
  k: number;
  v: number;
  /** int32 [>= n] global positions. */
  pos: number;
  /** int32 [>= n] segment ids: with qSeg, on every cache. */
  seg?: number;
  /** Rows in use (0 allowed). */
  n: number;
  /** Positions ascend (default true): only visible rows are read. false: every row is read and masked. */
  sorted?: boolean;
}

export interface DeviceDecodeArgs {
  /** [B, Sq, H, D] in `dtype`. */
  q: number;
  /** int32 [B, Sq]. */
  qPos: number;
  /** int32 [B, Sq]; with it, every cache has `seg`. */
  qSeg?: number;
  caches: DeviceDecodeCache[];
  Sq: number;
  H: number;
  Hk: number;
  D: number;
  dtype: CudaDType;
  causal: boolean;
  /** 0 or absent: no window. */
  window?: number;
  /** Only with a window. */
  sinks?: number;
  /** Default 1/sqrt(D). */
  scale?: number;
  /** Running fp32 results [B, Sq, H, D] (16-byte aligned) and [B, Sq, H], merged in place. */
  o: number;
  lse: number;
}

export interface DecodeTuning {
  /**
   * Most waves of CTAs the split may use (default 3, or RINGATTN_DECODE_WAVES). Measured on an H200
   * (bf16, H=32, Hk=8, D=128): one wave is best for one sequence, 1-3 for eight; 8 waves of
   * smaller chunks were ~3% slower at 1M x 8.
   */
  maxWaves?: number;
  /** Fewest cache rows a chunk gets (default 256 on the tensor-core path, 128 on the generic one). */
  minChunkRows?: number;
  /** Fixed cache rows per chunk (tests: force many chunks); default: planChunkRows. */
  chunkRows?: number;
  /** Aim at this many waves of CTAs instead of planning (benchmarks). */
  waves?: number;
  /**
   * Where a sequence's chunk partials are merged (default 'kernel', or RINGATTN_DECODE_MERGE):
   * 'fused', by the last of its CTAs to finish, in the decode kernel; 'kernel', by a second
   * launch (decode_merge) parallel over rows and chunks; 'auto' fuses when each of those CTAs'
   * rows x D / 4 is at most 2 per thread (one decode token of a GQA group: the merge is a few
   * loads a thread). On an H200 the fused merge measured within ±0.3% of the kernel at 128k-1M
   * (NOTES.md runs 41, 43), so the default keeps the simpler path.
   */
  merge?: 'auto' | 'fused' | 'kernel';
}

/** Per-CTA start and finish (the position search, the pipeline's first tiles, the epilogue) in cache rows. */
const CTA_OVERHEAD_ROWS = 128;
/**
 * Longest chunk the plan prefers: with longer ones, SMs that stream a little slower hold the
 * whole grid up at the end (H200, 1M x 8: one wave of 262k-row chunks is slower than ~3 waves).
 */
const PREFERRED_MAX_CHUNK_ROWS = 32768;

/**
 * Rows per chunk for sequences that may read `rows[b]` cache rows, each chunk making `ctasPerChunk`
 * CTAs (KV heads x row groups), on a GPU that runs `slots` CTAs at once. Chunks of one size cost
 * about (their rows + a fixed start) per wave, so the time is waves x (rows + overhead): the plan
 * takes whole waves (a 1.2-wave grid would take two), trying split counts of 1..maxWaves full
 * waves and the per-sequence splits of the longest sequence; it keeps chunks at most
 * PREFERRED_MAX_CHUNK_ROWS long when maxWaves allows, else takes the most waves allowed.
 * Measured on an H200 (bf16, H=32, Hk=8, D=128): one wave is best for one sequence at 32k-1M.
 */
export function planChunkRows(rows: number[], ctasPerChunk: number, slots: number, maxWaves: number, minRows: number): number {
  const total = rows.reduce((s, x) => s + x, 0);
  const longest = Math.max(0, ...rows);
  if (total === 0) return Math.max(minRows, 1);
  const cands = new Set<number>();
  for (let w = 1; w <= maxWaves; w++) {
    const chunks = Math.max(1, Math.floor((w * slots) / ctasPerChunk));
    cands.add(Math.ceil(total / chunks));
  }
  const perSeq = Math.max(1, Math.ceil((maxWaves * slots) / ctasPerChunk));
  for (let k = 1; k <= perSeq; k++) cands.add(Math.ceil(longest / k));
  let best = 0, bestCost = Infinity, fallback = Math.max(minRows, longest);
  for (const c of cands) {
    const r = Math.max(minRows, c);
    let chunks = 0;
    for (const x of rows) chunks += Math.ceil(x / r);
    const waves = Math.ceil((chunks * ctasPerChunk) / slots);
    if (waves > maxWaves && r < longest) continue;
    if (r < fallback) fallback = r;
    if (Math.min(r, longest) > PREFERRED_MAX_CHUNK_ROWS) continue;
    const cost = waves * (Math.min(r, longest) + CTA_OVERHEAD_ROWS);
    if (cost < bestCost || (cost === bestCost && r > best)) {
      bestCost = cost;
      best = r;
    }
  }
  return best > 0 ? best : fallback;
}

export interface DecodePlanInfo {
  /** e.g. 'cuda-decode/mma-d128-m1/bfloat16'. */
  kernel: string;
  /** Chunks over all sequences (partials per KV head and query row). */
  chunks: number;
  /** CTAs of the main kernel(s). */
  ctas: number;
  /** Cache rows per chunk the split aimed at (the visible rows decide the final split on the GPU). */
  chunkRows: number;
  /** Launch groups (sequences are taken DECODE_MAX_SEQ at a time). */
  launches: number;
  /** CTAs of the main kernel an SM holds at once (the occupancy the split assumed). */
  ctasPerSm: number;
  /** Whether the partials are merged in the decode kernel (else by decode_merge). */
  fusedMerge: boolean;
}

export interface DecodePlan {
  readonly info: DecodePlanInfo;
  /** Enqueue the kernels on the context's stream (no host sync). */
  run(): void;
}

type Path = { kind: 'ldg' } | { kind: 'mma'; mt: number } | { kind: 'generic' };

/** Why (dtype, D) has no decode kernel, or null. */
export function decodeSupported(dtype: CudaDType, D: number): string | null {
  if (!['bfloat16', 'float16', 'float32'].includes(dtype)) return `dtype: expected bfloat16, float16 or float32, got ${dtype}`;
  if (!Number.isInteger(D) || D < 1 || D > 256) return `D: expected 1..256, got ${D}`;
  if ((D * bytesOf(dtype)) % 16 !== 0) return `D: expected a head dim whose rows are a multiple of 16 bytes (D % ${16 / bytesOf(dtype)} == 0 for ${dtype}), got ${D}`;
  return null;
}

/** decodeSupported as a check: D, or an InputError naming the argument at fault. */
function supported(dtype: CudaDType, D: unknown): number {
  throwReason(decodeSupported(dtype, D as number));
  return D as number;
}

function choosePath(dtype: CudaDType, D: number, R: number, cc: readonly [number, number]): Path {
  // At most 8 query rows a KV head (one token of a GQA group up to 8:1, or a few tokens of a
  // smaller one): the register-staged kernel (decl in decode.cu; at D = 128 4.46-4.59 TB/s on an
  // H200, 0.97-1.00x cuDNN, where the mma path's cp.async loads stop at ~4.3; NOTES.md run 43; at
  // D = 64 on an H100 1.4-3.5% faster than the mma path, 1.06-1.08x cuDNN against 1.08-1.12x;
  // run 45). Only on sm_90 and later, where it was measured (at sm_80 it spills a few bytes and
  // is untried). RINGATTN_DECODE_LDG=0 picks the mma path.
  const ldg = process.env.RINGATTN_DECODE_LDG;
  if (dtype !== 'float32' && (D === 64 || D === 128) && R <= 8 && cc[0] >= 9 && ldg !== '0') return { kind: 'ldg' };
  if (dtype !== 'float32' && (D === 64 || D === 128) && cc[0] >= 8) {
    const tiles = Math.ceil(Math.min(R, 128) / 16);
    return { kind: 'mma', mt: tiles <= 1 ? 1 : tiles <= 2 ? 2 : tiles <= 4 ? 4 : 8 };
  }
  return { kind: 'generic' };
}

// Shared memory: mirrors decm::Smem<D, WARPS>::BYTES and the generic path's layout in decode.cu.
function mmaSmem(D: number, mt: number): number {
  const BK = 64, LD = D + 8, stages = D === 64 ? 4 : 2, warps = Math.max(4, mt);
  const pipe = stages * (2 * BK * LD * 2 + 2 * BK * 4);
  const epi = warps * 16 * (D + 4) * 4 + 2 * warps * 16 * 4 + 128 * 4 * 4;
  return Math.max(pipe, epi);
}
/** Mirrors decl::Cfg<D>::BYTES: 8 warps' K and V tiles of 2048 / D rows (the epilogue fits in them). */
function ldgSmem(D: number): number {
  return 8 * 2 * (2048 / D) * (D + 8) * 2;
}
function genericSmem(D: number, bytes: number): number {
  const BK = 32, stages = 3, RG = 8;
  return stages * (2 * BK * (D * bytes + 16) + 2 * BK * 4) + RG * D * 4;
}

function ptr(name: string, x: unknown, align: number, optional = false): number {
  if (optional && (x === undefined || x === 0)) return 0;
  if (typeof x !== 'number' || !Number.isSafeInteger(x) || x <= 0) throw new InputError(name, `expected a device pointer (a positive integer), got ${String(x)}`);
  if (x % align !== 0) throw new InputError(name, `expected a ${align}-byte aligned device pointer, got 0x${x.toString(16)}`);
  return x;
}

interface Checked {
  B: number;
  Sq: number;
  G: number;
  R: number;
  window: number;
  sinks: number;
  scale: number;
}

function validateDevice(a: DeviceDecodeArgs): Checked {
  const { H, Hk, D, window, sinks, scale } = checkDecodeHeads(a, 65535, (D) => supported(a.dtype, D));
  const Sq = checkInt('Sq', a.Sq, 1, DECODE_MAX_SQ);
  if (typeof a.causal !== 'boolean') throw new InputError('causal', `expected a boolean, got ${String(a.causal)}`);
  const el = bytesOf(a.dtype);
  ptr('q', a.q, 4);
  ptr('qPos', a.qPos, 4);
  const segs = a.qSeg !== undefined && a.qSeg !== 0;
  if (segs) ptr('qSeg', a.qSeg, 4);
  ptr('o', a.o, 16);
  ptr('lse', a.lse, 4);
  a.caches.forEach((c, b) => {
    const tag = `caches[${b}]`;
    if (!c || typeof c !== 'object') throw new InputError(tag, 'expected { k, v, pos, n } device pointers and a row count');
    const n = checkInt(`${tag}.n`, c.n, 0);
    if (n === 0) return;
    ptr(`${tag}.k`, c.k, 16);
    ptr(`${tag}.v`, c.v, 16);
    ptr(`${tag}.pos`, c.pos, 4);
    if (segs !== (c.seg !== undefined && c.seg !== 0)) throw new InputError(segs ? `${tag}.seg` : 'qSeg', 'segments must be given for the queries and every cache, or for none');
    if (segs) ptr(`${tag}.seg`, c.seg, 4);
    if (c.sorted !== undefined && typeof c.sorted !== 'boolean') throw new InputError(`${tag}.sorted`, `expected a boolean, got ${String(c.sorted)}`);
    if ((n * Hk * D * el) > Number.MAX_SAFE_INTEGER) throw new InputError(`${tag}.n`, `cache of ${n} rows is too large`);
  });
  const G = H / Hk;
  return { B: a.caches.length, Sq, G, R: Sq * G, window, sinks, scale };
}

/**
 * Decode attention on one GPU, on device buffers. Keeps a workspace for the chunk partials that
 * grows as needed; plans made before the workspace grew must be made again (run() says so).
 */
export class CudaDecode {
  private work: DeviceBuffer | undefined;
  private generation = 0;
  private readonly regs = new Map<string, number>();
  private readonly maxWaves: number;
  private readonly minChunkRows?: number;
  private readonly chunkRowsOverride?: number;
  private readonly waves?: number;
  private readonly merge: 'auto' | 'fused' | 'kernel';
  /** The fused merge's arrival counters (int32, zero between launches). */
  private counters: DeviceBuffer | undefined;

  constructor(readonly ctx: CudaContext, tuning: DecodeTuning = {}) {
    const env = Number(process.env.RINGATTN_DECODE_WAVES);
    this.maxWaves = tuning.maxWaves ?? (Number.isFinite(env) && env > 0 ? env : 3);
    if (!Number.isInteger(this.maxWaves) || this.maxWaves < 1) throw new InputError('maxWaves', `expected a positive integer, got ${this.maxWaves}`);
    if (tuning.minChunkRows !== undefined) checkInt('minChunkRows', tuning.minChunkRows, 1);
    if (tuning.chunkRows !== undefined) checkInt('chunkRows', tuning.chunkRows, 1);
    if (tuning.waves !== undefined) checkInt('waves', tuning.waves, 1, 1024);
    this.minChunkRows = tuning.minChunkRows;
    this.chunkRowsOverride = tuning.chunkRows;
    this.waves = tuning.waves;
    const merge = tuning.merge ?? (process.env.RINGATTN_DECODE_MERGE || 'kernel');
    if (merge !== 'auto' && merge !== 'fused' && merge !== 'kernel') {
      throw new InputError(tuning.merge !== undefined ? 'merge' : 'RINGATTN_DECODE_MERGE', `expected 'auto', 'fused' or 'kernel', got ${JSON.stringify(merge)}`);
    }
    this.merge = merge;
  }

  /** Arrival counters for `count` (CTA groups of one launch), zeroed when (re)allocated; plans made before a reallocation are stale, as for the workspace. */
  private countersFor(count: number): number {
    if (!this.counters || this.counters.bytes < count * 4) {
      if (this.counters) this.ctx.sync();
      this.ctx.free(this.counters);
      this.counters = undefined;
      this.counters = this.ctx.alloc(Math.max(count * 4, 4096));
      this.ctx.fill32(this.counters, 0, this.counters.bytes / 4);
      this.generation++;
    }
    return this.counters.ptr;
  }

  /** The kernel a call of this shape runs, e.g. 'cuda-decode/mma-d128-m1/bfloat16'. */
  kernelName(dtype: CudaDType, D: number, Sq = 1, G = 1): string {
    const p = choosePath(dtype, D, Sq * G, this.ctx.computeCapability);
    return `cuda-decode/${p.kind === 'ldg' ? `ldg-d${D}` : p.kind === 'mma' ? `mma-d${D}-m${p.mt}` : 'generic'}/${dtype}`;
  }

  private workspace(bytes: number): number {
    if (!this.work || this.work.bytes < bytes) {
      if (this.work) this.ctx.sync(); // the stream may still use the old one
      this.ctx.free(this.work);
      this.work = undefined;
      this.work = this.ctx.alloc(Math.max(bytes, 1 << 16));
      this.generation++;
    }
    return this.work.ptr;
  }

  /** Registers per thread of a kernel (for the occupancy the split assumes). */
  private regsOf(name: string, fn: unknown): number {
    let r = this.regs.get(name);
    if (r === undefined) {
      const out: [number] = [0];
      const rc = this.ctx.drv.cuFuncGetAttribute(out, CU_FUNC_ATTRIBUTE.NUM_REGS, fn as never);
      r = rc === 0 && out[0] > 0 ? out[0] : 128;
      this.regs.set(name, r);
    }
    return r;
  }

  /** Validate, choose the kernel and the split, pack the parameters: run() only launches. */
  plan(a: DeviceDecodeArgs): DecodePlan {
    const c = validateDevice(a);
    const { B, Sq, G, R } = c;
    const { H, Hk, D, dtype } = a;
    const el = bytesOf(dtype);
    const path = choosePath(dtype, D, R, this.ctx.computeCapability);
    const rowsPerPass = path.kind === 'mma' ? 128 : 8;  // ldg: R <= 8
    const zGroups = Math.ceil(R / rowsPerPass);
    if (zGroups > 65535) throw new InputError('Sq', `too many query rows (Sq * H / Hk = ${R})`);
    const name = path.kind === 'ldg' ? `decode_ldg_${SUFFIX[dtype]}_d${D}` : path.kind === 'mma' ? `decode_mma_${SUFFIX[dtype]}_d${D}_m${path.mt}` : `decode_generic_${SUFFIX[dtype]}`;
    const threads = path.kind === 'ldg' ? 256 : path.kind === 'mma' ? Math.max(4, path.mt) * 32 : 128;
    const smem = path.kind === 'ldg' ? ldgSmem(D) : path.kind === 'mma' ? mmaSmem(D, path.mt) : genericSmem(D, el);
    const fn = this.ctx.fn('decode.cu', name, smem);
    const merge = this.ctx.fn('decode.cu', 'decode_merge');
    // CTAs an SM holds: shared memory (228 KB an SM, 1 KB reserved a CTA), registers, threads.
    const bySmem = Math.floor((this.ctx.maxSharedOptin + 1024) / (smem + 1024 + 64));
    const byRegs = Math.floor(65536 / (threads * Math.ceil(this.regsOf(name, fn) / 8) * 8));
    const perSm = Math.max(1, Math.min(bySmem, byRegs, Math.floor(2048 / threads), 32));
    // Rows each sequence may read (an upper bound when a window leaves part of the cache unseen).
    const bound = a.caches.map((x) => {
      if (x.n === 0) return 0;
      if (c.window > 0 && x.sorted !== false) return Math.min(x.n, c.sinks + (a.causal ? 1 : 2) * c.window + Sq + 64);
      return x.n;
    });
    const minRows = this.minChunkRows ?? (path.kind === 'generic' ? 128 : 256);
    const slots = this.ctx.smCount * perSm;
    const chunkRows = this.chunkRowsOverride ??
      (this.waves ? Math.max(minRows, Math.ceil(bound.reduce((x, y) => x + y, 0) / Math.max(1, Math.floor((this.waves * slots) / (Hk * zGroups))))) : planChunkRows(bound, Hk * zGroups, slots, this.maxWaves, minRows));
    const chunksOf = bound.map((x) => (x === 0 ? 0 : Math.ceil(x / chunkRows)));
    const groups: { b0: number; b1: number; chunks: number }[] = [];
    let allChunks = 0;
    for (let b0 = 0; b0 < B; b0 += DECODE_MAX_SEQ) {
      const b1 = Math.min(B, b0 + DECODE_MAX_SEQ);
      let chunks = 0;
      for (let b = b0; b < b1; b++) chunks += chunksOf[b];
      groups.push({ b0, b1, chunks });
      allChunks += chunks;
    }
    // Partials: [chunks, Hk, R] rows of D outputs, then [chunks, Hk, R] LSEs, per group.
    const partRows = (ch: number) => ch * Hk * R;
    const wsBytes = groups.reduce((s, g) => s + Math.ceil((partRows(g.chunks) * (D + 1) * 4) / 256) * 256, 0);
    const ws = this.workspace(wsBytes);
    const fused = this.merge === 'fused' || (this.merge === 'auto' && zGroups === 1 && (R * D) / 4 <= 2 * threads);
    const counters = fused ? this.countersFor(Math.min(B, DECODE_MAX_SEQ) * Hk * zGroups) : 0;
    const gen = this.generation;
    const scaleLog2 = c.scale * Math.LOG2E;
    const launches: { params: Buffer; chunks: number; rows: number }[] = [];
    let off = 0;
    for (const g of groups) {
      const nb = g.b1 - g.b0;
      const pr = partRows(g.chunks);
      const partO = ws + off, partL = ws + off + pr * D * 4;
      off += Math.ceil((pr * (D + 1) * 4) / 256) * 256;
      const pad = <T>(xs: T[], fill: T, len = DECODE_MAX_SEQ): T[] => [...xs, ...Array<T>(len - xs.length).fill(fill)];
      const seqs = a.caches.slice(g.b0, g.b1);
      const chunk0: number[] = [0];
      for (let b = g.b0; b < g.b1; b++) chunk0.push(chunk0[chunk0.length - 1] + chunksOf[b]);
      const rowQ = Sq * H * D;
      const fields: Arg[] = [
        { ptr: a.q + g.b0 * rowQ * el }, { ptr: a.qPos + g.b0 * Sq * 4 }, { ptr: a.qSeg ? a.qSeg + g.b0 * Sq * 4 : 0 },
        { ptr: a.o + g.b0 * rowQ * 4 }, { ptr: a.lse + g.b0 * Sq * H * 4 }, { ptr: partO }, { ptr: partL }, { ptr: counters },
        ...pad(seqs.map((x) => (x.n > 0 ? x.k : 0)), 0).map((p) => ({ ptr: p })),
        ...pad(seqs.map((x) => (x.n > 0 ? x.v : 0)), 0).map((p) => ({ ptr: p })),
        ...pad(seqs.map((x) => (x.n > 0 ? x.pos : 0)), 0).map((p) => ({ ptr: p })),
        ...pad(seqs.map((x) => (x.n > 0 && a.qSeg ? (x.seg ?? 0) : 0)), 0).map((p) => ({ ptr: p })),
        ...pad(seqs.map((x) => x.n), 0).map((i) => ({ i32: i })),
        ...pad(chunk0, chunk0[chunk0.length - 1], DECODE_MAX_SEQ + 1).map((i) => ({ i32: i })),
        ...pad(seqs.map((x) => (x.sorted === false ? 0 : 1)), 0).map((i) => ({ i32: i })),
        { i32: nb }, { i32: Sq }, { i32: H }, { i32: Hk }, { i32: D },
        { i32: a.causal ? 1 : 0 }, { i32: c.window }, { i32: c.sinks }, { i32: R }, { f32: scaleLog2 },
      ];
      launches.push({ params: packStruct(fields), chunks: g.chunks, rows: nb * Sq * H });
    }
    const ctx = this.ctx;
    const info: DecodePlanInfo = {
      kernel: this.kernelName(dtype, D, Sq, G), chunks: allChunks, ctas: allChunks * Hk * zGroups, chunkRows, launches: groups.length, ctasPerSm: perSm, fusedMerge: fused,
    };
    return {
      info,
      run: () => {
        if (this.generation !== gen || !this.work) throw new BackendError('decode plan is stale: its workspace or merge counters were replaced by a larger plan (plan again)');
        for (const l of launches) {
          if (l.chunks > 0) ctx.launch(fn, name, [l.chunks, Hk, zGroups], threads, smem, [l.params]);
          if (l.chunks > 0 && !fused) ctx.launch(merge, 'decode_merge', [l.rows, 1, 1], 256, 0, [l.params]);
        }
      },
    };
  }

  /** plan(a).run(). */
  forward(a: DeviceDecodeArgs): DecodePlanInfo {
    const p = this.plan(a);
    p.run();
    return p.info;
  }

  /** Fill the partials workspace with NaN (tests: every partial a run reads must be written). */
  poisonWorkspace(): void {
    if (this.work) this.ctx.fill32(this.work, 0x7fc00000, Math.floor(this.work.bytes / 4));
  }

  dispose(): void {
    this.ctx.sync();
    this.ctx.free(this.work);
    this.ctx.free(this.counters);
    this.work = undefined;
    this.counters = undefined;
    this.generation++;
  }
}

// ---- host arrays ------------------------------------------------------------------------------

/** The CPU decode's cache (src/cpu/decode.ts) with fp32 keys and values [n, Hk, D]. */
export interface HostDecodeCache extends DecodeCache {
  k: Float32Array;
  v: Float32Array;
}

export interface CudaDecodeArgs extends DecodeCallArgs<HostDecodeCache> {
  /** Cache and query precision on the GPU (default bfloat16). o and lse are fp32. */
  dtype?: CudaDType;
  /** An open context (else GPU `device` is opened and released). */
  context?: CudaContext;
  device?: number;
  /** Reuse a decoder (its workspace) across calls. */
  decoder?: CudaDecode;
  tuning?: DecodeTuning;
  /** Test hook: NaN in the partials workspace before the run. */
  poison?: boolean;
}

export interface CudaDecodeResult {
  o: Float32Array;
  lse: Float32Array;
  info: DecodePlanInfo;
}

function isSorted(pos: Int32Array, n: number): boolean {
  for (let j = 1; j < n; j++) if (pos[j] < pos[j - 1]) return false;
  return true;
}

/**
 * Decode attention of host arrays on the GPU: q and the caches are encoded to `dtype` on upload;
 * the fp32 (o, lse) are uploaded, merged into on the GPU and downloaded in place. Returns them.
 */
export function decodeAttentionCuda(a: CudaDecodeArgs): CudaDecodeResult {
  const h = checkDecodeHeads(a, 65535);
  const { B, H, Hk, D } = h;
  const dtype = a.dtype ?? 'bfloat16';
  const Sq = checkDecodeQueries(a, h, DECODE_MAX_SQ);
  const segs = a.qSeg !== undefined;
  if (segs) {
    if (!(a.qSeg instanceof Int32Array)) throw new InputError('qSeg', 'expected an Int32Array [B, Sq]');
    checkAtLeast('qSeg', a.qSeg, B * Sq, `[B = ${B}, Sq = ${Sq}]`);
  }
  const ns = a.caches.map((c, b) => {
    if (!c || !(c.k instanceof Float32Array) || !(c.v instanceof Float32Array) || !(c.pos instanceof Int32Array)) {
      throw new InputError(`caches[${b}]`, 'expected { k: Float32Array, v: Float32Array, pos: Int32Array }');
    }
    return checkDecodeCacheRows(b, c, h, segs);
  });
  if (typeof a.causal !== 'boolean') throw new InputError('causal', `expected a boolean, got ${String(a.causal)}`);
  const o = a.o ?? new Float32Array(B * Sq * H * D);
  const lse = a.lse ?? new Float32Array(B * Sq * H).fill(-Infinity);
  if (!(o instanceof Float32Array) || !(lse instanceof Float32Array)) throw new InputError(o instanceof Float32Array ? 'lse' : 'o', 'expected a Float32Array');
  checkDecodeOut(o, lse, h, Sq);
  supported(dtype, D);
  if (a.kvSorted === false) {
    // the kernel reads and masks every row
  } else if (a.kvSorted === true) {
    a.caches.forEach((c, b) => {
      if (!isSorted(c.pos, ns[b])) throw new InputError(`caches[${b}].pos`, 'kvSorted is true but the positions do not ascend');
    });
  }
  if (B === 0) return { o, lse, info: { kernel: 'none', chunks: 0, ctas: 0, chunkRows: 0, launches: 0, ctasPerSm: 0, fusedMerge: false } };

  const ctx = a.context ?? CudaContext.open(a.device ?? 0);
  const dec = a.decoder ?? new CudaDecode(ctx, a.tuning);
  const st = new Staging(ctx);
  const up = (x: ArrayBufferView) => st.up(x);
  try {
    const rows = B * Sq * H;
    const caches: DeviceDecodeCache[] = a.caches.map((c, b) => {
      const n = ns[b];
      if (n === 0) return { k: 0, v: 0, pos: 0, n: 0 };
      const len = n * Hk * D;
      return {
        k: up(encode(c.k.subarray(0, len), dtype)), v: up(encode(c.v.subarray(0, len), dtype)), pos: up(c.pos.subarray(0, n)),
        seg: c.seg ? up(c.seg.subarray(0, n)) : undefined, n, sorted: a.kvSorted ?? isSorted(c.pos, n),
      };
    });
    const dq = up(encode(a.q.subarray(0, rows * D), dtype));
    const dqPos = up(a.qPos.subarray(0, B * Sq));
    const dqSeg = a.qSeg ? up(a.qSeg.subarray(0, B * Sq)) : undefined;
    const dO = up(o.subarray(0, rows * D));
    const dL = up(lse.subarray(0, rows));
    const plan = dec.plan({ q: dq, qPos: dqPos, qSeg: dqSeg, caches, Sq, H, Hk, D, dtype, causal: a.causal, window: a.window, sinks: a.sinks, scale: a.scale, o: dO, lse: dL });
    if (a.poison) dec.poisonWorkspace();
    plan.run();
    ctx.download(o.subarray(0, rows * D), dO);
    ctx.download(lse.subarray(0, rows), dL);
    return { o, lse, info: plan.info };
  } finally {
    st.free();
    if (!a.decoder) dec.dispose();
    if (!a.context) ctx.dispose();
  }
}

// ---- merges of partial results ----------------------------------------------------------------

/**
 * Merge P partial results laid out as an all-gather leaves them — `gathered` holds, for rank
 * r = 0..P-1, [rows * D outputs | rows LSEs] fp32 — into (o, lse), in rank order. A row no
 * partial saw keeps its (o, lse). Enqueued on the context's stream.
 */
export function mergeGatheredDevice(ctx: CudaContext, gathered: number, P: number, rows: number, D: number, o: number, lse: number): void {
  checkInt('P', P, 1);
  checkInt('rows', rows, 0);
  checkInt('D', D, 1, 4096);
  if (rows === 0) return;
  const args: Arg[] = [{ ptr: gathered }, { i32: P }, { i32: rows }, { i32: D }, { ptr: o }, { ptr: lse }];
  ctx.launch(ctx.fn('decode.cu', 'decode_merge_ranks'), 'decode_merge_ranks', [Math.ceil(rows / 4), 1, 1], 128, 0, argBuffers(args));
}

/** Reusable buffers of the rank combine (one all-gather's send and receive buffers). */
export class DecodeCombiner {
  private send: DeviceBuffer | undefined;
  private recv: DeviceBuffer | undefined;

  constructor(readonly group: CudaGroup) {}

  /**
   * Every rank holds the partial (o [rows, D], lse [rows]) fp32 of the same query rows over its
   * own shard of the cache; afterwards every rank holds the merged result, identical bits on
   * every rank. The copies into one packed buffer, one all-gather of it and decode_merge_ranks
   * all run on the compute stream behind the decode that made (o, lse); the host then waits
   * once, polling for a failed rank (CudaGroup.syncStream), so a step costs one host round trip.
   */
  combine(o: number, lse: number, rows: number, D: number): void {
    const g = this.group;
    checkInt('rows', rows, 0);
    checkInt('D', D, 1, 4096);
    ptr('o', o, 4);
    ptr('lse', lse, 4);
    if (rows === 0 || g.world === 1) return;
    const per = rows * (D + 1);
    const ctx = g.ctx;
    if (!this.send || this.send.bytes < per * 4) {
      g.syncAll();
      ctx.free(this.send);
      ctx.free(this.recv);
      this.send = undefined;
      this.recv = undefined;
      this.send = ctx.alloc(per * 4);
      this.recv = ctx.alloc(per * 4 * g.world);
    }
    const send = this.send.ptr, recv = (this.recv as DeviceBuffer).ptr;
    const copy = (dst: number, src: number, bytes: number) =>
      ctx.check('cuMemcpyDtoDAsync_v2', ctx.drv.cuMemcpyDtoDAsync_v2(dst, src, bytes, ctx.stream));
    copy(send, o, rows * D * 4);
    copy(send + rows * D * 4, lse, rows * 4);
    g.allGatherOnStream(send, recv, per);
    mergeGatheredDevice(ctx, recv, g.world, rows, D, o, lse);
    g.syncStream();
  }

  dispose(): void {
    this.group.syncAll();
    this.group.ctx.free(this.send);
    this.group.ctx.free(this.recv);
    this.send = this.recv = undefined;
  }
}

/**
 * One-shot rank combine (see DecodeCombiner.combine): o [rows, D] and lse [rows] are device
 * pointers on every rank; afterwards they hold the exact merge over all ranks on every rank.
 */
export function decodeCombineRanks(group: CudaGroup, o: number, lse: number, rows: number, D: number): void {
  const c = new DecodeCombiner(group);
  try {
    c.combine(o, lse, rows, D);
  } finally {
    c.dispose();
  }
}

/** Read-bandwidth probe for benchmarks: reads `bytes` (a multiple of 16) at `src` once. */
export function readProbe(ctx: CudaContext, src: number, bytes: number): void {
  const fn = ctx.fn('decode.cu', 'decode_read_bw');
  const n = Math.floor(bytes / 16);
  const args = [packStruct([{ ptr: src }]).subarray(0, 8), Buffer.from(new BigInt64Array([BigInt(n)]).buffer), packStruct([{ ptr: 0 }]).subarray(0, 8)];
  ctx.launch(fn, 'decode_read_bw', [ctx.smCount * 8, 1, 1], 256, 0, args);
}
