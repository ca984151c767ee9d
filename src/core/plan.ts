import { InputError } from './errors.js';
import { LAYOUTS, type Layout } from './layout.js';

/**
 * The cost and memory planner: how much memory each device of a ring needs, how long a layer
 * of attention takes, whether the transfer of a KV block hides behind the compute of the
 * previous one, and what a single device would need for the same work.
 *
 * Note [overlap condition]: at each ring step a rank computes one block pair, `4·c²·D·H`
 * FLOP when all pairs are visible (2 for QKᵀ, 2 for PV), while the next KV block of
 * `2·c·D·Hk·bytes` travels. The transfer hides when
 *
 *     c >= (FLOP/s ÷ byte/s) · 2·Hk·bytes / (4·H·κ)
 *
 * where κ is the fraction of a full c×c block that the busiest rank computes on a
 * non-diagonal step: 1 without a causal mask; 1 for a causal contiguous split (rank P-1
 * sees every earlier block whole); 1/2 for causal zigzag (of the four chunk pairs of two
 * ranks exactly two are visible) and about 1/2 for causal striped. So a causal zigzag ring
 * needs twice the tokens per device of a non-causal one to hide its transfers.
 *
 * Note [step model]: a forward pass takes P steps and P-1 transfers; the transfer of step
 * k+1 overlaps the compute of step k, so
 *
 *     time = compute(diagonal step) + (P-1) · max(compute(off-diagonal step), transfer)
 *
 * The diagonal step (a rank's own block) is c(c+1)/2 pairs under a causal mask for every
 * layout, c² otherwise. Ragged shards (S not a multiple of P) are modelled as padded to
 * c = ceil(S/P) tokens; the exact work of the busiest rank is reported separately.
 *
 * Conventions: backward = 2.5 × forward FLOPs (FlashAttention's accounting: 5 GEMMs to
 * the forward's 2, so train = 3.5 × forward); the backward also sends the travelling dK/dV
 * accumulators in fp32 with each KV block. GB, GB/s and TFLOP/s are decimal (1e9, 1e12);
 * reported byte counts are exact and formatted in binary units (GiB, MiB).
 */

export type PlanDtype = 'bf16' | 'fp16' | 'fp32';
export type PlanMode = 'train' | 'prefill' | 'decode';
export type DevicePresetName = 'h100' | 'h200' | 'a100' | 'cpu';

export const PLAN_DTYPES: readonly PlanDtype[] = ['bf16', 'fp16', 'fp32'];
export const PLAN_MODES: readonly PlanMode[] = ['train', 'prefill', 'decode'];
export const DEVICE_NAMES: readonly DevicePresetName[] = ['h100', 'h200', 'a100', 'cpu'];

export const BYTES_PER_ELEMENT: Readonly<Record<PlanDtype, number>> = { bf16: 2, fp16: 2, fp32: 4 };

export interface DevicePreset {
  /** Device memory in GB (1e9 bytes). */
  memoryGB: number;
  /** Sustained attention-kernel TFLOP/s in bf16/fp16 (what a good kernel reaches, not peak). */
  tflops: number;
  /** Sustained attention TFLOP/s with fp32 inputs. */
  tflopsFp32: number;
  /** Dense bf16 peak from the data sheet, for reference only. */
  peakTflops: number;
  /** Ring link bandwidth per direction, GB/s. */
  linkGBps: number;
  /** Memory bandwidth, GB/s (decode reads the KV cache at this rate). */
  hbmGBps: number;
  /** Latency of one small message between two ranks, microseconds (decode's merge). */
  latencyUs: number;
  defaultDtype: PlanDtype;
}

/**
 * Device presets. Sources:
 * - h200: measured on the GPU machine here (DESIGN.md "Numbers to keep in mind"): bf16 GEMM
 *   ~790 TFLOP/s, cuDNN attention 610-680 and FA2 ~350 TFLOP/s forward at d=128, so 600 is a
 *   sustained attention figure for a good kernel; NVLink ring send/recv ~300 GB/s per
 *   direction; HBM3e 4.8 TB/s and 141 GB from NVIDIA's data sheet.
 * - h100: same SXM chip as the H200 (989 TFLOP/s dense bf16 peak), 80 GB HBM3 at 3.35 TB/s
 *   (data sheet); attention and link taken as on the H200.
 * - a100: data sheet (312 TFLOP/s bf16 peak, 80 GB HBM2e at 2.039 TB/s, NVLink3 300 GB/s
 *   per direction nominal, ~240 reached by NCCL send/recv); ~200 TFLOP/s for FA2-class
 *   attention (about 2/3 of peak, as FlashAttention-2 reports).
 * - cpu: one rank = one worker process of 2 cores (CI's 2-core EPYC): sgemm 380 GFLOP/s on two
 *   threads, blockwise attention ~100 GFLOP/s fp32 (DESIGN.md); 24 GB of RAM; a
 *   shared-memory 'link' of ~10 GB/s and ~20 GB/s of memory bandwidth per process are
 *   estimates.
 * fp32 figures on GPUs are SIMT (non-tensor-core) estimates: 67 TFLOP/s peak on H100/H200,
 * 19.5 on A100, of which attention sustains roughly 3/4.
 * Latencies are estimates of a small NCCL send/recv within a node (~10 us) and of a
 * wake-up between worker processes (~20 us).
 */
