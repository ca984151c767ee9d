/**
 * The model as a rank program: the methods every rank of a group runs together (loaded by URL
 * into CPU ranks; see src/cpu/group-worker.ts). State lives per rank in this module.
 */
import type { RankContext } from '../core/group.js';
import type { ModelConfig } from './config.js';
import { RankModel, type DeviceModel, type ModelOptions } from './llama.js';
import type { ModelWeights } from './weights.js';
import { AdamW, clipGradNorm } from './adamw.js';
import { paramList, trainStep, zeroGrads } from './train.js';

let model: RankModel | null = null;
/** The layout (and direction) the rings of this rank are prepared for. */
let preparedFor = '';

const layoutKey = (positions: Int32Array[]) =>
  positions.map((p) => {
    let h = 0;
    for (let i = 0; i < p.length; i++) h = (Math.imul(h, 31) + p[i]) | 0;
    return `${p.length}:${h}`;
  }).join(',');

function need(): RankModel {
  if (!model) throw new Error('model not set up on this rank');
  return model;
}

export interface PrefillArg {
  ids: Int32Array;
  pos: Int32Array;
  /** Every rank's positions (for the ring plan). */
  positions: Int32Array[];
  /** Tokens the cache should have room for beyond the prompt. */
  reserve: number;
  /** Which logits to return: every row of this shard, or only the row at `lastPos`. */
  logits: 'all' | 'last';
  lastPos: number;
}

export const methods: Record<string, (ctx: RankContext, arg: unknown) => unknown> = {
  setup(ctx: RankContext, arg: unknown) {
    const { cfg, weights, opts } = arg as { cfg: ModelConfig; weights: ModelWeights; opts: ModelOptions };
    model = new RankModel(ctx, cfg, weights, opts);
    ctx.resetRings();
    preparedFor = '';
    return null;
  },

  async prefill(ctx: RankContext, arg: unknown) {
    const a = arg as PrefillArg;
    const m = need();
    // Ring buffers stay while the layout does (a training ring serves a prefill too).
    const layout = layoutKey(a.positions);
    if (preparedFor !== `${layout}/fwd` && preparedFor !== `${layout}/bwd`) {
      ctx.resetRings();
      await m.prepare(a.positions);
      preparedFor = `${layout}/fwd`;
    }
    const h = m.prefill(a.ids, a.pos, a.reserve);
    const hid = m.cfg.hiddenSize;
    if (a.logits === 'all') return { logits: m.logits(h, a.ids.length), cached: m.cached };
    const i = a.pos.indexOf(a.lastPos);
    return { logits: i < 0 ? null : m.logits(h.subarray(i * hid, (i + 1) * hid), 1), cached: m.cached };
  },

  /**
   * Bytes this rank holds: KV cache (host or device), ring buffers and other backend buffers (the
   * weights are counted apart); decode layer steps whose attention ran on a device, and why the
   * decode attends on the host where a device backend cannot.
   */
  stats(ctx: RankContext) {
    const m = need();
    const dev = ctx as RankContext & Partial<DeviceModel>;
    const cache = m.cache.reduce((n, c) => n + c.k.byteLength + c.v.byteLength + c.pos.byteLength, 0) + (dev.deviceCacheBytes ?? 0);
    return { cacheBytes: cache, ringBytes: ctx.bytesHeld, cached: m.cached, deviceDecodes: dev.deviceDecodes ?? 0, hostDecode: dev.hostDecodeReason ?? null };
  },

  decode(ctx: RankContext, arg: unknown) {
    const { token, pos, owner } = arg as { token: number; pos: number; owner: number };
    const logits = need().decode(token, pos, owner);
    return { logits: ctx.rank === 0 ? logits : null, cached: need().cached };
  },
};

// ---- training ----------------------------------------------------------------------------

let grads: ModelWeights | null = null;
let optimizer: AdamW | null = null;

export interface TrainArg {
  ids: Int32Array;
  pos: Int32Array;
  targets: Int32Array;
  positions: Int32Array[];
  lr: number;
  /** Clip the global gradient norm to this (0: no clipping). */
  clip: number;
  weightDecay: number;
  /** Return the summed gradients (tests). */
  returnGrads?: boolean;
}

Object.assign(methods, {
  /** One optimizer step on every rank together: rank 0 updates the shared weights. */
  async trainStep(ctx: RankContext, arg: unknown) {
    const a = arg as TrainArg;
    const m = need();
    // A KV cache on the device no longer matches the weights after this step: free it now.
    (ctx as RankContext & Partial<DeviceModel>).dropDeviceCache?.();
    const layout = `${layoutKey(a.positions)}/bwd`;
    if (layout !== preparedFor) {
      ctx.resetRings();
      await m.prepare(a.positions, true);
      preparedFor = layout;
    }
    grads ??= zeroGrads(m.w);
    const params = paramList(m.w, grads);
    for (const p of params) p.grad.fill(0);
    const { loss, count } = trainStep(m, a.ids, a.pos, a.targets, grads);
    let norm = 0;
    const raw = a.returnGrads && ctx.rank === 0 ? Object.fromEntries(params.map((p) => [p.name, p.grad.slice()])) : undefined;
    // Shared weights (CPU workers): rank 0 updates the one copy. Own copies (GPU processes): every
    // rank applies the same step to identical gradients, so the copies stay identical.
    if (ctx.rank === 0 || ctx.sharedWeights === false) {
      norm = clipGradNorm(params.map((p) => p.grad), a.clip > 0 ? a.clip : Infinity);
      optimizer ??= new AdamW(params, { lr: a.lr, weightDecay: a.weightDecay });
      if (a.lr > 0) optimizer.step(a.lr);
    }
    ctx.barrier(); // the others wait until rank 0 has updated the shared weights
    ctx.weightsChanged?.();
    const out: Record<string, unknown> = { loss, count, norm };
    if (raw) out.grads = raw; // before clipping
    return out;
  },

  /** Optimizer state (rank 0) for checkpoints. */
  optimizerState(ctx: RankContext) {
    return ctx.rank === 0 && optimizer ? { step: optimizer.stepCount, state: optimizer.stateDict() } : null;
  },

  /** Resume: rank 0 takes the optimizer state of a checkpoint. */
  loadOptimizerState(ctx: RankContext, arg: unknown) {
    const { state, lr, weightDecay } = arg as { state: Record<string, Float32Array>; lr: number; weightDecay: number };
    if (ctx.rank !== 0 && ctx.sharedWeights !== false) return null;
    const m = need();
    grads ??= zeroGrads(m.w);
    optimizer = new AdamW(paramList(m.w, grads), { lr, weightDecay });
    optimizer.loadStateDict(state);
    return optimizer.stepCount;
  },
});
