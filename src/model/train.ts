/**
 * Training on the ring: the forward of RankModel keeping what the backward needs, the backward
 * through every layer (attention through the ring backward: dQ at home, dK/dV travelling), and
 * gradients summed over the ranks. Shapes per rank: rows = this rank's tokens.
 *
 * Memory: per layer the layer input and the attention's q, k, v, o are kept ([rows, ...] each);
 * the feed-forward and the norms are recomputed block by block in the backward, and the ring
 * backward recomputes the attention forward (as FlashAttention's backward recomputes P).
 */
import type { RankContext } from '../core/group.js';
import type { ModelConfig } from './config.js';
import { crossEntropy, embed, embedBackward, rmsNorm, rmsNormBackward, swiglu, swigluBackward } from './layers.js';
import { FFN_BLOCK, type RankModel } from './llama.js';
import { applyRope } from './rope.js';
import type { LayerWeights, ModelWeights } from './weights.js';

/** Gradients shaped like the weights (lmHead is embed's array when embeddings are tied). */
export function zeroGrads(w: ModelWeights): ModelWeights {
  const z = (a: Float32Array) => new Float32Array(a.length);
  const embedG = z(w.embed);
  return {
    embed: embedG,
    finalNorm: z(w.finalNorm),
    lmHead: w.lmHead === w.embed ? embedG : z(w.lmHead),
    layers: w.layers.map((l) => Object.fromEntries(Object.entries(l).filter(([, a]) => a).map(([k, a]) => [k, z(a as Float32Array)])) as unknown as LayerWeights),
  };
}

/** Every (weight, gradient, name) pair once (a tied lm_head is not listed twice). */
export function paramList(w: ModelWeights, g: ModelWeights): { name: string; param: Float32Array; grad: Float32Array; decay: boolean }[] {
  const out = [
    { name: 'embed', param: w.embed, grad: g.embed, decay: true },
    { name: 'finalNorm', param: w.finalNorm, grad: g.finalNorm, decay: false },
  ];
  if (w.lmHead !== w.embed) out.push({ name: 'lmHead', param: w.lmHead, grad: g.lmHead, decay: true });
  w.layers.forEach((l, i) => {
    for (const [k, a] of Object.entries(l)) {
      if (!a) continue;
      out.push({ name: `layers.${i}.${k}`, param: a as Float32Array, grad: (g.layers[i] as unknown as Record<string, Float32Array>)[k], decay: !/Norm|Bias/.test(k) });
    }
  });
  return out;
}

/** y = x·wᵀ + b backward: dx (= dy·w, written or added), dw += dyᵀ·x, db += Σ dy. */
function linearBackward(ctx: RankContext, x: Float32Array, w: Float32Array, dy: Float32Array, rows: number, inDim: number, outDim: number, dx: Float32Array | null, addDx: boolean, dw: Float32Array, db?: Float32Array): void {
  if (dx) ctx.gemm(false, false, rows, inDim, outDim, dy, w, addDx ? 1 : 0, dx);
  ctx.gemm(true, false, outDim, inDim, rows, dy, x, 1, dw);
  if (db) for (let r = 0; r < rows; r++) for (let o = 0; o < outDim; o++) db[o] += dy[r * outDim + o];
}

interface Saved {
  hIn: Float32Array;
  hMid: Float32Array;
  q: Float32Array;
  k: Float32Array;
  v: Float32Array;
  o: Float32Array;
}

/**
 * One forward and backward of this rank's shard: loss over the targets (IGNORE_INDEX rows do
 * not count), gradients added into `grads` after being summed over every rank. Every rank
 * calls it together. Returns the global mean loss and the number of counted targets.
 */