export const DEVICE_PRESETS: Readonly<Record<DevicePresetName, Readonly<DevicePreset>>> = {
  h100: { memoryGB: 80, tflops: 600, tflopsFp32: 50, peakTflops: 989, linkGBps: 300, hbmGBps: 3350, latencyUs: 10, defaultDtype: 'bf16' },
  h200: { memoryGB: 141, tflops: 600, tflopsFp32: 50, peakTflops: 989, linkGBps: 300, hbmGBps: 4800, latencyUs: 10, defaultDtype: 'bf16' },
  a100: { memoryGB: 80, tflops: 200, tflopsFp32: 15, peakTflops: 312, linkGBps: 240, hbmGBps: 2039, latencyUs: 10, defaultDtype: 'bf16' },
  cpu: { memoryGB: 24, tflops: 0.1, tflopsFp32: 0.1, peakTflops: 0.38, linkGBps: 10, hbmGBps: 20, latencyUs: 20, defaultDtype: 'fp32' },
};

/** Backward FLOPs as a multiple of forward FLOPs (FlashAttention convention). */
export const BACKWARD_FLOPS_FACTOR = 2.5;

export interface PlanOptions {
  /** Sequence length S (tokens). */
  seq: number;
  /** Query heads H. */
  heads: number;
  /** Key/value heads Hk (H % Hk == 0). */
  kvHeads: number;
  /** Head dimension D. */
  headDim: number;
  /** Ring size P. */
  devices: number;
  /** Default bf16 (fp32 on the cpu preset). */
  dtype?: PlanDtype;
  /** Default 1. */
  layers?: number;
  /** Default 1. */
  batch?: number;
  /** Default prefill. */
  mode?: PlanMode;
  /** Default h200. */
  device?: DevicePresetName;
  /** Override the preset's sustained TFLOP/s (for the chosen dtype). */
  tflops?: number;
  /** Override the preset's link bandwidth, GB/s per direction. */
  linkGBps?: number;
  /** Override the preset's device memory, GB. */
  memoryGB?: number;
  /** Override the preset's memory bandwidth, GB/s. */
  hbmGBps?: number;
  /** Default true. */
  causal?: boolean;
  /** Default zigzag. */
  layout?: Layout;
  /** Model width, default heads·headDim (used with mlpHidden for training activations). */
  hiddenSize?: number;
  /** Feed-forward width; when given, training also counts the layer activations. */
  mlpHidden?: number;
}

/** Options after defaults, as the plan used them. */
export interface ResolvedPlanOptions {
  seq: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  devices: number;
  dtype: PlanDtype;
  bytesPerElement: number;
  layers: number;
  batch: number;
  mode: PlanMode;
  device: DevicePresetName;
  causal: boolean;
  layout: Layout;
  hiddenSize: number;
  mlpHidden: number | null;
}

export interface PlanHardware {
  device: DevicePresetName;
  /** Sustained TFLOP/s used for the dtype of the plan. */
  tflops: number;
  peakTflops: number;
  linkGBps: number;
  memoryGB: number;
  hbmGBps: number;
  latencyUs: number;
}

/** Bytes per device. `terms` sum exactly to `total`; the named fields are the same numbers. */
export interface MemoryBreakdown {
  tokens: number;
  /** Q shard (decode: the one new token per sequence). */
  q: number;
  /** K and V shards (0 in decode: they are the KV cache). */
  kv: number;
  o: number;
  /** fp32 log-sum-exp, tokens·H·4. */
  lse: number;
  /** Two KV blocks in flight (double-buffered ring), 0 on a single device or in decode. */
  ringBlocks: number;
  /** fp32 output accumulator when the dtype is narrower than fp32. */
  oAccum: number;
  /** Training only: the gradient of the output. */
  dO: number;
  /** Training only: fp32 dQ accumulator. */
  dQAccum: number;
  /** Training only: fp32 dK/dV accumulators, double-buffered when they travel the ring. */
  dKVAccum: number;
  /** Training only: Q, K, V, O, LSE saved by the other L-1 layers (this layer's are above). */
  savedActivations: number;
  /** Training with mlpHidden: per layer 2 layer inputs of hiddenSize and gate/up of mlpHidden. */
  layerActivations: number;
  /** Decode only: K and V of this device's tokens for every layer. */
  kvCache: number;
  total: number;
  terms: Array<{ name: string; bytes: number }>;
  /** Device memory in bytes. */
  capacity: number;
  fits: boolean;
}

