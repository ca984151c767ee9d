import type { F32Tensor } from '../core/tensor.js';
import { checkInputs } from '../core/inputs.js';
import { check as argCheck } from '../core/errors.js';
import { cudaKernel, supported, type CudaAttentionKernel } from './attention.js';
import { CudaContext, type DeviceBuffer } from './context.js';
import { bytesOf, encode, type CudaDType } from './convert.js';

export { cudaAvailable, check } from './check.js';
export { CudaContext } from './context.js';
export { cudaKernel, chooseKernel, supported, workspaceBytes } from './attention.js';
export type { CudaDType } from './convert.js';
export { CudaDecode, DecodeCombiner, decodeAttentionCuda, decodeCombineRanks, decodeSupported, type CudaDecodeArgs, type CudaDecodeResult, type DeviceDecodeArgs, type DeviceDecodeCache, type DecodeTuning, type DecodePlan } from './decode.js';
export { ringAttentionCuda, type CudaRingOptions, type CudaRingResult } from './ring.js';
export type { CudaRankShard } from './device.js';
export { rankMain, type CudaGroup, type GroupOptions } from './group.js';

/**
 * Single-GPU attention over whole tensors, mirroring `attention()` in src/attention.ts: fp32
 * host tensors in (converted to `dtype` on upload), fp32 out/lse (and dq, dk, dv with
 * `gradOut`). Positions are 0..S-1; `segments` become per-position ids.
 */
export interface CudaAttentionOptions {
  causal?: boolean;
  window?: number;
  sinks?: number;
  /** Document id per position, `[S]`. */
  segments?: Int32Array;
  scale?: number;
  /** Input precision on the GPU (default bfloat16). Accumulators are always fp32. */
  dtype?: CudaDType;
  /** Gradient of the output: computes dq, dk, dv too. */
  gradOut?: F32Tensor;
  allowNonfinite?: boolean;
  /** GPU ordinal (default 0). */
  device?: number;
  /** Reuse an open context (else one is opened and released). */
  context?: CudaContext;
  /** Test hook: fill every device output with NaN before its initialisation. */
  poison?: boolean;
}

export interface CudaAttentionResult {
  out: F32Tensor;
  lse: F32Tensor;
  dq?: F32Tensor;
  dk?: F32Tensor;
  dv?: F32Tensor;
  stats: { kernel: string; device: string; forwardMs: number; backwardMs: number };
}

const NEG_INF_BITS = 0xff800000;
const NAN_BITS = 0x7fc00000;

export async function attentionCuda(q: F32Tensor, k: F32Tensor, v: F32Tensor, opts: CudaAttentionOptions = {}): Promise<CudaAttentionResult> {
  const { B, S, H, Hk, D, batched } = checkInputs(q, k, v, opts);
  const dtype = opts.dtype ?? 'bfloat16';
  const base = { Sq: S, Sk: S, H, Hk, D, dtype, causal: !!opts.causal, window: opts.window ?? 0, sinks: opts.window !== undefined ? (opts.sinks ?? 0) : 0, scale: opts.scale ?? 1 / Math.sqrt(D) };
  const why = supported(base);
  if (why) argCheck(false, why.slice(0, why.indexOf(':')), why.slice(why.indexOf(':') + 2));
  const ctx = opts.context ?? CudaContext.open(opts.device ?? 0);
  const kernel: CudaAttentionKernel = cudaKernel(ctx);
  const grads = !!opts.gradOut;
  const nq = S * H * D;
  const nk = S * Hk * D;
  const el = bytesOf(dtype);
  const bufs: DeviceBuffer[] = [];
  const alloc = (bytes: number) => {
    const b = ctx.alloc(bytes);
    bufs.push(b);
    return b;
  };
  const lead = batched ? [B] : [];
  const host = (shape: number[]): F32Tensor => ({ dtype: 'float32', shape, data: new Float32Array(shape.reduce((a, b) => a * b, 1)) });
  const res: CudaAttentionResult = { out: host([...lead, S, H, D]), lse: host([...lead, S, H]), stats: { kernel: kernel.name({ dtype, D }), device: ctx.name, forwardMs: 0, backwardMs: 0 } };
  if (grads) {
    res.dq = host([...lead, S, H, D]);
    res.dk = host([...lead, S, Hk, D]);
    res.dv = host([...lead, S, Hk, D]);
  }
  try {
    const qd = alloc(nq * el), kd = alloc(nk * el), vd = alloc(nk * el);
    const pos = alloc(S * 4);
    const seg = opts.segments ? alloc(S * 4) : undefined;
    const o = alloc(nq * 4), lse = alloc(S * H * 4);
    const g = grads ? { dO: alloc(nq * el), delta: alloc(S * H * 4), dq: alloc(nq * 4), dk: alloc(nk * 4), dv: alloc(nk * 4) } : undefined;
    ctx.upload(pos, Int32Array.from({ length: S }, (_, i) => i));
    if (seg) ctx.upload(seg, opts.segments!);
    for (let b = 0; b < B; b++) {
      const slice = (t: F32Tensor, n: number) => t.data.subarray(b * n, (b + 1) * n);
      ctx.upload(qd, encode(slice(q, nq), dtype));
      ctx.upload(kd, encode(slice(k, nk), dtype));
      ctx.upload(vd, encode(slice(v, nk), dtype));
      if (opts.poison) for (const [buf, n] of [[o, nq], [lse, S * H]] as const) ctx.fill32(buf, NAN_BITS, n);
      ctx.fill32(lse, NEG_INF_BITS, S * H); // o need not be cleared: finishForward zeroes the rows that saw no key
      const blk = { ...base, q: qd.ptr, k: kd.ptr, v: vd.ptr, qPos: pos.ptr, kPos: pos.ptr, qSeg: seg?.ptr, kSeg: seg?.ptr };
      res.stats.forwardMs += ctx.time(() => {
        kernel.forward({ ...blk, o: o.ptr, lse: lse.ptr });
        kernel.finishForward(o.ptr, lse.ptr, S * H, D);
      });
      ctx.download(slice(res.out, nq), o);
      ctx.download(res.lse.data.subarray(b * S * H, (b + 1) * S * H), lse);
      if (g) {
        ctx.upload(g.dO, encode(slice(opts.gradOut!, nq), dtype));
        if (opts.poison) for (const [buf, n] of [[g.delta, S * H], [g.dq, nq], [g.dk, nk], [g.dv, nk]] as const) ctx.fill32(buf, NAN_BITS, n);
        for (const [buf, n] of [[g.dq, nq], [g.dk, nk], [g.dv, nk]] as const) ctx.fill32(buf, 0, n);
        res.stats.backwardMs += ctx.time(() => {
          kernel.delta(g.dO.ptr, o.ptr, g.delta.ptr, S * H, D, dtype);
          kernel.backward({ ...blk, dO: g.dO.ptr, lse: lse.ptr, delta: g.delta.ptr, dq: g.dq.ptr, dk: g.dk.ptr, dv: g.dv.ptr });
        });
        ctx.download(slice(res.dq!, nq), g.dq);
        ctx.download(slice(res.dk!, nk), g.dk);
        ctx.download(slice(res.dv!, nk), g.dv);
      }
    }
  } finally {
    try {
      ctx.sync();
    } finally {
      for (const b of bufs) ctx.free(b);
      kernel.dispose();
      if (!opts.context) ctx.dispose();
    }
  }
  return res;
}
