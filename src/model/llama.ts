/**
 * A Llama-style decoder (llama, mistral and qwen2 differ only by config) running on one rank of
 * a ring: this rank holds the weights and a shard of the sequence, and every layer's attention
 * runs through the ring. Written against `RankContext`, so any backend can run it.
 *
 *   h = embed(ids)
 *   per layer:  h += o_proj(ringAttention(rope(q_proj(n)), rope(k_proj(n)), v_proj(n)))   n = rmsNorm(h)
 *               h += down(silu(gate(n)) * up(n))                                           n = rmsNorm(h)
 *   logits = lm_head(rmsNorm(h))
 *
 * The feed-forward runs over blocks of rows (the blockwise feed-forward of the paper), so its
 * [rows, intermediate] activations stay bounded whatever the shard length. Keys are cached
 * after RoPE, so decode never rotates them again.
 */
import type { RankContext } from '../core/group.js';
import type { AttnParams } from '../core/kernel.js';
import { mergeRow } from '../core/merge.js';
import type { ModelConfig } from './config.js';
import { embed, rmsNorm, swiglu } from './layers.js';
import { applyRope, ropeInvFreq, type Rope } from './rope.js';
import type { LayerWeights, ModelWeights } from './weights.js';

/** Rows of the feed-forward computed at once. */
export const FFN_BLOCK = 256;

export interface ModelOptions {
  /** Attention sinks kept visible in windowed layers (StreamingLLM). */
  sinks?: number;
  /** Threads the attention kernel may use on this rank (decode). */
  threads?: number;
}

/**
 * The KV cache of one layer on this rank: its rows of keys (after RoPE) and values, `n` of them.
 * A backend that keeps the cache on its device (DeviceModel) leaves k, v and pos empty and
 * keeps `n` current.
 */
export interface LayerCache {
  k: Float32Array;
  v: Float32Array;
  pos: Int32Array;
  n: number;
}

/**
 * A backend's own implementation of the model's prefill and of the decode's attention (same
 * results), e.g. with every activation and the KV cache on a GPU.
 */
export interface DeviceModel {
  /** RankModel.prefill on the device, the KV cache kept there with room for `reserve` more tokens. */
  prefillModel(m: RankModel, ids: Int32Array, pos: Int32Array, reserve: number): Float32Array;
  /**
   * Layer l's attention for a decoded token at global position `pos` (RankModel.attendCache on
   * the device): when `own`, its key and value [Hk·D] join this rank's cache of the layer (and
   * m.cache[l].n counts them); its query [H·D] attends every rank's cache and the partial
   * (O, LSE) merge exactly. Returns O [H·D], identical on every rank. null where the device
   * cannot: the cache is then in m.cache on the host and the model's own path runs.
   */
  decodeLayer(m: RankModel, l: number, q: Float32Array, k: Float32Array, v: Float32Array, pos: number, own: boolean): Float32Array | null;
  /** Free the KV cache held on the device (training makes it stale; a prefill makes a new one). */
  dropDeviceCache(): void;
  /** Bytes of KV cache held on the device. */
  readonly deviceCacheBytes: number;
  /** Layer steps of decode whose attention ran on the device (tests check the path taken). */
  readonly deviceDecodes: number;
  /** Why decodeLayer returns null for this model (the device has no kernel for it), or null. */
  readonly hostDecodeReason: string | null;
}

export class RankModel {
  readonly rope: Rope;
  cache: LayerCache[] = [];

  constructor(
    readonly ctx: RankContext,
    readonly cfg: ModelConfig,
    readonly w: ModelWeights,
    readonly opts: ModelOptions = {},
  ) {
    this.rope = ropeInvFreq(cfg);
  }

  /** Attention parameters of layer l (its own sliding window, or none). */
  params(l: number): AttnParams {
    const c = this.cfg;
    const window = c.slidingWindow[l] ?? 0;
    return { H: c.numHeads, Hk: c.numKvHeads, D: c.headDim, scale: 1 / Math.sqrt(c.headDim), causal: true, window, sinks: window ? (this.opts.sinks ?? 0) : 0 };
  }

  /** The ring key of layer l: layers with the same window share buffers. */
  ringKey(l: number): string {
    return `w${this.cfg.slidingWindow[l] ?? 0}`;
  }