export interface PhaseTiming {
  /** Ring steps (P) and transfers (P-1). */
  steps: number;
  transfers: number;
  /** FLOPs of the busiest rank on its own block (step 0) and on any later step. */
  flopsDiagonalStep: number;
  flopsPerStep: number;
  computeDiagonalS: number;
  computeStepS: number;
  transferBytesPerStep: number;
  transferStepS: number;
  /** The transfer of every step hides behind the compute of the one before it. */
  hidden: boolean;
  /** Fraction of transfer time hidden behind compute (1 when there is nothing to send). */
  overlapFraction: number;
  /** Transfer time not hidden, summed over the steps. */
  exposedTransferS: number;
  /** Predicted time of this phase for one layer. */
  timeS: number;
}

export interface PlanFlops {
  /** Fraction of the S² query/key pairs that are visible: (S(S+1)/2)/S² causal, 1 otherwise. */
  causalFraction: number;
  /** Forward FLOPs of one layer over all devices: 4·S²·D·H·B·fraction. */
  forwardTotal: number;
  /** Backward FLOPs of one layer over all devices (2.5 × forward). */
  backwardTotal: number;
  /** forwardTotal / P. */
  forwardPerDeviceMean: number;
  /** Exact forward FLOPs of the busiest rank of the layout. */
  forwardBusiest: number;
  busiestRank: number;
  /** forwardBusiest / forwardPerDeviceMean (1 = balanced). */
  imbalance: number;
}

export interface PlanOverlap {
  /** FLOP per byte the hardware can do while one byte crosses the link. */
  flopsPerByte: number;
  /** Fraction κ of a full block computed on a non-diagonal step (see Note [overlap condition]). */
  stepPairFraction: number;
  /** Least tokens per device for the forward transfer to hide (exact, then rounded up). */
  cMinExact: number;
  cMin: number;
  /** Same for the backward step (KV block + fp32 dK/dV against 2.5× compute). */
  cMinBackwardExact: number;
  cMinBackward: number;
  /** Least sequence length for this ring to hide its transfers: cMin · P (train: the larger cMin). */
  seqMin: number;
  /** Tokens per device of this plan reach cMin (train: both cMin's). */
  hidden: boolean;
}

export interface DecodeTiming {
  /** KV cache bytes each device reads per layer per generated token (whole batch). */
  kvBytesReadPerLayer: number;
  memoryTimePerLayerS: number;
  flopsPerLayer: number;
  computeTimePerLayerS: number;
  /** Merging the partial (O, LSE) of the P devices: ceil(log2 P) latencies + all-gather bytes. */
  collectiveTimePerLayerS: number;
  timePerLayerS: number;
  /** Attention time of one decode step over all layers. */
  timePerTokenS: number;
  /** batch / timePerTokenS. */
  tokensPerSecond: number;
}

export interface SingleDevicePlan {
  memory: MemoryBreakdown;
  /** K and V of all S tokens for one layer, and for all layers (whole batch). */
  kvCachePerLayer: number;
  kvCacheAllLayers: number;
  /** Attention time of one layer on one device alone (ignoring whether it fits). */
  timePerLayerS: number;
}

export interface Plan {
  options: ResolvedPlanOptions;
  hardware: PlanHardware;
  /** c = ceil(seq / devices). */
  tokensPerDevice: number;
  memory: MemoryBreakdown;
  /** KV of this device's tokens: one layer, all layers (whole batch). */
  kvCachePerLayerPerDevice: number;
  kvCacheAllLayersPerDevice: number;
  /** Least ring size whose per-device memory fits, null if none does (even at 1 token per device). */
  minDevicesToFit: number | null;
  flops: PlanFlops;
  overlap: PlanOverlap;
  /** Ring phases (prefill and train); null in decode. */
  forward: PhaseTiming | null;
  /** Train only. */
  backward: PhaseTiming | null;
  /** Decode only. */
  decode: DecodeTiming | null;
  /** Predicted attention time of one layer (train: forward + backward; decode: per token). */
  timePerLayerS: number;
  timeAllLayersS: number;
  /** Communication hides in every phase. */
  hidden: boolean;
  singleDevice: SingleDevicePlan;
}

// ---------------------------------------------------------------------------------------
// Validation

function posInt(arg: string, v: unknown): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 1) {
    throw new InputError(arg, `expected a positive integer, got ${String(v)}`);
  }
  return v;
}

/** A hardware rate or size: positive, and within [1e-6, 1e9] of its unit so the model's sums stay finite. */
function posNum(arg: string, v: unknown): number {
  if (typeof v !== 'number' || !Number.isFinite(v) || v < 1e-6 || v > 1e9) {
    throw new InputError(arg, `expected a positive number in [1e-6, 1e9], got ${String(v)}`);
  }
  return v;
}

function oneOf<T extends string>(arg: string, v: unknown, list: readonly T[]): T {
  if (typeof v === 'string' && (list as readonly string[]).includes(v)) return v as T;
  throw new InputError(arg, `expected one of ${list.join(', ')}, got '${String(v)}'`);
}

