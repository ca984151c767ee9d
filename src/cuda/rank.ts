import { NO_TRACE } from '../core/device.js';
import { InputError } from '../core/errors.js';
import type { DecodeCall, Gemm, Linear, RankContext, RingResult } from '../core/group.js';
import type { AttnParams, RankShard } from '../core/kernel.js';
import type { MaskSpec } from '../core/mask.js';
import { getKernel } from '../cpu/attention.js';
import { decodeAttention } from '../cpu/decode.js';
import { BackendError } from '../core/errors.js';
import type { DeviceBuffer } from './context.js';
import type { CudaDType } from './convert.js';
import { CudaDecode, DecodeCombiner, decodeSupported } from './decode.js';
import { gemm } from './gemm.js';
import { DeviceKvCache } from './kv-cache.js';
import { addDevice, convertDevice, rmsNormDevice, ropeDevice, swigluDevice } from './model-ops.js';
import type { DeviceModel, RankModel } from '../model/llama.js';
import { embed } from '../model/layers.js';
import type { CudaGroup } from './group.js';
import { CudaRing } from './ring.js';

/**
 * A GPU rank as a `RankContext`: what the model (src/model/) needs to run on the CUDA backend.
 * Prefill runs with every activation on the GPU (prefillModel) and leaves each layer's KV cache
 * shard there (DeviceKvCache, in the model's dtype). Decode runs the model's own code on host
 * Float32Arrays for the one new row, except its attention (decodeLayer): the token's key/value
 * are appended to the owner's device cache, the split-KV decode kernel (src/cuda/decode.ts)
 * attends each rank's shard, and the ranks' partial (O, LSE) are combined exactly on the GPUs
 * (DecodeCombiner: one NCCL all-gather and a merge kernel). Training runs the model's own code
 * on the host. Linear layers and GEMMs run on the GPU (weights uploaded once and kept on the
 * device), ring attention runs through the NCCL ring (src/cuda/ring.ts, buffers kept per ring
 * key), and the collectives are NCCL calls.
 *
 * `dtype` sets the precision of the GPU work: 'float32' computes exactly what the CPU backend
 * computes (to rounding; the tests compare them), 'bfloat16' runs the tensor-core kernels with
 * bf16 inputs and fp32 accumulation (for speed).
 */

export interface CudaRankOptions {
  dtype?: CudaDType;
}

interface PreparedRing {
  shards: { pos: Int32Array; seg?: Int32Array }[];
  mask: MaskSpec;
  backward: boolean;
  ring: CudaRing | null;
}

/** Grow-only device scratch buffers, one per slot. */
class Scratch {
  private bufs = new Map<string, DeviceBuffer>();
  constructor(private readonly g: CudaGroup) {}

  get(slot: string, bytes: number): DeviceBuffer {
    let b = this.bufs.get(slot);
    if (!b || b.bytes < bytes) {
      if (b) {
        this.g.syncStream();
        this.g.ctx.free(b);
      }
      b = this.g.ctx.alloc(Math.max(256, bytes));
      this.bufs.set(slot, b);
    }
    return b;
  }

  get bytes(): number {
    let n = 0;
    for (const b of this.bufs.values()) n += b.bytes;
    return n;
  }

  dispose(): void {
    for (const b of this.bufs.values()) this.g.ctx.free(b);
    this.bufs.clear();
  }
}

export class CudaRank implements RankContext, DeviceModel {
  readonly rank: number;
  readonly ranks: number;
  /** The local block kernel is the CPU's: the model only reaches attention through the ring here. */
  readonly kernel = getKernel();
  readonly trace = NO_TRACE;
  readonly dtype: CudaDType;
  /** Each GPU process holds its own copy of the weights: every rank applies the same update. */
  readonly sharedWeights = false;
  /** Rows of the feed-forward per GPU call: large, so each GEMM fills the GPU. */
  readonly ffnBlock = 8192;
  readonly linear: Linear;
  readonly gemm: Gemm;
  private readonly rings = new Map<string, PreparedRing>();
  private readonly scratch: Scratch;
  /** Weights on the device, by host array (uploaded once; dropped by weightsChanged). */
  private weights = new Map<Float32Array, { f32?: DeviceBuffer; bf16?: DeviceBuffer }>();
  private weightBytes = 0;
  /** Each layer's KV cache shard of the last prefill, on the GPU (empty once brought to the host). */
  private kv: DeviceKvCache[] = [];
  /** Why this model's decode attends on the host (decodeSupported: no GPU kernel for its dtype and head dim), or null. Set by the prefill. */
  private hostReason: string | null = null;
  private decodes = 0;
  private decoder: CudaDecode | undefined;
  private combiner: DecodeCombiner | undefined;

