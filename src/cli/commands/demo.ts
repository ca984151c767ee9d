import type { Command } from 'commander';
import { cpus } from 'node:os';
import { InputError, RingAttnError } from '../../core/errors.js';
import { parseLayout, type Layout } from '../../core/layout.js';
import type { F32Tensor } from '../../core/tensor.js';
import { normRelErr, sampleRows, verifyGradRows, verifyKeyGradRows, verifyRows } from '../../core/verify.js';
import { computeDelta } from '../../core/kernel.js';
import { attentionFlops, visiblePairs } from '../../core/flops.js';
import { plan, formatBytes, formatSeconds } from '../../core/plan.js';
import type { RunReport } from '../../core/trace.js';
import { ringAttention, maskOf, type RingAttentionOptions } from '../../attention.js';
import { getKernel } from '../../cpu/attention.js';
import { summarize, blockMapOf } from '../../report/summary.js';
import { writeReport } from '../../report/html.js';
import { checkOutputPath } from '../../io/index.js';
import { backendOpt, devicesOpt, intOpt, kernelOpt, prepareCpuKernels, SEED_MAX } from '../util.js';
import { progressBar } from '../progress.js';
import { formatTable } from '../table.js';

interface DemoFlags {
  seq?: string;
  heads?: string;
  kvHeads?: string;
  headDim?: string;
  devices?: string;
  layout: string;
  causal: boolean;
  window?: string;
  sinks?: string;
  backward?: boolean;
  seed: string;
  kernel: string;
  report: string;
  verifyRows?: string;
  backend: string;
  dtype: string;
}

export function registerDemo(program: Command): void {
  program
    .command('demo')
    .description('ring attention on a ring of CPU workers with seeded random inputs, verified, with a summary and an HTML report')
    .option('--seq <S>', 'sequence length (default: 16384; 65536 with --backend cuda)')
    .option('--heads <H>', 'query heads (default: 8; 32 with --backend cuda)')
    .option('--kv-heads <Hk>', 'key/value heads, GQA (default: 2; 8 with --backend cuda)')
    .option('--head-dim <D>', 'head dimension (default: 64; 128 with --backend cuda)')
    .option('--devices <P>', 'CPU workers in the ring (default: 4; every visible GPU with --backend cuda)')
    .option('--layout <name>', 'contiguous, zigzag or striped', 'zigzag')
    .option('--no-causal', 'full (bidirectional) attention instead of causal')
    .option('--window <W>', 'sliding window')
    .option('--sinks <N>', 'attention sinks (with --window)')
    .option('--backward', 'also run the ring backward (dQ, dK, dV)')
    .option('--seed <n>', 'random seed', '1')
    .option('--kernel <name>', 'auto, c or ts', 'auto')
    .option('--report <file>', 'HTML report', 'ringattn-demo.html')
    .option('--verify-rows <n>', 'rows checked against single-device and float64 attention (default: 32; 8 with --backend cuda)')
    .option('--backend <name>', 'cpu (worker threads) or cuda (one rank per GPU)', 'cpu')
    .option('--dtype <name>', 'with --backend cuda: bf16, fp16 or fp32', 'bf16')
    .action(async (f: DemoFlags) => demo(f));
}

function randomTensor(shape: number[], seed: number): F32Tensor {
  const n = shape.reduce((a, b) => a * b, 1);
  const data = new Float32Array(n);
  let s = seed >>> 0 || 1;
  for (let i = 0; i < n; i += 2) {
    // xorshift32 -> Box-Muller
    s ^= s << 13; s >>>= 0; s ^= s >>> 17; s ^= s << 5; s >>>= 0;
    const u = (s + 1) / 4294967297;
    s ^= s << 13; s >>>= 0; s ^= s >>> 17; s ^= s << 5; s >>>= 0;
    const w = s / 4294967296;
    const r = Math.sqrt(-2 * Math.log(u));
    data[i] = r * Math.cos(2 * Math.PI * w);
    if (i + 1 < n) data[i + 1] = r * Math.sin(2 * Math.PI * w);
  }
  return { dtype: 'float32', shape, data };
}