/** Apply defaults and validate; every error names the option. */
export function resolvePlanOptions(opts: PlanOptions): { options: ResolvedPlanOptions; hardware: PlanHardware } {
  if (typeof opts !== 'object' || opts === null) throw new InputError('opts', 'expected an options object');
  const seq = posInt('seq', opts.seq);
  const heads = posInt('heads', opts.heads);
  const kvHeads = posInt('kvHeads', opts.kvHeads);
  const headDim = posInt('headDim', opts.headDim);
  const devices = posInt('devices', opts.devices);
  if (heads % kvHeads !== 0) throw new InputError('kvHeads', `expected a divisor of heads (${heads}), got ${kvHeads}`);
  const layers = opts.layers === undefined ? 1 : posInt('layers', opts.layers);
  const batch = opts.batch === undefined ? 1 : posInt('batch', opts.batch);
  const mode = opts.mode === undefined ? 'prefill' : oneOf('mode', opts.mode, PLAN_MODES);
  const device = opts.device === undefined ? 'h200' : oneOf('device', opts.device, DEVICE_NAMES);
  const preset = DEVICE_PRESETS[device];
  const dtype = opts.dtype === undefined ? preset.defaultDtype : oneOf('dtype', opts.dtype, PLAN_DTYPES);
  if (opts.causal !== undefined && typeof opts.causal !== 'boolean') {
    throw new InputError('causal', `expected true or false, got ${String(opts.causal)}`);
  }
  const causal = opts.causal ?? true;
  const layout = opts.layout === undefined ? 'zigzag' : oneOf('layout', opts.layout, LAYOUTS);
  const hiddenSize = opts.hiddenSize === undefined ? heads * headDim : posInt('hiddenSize', opts.hiddenSize);
  const mlpHidden = opts.mlpHidden === undefined ? null : posInt('mlpHidden', opts.mlpHidden);
  const tflops = opts.tflops === undefined ? (dtype === 'fp32' ? preset.tflopsFp32 : preset.tflops) : posNum('tflops', opts.tflops);
  const linkGBps = opts.linkGBps === undefined ? preset.linkGBps : posNum('linkGBps', opts.linkGBps);
  const memoryGB = opts.memoryGB === undefined ? preset.memoryGB : posNum('memoryGB', opts.memoryGB);
  const hbmGBps = opts.hbmGBps === undefined ? preset.hbmGBps : posNum('hbmGBps', opts.hbmGBps);
  return {
    options: {
      seq, heads, kvHeads, headDim, devices, dtype, bytesPerElement: BYTES_PER_ELEMENT[dtype],
      layers, batch, mode, device, causal, layout, hiddenSize, mlpHidden,
    },
    hardware: { device, tflops, peakTflops: preset.peakTflops, linkGBps, memoryGB, hbmGBps, latencyUs: preset.latencyUs },
  };
}

// ---------------------------------------------------------------------------------------
// Memory

/** Per-device memory of the plan's mode with `devices` ranks. */
export function memoryPerDevice(o: ResolvedPlanOptions, devices: number, capacityBytes: number): MemoryBreakdown {
  const c = Math.ceil(o.seq / devices);
  const { heads: H, kvHeads: Hk, headDim: D, batch: B, layers: L, bytesPerElement: b } = o;
  const ring = devices > 1;
  const kvBlock = B * 2 * c * Hk * D * b;
  const m: Omit<MemoryBreakdown, 'total' | 'terms' | 'capacity' | 'fits'> = {
    tokens: c, q: 0, kv: 0, o: 0, lse: 0, ringBlocks: 0, oAccum: 0,
    dO: 0, dQAccum: 0, dKVAccum: 0, savedActivations: 0, layerActivations: 0, kvCache: 0,
  };
  if (o.mode === 'decode') {
    // One new query token per sequence, replicated on every rank; each rank attends to its
    // own KV cache shard and the partial (O, LSE) are merged: no KV block travels.
    m.q = B * H * D * b;
    m.o = B * H * D * b;
    m.lse = B * H * 4;
    m.oAccum = b < 4 ? B * H * D * 4 : 0;
    m.kvCache = kvBlock * L;
  } else {
    m.q = B * c * H * D * b;
    m.kv = kvBlock;
    m.o = B * c * H * D * b;
    m.lse = B * c * H * 4;
    m.ringBlocks = ring ? 2 * kvBlock : 0;
    m.oAccum = b < 4 ? B * c * H * D * 4 : 0;
    if (o.mode === 'train') {
      m.dO = B * c * H * D * b;
      m.dQAccum = B * c * H * D * 4;
      m.dKVAccum = (ring ? 2 : 1) * B * 2 * c * Hk * D * 4;
      m.savedActivations = (L - 1) * (m.q + m.kv + m.o + m.lse);
      if (o.mlpHidden !== null) m.layerActivations = L * B * c * (2 * o.hiddenSize + 2 * o.mlpHidden) * b;
    }
  }
  const names: Array<[keyof typeof m, string]> = [
    ['q', 'Q shard'], ['kv', 'K+V shard'], ['o', 'O shard'], ['lse', 'LSE (fp32)'],
    ['ringBlocks', 'ring KV blocks (x2)'], ['oAccum', 'O accumulator (fp32)'],
    ['dO', 'dO'], ['dQAccum', 'dQ accumulator (fp32)'], ['dKVAccum', `dK/dV accumulators (fp32${ring ? ', x2' : ''})`],
    ['savedActivations', `saved Q,K,V,O,LSE (${L - 1} other layers)`], ['layerActivations', `layer activations (${L} layers)`],
    ['kvCache', `KV cache (${L} layers)`],
  ];
  const terms = names.filter(([k]) => m[k] !== 0).map(([k, name]) => ({ name, bytes: m[k] }));
  const total = terms.reduce((s, t) => s + t.bytes, 0);
  return { ...m, total, terms, capacity: capacityBytes, fits: total <= capacityBytes };
}

