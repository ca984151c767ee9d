import type { AttentionKernel, AttnParams, RankShard } from './kernel.js';
import type { MaskSpec } from './mask.js';
import type { Tracer } from './device.js';

/** y[rows, out] = x[rows, in] · wᵀ (+ bias), w stored [out, in] as in PyTorch's Linear. */
export type Linear = (x: Float32Array, w: Float32Array, bias: Float32Array | undefined, rows: number, inDim: number, outDim: number, y: Float32Array) => void;

/** C = op(A)·op(B) + beta·C, row-major, op(A) [M, K], op(B) [K, N]; A stored [K, M] when transA, B stored [N, K] when transB. */
export type Gemm = (transA: boolean, transB: boolean, M: number, N: number, K: number, A: Float32Array, B: Float32Array, beta: 0 | 1, C: Float32Array) => void;

/** One decode step on this rank: queries [Sq, H, D] at qPos against a cache of n rows [n, Hk, D] whose positions ascend. */
export interface DecodeCall {
  q: Float32Array;
  qPos: Int32Array;
  k: Float32Array;
  v: Float32Array;
  kPos: Int32Array;
  n: number;
  H: number;
  Hk: number;
  D: number;
  causal: boolean;
  /** 0 = none. */
  window: number;
  sinks: number;
  scale: number;
  /** Running (O, LSE), merged in place. */
  o: Float32Array;
  lse: Float32Array;
  threads?: number;
}

export interface RingResult {
  o: Float32Array;
  lse: Float32Array;
  dq?: Float32Array;
  dk?: Float32Array;
  dv?: Float32Array;
}

/**
 * What a rank program (a model's prefill, decode, training step) may use on its rank, whatever
 * the backend: ring attention over the group on this rank's shard, the local block kernel,
 * small collectives, and a linear layer. Every rank runs the same program (SPMD) and makes the
 * same collective calls in the same order.
 */
export interface RankContext {
  readonly rank: number;
  readonly ranks: number;
  readonly kernel: AttentionKernel;
  readonly trace: Tracer;
  readonly linear: Linear;
  readonly gemm: Gemm;
  /** Bytes this rank holds in ring buffers and accumulators (not counting what the program allocates). */
  readonly bytesHeld: number;
  /**
   * Prepare ring buffers under `key` for shards at these positions (every rank's, in rank
   * order), once, before ringAttention with that key. All ranks call it together.
   */
  prepareRingFor(key: string, shards: { pos: Int32Array; seg?: Int32Array }[], params: AttnParams, mask: MaskSpec, backward: boolean): Promise<void>;
  /** Ring attention of this rank's shard (the backward too when it has dO). All ranks call it together. */
  ringAttention(shard: RankShard, params: AttnParams, key: string): RingResult;
  /** Attention of a few query tokens against this rank's KV cache shard (split-KV, reads only visible rows). */
  decodeAttend(a: DecodeCall): void;
  /** Drop every prepared ring (a new prompt layout follows). All ranks call it together. */
  resetRings(): void;
  allGather(data: Float32Array): Float32Array[];
  /**
   * true (the default): one copy of the weights serves every rank (CPU workers share memory), so
   * rank 0 alone applies an optimizer step; false: each rank holds its own copy (one process per
   * GPU) and every rank applies the same step.
   */
  readonly sharedWeights?: boolean;
  /** The host weights changed in place (an optimizer step): drop any copy made of them. */
  weightsChanged?(): void;
  /** Rows of the feed-forward per call (the blockwise feed-forward); default FFN_BLOCK. */
  readonly ffnBlock?: number;
  allReduceSum(data: Float32Array): void;
  barrier(): void;
}
