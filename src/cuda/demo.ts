import { RingAttnError } from '../core/errors.js';
import { sampleRows } from '../core/verify.js';
import { attentionFlops, visiblePairs } from '../core/flops.js';
import { shardPositions, type Layout } from '../core/layout.js';
import { visible, type MaskSpec } from '../core/mask.js';
import type { RunReport, TraceEvent } from '../core/trace.js';
import { cudaAvailable } from './check.js';
import { launchSelfIfNeeded } from './cli.js';
import { roundTo, type CudaDType } from './convert.js';
import { CudaGroup } from './group.js';
import { CudaRing } from './ring.js';

/**
 * `ringattn demo --backend cuda`: seeded random inputs (each rank makes only its own rows, from
 * a counter-based generator), the ring over every visible GPU, a summary table like the CPU
 * demo's, and sampled rows checked against a float64 recomputation on the dtype-rounded inputs.
 */

export interface DemoCudaConfig {
  S: number;
  H: number;
  Hk: number;
  D: number;
  /** Default: every visible GPU. */
  devices?: number;
  layout: Layout;
  causal: boolean;
  window?: number;
  sinks?: number;
  backward: boolean;
  dtype: CudaDType;
  seed: number;
  verifyRows: number;
  reps?: number;
  print?: (s: string) => void;
}

function hash32(x: number): number {
  x = Math.imul(x ^ (x >>> 16), 0x7feb352d);
  x = Math.imul(x ^ (x >>> 15), 0x846ca68b);
  return (x ^ (x >>> 16)) >>> 0;
}

/** Standard normal values of tensor `salt` at rows `pos` (`width` values per row), independent of who makes them. */
export function normalRows(pos: ArrayLike<number>, width: number, seed: number, salt: number): Float32Array {
  const out = new Float32Array(pos.length * width);
  const key = hash32(seed * 4 + salt + 0x9e3779b9);
  for (let i = 0; i < pos.length; i++) {
    const base = pos[i] * width;
    for (let j = 0; j < width; j++) {
      const h = hash32(((base + j) ^ key) >>> 0);
      const u = (hash32(h ^ 0x68e31da4) + 1) / 4294967297;
      const w = h / 4294967296;
      out[i * width + j] = Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * w);
    }
  }
  return out;
}

function table(head: string[], rows: (string | number)[][]): string {
  const cells = [head, ...rows.map((r) => r.map(String))];
  const w = head.map((_, i) => Math.max(...cells.map((r) => r[i].length)));
  const line = (r: string[]) => r.map((c, i) => (i === 0 ? c.padEnd(w[i]) : c.padStart(w[i]))).join('  ');
  return [line(head), w.map((n) => '-'.repeat(n)).join('  '), ...cells.slice(1).map(line)].join('\n');
}

const EV = 7;
const KIND = ['compute', 'transfer', 'wait'] as const;

/** Gather every rank's trace on all ranks (fixed-width records through NCCL). */
function gatherEvents(g: CudaGroup, events: TraceEvent[]): TraceEvent[] {
  const counts = g.allGatherF64([events.length]).map((x) => x[0]);
  const max = Math.max(...counts);
  const flat = new Array<number>(max * EV).fill(0);
  events.forEach((e, i) => flat.splice(i * EV, EV, e.rank, e.step, KIND.indexOf(e.kind), e.phase === 'forward' ? 0 : 1, e.start, e.end, e.bytes ?? -1));
  const all = g.allGatherF64(flat);
  const out: TraceEvent[] = [];
  all.forEach((rec, r) => {
    for (let i = 0; i < counts[r]; i++) {
      const [rank, step, kind, phase, start, end, bytes] = rec.slice(i * EV, (i + 1) * EV);
      out.push({ rank, step, kind: KIND[kind], phase: phase === 0 ? 'forward' : 'backward', start, end, ...(bytes >= 0 ? { bytes } : {}) });
    }
  });
  return out;
}

function overlapOf(events: TraceEvent[], rank: number) {
  const mine = events.filter((e) => e.rank === rank);
  const comp = mine.filter((e) => e.kind === 'compute');
  let compute = 0, transfer = 0, hidden = 0, bytes = 0;
  for (const e of comp) compute += e.end - e.start;
  for (const e of mine) {
    if (e.kind !== 'transfer') continue;
    transfer += e.end - e.start;
    bytes += e.bytes ?? 0;
    for (const c of comp) hidden += Math.max(0, Math.min(e.end, c.end) - Math.max(e.start, c.start));
  }
  return { compute, transfer, hidden, bytes };
}