  constructor(readonly g: CudaGroup, opts: CudaRankOptions = {}) {
    this.rank = g.rank;
    this.ranks = g.world;
    this.dtype = opts.dtype ?? 'float32';
    if (this.dtype === 'float16') throw new InputError('dtype', 'expected float32 or bfloat16 for the model on the GPU');
    this.scratch = new Scratch(g);
    this.linear = (x, w, bias, rows, inDim, outDim, y) => this.linearGpu(x, w, bias, rows, inDim, outDim, y);
    this.gemm = (tA, tB, M, N, K, A, B, beta, C) => this.gemmGpu(tA, tB, M, N, K, A, B, beta, C);
  }

  get bytesHeld(): number {
    let n = this.scratch.bytes + this.weightBytes;
    for (const r of this.rings.values()) n += r.ring ? r.ring.dev.bytesHeld() : 0;
    return n;
  }

  get deviceCacheBytes(): number {
    return this.kv.reduce((n, c) => n + c.bytes, 0);
  }

  get deviceDecodes(): number {
    return this.decodes;
  }

  get hostDecodeReason(): string | null {
    return this.hostReason;
  }

  /** A weight array on the device in `dtype` (uploaded, and converted, on first use). */
  private weight(w: Float32Array, dtype: 'float32' | 'bfloat16' = 'float32'): DeviceBuffer {
    let e = this.weights.get(w);
    if (!e) this.weights.set(w, (e = {}));
    const have = dtype === 'float32' ? e.f32 : e.bf16;
    if (have) return have;
    const ctx = this.g.ctx;
    let b: DeviceBuffer;
    if (dtype === 'float32') {
      b = e.f32 = ctx.alloc(w.byteLength);
      ctx.upload(b, w);
    } else {
      const tmp = this.scratch.get('w32', w.byteLength);
      ctx.upload(tmp, w);
      b = e.bf16 = ctx.alloc(w.length * 2);
      convertDevice(ctx, { src: tmp.ptr, dst: b.ptr, n: w.length, from: 'float32', to: 'bfloat16' });
    }
    this.weightBytes += b.bytes;
    return b;
  }

  /** The host weights changed (an optimizer step): upload them again when next used. */
  weightsChanged(): void {
    this.g.syncStream();
    for (const e of this.weights.values()) {
      this.g.ctx.free(e.f32);
      this.g.ctx.free(e.bf16);
    }
    this.weights.clear();
    this.weightBytes = 0;
  }

  private linearGpu(x: Float32Array, w: Float32Array, bias: Float32Array | undefined, rows: number, inDim: number, outDim: number, y: Float32Array): void {
    if (rows === 0) return;
    const ctx = this.g.ctx;
    const xb = this.scratch.get('x', rows * inDim * 4);
    const yb = this.scratch.get('y', rows * outDim * 4);
    ctx.upload(xb, x.subarray(0, rows * inDim));
    let a = xb.ptr;
    if (this.dtype === 'bfloat16') {
      const xh = this.scratch.get('x16', rows * inDim * 2);
      convertDevice(ctx, { src: xb.ptr, dst: xh.ptr, n: rows * inDim, from: 'float32', to: 'bfloat16' });
      a = xh.ptr;
    }
    const wd = this.dtype === 'bfloat16' ? 'bfloat16' : 'float32';
    gemm(ctx, { transA: false, transB: true, M: rows, N: outDim, K: inDim, a, b: this.weight(w, wd).ptr, c: yb.ptr, bias: bias ? this.weight(bias).ptr : undefined, dtype: wd });
    ctx.download(y.subarray(0, rows * outDim), yb);
  }

  private gemmGpu(transA: boolean, transB: boolean, M: number, N: number, K: number, A: Float32Array, B: Float32Array, beta: 0 | 1, C: Float32Array): void {
    if (M === 0 || N === 0) return;
    const ctx = this.g.ctx;
    const ab = this.scratch.get('a', M * K * 4);
    const bb = this.scratch.get('b', K * N * 4);
    const cb = this.scratch.get('c', M * N * 4);
    ctx.upload(ab, A.subarray(0, M * K));
    ctx.upload(bb, B.subarray(0, K * N));
    if (beta) ctx.upload(cb, C.subarray(0, M * N));
    // Gradients are computed in fp32 whatever the model's dtype.
    gemm(ctx, { transA, transB, M, N, K, a: ab.ptr, b: bb.ptr, c: cb.ptr, beta, dtype: 'float32' });
    ctx.download(C.subarray(0, M * N), cb);
  }