/** Least ring size whose per-device memory fits; memory only shrinks with P from P = 2 on. */
function minDevicesToFit(o: ResolvedPlanOptions, capacity: number): number | null {
  const fits = (p: number) => memoryPerDevice(o, p, capacity).fits;
  if (fits(1)) return 1;
  if (o.seq < 2 || !fits(o.seq)) return null;
  let lo = 1; // does not fit
  let hi = 2;
  while (!fits(hi)) {
    lo = hi;
    hi = Math.min(hi * 2, o.seq);
  }
  while (hi - lo > 1) {
    const mid = Math.floor((lo + hi) / 2);
    if (fits(mid)) hi = mid;
    else lo = mid;
  }
  return hi;
}

// ---------------------------------------------------------------------------------------
// Work

/** Split n into k parts as evenly as possible, the larger first (as layout.ts does). */
function evenSplit(n: number, k: number): number[] {
  const base = Math.floor(n / k);
  const extra = n % k;
  return Array.from({ length: k }, (_, i) => base + (i < extra ? 1 : 0));
}

/** Causally visible pairs of the queries at positions start..start+n-1: Σ (t+1). */
function causalPairsOfRun(start: number, n: number): number {
  return n * start + (n * (n + 1)) / 2;
}

/**
 * Visible query/key pairs per rank, exact, in closed form (no per-token arrays, so S of
 * billions is fine). Causal: query t sees t+1 keys.
 */
export function pairsPerRank(seq: number, devices: number, layout: Layout, causal: boolean): number[] {
  posInt('seq', seq);
  posInt('devices', devices);
  if (layout === 'striped') {
    return Array.from({ length: devices }, (_, r) => {
      const n = r < seq ? Math.floor((seq - 1 - r) / devices) + 1 : 0;
      // positions r, r+P, ..., r+(n-1)P: Σ (r + kP + 1)
      return causal ? n * (r + 1) + (devices * n * (n - 1)) / 2 : n * seq;
    });
  }
  const out = new Array<number>(devices).fill(0);
  const chunks = layout === 'zigzag' ? evenSplit(seq, 2 * devices) : evenSplit(seq, devices);
  let t = 0;
  chunks.forEach((n, i) => {
    const r = layout === 'zigzag' && i >= devices ? 2 * devices - 1 - i : i;
    out[r] += causal ? causalPairsOfRun(t, n) : n * seq;
    t += n;
  });
  return out;
}

/** κ: fraction of a full c×c block the busiest rank computes on a non-diagonal step. */
export function stepPairFraction(layout: Layout, causal: boolean): number {
  if (!causal || layout === 'contiguous') return 1;
  return 0.5;
}

/** Visible pairs of the busiest rank on its diagonal step and on a later step (padded to c). */
function stepPairs(c: number, layout: Layout, causal: boolean): { diagonal: number; offDiagonal: number } {
  if (!causal) return { diagonal: c * c, offDiagonal: c * c };
  const diagonal = (c * (c + 1)) / 2;
  if (layout === 'contiguous') return { diagonal, offDiagonal: c * c };
  if (layout === 'striped') return { diagonal, offDiagonal: (c * (c + 1)) / 2 };
  return { diagonal, offDiagonal: (c * c) / 2 };
}

function phase(steps: number, flopsDiag: number, flopsStep: number, flopsPerS: number, bytes: number, bytesPerS: number): PhaseTiming {
  const transfers = steps - 1;
  const computeDiagonalS = flopsDiag / flopsPerS;
  const computeStepS = flopsStep / flopsPerS;
  const transferBytesPerStep = transfers > 0 ? bytes : 0;
  const transferStepS = transferBytesPerStep / bytesPerS;
  const exposed = Math.max(0, transferStepS - computeStepS);
  return {
    steps, transfers, flopsDiagonalStep: flopsDiag, flopsPerStep: transfers > 0 ? flopsStep : 0,
    computeDiagonalS, computeStepS: transfers > 0 ? computeStepS : 0, transferBytesPerStep, transferStepS,
    hidden: transfers === 0 || transferStepS <= computeStepS,
    overlapFraction: transfers === 0 || transferStepS === 0 ? 1 : Math.min(1, computeStepS / transferStepS),
    exposedTransferS: transfers * exposed,
    timeS: computeDiagonalS + transfers * Math.max(computeStepS, transferStepS),
  };
}