export function trainStep(m: RankModel, ids: Int32Array, pos: Int32Array, targets: Int32Array, grads: ModelWeights): { loss: number; count: number } {
  const ctx = m.ctx;
  const c: ModelConfig = m.cfg;
  const w = m.w;
  const rows = ids.length;
  const hid = c.hiddenSize;
  const qd = c.numHeads * c.headDim;
  const kd = c.numKvHeads * c.headDim;

  // Forward, keeping each layer's input and attention tensors.
  const h = new Float32Array(rows * hid);
  embed(ids, w.embed, hid, h);
  const n = new Float32Array(rows * hid);
  const saved: Saved[] = [];
  for (let l = 0; l < c.numLayers; l++) {
    const lw = w.layers[l];
    const hIn = h.slice();
    rmsNorm(h, rows, hid, lw.inputNorm, c.rmsNormEps, n);
    const { q, k, v } = m.qkv(lw, n, rows, pos);
    const o = ctx.ringAttention({ q, k, v, pos }, m.params(l), m.ringKey(l)).o;
    const y = new Float32Array(rows * hid);
    ctx.linear(o, lw.o, lw.oBias, rows, qd, hid, y);
    for (let i = 0; i < y.length; i++) h[i] += y[i];
    const hMid = h.slice();
    m.feedForward(lw, h, rows);
    saved.push({ hIn, hMid, q, k, v, o });
  }
  const nFinal = new Float32Array(rows * hid);
  const invFinal = new Float32Array(rows);
  rmsNorm(h, rows, hid, w.finalNorm, c.rmsNormEps, nFinal, invFinal);
  const logits = new Float32Array(rows * c.vocabSize);
  ctx.linear(nFinal, w.lmHead, undefined, rows, hid, c.vocabSize, logits);

  // Loss: the mean over every rank's counted targets.
  const local = crossEntropy(logits, rows, c.vocabSize, targets);
  const totals = Float32Array.of(local.sum, local.count);
  ctx.allReduceSum(totals);
  const count = totals[1];
  const dlogits = new Float32Array(rows * c.vocabSize);
  crossEntropy(logits, rows, c.vocabSize, targets, dlogits, { gradScale: count > 0 ? 1 / count : 0 });

  // Backward.
  const dn = new Float32Array(rows * hid);
  linearBackward(ctx, nFinal, w.lmHead, dlogits, rows, hid, c.vocabSize, dn, false, grads.lmHead);
  const dh = new Float32Array(rows * hid);
  rmsNormBackward(h, rows, hid, w.finalNorm, invFinal, dn, dh, grads.finalNorm, c.rmsNormEps);
  for (let l = c.numLayers - 1; l >= 0; l--) {
    const lw = w.layers[l];
    const gw = grads.layers[l];
    const s = saved[l];
    ffnBackward(ctx, c, lw, gw, s.hMid, dh, rows);
    // Attention: dO = dh·Wo, then the ring backward.
    const dO = new Float32Array(rows * qd);
    linearBackward(ctx, s.o, lw.o, dh, rows, qd, hid, dO, false, gw.o, gw.oBias);
    const r = ctx.ringAttention({ q: s.q, k: s.k, v: s.v, dO, pos }, m.params(l), m.ringKey(l));
    const dq = r.dq!;
    const dk = r.dk!.slice();
    const dv = r.dv!.slice();
    applyRope(dq, rows, c.numHeads, c.headDim, pos, m.rope, true);
    applyRope(dk, rows, c.numKvHeads, c.headDim, pos, m.rope, true);
    const n1 = new Float32Array(rows * hid);
    const inv1 = new Float32Array(rows);
    rmsNorm(s.hIn, rows, hid, lw.inputNorm, c.rmsNormEps, n1, inv1);
    const dn1 = new Float32Array(rows * hid);
    linearBackward(ctx, n1, lw.q, dq, rows, hid, qd, dn1, false, gw.q, gw.qBias);
    linearBackward(ctx, n1, lw.k, dk, rows, hid, kd, dn1, true, gw.k, gw.kBias);
    linearBackward(ctx, n1, lw.v, dv, rows, hid, kd, dn1, true, gw.v, gw.vBias);
    const dx = new Float32Array(rows * hid);
    rmsNormBackward(s.hIn, rows, hid, lw.inputNorm, inv1, dn1, dx, gw.inputNorm, c.rmsNormEps);
    for (let i = 0; i < dh.length; i++) dh[i] += dx[i];
  }
  embedBackward(ids, dh, hid, grads.embed);

  // Weights are replicated: sum every gradient over the ranks.
  for (const p of paramList(w, grads)) ctx.allReduceSum(p.grad);
  return { loss: count > 0 ? totals[0] / count : 0, count };
}

/** Backward of h_out = h + ffn(h): dh (in place) becomes the gradient at h; weights' grads accumulate. */
function ffnBackward(ctx: RankContext, c: ModelConfig, lw: LayerWeights, gw: LayerWeights, hMid: Float32Array, dh: Float32Array, rows: number): void {
  const hid = c.hiddenSize, f = c.intermediateSize;
  const b = Math.min(ctx.ffnBlock ?? FFN_BLOCK, Math.max(1, rows));
  const n = new Float32Array(b * hid), inv = new Float32Array(b), g = new Float32Array(b * f), u = new Float32Array(b * f), a = new Float32Array(b * f);
  const da = new Float32Array(b * f), dg = new Float32Array(b * f), du = new Float32Array(b * f), dn = new Float32Array(b * hid), dx = new Float32Array(b * hid);
  for (let r0 = 0; r0 < rows; r0 += b) {
    const mm = Math.min(b, rows - r0);
    const hb = hMid.subarray(r0 * hid, (r0 + mm) * hid);
    const dy = dh.subarray(r0 * hid, (r0 + mm) * hid);
    const nb = n.subarray(0, mm * hid);
    rmsNorm(hb, mm, hid, lw.postNorm, c.rmsNormEps, nb, inv.subarray(0, mm));
    ctx.linear(nb, lw.gate, lw.gateBias, mm, hid, f, g);
    ctx.linear(nb, lw.up, lw.upBias, mm, hid, f, u);
    const gs = g.subarray(0, mm * f), us = u.subarray(0, mm * f), as = a.subarray(0, mm * f);
    swiglu(gs, us, as);
    linearBackward(ctx, as, lw.down, dy, mm, f, hid, da, false, gw.down, gw.downBias);
    swigluBackward(gs, us, da.subarray(0, mm * f), dg.subarray(0, mm * f), du.subarray(0, mm * f));
    linearBackward(ctx, nb, lw.gate, dg, mm, hid, f, dn, false, gw.gate, gw.gateBias);
    linearBackward(ctx, nb, lw.up, du, mm, hid, f, dn, true, gw.up, gw.upBias);
    rmsNormBackward(hb, mm, hid, lw.postNorm, inv.subarray(0, mm), dn.subarray(0, mm * hid), dx.subarray(0, mm * hid), gw.postNorm, c.rmsNormEps);
    for (let i = 0; i < mm * hid; i++) dy[i] += dx[i];
  }
}