  /** Prepare the ring for a prompt laid out as `positions` (every rank's); `backward` for training. */
  async prepare(positions: Int32Array[], backward = false): Promise<void> {
    const seen = new Set<string>();
    for (let l = 0; l < this.cfg.numLayers; l++) {
      const key = this.ringKey(l);
      if (seen.has(key)) continue;
      seen.add(key);
      const p = this.params(l);
      await this.ctx.prepareRingFor(key, positions.map((pos) => ({ pos })), p, { causal: true, window: p.window || undefined, sinks: p.sinks }, backward);
    }
  }

  /** q, k, v of normed rows n, with RoPE at `pos` applied to q and k. */
  qkv(lw: LayerWeights, n: Float32Array, rows: number, pos: Int32Array) {
    const c = this.cfg;
    const qd = c.numHeads * c.headDim;
    const kd = c.numKvHeads * c.headDim;
    const q = new Float32Array(rows * qd);
    const k = new Float32Array(rows * kd);
    const v = new Float32Array(rows * kd);
    this.ctx.linear(n, lw.q, lw.qBias, rows, c.hiddenSize, qd, q);
    this.ctx.linear(n, lw.k, lw.kBias, rows, c.hiddenSize, kd, k);
    this.ctx.linear(n, lw.v, lw.vBias, rows, c.hiddenSize, kd, v);
    applyRope(q, rows, c.numHeads, c.headDim, pos, this.rope);
    applyRope(k, rows, c.numKvHeads, c.headDim, pos, this.rope);
    return { q, k, v };
  }

  /** h += o_proj(o) */
  private addProjection(lw: LayerWeights, o: Float32Array, rows: number, h: Float32Array): void {
    const c = this.cfg;
    const y = new Float32Array(rows * c.hiddenSize);
    this.ctx.linear(o, lw.o, lw.oBias, rows, c.numHeads * c.headDim, c.hiddenSize, y);
    for (let i = 0; i < y.length; i++) h[i] += y[i];
  }

  /** h += down(silu(gate(n)) * up(n)), n = rmsNorm(h), over blocks of FFN_BLOCK rows. */
  feedForward(lw: LayerWeights, h: Float32Array, rows: number): void {
    const c = this.cfg;
    const hid = c.hiddenSize;
    const f = c.intermediateSize;
    const b = Math.min(this.ctx.ffnBlock ?? FFN_BLOCK, Math.max(1, rows));
    const n = new Float32Array(b * hid);
    const g = new Float32Array(b * f);
    const u = new Float32Array(b * f);
    const y = new Float32Array(b * hid);
    for (let r0 = 0; r0 < rows; r0 += b) {
      const m = Math.min(b, rows - r0);
      const hb = h.subarray(r0 * hid, (r0 + m) * hid);
      rmsNorm(hb, m, hid, lw.postNorm, c.rmsNormEps, n.subarray(0, m * hid));
      this.ctx.linear(n, lw.gate, lw.gateBias, m, hid, f, g);
      this.ctx.linear(n, lw.up, lw.upBias, m, hid, f, u);
      swiglu(g.subarray(0, m * f), u.subarray(0, m * f), g.subarray(0, m * f));
      this.ctx.linear(g, lw.down, lw.downBias, m, f, hid, y);
      for (let i = 0; i < m * hid; i++) hb[i] += y[i];
    }
  }

  /** Logits of the given rows of h: [rows, vocab]. */
  logits(h: Float32Array, rows: number): Float32Array {
    const c = this.cfg;
    const n = new Float32Array(rows * c.hiddenSize);
    rmsNorm(h.subarray(0, rows * c.hiddenSize), rows, c.hiddenSize, this.w.finalNorm, c.rmsNormEps, n);
    const out = new Float32Array(rows * c.vocabSize);
    this.ctx.linear(n, this.w.lmHead, undefined, rows, c.hiddenSize, c.vocabSize, out);
    return out;
  }

  /**
   * Prefill this rank's shard (token ids at global positions `pos`) through every layer, with
   * attention over the ring; fills the KV cache with room for `reserve` more tokens. Returns
   * the final hidden states [rows, hidden].
   */
  prefill(ids: Int32Array, pos: Int32Array, reserve: number): Float32Array {
    // A backend that keeps activations on its device runs this same forward there.
    const dev = this.ctx as RankContext & Partial<DeviceModel>;
    if (dev.prefillModel) return dev.prefillModel(this, ids, pos, reserve);
    const c = this.cfg;
    const rows = ids.length;
    const hid = c.hiddenSize;
    const kd = c.numKvHeads * c.headDim;
    const h = new Float32Array(rows * hid);
    embed(ids, this.w.embed, hid, h);
    const n = new Float32Array(rows * hid);
    this.cache = [];
    for (let l = 0; l < c.numLayers; l++) {
      const lw = this.w.layers[l];
      rmsNorm(h, rows, hid, lw.inputNorm, c.rmsNormEps, n);
      const { q, k, v } = this.qkv(lw, n, rows, pos);
      const cap = rows + reserve;
      const cache: LayerCache = { k: new Float32Array(cap * kd), v: new Float32Array(cap * kd), pos: new Int32Array(cap), n: rows };
      cache.k.set(k);
      cache.v.set(v);
      cache.pos.set(pos);
      this.cache.push(cache);
      const o = this.ctx.ringAttention({ q, k, v, pos }, this.params(l), this.ringKey(l)).o;
      this.addProjection(lw, o, rows, h);
      this.feedForward(lw, h, rows);
    }
    return h;
  }

