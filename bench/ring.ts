/**
 * npm run bench:ring [-- --quick]: the CPU ring against P on this machine. Time and GFLOP/s,
 * overlap of transfers with compute, bytes moved per step against the planner, and
 * single-device attention on all cores (the peer) in the same run. The ring runs on warm
 * workers (a tiny run before each starts them if need be; the first one's time per P is printed
 * as the start-up).
 */
import { cpus } from 'node:os';
import { attention, ringAttention } from '../src/attention.js';
import { closeIdleRingWorkers } from '../src/cpu/ring.js';
import { attentionFlops, visiblePairs } from '../src/core/flops.js';
import { plan } from '../src/core/plan.js';
import type { F32Tensor } from '../src/core/tensor.js';
import { summarize } from '../src/report/summary.js';
import { formatTable } from '../src/cli/table.js';

const quick = process.argv.includes('--quick');
const S = quick ? 4096 : 16384;
const [H, Hk, D] = [8, 2, 64];
const rand = (shape: number[]): F32Tensor => {
  const n = shape.reduce((a, b) => a * b, 1);
  const data = new Float32Array(n);
  for (let i = 0; i < n; i++) data[i] = Math.random() * 2 - 1;
  return { dtype: 'float32', shape, data };
};
const q = rand([S, H, D]), k = rand([S, Hk, D]), v = rand([S, Hk, D]), dO = rand([S, H, D]);
const Ps = quick ? [1, 2, 4] : [1, 2, 4, 8];

/** Makes sure P workers are warm for the timed run (a 64-token run); the first cold start per P is reported. */
const startUps = new Map<number, number>();
async function warmUp(P: number): Promise<void> {
  const t = (s: number, h: number) => rand([s, h, D]);
  const res = await ringAttention(t(64, H), t(64, Hk), t(64, Hk), { devices: P, causal: true });
  if (!res.stats.warm && !startUps.has(P)) startUps.set(P, res.stats.wallMs / 1000);
}
const rows: (string | number)[][] = [];
for (const causal of [true, false]) {
  const pairs = visiblePairs(S, { causal });
  for (const backward of [false, true]) {
    const flops = attentionFlops(pairs, H, D) + (backward ? attentionFlops(pairs, H, D, true) : 0);
    const t0 = performance.now();
    await attention(q, k, v, { causal, gradOut: backward ? dO : undefined });
    const single = (performance.now() - t0) / 1000;
    rows.push([`single device, ${cpus().length} threads`, causal ? 'causal' : 'full', backward ? 'fwd+bwd' : 'fwd', '-', single.toFixed(3), (flops / single / 1e9).toFixed(1), '-', '-', '-']);
    for (const P of Ps) {
      await warmUp(P); // idle workers end after IDLE_GROUP_MS: the runs between may take longer
      const res = await ringAttention(q, k, v, { causal, devices: P, layout: 'zigzag', gradOut: backward ? dO : undefined });
      if (!res.stats.warm) throw new Error(`P=${P}: the timed run started its workers`);
      const sec = res.stats.wallMs / 1000;
      const sum = summarize(res.stats.events, P);
      const fwdTransfers = res.stats.events.filter((e) => e.kind === 'transfer' && e.phase === 'forward');
      const perStep = fwdTransfers.length ? fwdTransfers.reduce((a, e) => a + (e.bytes ?? 0), 0) / fwdTransfers.length : 0;
      const pl = plan({ seq: S, heads: H, kvHeads: Hk, headDim: D, devices: P, dtype: 'fp32', device: 'cpu', causal, layout: 'zigzag', mode: backward ? 'train' : 'prefill' });
      rows.push([`ring, zigzag`, causal ? 'causal' : 'full', backward ? 'fwd+bwd' : 'fwd', P, sec.toFixed(3), (flops / sec / 1e9).toFixed(1), P > 1 ? `${(100 * sum.overlap).toFixed(0)}%` : '-', P > 1 ? (perStep / 1e6).toFixed(3) : '-', P > 1 ? (pl.forward!.transferBytesPerStep / 1e6).toFixed(3) : '-']);
    }
  }
}
process.stdout.write(`CPU ring: S=${S}, H=${H}, Hk=${Hk}, D=${D}, fp32; ${cpus().length} x ${cpus()[0]?.model ?? 'cpu'}\n\n`);
process.stdout.write(formatTable(['run', 'mask', 'pass', 'P', 'seconds', 'GFLOP/s', 'overlap', 'MB/step', 'plan MB/step'], rows) + '\n');
const cold = [...startUps].map(([P, sec]) => `P=${P} ${sec.toFixed(3)} s`).join(', ');
process.stdout.write(`\nRing runs on warm workers. Worker start-up (a 64-token run on fresh workers): ${cold}\n`);
await closeIdleRingWorkers();
