/**
 * The model as a rank program: the methods every rank of a group runs together (loaded by URL
 * into CPU ranks; see src/cpu/group-worker.ts). State lives per rank in this module.
 */
import type { RankContext } from '../core/group.js';
import type { ModelConfig } from './config.js';
import { RankModel, type ModelOptions } from './llama.js';
import type { ModelWeights } from './weights.js';

let model: RankModel | null = null;

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

export const methods = {
  setup(ctx: RankContext, arg: unknown) {
    const { cfg, weights, opts } = arg as { cfg: ModelConfig; weights: ModelWeights; opts: ModelOptions };
    model = new RankModel(ctx, cfg, weights, opts);
    return null;
  },

  async prefill(ctx: RankContext, arg: unknown) {
    const a = arg as PrefillArg;
    const m = need();
    ctx.resetRings();
    await m.prepare(a.positions);
    const h = m.prefill(a.ids, a.pos, a.reserve);
    const hid = m.cfg.hiddenSize;
    if (a.logits === 'all') return { logits: m.logits(h, a.ids.length), cached: m.cached };
    const i = a.pos.indexOf(a.lastPos);
    return { logits: i < 0 ? null : m.logits(h.subarray(i * hid, (i + 1) * hid), 1), cached: m.cached };
  },

  /** Bytes this rank holds: KV cache, ring buffers (the weights are shared, counted apart). */
  stats(ctx: RankContext) {
    const m = need();
    const cache = m.cache.reduce((n, c) => n + c.k.byteLength + c.v.byteLength + c.pos.byteLength, 0);
    return { cacheBytes: cache, ringBytes: ctx.bytesHeld, cached: m.cached };
  },

  decode(ctx: RankContext, arg: unknown) {
    const { token, pos, owner } = arg as { token: number; pos: number; owner: number };
    const logits = need().decode(token, pos, owner);
    return { logits: ctx.rank === 0 ? logits : null, cached: need().cached };
  },
};