/** Runs the demo; returns the report on rank 0 (null on other ranks and in the launching process). */
export async function demoCuda(cfg: DemoCudaConfig): Promise<RunReport | null> {
  const print = cfg.print ?? ((s: string) => process.stdout.write(s + '\n'));
  let P = cfg.devices;
  if (P === undefined) {
    const a = cudaAvailable();
    if (!a.ok) throw new RingAttnError(a.reason);
    P = a.devices;
  }
  if (await launchSelfIfNeeded(P)) return null;
  const { S, H, Hk, D, dtype, seed } = cfg;
  const g = await CudaGroup.init();
  try {
    const rank = g.rank;
    P = g.world;
    const mask: MaskSpec = { causal: cfg.causal, window: cfg.window, sinks: cfg.sinks };
    const maskDesc = [cfg.causal ? 'causal' : 'full', cfg.window ? `window ${cfg.window}` : '', cfg.sinks ? `sinks ${cfg.sinks}` : ''].filter(Boolean).join(', ');
    if (rank === 0) print(`ringattn demo: S=${S} H=${H} Hk=${Hk} D=${D}, ${dtype}, ${maskDesc}, ${cfg.layout} over ${P} GPU${P > 1 ? 's' : ''} (${g.ctx.name})${cfg.backward ? ', forward + backward' : ''}`);
    const positions = shardPositions(S, P, cfg.layout);
    const mine = positions[rank];
    const t0 = Date.now();
    const shard = {
      q: normalRows(mine, H * D, seed, 1),
      k: normalRows(mine, Hk * D, seed, 2),
      v: normalRows(mine, Hk * D, seed, 3),
      dO: cfg.backward ? normalRows(mine, H * D, seed, 4) : undefined,
      pos: mine,
    };
    const ring = new CudaRing(g, shard, { positions, ...mask, dtype, H, Hk, D, backward: cfg.backward });
    const genMs = Date.now() - t0;
    let fwd = ring.forward(); // warm-up: compiles (or loads) the kernels
    let bwd = cfg.backward ? ring.backward() : null;
    const reps = cfg.reps ?? 3;
    const fTimes: number[] = [], bTimes: number[] = [];
    for (let i = 0; i < reps; i++) {
      g.barrier();
      fwd = ring.forward();
      fTimes.push(g.max(fwd.ms));
      if (cfg.backward) {
        g.barrier();
        bwd = ring.backward();
        bTimes.push(g.max(bwd.ms));
      }
    }
    const median = (x: number[]) => [...x].sort((a, b) => a - b)[Math.floor(x.length / 2)] ?? 0;
    const fMs = median(fTimes), bMs = median(bTimes);
    const out = ring.download();
    // Check the sampled rows this rank owns against float64 on the dtype-rounded inputs.
    const rowsAll = sampleRows(S, cfg.verifyRows, seed + 7);
    const mineSet = new Map<number, number>();
    mine.forEach((t, i) => mineSet.set(t, i));
    const myRows = rowsAll.filter((t) => mineSet.has(t));
    let maxErr = 0, maxRef = 0, lseErr = 0, emptyOk = 1;
    if (myRows.length) {
      const upTo = cfg.causal ? Math.max(...myRows) + 1 : S;
      const keyPos = Int32Array.from({ length: upTo }, (_, i) => i);
      const kAll = roundTo(normalRows(keyPos, Hk * D, seed, 2), dtype);
      const vAll = roundTo(normalRows(keyPos, Hk * D, seed, 3), dtype);
      const qRows = roundTo(normalRows(myRows, H * D, seed, 1), dtype);
      const scale = 1 / Math.sqrt(D);
      const s = new Float64Array(upTo);
      const ref = new Float64Array(D);
      myRows.forEach((i, ri) => {
        const li = mineSet.get(i)!;
        for (let h = 0; h < H; h++) {
          const kh = Math.floor(h / (H / Hk));
          let mx = -Infinity;
          for (let j = 0; j < upTo; j++) {
            if (!visible(mask, i, j)) { s[j] = -Infinity; continue; }
            let dot = 0;
            for (let d = 0; d < D; d++) dot += qRows[(ri * H + h) * D + d] * kAll[(j * Hk + kh) * D + d];
            s[j] = dot * scale;
            if (s[j] > mx) mx = s[j];
          }
          const got = out.o.subarray((li * H + h) * D, (li * H + h + 1) * D);
          if (mx === -Infinity) {
            if (out.lse[li * H + h] !== -Infinity || got.some((x) => x !== 0)) emptyOk = 0;
            continue;
          }
          let sum = 0;
          for (let j = 0; j < upTo; j++) if (s[j] !== -Infinity) sum += Math.exp(s[j] - mx);
          ref.fill(0);
          for (let j = 0; j < upTo; j++) {
            if (s[j] === -Infinity) continue;
            const p = Math.exp(s[j] - mx) / sum;
            for (let d = 0; d < D; d++) ref[d] += p * vAll[(j * Hk + kh) * D + d];
          }
          for (let d = 0; d < D; d++) {
            maxErr = Math.max(maxErr, Math.abs(got[d] - ref[d]));
            maxRef = Math.max(maxRef, Math.abs(ref[d]));
          }
          lseErr = Math.max(lseErr, Math.abs(out.lse[li * H + h] - (mx + Math.log(sum))));
        }
      });
    }
    const times = overlapOf([...fwd.events, ...(bwd?.events ?? [])], rank);
    const stats = g.allGatherF64([mine.length, times.compute, times.transfer, times.hidden, times.bytes, ring.dev.bytesHeld(), maxErr, maxRef, lseErr, emptyOk, myRows.length, genMs]);
    const events = gatherEvents(g, [...fwd.events, ...(bwd ? bwd.events.map((e) => ({ ...e, start: e.start + fwd.ms, end: e.end + fwd.ms })) : [])]);
    const kernel = ring.kernel.name({ dtype, D });
    ring.dispose();
    await g.close();
    if (rank !== 0) return null;

    const pairs = visiblePairs(S, mask);
    const fFlops = attentionFlops(pairs, H, D);
    const bFlops = attentionFlops(pairs, H, D, true);
    const mb = (x: number) => (x / 1e6).toFixed(1);
    print('');
    print(table(
      ['rank', 'tokens', 'compute ms', 'transfer ms', 'overlap %', 'MB moved in', 'GPU memory'],
      stats.map((x, r) => [r, x[0], x[1].toFixed(2), x[2].toFixed(2), x[2] > 0 ? ((100 * x[3]) / x[2]).toFixed(0) : '-', mb(x[4]), `${(x[5] / 2 ** 30).toFixed(2)} GiB`]),
    ));
    print('');
    const transfer = stats.reduce((a, x) => a + x[2], 0);
    const overlap = transfer > 0 ? stats.reduce((a, x) => a + x[3], 0) / transfer : 1;
    const err = Math.max(...stats.map((x) => x[6])) / Math.max(1e-30, Math.max(...stats.map((x) => x[7])));
    const lse = Math.max(...stats.map((x) => x[8]));
    const tol = dtype === 'float32' ? 1e-4 : 1e-2;
    const ok = err <= tol && lse <= tol && stats.every((x) => x[9] === 1);
    const computes = stats.map((x) => x[1]);
    const rowsChecked = stats.reduce((a, x) => a + x[10], 0);
    const summary: [string, string][] = [
      ['kernel', kernel],
      ['forward', `${fMs.toFixed(2)} ms, ${(fFlops / fMs / 1e9).toFixed(1)} TFLOP/s (median of ${reps}, slowest rank)`],
      ...(cfg.backward ? ([['backward', `${bMs.toFixed(2)} ms, ${(bFlops / bMs / 1e9).toFixed(1)} TFLOP/s`]] as [string, string][]) : []),
      ['work balance (max/mean compute)', (Math.max(...computes) / (computes.reduce((a, b) => a + b, 0) / P)).toFixed(3)],
      ['transfers overlapped with compute', `${(100 * overlap).toFixed(0)} %`],
      ['inputs generated per rank', `${Math.max(...stats.map((x) => x[11]))} ms`],
      ['check vs float64 (sampled rows)', `${rowsChecked} rows x ${H} heads, max relative error ${err.toExponential(2)}, LSE error ${lse.toExponential(2)} (limit ${tol})`],
      ['verdict', ok ? 'OK: ring result verified' : 'FAILED'],
    ];
    const w = Math.max(...summary.map(([l]) => l.length));
    print(summary.map(([l, v]) => `${l.padEnd(w)}  ${v}`).join('\n'));
    if (!ok) throw new RingAttnError(`verification failed: relative error ${err.toExponential(2)}, LSE error ${lse.toExponential(2)} (limit ${tol})`);
    return {
      title: `ringattn demo (CUDA): S=${S}, ${maskDesc}, ${cfg.layout}, P=${P}`,
      config: { S, H, Hk, D, devices: P, layout: cfg.layout, mask: maskDesc, dtype, backward: cfg.backward, kernel, seed },
      ranks: P,
      steps: P,
      events,
      memoryPerRank: stats.map((x) => x[5]),
      summary: summary.map(([label, value]) => ({ label, value })),
    };
  } catch (e) {
    g.control?.fail(e instanceof Error ? e.message : String(e));
    g.abort();
    throw e;
  }
}