  async prepareRingFor(key: string, shards: { pos: Int32Array; seg?: Int32Array }[], _params: AttnParams, mask: MaskSpec, backward: boolean): Promise<void> {
    if (this.rings.has(key)) return;
    if (shards.length !== this.ranks) throw new InputError('shards', `expected one per rank (${this.ranks}), got ${shards.length}`);
    // The ring itself is built on first use, when this rank's rows are at hand (ringOf).
    this.rings.set(key, { shards, mask, backward, ring: null });
  }

  /** The ring of `key`, built on first use with these inputs (every rank reaches this together). */
  private ringOf(key: string, given: RankShard | { pos: Int32Array }, p: AttnParams): { ring: CudaRing; fresh: boolean; backward: boolean } {
    const st = this.rings.get(key);
    if (!st) throw new Error(`ringAttention before prepareRingFor('${key}')`);
    if (st.ring) return { ring: st.ring, fresh: false, backward: st.backward };
    const n = given.pos.length;
    // Without data (the device-resident prefill fills the buffers itself): zeros to start from.
    const shard: RankShard = 'q' in given ? given : { pos: given.pos, q: new Float32Array(n * p.H * p.D), k: new Float32Array(n * p.Hk * p.D), v: new Float32Array(n * p.Hk * p.D) };
    st.ring = new CudaRing(this.g, { ...shard, dO: st.backward ? (shard.dO ?? new Float32Array(n * p.H * p.D)) : undefined }, {
      positions: st.shards.map((s) => s.pos), causal: st.mask.causal, window: st.mask.window, sinks: st.mask.sinks,
      segments: st.mask.segments, scale: p.scale, dtype: this.dtype, H: p.H, Hk: p.Hk, D: p.D, backward: st.backward,
    });
    return { ring: st.ring, fresh: true, backward: st.backward };
  }

  ringAttention(shard: RankShard, params: AttnParams, key: string): RingResult {
    const { ring, fresh, backward } = this.ringOf(key, shard, params);
    if (shard.dO && !backward) throw new InputError('dO', `ring '${key}' was prepared without a backward`);
    if (!fresh) ring.dev.setInputs(shard);
    ring.forward();
    if (shard.dO) ring.backward();
    const out = ring.download();
    return shard.dO ? out : { o: out.o, lse: out.lse };
  }