/** Round up, forgiving the last bits of floating-point error (500.0000000001 is 500). */
function ceilTokens(x: number): number {
  return Math.ceil(x * (1 - 1e-12));
}

// ---------------------------------------------------------------------------------------
// The plan

export function plan(opts: PlanOptions): Plan {
  const { options: o, hardware: hw } = resolvePlanOptions(opts);
  const { seq: S, heads: H, kvHeads: Hk, headDim: D, devices: P, batch: B, layers: L, bytesPerElement: b } = o;
  const flopsPerS = hw.tflops * 1e12;
  const linkBps = hw.linkGBps * 1e9;
  const capacity = hw.memoryGB * 1e9;
  const c = Math.ceil(S / P);

  // Work. 4·D·H FLOP per visible pair per sequence of the batch.
  const perPair = 4 * D * H * B;
  const visiblePairs = o.causal ? (S * (S + 1)) / 2 : S * S;
  const causalFraction = visiblePairs / (S * S);
  const forwardTotal = perPair * visiblePairs;
  const ranks = pairsPerRank(S, P, o.layout, o.causal);
  let busiestRank = 0;
  ranks.forEach((p, r) => { if (p > ranks[busiestRank]) busiestRank = r; });
  const forwardBusiest = perPair * ranks[busiestRank];
  const flops: PlanFlops = {
    causalFraction, forwardTotal, backwardTotal: BACKWARD_FLOPS_FACTOR * forwardTotal,
    forwardPerDeviceMean: forwardTotal / P, forwardBusiest, busiestRank,
    imbalance: forwardBusiest / (forwardTotal / P),
  };

  // Overlap condition (Note [overlap condition]).
  const kappa = stepPairFraction(o.layout, o.causal);
  const flopsPerByte = flopsPerS / linkBps;
  const cMinExact = (flopsPerS * 2 * Hk * b) / (linkBps * 4 * H * kappa);
  const cMinBackwardExact = (flopsPerS * 2 * Hk * (b + 4)) / (linkBps * BACKWARD_FLOPS_FACTOR * 4 * H * kappa);
  const cMin = ceilTokens(cMinExact);
  const cMinBackward = ceilTokens(cMinBackwardExact);
  const cNeeded = o.mode === 'train' ? Math.max(cMin, cMinBackward) : cMin;
  const overlap: PlanOverlap = {
    flopsPerByte, stepPairFraction: kappa, cMinExact, cMin, cMinBackwardExact, cMinBackward,
    seqMin: cNeeded * P, hidden: P === 1 || c >= cNeeded,
  };

  // Timing.
  const sp = stepPairs(c, o.layout, o.causal);
  const kvBlockBytes = B * 2 * c * Hk * D * b;
  let forward: PhaseTiming | null = null;
  let backward: PhaseTiming | null = null;
  let decode: DecodeTiming | null = null;
  let timePerLayerS: number;
  if (o.mode === 'decode') {
    const kvBytesReadPerLayer = kvBlockBytes;
    const memoryTimePerLayerS = kvBytesReadPerLayer / (hw.hbmGBps * 1e9);
    const flopsPerLayer = 4 * c * D * H * B;
    const computeTimePerLayerS = flopsPerLayer / flopsPerS;
    const partialBytes = B * H * (D + 1) * 4;
    const collectiveTimePerLayerS = P > 1 ? Math.ceil(Math.log2(P)) * hw.latencyUs * 1e-6 + ((P - 1) * partialBytes) / linkBps : 0;
    const perLayer = Math.max(memoryTimePerLayerS, computeTimePerLayerS) + collectiveTimePerLayerS;
    decode = {
      kvBytesReadPerLayer, memoryTimePerLayerS, flopsPerLayer, computeTimePerLayerS, collectiveTimePerLayerS,
      timePerLayerS: perLayer, timePerTokenS: perLayer * L, tokensPerSecond: B / (perLayer * L),
    };
    timePerLayerS = perLayer;
  } else {
    forward = phase(P, perPair * sp.diagonal, perPair * sp.offDiagonal, flopsPerS, kvBlockBytes, linkBps);
    timePerLayerS = forward.timeS;
    if (o.mode === 'train') {
      const dkvBlockBytes = B * 2 * c * Hk * D * 4;
      backward = phase(
        P, BACKWARD_FLOPS_FACTOR * perPair * sp.diagonal, BACKWARD_FLOPS_FACTOR * perPair * sp.offDiagonal,
        flopsPerS, kvBlockBytes + dkvBlockBytes, linkBps,
      );
      timePerLayerS += backward.timeS;
    }
  }
  const hidden = [forward, backward].every((p) => p === null || p.hidden);

  // One device alone.
  const single = memoryPerDevice(o, 1, capacity);
  const kvCachePerLayer = B * 2 * S * Hk * D * b;
  const singleTime =
    o.mode === 'decode'
      ? Math.max(kvCachePerLayer / (hw.hbmGBps * 1e9), (4 * S * D * H * B) / flopsPerS)
      : ((o.mode === 'train' ? 1 + BACKWARD_FLOPS_FACTOR : 1) * forwardTotal) / flopsPerS;

  return {
    options: o,
    hardware: hw,
    tokensPerDevice: c,
    memory: memoryPerDevice(o, P, capacity),
    kvCachePerLayerPerDevice: kvBlockBytes,
    kvCacheAllLayersPerDevice: kvBlockBytes * L,
    minDevicesToFit: minDevicesToFit(o, capacity),
    flops,
    overlap,
    forward,
    backward,
    decode,
    timePerLayerS,
    timeAllLayersS: timePerLayerS * L,
    hidden,
    singleDevice: { memory: single, kvCachePerLayer, kvCacheAllLayers: kvCachePerLayer * L, timePerLayerS: singleTime },
  };
}