async function demo(f: DemoFlags): Promise<void> {
  backendOpt(f.backend);
  const gpu = f.backend === 'cuda';
  const S = intOpt('--seq', f.seq ?? (gpu ? '65536' : '16384'), { min: 1 })!;
  const H = intOpt('--heads', f.heads ?? (gpu ? '32' : '8'), { min: 1 })!;
  const Hk = intOpt('--kv-heads', f.kvHeads ?? (gpu ? '8' : '2'), { min: 1 })!;
  const D = intOpt('--head-dim', f.headDim ?? (gpu ? '128' : '64'), { min: 1 })!;
  const seed = intOpt('--seed', f.seed, { min: 0, max: SEED_MAX })!;
  const nVerify = intOpt('--verify-rows', f.verifyRows ?? (gpu ? '8' : '32'), { min: 1 })!;
  if (gpu) {
    if (H % Hk !== 0) throw new InputError('--kv-heads', `expected a divisor of --heads (${H}), got ${Hk}`);
    checkOutputPath(f.report, '--report');
    const cuda = await import('../../cuda/demo.js');
    const { parseDtype } = await import('../../cuda/cli.js');
    const report = await cuda.demoCuda({
      S, H, Hk, D, devices: devicesOpt(f.devices, true), layout: parseLayout(f.layout, '--layout'), causal: f.causal,
      window: intOpt('--window', f.window, { min: 1 }), sinks: intOpt('--sinks', f.sinks, { min: 0 }), backward: !!f.backward,
      dtype: parseDtype(f.dtype), seed, verifyRows: nVerify,
    });
    if (report) {
      writeReport(f.report, report, '--report');
      process.stdout.write(`\nreport: ${f.report}\n`);
    }
    return;
  }
  const P = devicesOpt(f.devices ?? '4')!;
  const layout: Layout = parseLayout(f.layout, '--layout');
  if (H % Hk !== 0) throw new InputError('--kv-heads', `expected a divisor of --heads (${H}), got ${Hk}`);
  const kernelChoice = kernelOpt(f.kernel);
  checkOutputPath(f.report, '--report');
  const opts: RingAttentionOptions = {
    causal: f.causal,
    window: intOpt('--window', f.window, { min: 1 }),
    sinks: intOpt('--sinks', f.sinks, { min: 0 }),
    devices: P,
    layout,
    kernel: kernelChoice,
  };
  if (opts.sinks !== undefined && opts.window === undefined) throw new InputError('--sinks', 'expected --window with it');
  const q = randomTensor([S, H, D], seed * 3 + 1);
  const k = randomTensor([S, Hk, D], seed * 3 + 2);
  const v = randomTensor([S, Hk, D], seed * 3 + 3);
  if (f.backward) opts.gradOut = randomTensor([S, H, D], seed * 3 + 4);
  const mask = maskOf(opts);
  const maskDesc = [opts.causal ? 'causal' : 'full', opts.window ? `window ${opts.window}` : '', opts.sinks ? `sinks ${opts.sinks}` : ''].filter(Boolean).join(', ');
  process.stdout.write(`ringattn demo: S=${S} H=${H} Hk=${Hk} D=${D}, ${maskDesc}, ${layout} over ${P} CPU workers${f.backward ? ', forward + backward' : ''}\n`);

  prepareCpuKernels(kernelChoice);
  const bar = progressBar('ring');
  let res;
  try {
    res = await ringAttention(q, k, v, { ...opts, onProgress: (d, t) => bar.update(d, t) });
  } finally {
    bar.stop();
  }
  const st = res.stats;

  // Check: the sampled rows against single-device blockwise attention (same kernel, one
  // device, all keys) and against a float64 recomputation from the definition.
  const rows = sampleRows(S, nVerify, seed + 7);
  const kernel = getKernel({ kernel: opts.kernel });
  const qPos = Int32Array.from(rows);
  const qRows = new Float32Array(rows.length * H * D);
  rows.forEach((r, i) => qRows.set(q.data.subarray(r * H * D, (r + 1) * H * D), i * H * D));
  const o1 = new Float32Array(rows.length * H * D);
  const lse1 = new Float32Array(rows.length * H).fill(-Infinity);
  const allPos = Int32Array.from({ length: S }, (_, i) => i);
  kernel.forward({ q: qRows, k: k.data, v: v.data, qPos, kPos: allPos, Sq: rows.length, Sk: S, H, Hk, D, causal: !!opts.causal, window: opts.window ?? 0, sinks: opts.window ? (opts.sinks ?? 0) : 0, scale: 1 / Math.sqrt(D), threads: cpus().length, o: o1, lse: lse1 });
  let num = 0, den = 0;
  rows.forEach((r, i) => {
    for (let t = 0; t < H * D; t++) {
      num = Math.max(num, Math.abs(res.out.data[r * H * D + t] - o1[i * H * D + t]));
      den = Math.max(den, Math.abs(o1[i * H * D + t]));
    }
  });
  const vsSingle = den > 0 ? num / den : num;
  const f64 = verifyRows({ q: q.data, k: k.data, v: v.data, out: res.out.data, lse: res.lse.data, S, H, Hk, D, scale: 1 / Math.sqrt(D), mask }, rows.slice(0, Math.min(rows.length, 8)));
  // With --backward: sampled rows of dQ, dK and dV against float64 (dK and dV sum over every
  // query: their float64 sums take each query's LSE from a single-device forward of the whole
  // problem), and every row against a single-device backward, to a looser limit: a ring that
  // drops or repeats a block is off by far more than 1e-4, while two fp32 sums over 64k queries
  // already differ by ~1e-5. The float64 limit is the test suite's for fp32 gradients (2e-5;
  // 65,536 tokens measured 7.8e-6, 16,384 3.3e-6: the long sums' rounding grows with S).
  let grads: { vsSingle: number; f64: number; rows: number } | undefined;
  if (f.backward) {
    const n = S * H * D, nk = S * Hk * D;
    const whole = { q: q.data, k: k.data, v: v.data, qPos: allPos, kPos: allPos, Sq: S, Sk: S, H, Hk, D, causal: !!opts.causal, window: opts.window ?? 0, sinks: opts.window ? (opts.sinks ?? 0) : 0, scale: 1 / Math.sqrt(D), threads: cpus().length };
    const o = new Float32Array(n);
    const lse = new Float32Array(S * H).fill(-Infinity);
    kernel.forward({ ...whole, o, lse });
    const dO = opts.gradOut!.data;
    const dq = new Float32Array(n), dk = new Float32Array(nk), dv = new Float32Array(nk);
    kernel.backward({ ...whole, dO, lse, delta: computeDelta(o, dO, S * H, D), dq, dk, dv });
    const vs = Math.max(normRelErr(res.dq!.data, dq), normRelErr(res.dk!.data, dk), normRelErr(res.dv!.data, dv));
    const sample = rows.slice(0, Math.min(rows.length, 8));
    const base = { q: q.data, k: k.data, v: v.data, S, H, Hk, D, scale: 1 / Math.sqrt(D), mask, dO };
    const gq = verifyGradRows({ ...base, out: res.out.data, lse: res.lse.data, dq: res.dq!.data }, sample);
    const gkv = verifyKeyGradRows({ ...base, dk: res.dk!.data, dv: res.dv!.data, oAll: o, lseAll: lse }, sample);
    grads = { vsSingle: vs, f64: Math.max(gq.normRelErr, gkv.dkNormRelErr, gkv.dvNormRelErr), rows: sample.length };
  }
  const ok = vsSingle <= 1e-5 && f64.maxRelErr <= 1e-5 && f64.emptyRowsOk && (!grads || (grads.vsSingle <= 1e-4 && grads.f64 <= 2e-5));

  // Summary.
  const pairs = visiblePairs(S, mask);
  const flops = attentionFlops(pairs, H, D) + (f.backward ? attentionFlops(pairs, H, D, true) : 0);
  const sum = summarize(st.events, P);
  const sec = st.wallMs / 1000;
  const workPerRank = sum.perRank.map((t) => t.compute);
  const table = formatTable(
    ['rank', 'tokens', 'compute ms', 'transfer ms', 'wait ms', 'overlap %', 'MB moved in', 'peak memory'],
    sum.perRank.map((t, r) => [
      r,
      st.positions[r].length,
      t.compute.toFixed(1),
      t.transfer.toFixed(1),
      t.wait.toFixed(1),
      t.transfer > 0 ? ((100 * t.overlapped) / t.transfer).toFixed(0) : '-',
      (t.bytes / 1e6).toFixed(2),
      formatBytes(st.bytesHeld[r]),
    ]),
  );
  process.stdout.write(`\n${table}\n\n`);
  const pl = plan({ seq: S, heads: H, kvHeads: Hk, headDim: D, devices: P, dtype: 'fp32', device: 'cpu', causal: !!opts.causal, layout, mode: f.backward ? 'train' : 'prefill' });
  const summaryRows: [string, string][] = [
    ['kernel', st.kernel],
    ['wall time', `${sec.toFixed(3)} s`],
    ['throughput', `${(flops / sec / 1e9).toFixed(1)} GFLOP/s (${(pairs / 1e6).toFixed(1)}M visible pairs x ${H} heads)`],
    ['compute per rank (mean)', `${(workPerRank.reduce((a, b) => a + b, 0) / P).toFixed(1)} ms`],
    ['work balance (max/mean compute)', sum.imbalance.toFixed(3)],
    ['transfers overlapped with compute', `${(100 * sum.overlap).toFixed(0)} %`],
    ['peak memory per rank (max)', formatBytes(Math.max(...st.bytesHeld))],
    ['whole sequence on one device (q,k,v,o,lse)', formatBytes(4 * S * (2 * H * D + 2 * Hk * D + H))],
    ['check vs single-device (sampled rows)', `${rows.length} rows, max relative error ${vsSingle.toExponential(2)}`],
    ['check vs float64 (sampled rows)', `${f64.rows} rows, max relative error ${f64.maxRelErr.toExponential(2)}`],
    ...(grads
      ? ([
          ['gradients vs single-device (all rows)', `dQ, dK, dV: relative error ${grads.vsSingle.toExponential(2)} (norm-wise, limit 1e-4)`],
          ['gradients vs float64 (sampled rows)', `dQ, dK, dV of ${grads.rows} rows: relative error ${grads.f64.toExponential(2)} (norm-wise, limit 2e-5)`],
        ] as [string, string][])
      : []),
    ['verdict', ok ? 'OK: ring result verified' : 'FAILED'],
  ];
  const w = Math.max(...summaryRows.map(([l]) => l.length));
  process.stdout.write(summaryRows.map(([l, v]) => `${l.padEnd(w)}  ${v}`).join('\n') + '\n');

  const report: RunReport = {
    title: `ringattn demo: S=${S}, ${maskDesc}, ${layout}, P=${P}`,
    config: { S, H, Hk, D, devices: P, layout, mask: maskDesc, backward: !!f.backward, kernel: st.kernel, seed },
    ranks: P,
    steps: P,
    events: st.events,
    memoryPerRank: st.bytesHeld,
    blockMap: blockMapOf(S, st.positions, mask),
    summary: summaryRows.map(([label, value]) => ({ label, value })),
    plan: [
      ['memory per rank', formatBytes(pl.memory.total), formatBytes(Math.max(...st.bytesHeld))],
      ['KV bytes per transfer', formatBytes(pl.forward?.transferBytesPerStep ?? 0), formatBytes(sum.perRank[0].bytes / Math.max(1, st.events.filter((e) => e.rank === 0 && e.kind === 'transfer' && e.phase === 'forward').length))],
      ['work balance (busiest / mean)', pl.flops.imbalance.toFixed(3), sum.imbalance.toFixed(3)],
      ['transfers hidden', pl.hidden ? 'yes' : 'no', `${(100 * sum.overlap).toFixed(0)} %`],
      ['time per layer (preset CPU rate)', formatSeconds(pl.timePerLayerS), formatSeconds(sec)],
    ].map(([label, predicted, measured]) => ({ label, predicted, measured })),
  };
  writeReport(f.report, report, '--report');
  process.stdout.write(`\nreport: ${f.report}\n`);
  if (!ok) {
    const g = grads ? `; gradients ${grads.vsSingle.toExponential(2)} vs single-device (limit 1e-4), ${grads.f64.toExponential(2)} vs float64 (limit 2e-5), norm-wise` : '';
    throw new RingAttnError(`verification failed: relative error ${vsSingle.toExponential(2)} vs single-device, ${f64.maxRelErr.toExponential(2)} vs float64 (limit 1e-5)${g}`);
  }
}
