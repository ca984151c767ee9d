/**
 * ringattn: exact Ring Attention in TypeScript.
 *
 *   import { ringAttention } from 'ringattn';
 *   const { out, lse } = await ringAttention(q, k, v, { devices: 4, layout: 'zigzag', causal: true });
 */
export { attention, ringAttention, QUERY_CHUNK, type AttentionOptions, type RingAttentionOptions, type AttentionResult, type RingStats } from './attention.js';
export { closeIdleRingWorkers, IDLE_GROUP_MS, runCpuRing, WARM_MAX_BYTES, type CpuRingOptions, type CpuRingResult, type RankResult } from './cpu/ring.js';
export type { RankShard, AttnParams } from './cpu/device.js';
export { getKernel } from './cpu/attention.js';
export { InputError, RankError, BackendError, RingAttnError } from './core/errors.js';
export { tensor, numel, type Tensor, type F32Tensor, type DType } from './core/tensor.js';
export { visible, classifyBlock, validateMask, type MaskSpec, type BlockClass, type BlockBox } from './core/mask.js';
export { shardPositions, shard, unshard, gatherRows, scatterRows, parseLayout, LAYOUTS, type Layout } from './core/layout.js';
export { mergePartial, mergeRow } from './core/merge.js';
export { ringSchedule, blockAt, type RingSchedule } from './core/schedule.js';
export { plan, formatPlan, type Plan, type PlanOptions } from './core/plan.js';
export { visiblePairs, attentionFlops } from './core/flops.js';
export type { AttentionKernel, BlockArgs, ForwardArgs, BackwardArgs } from './core/kernel.js';
export type { RingDevice, RingTransport, Tracer, Pending } from './core/device.js';
export type { RunReport, TraceEvent, BlockMap } from './core/trace.js';
export { renderReport, writeReport } from './report/html.js';
export * from './io/index.js';
export { RingModel, type RingModelOptions, type GenerateOptions } from './llm.js';
export type { ModelConfig } from './model/config.js';
export type { ModelWeights, LayerWeights } from './model/weights.js';
export { decodeAttention, decodeKernelName, type DecodeArgs, type DecodeCache, type DecodeResult, type DecodeKvDtype } from './cpu/decode.js';
// GPU APIs (CUDA driver, NVRTC, NCCL loaded on first use): import from 'ringattn/cuda'.