  /**
   * The model's prefill with every activation on this GPU (the forward of src/model/llama.ts,
   * same math): one upload of the embeddings, then per layer RMSNorm, the q/k/v projections,
   * RoPE, the ring, the output projection and the blockwise feed-forward as GPU kernels; the
   * keys and values stay on the GPU as the decode's cache (in fp32 where the decode falls back to
   * the host), and the final hidden states come back at the end.
   */
  prefillModel(m: RankModel, ids: Int32Array, pos: Int32Array, reserve: number): Float32Array {
    const c = m.cfg;
    const ctx = this.g.ctx;
    const n = ids.length;
    const hid = c.hiddenSize, H = c.numHeads, Hk = c.numKvHeads, D = c.headDim, f = c.intermediateSize;
    const qd = H * D, kd = Hk * D;
    const dt = this.dtype === 'bfloat16' ? 'bfloat16' : 'float32';
    const el = dt === 'bfloat16' ? 2 : 4;
    const S = this.scratch;
    this.dropKv();
    const why = decodeSupported(dt, D);
    this.hostReason = why
      ? `the GPU decode kernel does not support ${dt} with head dim ${D} (${why}): decode attends on the host`
      : process.env.RINGATTN_GPU_DECODE === '0'
        ? 'decode attends on the host: RINGATTN_GPU_DECODE=0'
        : null;
    const hostH = new Float32Array(n * hid);
    embed(ids, m.w.embed, hid, hostH);
    const h = S.get('p.h', n * hid * 4);
    ctx.upload(h, hostH);
    const posB = S.get('p.pos', n * 4);
    ctx.upload(posB, pos);
    const inv = S.get('p.inv', m.rope.invFreq.byteLength);
    ctx.upload(inv, m.rope.invFreq);
    const nrm = S.get('p.n', n * hid * el);
    const q = S.get('p.q', n * qd * 4), k = S.get('p.k', n * kd * 4), v = S.get('p.v', n * kd * 4);
    const y = S.get('p.y', n * hid * 4);
    const o16 = dt === 'bfloat16' ? S.get('p.o16', n * qd * 2) : null;
    const rowsFf = Math.min(n, this.ffnBlock);
    const g = S.get('p.g', rowsFf * f * 4), u = S.get('p.u', rowsFf * f * 4);
    const a = S.get('p.a', rowsFf * f * el);
    const toDt = (src: number, dst: number, count: number) => convertDevice(ctx, { src, dst, n: count, from: 'float32', to: dt });
    const lin = (x: number, w: Float32Array, bias: Float32Array | undefined, rows: number, inDim: number, outDim: number, out: number) =>
      gemm(ctx, { transA: false, transB: true, M: rows, N: outDim, K: inDim, a: x, b: this.weight(w, dt).ptr, c: out, bias: bias ? this.weight(bias).ptr : undefined, dtype: dt });
    m.cache = [];
    for (let l = 0; l < c.numLayers; l++) {
      const lw = m.w.layers[l];
      rmsNormDevice(ctx, { x: h.ptr, weight: this.weight(lw.inputNorm).ptr, out: nrm.ptr, rows: n, dim: hid, eps: c.rmsNormEps, outDtype: dt });
      lin(nrm.ptr, lw.q, lw.qBias, n, hid, qd, q.ptr);
      lin(nrm.ptr, lw.k, lw.kBias, n, hid, kd, k.ptr);
      lin(nrm.ptr, lw.v, lw.vBias, n, hid, kd, v.ptr);
      ropeDevice(ctx, { x: q.ptr, rows: n, heads: H, headDim: D, positions: posB.ptr, invFreq: inv.ptr, attentionScaling: m.rope.attentionScaling });
      ropeDevice(ctx, { x: k.ptr, rows: n, heads: Hk, headDim: D, positions: posB.ptr, invFreq: inv.ptr, attentionScaling: m.rope.attentionScaling });
      // The KV cache stays on the GPU (decodeLayer); the model's host cache only counts its rows.
      const kv = new DeviceKvCache(this.g, this.hostReason ? 'float32' : dt, kd, n + reserve);
      kv.append(k.ptr, v.ptr, pos);
      this.kv.push(kv);
      m.cache.push({ k: new Float32Array(0), v: new Float32Array(0), pos: new Int32Array(0), n });
      const p = m.params(l);
      const { ring } = this.ringOf(m.ringKey(l), { pos }, p);
      ring.dev.setInputsDevice(q.ptr, k.ptr, v.ptr, toDt);
      ring.forward();
      let oPtr = ring.dev.o.ptr;
      if (o16) {
        toDt(oPtr, o16.ptr, n * qd);
        oPtr = o16.ptr;
      }
      lin(oPtr, lw.o, lw.oBias, n, qd, hid, y.ptr);
      addDevice(ctx, { h: h.ptr, y: y.ptr, n: n * hid });
      for (let r0 = 0; r0 < n; r0 += rowsFf) {
        const rows = Math.min(rowsFf, n - r0);
        const hb = h.ptr + r0 * hid * 4;
        rmsNormDevice(ctx, { x: hb, weight: this.weight(lw.postNorm).ptr, out: nrm.ptr, rows, dim: hid, eps: c.rmsNormEps, outDtype: dt });
        lin(nrm.ptr, lw.gate, lw.gateBias, rows, hid, f, g.ptr);
        lin(nrm.ptr, lw.up, lw.upBias, rows, hid, f, u.ptr);
        swigluDevice(ctx, { gate: g.ptr, up: u.ptr, out: a.ptr, n: rows * f, dtype: 'float32', outDtype: dt });
        lin(a.ptr, lw.down, lw.downBias, rows, f, hid, y.ptr);
        addDevice(ctx, { h: hb, y: y.ptr, n: rows * hid });
      }
    }
    return ctx.download(hostH, h);
  }