  /** Tokens held in this rank's cache. */
  get cached(): number {
    return this.cache[0]?.n ?? 0;
  }

  private append(cache: LayerCache, k: Float32Array, v: Float32Array, pos: number): void {
    const kd = k.length;
    if (cache.n === cache.pos.length) {
      const cap = Math.max(16, 2 * cache.n);
      const grow = (a: Float32Array) => {
        const b = new Float32Array(cap * kd);
        b.set(a);
        return b;
      };
      cache.k = grow(cache.k);
      cache.v = grow(cache.v);
      const p = new Int32Array(cap);
      p.set(cache.pos);
      cache.pos = p;
    }
    cache.k.set(k, cache.n * kd);
    cache.v.set(v, cache.n * kd);
    cache.pos[cache.n++] = pos;
  }

  /**
   * Layer l's attention for a decoded token on the host cache: its key/value join the cache when
   * this rank owns the token; its query attends this rank's cache shard and every rank's partial
   * (O, LSE) is merged exactly, in rank order, so every rank gets the same O [H·D].
   */
  private attendCache(l: number, q: Float32Array, k: Float32Array, v: Float32Array, pos: number, own: boolean): Float32Array {
    const c = this.cfg;
    const H = c.numHeads;
    const D = c.headDim;
    const cache = this.cache[l];
    if (own) this.append(cache, k, v, pos);
    const p = this.params(l);
    // Partial attention over this rank's cache: [H*D outputs | H LSEs].
    const part = new Float32Array(H * D + H);
    const o = part.subarray(0, H * D);
    const lse = part.subarray(H * D).fill(-Infinity);
    if (cache.n > 0) {
      // The cache's positions ascend (prompt shard, then appended tokens): the split-KV decode
      // kernel reads only the rows the window and sinks leave visible.
      this.ctx.decodeAttend({
        q, qPos: Int32Array.of(pos), k: cache.k, v: cache.v, kPos: cache.pos, n: cache.n,
        H, Hk: c.numKvHeads, D, causal: true, window: p.window, sinks: p.sinks, scale: p.scale, o, lse, threads: this.opts.threads ?? 1,
      });
    }
    const merged = new Float32Array(H * D);
    const mLse = new Float32Array(H).fill(-Infinity);
    for (const x of this.ctx.allGather(part)) for (let hh = 0; hh < H; hh++) mLse[hh] = mergeRow(merged, hh * D, D, mLse[hh], x, hh * D, x[H * D + hh]);
    return merged;
  }

  /**
   * One decode step, run identically on every rank: the new token (at global position `pos`)
   * goes through every layer; its key/value join the cache of rank `owner`; its query attends
   * each rank's cache shard and the partial (O, LSE) are merged exactly, so every rank computes
   * the same hidden state (on the device where the backend keeps the cache there). Returns the
   * logits [vocab].
   */
  decode(token: number, pos: number, owner: number): Float32Array {
    const c = this.cfg;
    const dev = this.ctx as RankContext & Partial<DeviceModel>;
    const own = this.ctx.rank === owner;
    const hid = c.hiddenSize;
    const posArr = Int32Array.of(pos);
    const h = new Float32Array(hid);
    embed(Int32Array.of(token), this.w.embed, hid, h);
    const n = new Float32Array(hid);
    for (let l = 0; l < c.numLayers; l++) {
      const lw = this.w.layers[l];
      rmsNorm(h, 1, hid, lw.inputNorm, c.rmsNormEps, n);
      const { q, k, v } = this.qkv(lw, n, 1, posArr);
      const o = dev.decodeLayer?.(this, l, q, k, v, pos, own) ?? this.attendCache(l, q, k, v, pos, own);
      this.addProjection(lw, o, 1, h);
      this.feedForward(lw, h, 1);
    }
    return this.logits(h, 1);
  }
}
