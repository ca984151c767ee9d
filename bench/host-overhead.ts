import { cudaKernel } from '../src/cuda/attention.js';
import type { CudaContext, DeviceBuffer } from '../src/cuda/context.js';
import { formatTable } from '../src/cli/table.js';
import { median } from './gpu-block.js';

/**
 * The host's share of a GPU block call, with no GPU: the CUDA attention kernel object's forward
 * and backward (validation, kernel choice, tile boxes, tensor maps, argument packing, launches)
 * against a context whose driver calls do nothing, so what is timed is our TypeScript alone (the
 * real driver adds its own few microseconds a launch). Times each call by wall clock over the
 * first calls, while V8 still interprets them, and later, once compiled: the event-timed GPU
 * benches must warm up past the first phase (bench/gpu-block.ts warmUp), since a GPU that
 * finishes a call's small kernels before its main one is launched waits through the rest.
 * Usage: node dist/bench/host-overhead.js [calls=2000]
 */
const calls = Number(process.argv[2] ?? 2000);
if (!Number.isInteger(calls) || calls < 600) throw new Error(`calls: expected an integer >= 600, got ${process.argv[2]}`);

function fakeContext(): { ctx: CudaContext; launches: () => number } {
  let next = 2 ** 32, launches = 0;
  const fake = {
    computeCapability: [9, 0] as const,
    smCount: 132,
    drv: { cuTensorMapEncodeTiled: () => 0 },
    alloc(bytes: number): DeviceBuffer {
      const b = { ptr: next, bytes } as DeviceBuffer;
      next += Math.ceil(bytes / 4096) * 4096;
      return b;
    },
    free() {},
    sync() {},
    fill32() {},
    check() {},
    fn() {
      return {};
    },
    launch() {
      launches++;
    },
  };
  return { ctx: fake as unknown as CudaContext, launches: () => launches };
}

const rows: (string | number)[][] = [];
for (const pass of ['forward', 'backward'] as const) {
  for (const D of [64, 128]) {
    const { ctx, launches } = fakeContext();
    const kern = cudaKernel(ctx);
    const S = 8192, H = 32, G = 2 ** 30;
    const a = { q: G, k: 2 * G, v: 3 * G, qPos: 4 * G, kPos: 5 * G, Sq: S, Sk: S, H, Hk: 8, D, dtype: 'bfloat16' as const, causal: true, window: 0, sinks: 0, scale: 1 / Math.sqrt(D) };
    const out = { o: 6 * G, lse: 7 * G, dO: 8 * G, delta: 9 * G, dq: 10 * G, dk: 11 * G, dv: 12 * G };
    const us: number[] = [];
    for (let i = 0; i < calls; i++) {
      const t0 = process.hrtime.bigint();
      if (pass === 'forward') kern.forward({ ...a, ...out });
      else kern.backward({ ...a, ...out });
      us.push(Number(process.hrtime.bigint() - t0) / 1000);
    }
    rows.push([pass, D, us[0].toFixed(0), median(us.slice(1, 6)).toFixed(1), median(us.slice(6, 50)).toFixed(1), median(us.slice(50, 500)).toFixed(1), median(us.slice(-500)).toFixed(1), launches() / calls]);
  }
}
console.log(`host work of one block call (S=8192 H=32 Hk=8 causal bf16, driver stubbed), microseconds, median of each range of calls; node ${process.version}`);
console.log(formatTable(['call', 'D', 'call 0', 'calls 1-5', 'calls 6-49', 'calls 50-499', `last 500 of ${calls}`, 'launches a call'], rows));
