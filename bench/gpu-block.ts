import type { CudaAttentionKernel, DeviceBlockArgs } from '../src/cuda/attention.js';
import type { CudaContext, DeviceBuffer } from '../src/cuda/context.js';

/**
 * One block's forward and backward as the GPU benches time them (bench/gpu.ts, bench/gpu-trace.ts,
 * and timeBlock for bench/gpu-ring.ts oneGpu): a whole pass over one block, as a caller of the
 * library's one-block attention runs it. The forward includes resetting lse and finishForward (o
 * is not read where lse is -inf; finish zeroes the o of rows that saw no key), the backward zeroing
 * dq/dk/dv and delta = rowsum(dO·O). With `step` (for bench/gpu-masks.ts) the calls are what a
 * ring step runs for its block instead: the forward alone, merging into the running (o, lse) left
 * by the calls before it (every step after a ring's first merges: o is read where lse is finite),
 * and the backward alone, adding into dq/dk/dv, with delta taken once beforehand. The per-pass work
 * (the resets, finish, delta) is a ring's once, not each step's. The two differ most on light
 * blocks: at 16k (H=32, Hk=8) a window's edge's backward was 7% faster as a step (no 384 MB of
 * zeroed gradients, no delta), its forward 12% slower (read then as the merge reading o, which a
 * pass's first and only forward skips: batching those reads took the edge's step from 1.16 to 1.03
 * ms, but what a step still costs over a pass is not o's traffic, runs 128-130), the unmasked
 * forward 5% slower (kernels/NOTES.md run 118). `fresh`: a
 * step's calls, but lse reset to -inf before each forward (a ring's first step: nothing merged, no
 * finishForward), to tell what finite (o, lse) cost a step from what the pass's other calls cost
 * (kernels/NOTES.md runs 128-130: the edge's epilogue phase 4.4 us as a step, 2.3 as a pass, in a
 * build that neither reads nor stores o; run 131: 2.3 fresh). Two more to split what a fresh step
 * changes: `finite`, lse set to 0 before each forward (finite: every row merges, as in a step, but
 * lse just written), and `spaced`, a step's calls with an unrelated fill of the same size (delta's
 * buffer, which the forward does not touch) before each forward (lse and o as a step leaves them).
 * `trace`: a
 * per-CTA record buffer for the kernels built with
 * -DFWD_TRACE / -DBWD_TRACE (bench/gpu-trace.ts), passed to both calls (0: none). Allocates its
 * fp32 outputs (`bufs`: the caller frees them; if an allocation fails, those made before it are
 * freed here).
 */
export type Timing = 'pass' | 'step' | 'fresh' | 'finite' | 'spaced';

export function blockCalls(ctx: CudaContext, kern: CudaAttentionKernel, a: DeviceBlockArgs, dO: number, trace = 0, timing: Timing = 'pass'): { fwd: () => void; bwd: () => void; bufs: DeviceBuffer[] } {
  const n = a.Sq * a.H * a.D, nk = a.Sk * a.Hk * a.D, rows = a.Sq * a.H;
  const bufs: DeviceBuffer[] = [];
  try {
    for (const bytes of [n * 4, rows * 4, rows * 4, n * 4, nk * 4, nk * 4]) bufs.push(ctx.alloc(bytes));
  } catch (e) {
    for (const b of bufs) ctx.free(b);
    throw e;
  }
  const [o, lse, delta, dq, dk, dv] = bufs;
  const forward = () => kern.forward({ ...a, o: o.ptr, lse: lse.ptr, trace });
  const backward = () => kern.backward({ ...a, dO, lse: lse.ptr, delta: delta.ptr, dq: dq.ptr, dk: dk.ptr, dv: dv.ptr, trace });
  const pass = {
    fwd: () => {
      ctx.fill32(lse, 0xff800000, rows);
      forward();
      kern.finishForward(o.ptr, lse.ptr, rows, a.D);
    },
    bwd: () => {
      ctx.fill32(dq, 0, n);
      ctx.fill32(dk, 0, nk);
      ctx.fill32(dv, 0, nk);
      kern.delta(dO, o.ptr, delta.ptr, rows, a.D, a.dtype);
      backward();
    },
  };
  if (timing === 'pass') return { bufs, ...pass };
  // A first pass leaves (o, lse) and delta as a ring's later steps find them.
  pass.fwd();
  pass.bwd();
  if (timing === 'step') return { bufs, fwd: forward, bwd: backward };
  // Before each forward: fresh resets lse to -inf, finite sets it to 0, spaced fills delta.
  const before = { fresh: [lse, 0xff800000], finite: [lse, 0], spaced: [delta, 0] } as const;
  const [buf, bits] = before[timing];
  const fwd = () => {
    ctx.fill32(buf, bits, rows);
    forward();
  };
  return { bufs, fwd, bwd: backward };
}

/** What a forward call of each step-like timing runs, as the benches' headers say it. */
export const STEP_FORWARD: Record<Exclude<Timing, 'pass'>, string> = {
  step: 'merging into the running o and lse',
  fresh: 'lse reset to -inf first: nothing merged',
  finite: 'lse set to 0 first: every row merges',
  spaced: 'merging, a fill of another buffer first',
};

/**
 * A bench's timing argument (blockCalls' `timing`): one of TIMINGS; anything else is an error
 * naming the bench `who`.
 */