  /**
   * Layer l's decode attention on the GPU (DeviceModel.decodeLayer): one upload of the token's
   * q, k, v (fp32); when this rank owns the token, k and v join the layer's device cache
   * (converted to its dtype, growing on demand); the split-KV decode kernel attends this rank's
   * shard with the layer's mask (causal, window, sinks) into a fresh (O, LSE); the ranks' partials
   * are combined exactly on the GPUs; O comes back. Where the kernel cannot run this model
   * (hostDecodeReason) the cache moves to the host once and null sends the model down its own path.
   */
  decodeLayer(m: RankModel, l: number, q: Float32Array, k: Float32Array, v: Float32Array, pos: number, own: boolean): Float32Array | null {
    if (this.hostReason === null ? !this.kv[l] || this.kv.length !== m.cache.length : this.kv.length !== 0 && this.kv.length !== m.cache.length) {
      throw new BackendError(`decode of layer ${l} without its KV cache on the GPU (prefill first)`);
    }
    if (this.hostReason !== null) {
      this.materializeCache(m);
      return null;
    }
    const kv = this.kv[l];
    const ctx = this.g.ctx;
    const { H, Hk, D, window, sinks, scale, causal } = m.params(l);
    const qd = H * D, kd = Hk * D;
    const S = this.scratch;
    const x = S.get('d.qkv', (qd + 2 * kd) * 4);
    const host = new Float32Array(qd + 2 * kd);
    host.set(q);
    host.set(k, qd);
    host.set(v, qd + kd);
    ctx.upload(x, host);
    if (own) {
      kv.append(x.ptr + qd * 4, x.ptr + (qd + kd) * 4, Int32Array.of(pos));
      m.cache[l].n = kv.n;
    }
    let qPtr = x.ptr;
    if (kv.dtype !== 'float32') {
      qPtr = S.get('d.q16', qd * 2).ptr;
      convertDevice(ctx, { src: x.ptr, dst: qPtr, n: qd, from: 'float32', to: kv.dtype });
    }
    const qPos = S.get('d.qpos', 4);
    ctx.upload(qPos, Int32Array.of(pos));
    const o = S.get('d.o', qd * 4), lse = S.get('d.lse', H * 4);
    ctx.fill32(o, 0, qd);
    ctx.fill32(lse, 0xff800000, H); // -inf: this rank has seen nothing yet
    this.decoder ??= new CudaDecode(ctx);
    this.decoder.forward({ q: qPtr, qPos: qPos.ptr, caches: [kv.view()], Sq: 1, H, Hk, D, dtype: kv.dtype, causal, window, sinks, scale, o: o.ptr, lse: lse.ptr });
    (this.combiner ??= new DecodeCombiner(this.g)).combine(o.ptr, lse.ptr, H, D);
    this.decodes++;
    return ctx.download(new Float32Array(qd), o);
  }

  /** The host fallback: move the device KV cache (fp32) into the model's host cache, once. */
  private materializeCache(m: RankModel): void {
    this.kv.forEach((kv, l) => Object.assign(m.cache[l], kv.toHost()));
    this.dropKv();
  }

  dropDeviceCache(): void {
    this.dropKv();
  }

  private dropKv(): void {
    if (!this.kv.length) return;
    this.g.syncStream();
    for (const kv of this.kv) kv.dispose();
    this.kv = [];
  }

  decodeAttend(a: DecodeCall): void {
    // Only the host fallback (hostDecodeReason) gets here: the CPU split-KV kernel on the host cache.
    decodeAttention({
      q: a.q, qPos: a.qPos, caches: [{ k: a.k, v: a.v, pos: a.kPos, n: a.n }], H: a.H, Hk: a.Hk, D: a.D, causal: a.causal,
      window: a.window, sinks: a.sinks, scale: a.scale, o: a.o, lse: a.lse, kvSorted: true, threads: a.threads ?? 1,
    });
  }

  resetRings(): void {
    for (const r of this.rings.values()) r.ring?.dispose();
    this.rings.clear();
  }

  allGather(data: Float32Array): Float32Array[] {
    const n = data.length;
    if (this.ranks === 1) return [data.slice()];
    const send = this.scratch.get('gs', n * 4);
    const recv = this.scratch.get('gr', n * 4 * this.ranks);
    this.g.ctx.upload(send, data);
    this.g.allGatherDevice(send.ptr, recv.ptr, n);
    const all = this.g.ctx.download(new Float32Array(n * this.ranks), recv);
    return Array.from({ length: this.ranks }, (_, r) => all.slice(r * n, (r + 1) * n));
  }

  allReduceSum(data: Float32Array): void {
    if (this.ranks === 1 || data.length === 0) return;
    const b = this.scratch.get('ar', data.byteLength);
    this.g.ctx.upload(b, data);
    this.g.allReduceSumDevice(b.ptr, b.ptr, data.length);
    this.g.ctx.download(data, b);
  }

  barrier(): void {
    this.g.barrier();
  }

  dispose(): void {
    this.dropKv();
    this.decoder?.dispose();
    this.combiner?.dispose();
    this.decoder = this.combiner = undefined;
    this.resetRings();
    this.weightsChanged();
    this.scratch.dispose();
  }
}