// ---------------------------------------------------------------------------------------
// Formatting

/** 17179869184 -> '16.00 GiB'. */
export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let v = n;
  let i = 0;
  while (Math.abs(v) >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return i === 0 ? `${v} B` : `${v.toFixed(2)} ${units[i]}`;
}

/** Seconds with a unit that keeps 3 significant-ish digits: '3.67 ms', '224 us'. */
export function formatSeconds(s: number): string {
  if (s === 0) return '0 s';
  const a = Math.abs(s);
  const [v, u] = a >= 1 ? [s, 's'] : a >= 1e-3 ? [s * 1e3, 'ms'] : a >= 1e-6 ? [s * 1e6, 'us'] : [s * 1e9, 'ns'];
  const digits = Math.abs(v) >= 100 ? 0 : Math.abs(v) >= 10 ? 1 : 2;
  return `${v.toFixed(digits)} ${u}`;
}

/** FLOP counts: '2.20 TFLOP', '1.13 PFLOP'. */
export function formatFlops(n: number): string {
  const units: Array<[number, string]> = [[1e18, 'EFLOP'], [1e15, 'PFLOP'], [1e12, 'TFLOP'], [1e9, 'GFLOP'], [1e6, 'MFLOP']];
  for (const [scale, u] of units) if (Math.abs(n) >= scale) return `${(n / scale).toFixed(2)} ${u}`;
  return `${n} FLOP`;
}

function layersStr(L: number): string {
  return L === 1 ? '1 layer' : `all ${L} layers`;
}

function int(n: number): string {
  return Math.round(n).toLocaleString('en-US');
}

function pct(x: number): string {
  return `${(100 * x).toFixed(x >= 0.9995 || x === 0 ? 0 : 1)}%`;
}

/** Rows of [label, value, note]: labels left-aligned, values right-aligned, notes after. */
function table(rows: Array<[string, string, string?]>, indent = '  '): string[] {
  const w0 = Math.max(...rows.map((r) => r[0].length));
  const w1 = Math.max(...rows.map((r) => r[1].length));
  return rows.map(([a, v, n]) => `${indent}${a.padEnd(w0)}  ${v.padStart(w1)}${n ? `  ${n}` : ''}`.trimEnd());
}

function phaseRows(name: string, p: PhaseTiming): Array<[string, string, string?]> {
  const rows: Array<[string, string, string?]> = [
    [`${name}: diagonal step`, formatSeconds(p.computeDiagonalS), formatFlops(p.flopsDiagonalStep)],
  ];
  if (p.transfers > 0) {
    rows.push(
      [`${name}: compute per step`, formatSeconds(p.computeStepS), formatFlops(p.flopsPerStep)],
      [`${name}: transfer per step`, formatSeconds(p.transferStepS), formatBytes(p.transferBytesPerStep)],
      [`${name}: communication`, p.hidden ? 'hidden' : 'NOT hidden', `overlap ${pct(p.overlapFraction)}, exposed ${formatSeconds(p.exposedTransferS)}`],
    );
  }
  rows.push([`${name}: time per layer`, formatSeconds(p.timeS), `${p.steps} steps, ${p.transfers} transfers`]);
  return rows;
}