const TIMINGS: readonly Timing[] = ['pass', 'step', 'fresh', 'finite', 'spaced'];
export function parseTiming(who: string, mode: string): Timing {
  if (!(TIMINGS as readonly string[]).includes(mode))
    throw new Error(`${who}: the timing is step (a ring step's calls), pass (a whole one-block pass), fresh (a step's calls on lse reset to -inf), finite (on lse set to 0) or spaced (a step's calls with a fill between), got '${mode}'`);
  return mode as Timing;
}

/**
 * One block's forward and backward on one GPU (blockCalls; with `step` or `fresh`, the calls a ring step runs,
 * `queue` of them enqueued back to back in each timed interval as a ring's steps follow one
 * another): warm-up (warmUp) of each, then `reps` event-timed runs of each; returns the median ms of
 * both, and the wall-clock span (epoch ms, settling included) over which each pass ran back to
 * back, for a clock and power sampler beside the run (bench/gpu-masks-clocks.sh). Frees
 * its fp32 outputs before returning.
 */
export function timeBlock(ctx: CudaContext, kern: CudaAttentionKernel, a: DeviceBlockArgs, dO: number, reps: number, timing: Timing = 'pass', queue = 1): { f: number; b: number; fAt: [number, number]; bAt: [number, number] } {
  const { fwd, bwd, bufs } = blockCalls(ctx, kern, a, dO, 0, timing);
  const spanned = (fn: () => void): [number, [number, number]] => {
    const t0 = Date.now();
    const ms = timeCalls(ctx, fn, reps, queue);
    return [ms, [t0, Date.now()]];
  };
  try {
    warmUp(ctx, () => {
      fwd();
      bwd();
    });
    const [f, fAt] = spanned(fwd), [b, bAt] = spanned(bwd);
    return { f, b, fAt, bAt };
  } finally {
    ctx.sync();
    for (const b of bufs) ctx.free(b);
  }
}

/**
 * Calls `fn` until the host code behind it runs compiled, then waits for the GPU: at least 3
 * calls, then until `calls` calls or `ms` of wall time. V8 runs a function's first calls in its
 * interpreter: a forward's host work (tile boxes, tensor maps, launches) took ~200 us a call over
 * its first five calls, ~30 us after 50 and ~15 us after a few hundred (bench/host-overhead.ts),
 * and an event-timed call pays for the part of it that the GPU waits through. A single warm-up
 * call, as these benches made before, left 8k-token blocks (1-2 ms) timed 5-12% slow.
 */
export function warmUp(ctx: CudaContext, fn: () => void, calls = 50, ms = 3000): void {
  repeat(ctx, fn, 3, calls, ms);
}

/**
 * Calls `fn` back to back, at least `minCalls` times, then until `maxCalls` calls or `ms` of wall
 * time, and waits for the GPU. A sync every 4 calls keeps the queue short, so that the wall
 * clock tracks the GPU's work and a pass of seconds overruns `ms` by at most 4 calls.
 */
function repeat(ctx: CudaContext, fn: () => void, minCalls: number, maxCalls: number, ms: number): void {
  const t0 = performance.now();
  for (let i = 0; i < maxCalls && (i < minCalls || performance.now() - t0 < ms); i++) {
    fn();
    if (i % 4 === 3) ctx.sync();
  }
  ctx.sync();
}

/**
 * How long each timed pass first runs untimed, back to back: RINGATTN_BENCH_SETTLE_MS, default
 * 2000 (0: not at all); bench/peers/torch_common.py reads the same variable, so both sides of a
 * comparison settle alike. An H100 or H200 under these kernels runs at its power cap (700 W,
 * throttle reason 0x4), and its clock takes about a second from the start of a heavy pass to
 * reach that pass's steady value, dipping on the way (1515 MHz at 660 W before 1745 MHz at
 * 700 W): a pass timed over its first 150 ms after a warm-up of other work read 11% slow (16k
 * causal backward: 369-371 TFLOP/s within gpu.js --peers, 410-413 over 300 calls back to back,
 * kernels/NOTES.md run 115). A long training or prefill run sees the steady clock.
 */
export function settleMs(): number {
  const raw = process.env.RINGATTN_BENCH_SETTLE_MS;
  const ms = raw === undefined || raw === '' ? 2000 : Number(raw);
  if (!Number.isFinite(ms) || ms < 0) throw new Error(`RINGATTN_BENCH_SETTLE_MS: expected milliseconds >= 0, got '${raw}'`);
  return ms;
}

/** Runs `fn` back to back for settleMs() of wall time (at least once; not at all for 0). */
function settle(ctx: CudaContext, fn: () => void): void {
  const ms = settleMs();
  if (ms > 0) repeat(ctx, fn, 1, Infinity, ms);
}

/**
 * Median ms a call of `fn` takes over `reps` event-timed intervals of `queue` calls enqueued back to
 * back (the interval's time / queue), after settling (settleMs). queue = 1 times a call alone (the
 * host's gaps before its launches included, as a peer's single call is timed); queue > 1 as a
 * ring's steps follow one another, the host preparing one call while the GPU runs the last.
 */
export function timeCalls(ctx: CudaContext, fn: () => void, reps: number, queue = 1): number {
  settle(ctx, fn);
  const t: number[] = [];
  for (let r = 0; r < reps; r++) {
    t.push(
      ctx.time(() => {
        for (let j = 0; j < queue; j++) fn();
      }) / queue,
    );
  }
  return median(t);
}

export function median(x: number[]): number {
  const s = [...x].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}
