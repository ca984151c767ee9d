import { shardPositions } from '../src/core/layout.js';
import { cudaKernel } from '../src/cuda/attention.js';
import { launchSelfIfNeeded } from '../src/cuda/cli.js';
import { toBf16 } from '../src/cuda/convert.js';
import { rankMain, type CudaGroup } from '../src/cuda/group.js';
import { CudaRing } from '../src/cuda/ring.js';
import { median, timeBlock } from './gpu-block.js';

/**
 * The ring on P GPUs against one GPU on the same total work (bench/gpu.ts ring): bf16, D=128,
 * H=32, Hk=8, zigzag layout, non-causal and causal, S in {16k, 32k, 64k}; forward and backward,
 * median of `reps` event-timed runs (the ring: slowest rank, each run after a barrier), TFLOP/s
 * with the usual count (forward 4·S²·H·D, halved for causal; backward 2.5x), overlap = share of
 * transfer time that ran while the same rank computed. Prints one JSON line per row too.
 */

const H = 32, Hk = 8, D = 128;

/** Cheap bf16 inputs: a random pattern tiled (timing does not depend on the values). */
function bf16Rows(n: number, salt: number): Uint16Array {
  const period = (1 << 20) + 7 * salt + 1;
  let x = 0x9e3779b9 ^ salt;
  const base = new Float32Array(period);
  for (let i = 0; i < period; i++) {
    x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0;
    base[i] = x / 2147483648 - 1;
  }
  const b = toBf16(base);
  const out = new Uint16Array(n);
  for (let i = 0; i < n; i += period) out.set(b.subarray(0, Math.min(period, n - i)), i);
  return out;
}

function oneGpu(g: CudaGroup, S: number, causal: boolean, reps: number): { f: number; b: number } {
  const ctx = g.ctx;
  const kern = cudaKernel(ctx);
  const up = (x: ArrayBufferView) => {
    const b = ctx.alloc(x.byteLength);
    ctx.upload(b, x);
    return b;
  };
  const n = S * H * D, nk = S * Hk * D;
  const q = up(bf16Rows(n, 1)), k = up(bf16Rows(nk, 2)), v = up(bf16Rows(nk, 3)), dO = up(bf16Rows(n, 4));
  const pos = up(Int32Array.from({ length: S }, (_, i) => i));
  try {
    const a = { q: q.ptr, k: k.ptr, v: v.ptr, qPos: pos.ptr, kPos: pos.ptr, Sq: S, Sk: S, H, Hk, D, dtype: 'bfloat16' as const, causal, window: 0, sinks: 0, scale: 1 / Math.sqrt(D) };
    return timeBlock(ctx, kern, a, dO.ptr, reps);
  } finally {
    for (const b of [q, k, v, dO, pos]) ctx.free(b);
    kern.dispose();
  }
}

function overlap(events: { kind: string; start: number; end: number }[]): { transfer: number; hidden: number } {
  const comp = events.filter((e) => e.kind === 'compute');
  let transfer = 0, hidden = 0;
  for (const e of events) {
    if (e.kind !== 'transfer') continue;
    transfer += e.end - e.start;
    for (const c of comp) hidden += Math.max(0, Math.min(e.end, c.end) - Math.max(e.start, c.start));
  }
  return { transfer, hidden };
}

export async function ringBench(devices: number, reps: number, sizes: number[]): Promise<void> {
  if (await launchSelfIfNeeded(devices)) return;
  await rankMain(async (g) => {
    const P = g.world;
    const say = (s: string) => g.rank === 0 && console.log(s);
    say(`device: ${g.ctx.name} x ${P}; bf16 H=${H} Hk=${Hk} D=${D}, zigzag; median of ${reps}`);
    say('     S  causal | 1 GPU fwd ms  TF/s | ring fwd ms  TF/s  ratio  ovl% | 1 GPU bwd ms  TF/s | ring bwd ms  TF/s  ratio  ovl%');
    for (const S of sizes) {
      for (const causal of [false, true]) {
        let one = { f: 0, b: 0 };
        if (g.rank === 0) one = oneGpu(g, S, causal, reps);
        g.barrier();
        const positions = shardPositions(S, P, 'zigzag');
        const mine = positions[g.rank];
        const shard = { q: bf16Rows(mine.length * H * D, 1), k: bf16Rows(mine.length * Hk * D, 2), v: bf16Rows(mine.length * Hk * D, 3), dO: bf16Rows(mine.length * H * D, 4), pos: mine };
        const ring = new CudaRing(g, shard, { positions, causal, dtype: 'bfloat16', H, Hk, D, backward: true });
        // Warm-up (the same count on every rank: the calls are collective): enough calls for the
        // host code to run compiled, as the 1-GPU side's warmUp gives it, where a call is short
        // enough for the host's share to matter (bench/gpu-block.ts).
        for (let i = 0, n = S <= 32768 ? 8 : S <= 65536 ? 4 : 2; i < n; i++) {
          ring.forward();
          ring.backward();
        }
        const tf: number[] = [], tb: number[] = [];
        let of = { transfer: 0, hidden: 0 }, ob = { transfer: 0, hidden: 0 };
        for (let i = 0; i < reps; i++) {
          g.barrier();
          const f = ring.forward();
          tf.push(g.max(f.ms));
          g.barrier();
          const b = ring.backward();
          tb.push(g.max(b.ms));
          if (i === reps - 1) {
            of = overlap(f.events);
            ob = overlap(b.events);
          }
        }
        ring.dispose();
        const sum = (o: { transfer: number; hidden: number }) => g.allGatherF64([o.transfer, o.hidden]).reduce((a, x) => [a[0] + x[0], a[1] + x[1]], [0, 0]);
        const [ft, fh] = sum(of), [bt, bh] = sum(ob);
        const flops = (4 * S * S * H * D) / (causal ? 2 : 1);
        const rf = median(tf), rb = median(tb);
        const row = {
          S, causal, devices: P, oneFwdMs: one.f, oneFwdTflops: flops / one.f / 1e9, ringFwdMs: rf, ringFwdTflops: flops / rf / 1e9, fwdRatio: rf / one.f, fwdOverlap: ft > 0 ? fh / ft : 1,
          oneBwdMs: one.b, oneBwdTflops: (2.5 * flops) / one.b / 1e9, ringBwdMs: rb, ringBwdTflops: (2.5 * flops) / rb / 1e9, bwdRatio: rb / one.b, bwdOverlap: bt > 0 ? bh / bt : 1,
        };
        const p = (x: number, w: number, d = 2) => x.toFixed(d).padStart(w);
        say(`${String(S).padStart(6)}  ${String(causal).padEnd(6)} | ${p(row.oneFwdMs, 12)} ${p(row.oneFwdTflops, 5, 0)} | ${p(rf, 11)} ${p(row.ringFwdTflops, 5, 0)} ${p(row.fwdRatio, 6, 3)} ${p(100 * row.fwdOverlap, 5, 0)} | ${p(row.oneBwdMs, 12)} ${p(row.oneBwdTflops, 5, 0)} | ${p(rb, 11)} ${p(row.ringBwdTflops, 5, 0)} ${p(row.bwdRatio, 6, 3)} ${p(100 * row.bwdOverlap, 5, 0)}`);
        say(`JSON ${JSON.stringify(row)}`);
      }
    }
  });
}
