import type { CudaAttentionKernel, DeviceBlockArgs } from '../src/cuda/attention.js';
import type { CudaContext, DeviceBuffer } from '../src/cuda/context.js';

/**
 * One block's forward and backward on one GPU, timed as the GPU benches time them (bench/gpu-ring.ts
 * oneGpu, bench/gpu-masks.ts): the forward includes resetting (o, lse), the backward zeroing
 * dq/dk/dv and delta = rowsum(dO·O). One warm-up of each, then `reps` event-timed runs of each;
 * returns the median ms of both. Allocates its fp32 outputs and frees them before returning.
 */
export function timeBlock(ctx: CudaContext, kern: CudaAttentionKernel, a: DeviceBlockArgs, dO: number, reps: number): { f: number; b: number } {
  const n = a.Sq * a.H * a.D, nk = a.Sk * a.Hk * a.D, rows = a.Sq * a.H;
  const bufs: DeviceBuffer[] = [];
  const alloc = (bytes: number) => {
    const b = ctx.alloc(bytes);
    bufs.push(b);
    return b;
  };
  try {
    const o = alloc(n * 4), lse = alloc(rows * 4), delta = alloc(rows * 4), dq = alloc(n * 4), dk = alloc(nk * 4), dv = alloc(nk * 4);
    const fwd = () => {
      ctx.fill32(o, 0, n);
      ctx.fill32(lse, 0xff800000, rows);
      kern.forward({ ...a, o: o.ptr, lse: lse.ptr });
    };
    const bwd = () => {
      ctx.fill32(dq, 0, n);
      ctx.fill32(dk, 0, nk);
      ctx.fill32(dv, 0, nk);
      kern.delta(dO, o.ptr, delta.ptr, rows, a.D, a.dtype);
      kern.backward({ ...a, dO, lse: lse.ptr, delta: delta.ptr, dq: dq.ptr, dk: dk.ptr, dv: dv.ptr });
    };
    fwd();
    bwd();
    ctx.sync();
    const tf: number[] = [], tb: number[] = [];
    for (let i = 0; i < reps; i++) tf.push(ctx.time(fwd));
    for (let i = 0; i < reps; i++) tb.push(ctx.time(bwd));
    return { f: median(tf), b: median(tb) };
  } finally {
    ctx.sync();
    for (const b of bufs) ctx.free(b);
  }
}

export function median(x: number[]): number {
  const s = [...x].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}