/** The human-readable plan the CLI prints. */
export function formatPlan(p: Plan): string {
  const o = p.options;
  const hw = p.hardware;
  const lines: string[] = [];
  const mask = o.causal ? `causal, ${o.layout}` : `non-causal, ${o.layout}`;
  lines.push(`ringattn plan: ${o.mode}, ${mask}, ${o.dtype} on ${o.devices} x ${hw.device}`);
  lines.push(
    ...table([
      ['sequence', int(o.seq), `tokens, batch ${o.batch}, ${o.layers} layer${o.layers === 1 ? '' : 's'}`],
      ['heads', `${o.heads}/${o.kvHeads}`, `query/KV (group ${o.heads / o.kvHeads}), head dim ${o.headDim}`],
      ['tokens per device', int(p.tokensPerDevice), `c = ceil(${o.seq} / ${o.devices})`],
      ['device', hw.device, `${hw.tflops} TFLOP/s sustained (${hw.peakTflops} peak), link ${hw.linkGBps} GB/s, HBM ${hw.hbmGBps} GB/s, ${hw.memoryGB} GB`],
    ]),
  );

  lines.push('', 'memory per device');
  const memRows: Array<[string, string, string?]> = p.memory.terms.map((t) => [t.name, formatBytes(t.bytes)]);
  memRows.push(['total', formatBytes(p.memory.total), `of ${formatBytes(p.memory.capacity)}: ${p.memory.fits ? 'fits' : 'does NOT fit'}`]);
  memRows.push(['KV cache per layer', formatBytes(p.kvCachePerLayerPerDevice), `${layersStr(o.layers)} ${formatBytes(p.kvCacheAllLayersPerDevice)}`]);
  memRows.push(['least devices to fit', p.minDevicesToFit === null ? 'none' : int(p.minDevicesToFit)]);
  lines.push(...table(memRows));

  lines.push('', 'one device alone');
  lines.push(
    ...table([
      ['memory', formatBytes(p.singleDevice.memory.total), p.singleDevice.memory.fits ? 'fits' : 'does NOT fit'],
      ['KV cache per layer', formatBytes(p.singleDevice.kvCachePerLayer), `${layersStr(o.layers)} ${formatBytes(p.singleDevice.kvCacheAllLayers)}`],
      ['time per layer', formatSeconds(p.singleDevice.timePerLayerS)],
    ]),
  );

  lines.push('', 'compute per layer');
  const f = p.flops;
  const rows: Array<[string, string, string?]> = [];
  if (o.mode !== 'decode') {
    rows.push(
      ['visible pairs', pct(f.causalFraction), o.causal ? '(S(S+1)/2)/S^2' : 'all'],
      ['forward (all devices)', formatFlops(f.forwardTotal), o.mode === 'train' ? `backward ${formatFlops(f.backwardTotal)}` : undefined],
      ['forward per device', formatFlops(f.forwardPerDeviceMean), `busiest rank ${f.busiestRank}: ${formatFlops(f.forwardBusiest)} (x${f.imbalance.toFixed(2)})`],
    );
  }
  if (p.forward) rows.push(...phaseRows('forward', p.forward));
  if (p.backward) rows.push(...phaseRows('backward', p.backward));
  if (p.decode) {
    const d = p.decode;
    rows.push(
      ['decode: KV read per layer', formatBytes(d.kvBytesReadPerLayer), `${formatSeconds(d.memoryTimePerLayerS)} at ${hw.hbmGBps} GB/s`],
      ['decode: compute per layer', formatSeconds(d.computeTimePerLayerS), formatFlops(d.flopsPerLayer)],
      ['decode: merge per layer', formatSeconds(d.collectiveTimePerLayerS), 'partial (O, LSE) across the ring'],
      ['decode: time per layer', formatSeconds(d.timePerLayerS)],
      ['decode: time per token', formatSeconds(d.timePerTokenS), `${d.tokensPerSecond.toFixed(1)} tokens/s (attention only)`],
    );
  }
  rows.push(['time per layer', formatSeconds(p.timePerLayerS), `${layersStr(o.layers)} ${formatSeconds(p.timeAllLayersS)}`]);
  if (o.mode !== 'decode') rows.push(['communication', p.hidden ? 'hidden' : 'NOT hidden']);
  lines.push(...table(rows));

  const ov = p.overlap;
  lines.push('', o.mode === 'decode' ? 'overlap condition (of the prefill that fills the cache)' : 'overlap condition');
  const kappa = ov.stepPairFraction === 1 ? '' : ` / ${ov.stepPairFraction}`;
  const ovRows: Array<[string, string, string?]> = [
    ['FLOP per link byte', ov.flopsPerByte.toFixed(0), `${hw.tflops} TFLOP/s / ${hw.linkGBps} GB/s`],
    ['least tokens per device', int(ov.cMin), `c >= ${ov.flopsPerByte.toFixed(0)} * 2*${o.kvHeads}*${o.bytesPerElement} / (4*${o.heads})${kappa}`],
  ];
  if (o.mode === 'train') ovRows.push(['  backward', int(ov.cMinBackward), 'KV block + fp32 dK/dV against 2.5x compute']);
  ovRows.push(['least sequence length', int(ov.seqMin), o.devices === 1 ? 'on 1 device: no transfers' : `on ${o.devices} devices: ${ov.hidden ? 'reached' : 'NOT reached'}`]);
  lines.push(...table(ovRows));
  if (ov.stepPairFraction !== 1) {
    lines.push(`  (causal ${o.layout}: a non-diagonal step computes ${ov.stepPairFraction} of a block, so c_min is ${1 / ov.stepPairFraction}x the non-causal one)`);
  }
  return lines.join('\n') + '\n';
}
