import type { Command } from 'commander';
import { InputError, RingAttnError } from '../../core/errors.js';
import { parseLayout } from '../../core/layout.js';
import type { F32Tensor } from '../../core/tensor.js';
import { checkInputs } from '../../core/inputs.js';
import { sampleRows, verifyRows } from '../../core/verify.js';
import { AtomicOutputs, encodeNpy, readNpyFloat32, readNpyInt32, checkOutputPath, checkOutputsNotInputs } from '../../io/index.js';
import { attention, ringAttention, maskOf, MAX_THREADS, type AttentionOptions } from '../../attention.js';
import { withFlagNames, backendOpt, devicesOpt, intOpt, kernelOpt, numOpt, prepareCpuKernels } from '../util.js';
import { progressBar } from '../progress.js';

interface AttendFlags {
  q: string;
  k: string;
  v: string;
  out: string;
  lse?: string;
  causal?: boolean;
  window?: string;
  sinks?: string;
  segments?: string;
  scale?: string;
  block?: string;
  gradOut?: string;
  dq?: string;
  dk?: string;
  dv?: string;
  devices?: string;
  layout: string;
  kernel: string;
  threads?: string;
  allowNonfinite?: boolean;
  verify?: string | boolean;
  quiet?: boolean;
  backend: string;
  dtype: string;
}

export function registerAttend(program: Command): void {
  program
    .command('attend')
    .description('exact attention of q against k, v (.npy files, [S,H,D] or [B,S,H,D]); on a ring of CPU workers with --devices')
    .requiredOption('--q <file>', 'queries .npy, [S, H, D] or [B, S, H, D]')
    .requiredOption('--k <file>', 'keys .npy, [S, Hk, D] (H % Hk == 0)')
    .requiredOption('--v <file>', 'values .npy, shaped like k')
    .requiredOption('--out <file>', 'output .npy (float32, shaped like q)')
    .option('--lse <file>', 'also write the log-sum-exp, [S, H] float32')
    .option('--causal', 'causal mask')
    .option('--window <W>', 'sliding window: each query sees its W most recent keys')
    .option('--sinks <N>', 'with --window: the first N keys stay visible (attention sinks)')
    .option('--segments <file>', 'int32 [S] document ids: packed documents do not see each other')
    .option('--scale <x>', 'softmax scale (default 1/sqrt(D))')
    .option('--block <B>', 'tile size (queries and keys)')
    .option('--grad-out <file>', 'dO .npy: also compute gradients (needs --dq --dk --dv)')
    .option('--dq <file>', 'output dQ .npy')
    .option('--dk <file>', 'output dK .npy')
    .option('--dv <file>', 'output dV .npy')
    .option('--devices <P>', 'run on a ring of P CPU workers (default: single device)')
    .option('--layout <name>', 'token layout on the ring: contiguous, zigzag or striped', 'zigzag')
    .option('--kernel <name>', 'auto, c (native) or ts (TypeScript fallback)', 'auto')
    .option('--threads <n>', 'threads for single-device attention (default: all cores)')
    .option('--allow-nonfinite', 'accept NaN or Infinity in the inputs')
    .option('--verify [rows]', 'check sampled rows against a float64 recomputation (default 16 rows)')
    .option('--quiet', 'no progress bar or summary')
    .option('--backend <name>', 'cpu, or cuda (NVIDIA GPUs: one GPU, or a ring of --devices GPUs launched as ranks)', 'cpu')
    .option('--dtype <name>', 'with --backend cuda: bf16, fp16 or fp32 inputs on the GPU (accumulation is fp32)', 'bf16')
    .action(withFlagNames(FLAGS, attend));
}

/** The library's argument names (checkInputs, attention, ringAttention) as this command's flags. */
const FLAGS = {
  q: '--q', k: '--k', v: '--v', segments: '--segments', gradOut: '--grad-out', window: '--window', sinks: '--sinks',
  scale: '--scale', blockQ: '--block', blockK: '--block', threads: '--threads', kernel: '--kernel', devices: '--devices', layout: '--layout',
} as const;

async function attend(f: AttendFlags): Promise<void> {
  backendOpt(f.backend);
  // --backend cuda with --devices N: this command runs again as N ranks (one per GPU).
  const cuda = f.backend === 'cuda' ? await import('../../cuda/cli.js') : null;
  const dtype = cuda?.parseDtype(f.dtype);
  if (cuda && (await cuda.launchSelfIfNeeded(devicesOpt(f.devices, true) ?? 1))) return;
  const layout = parseLayout(f.layout, '--layout');
  const kernel = kernelOpt(f.kernel);
  const grads = [f.dq, f.dk, f.dv];
  if (f.gradOut && grads.some((g) => !g)) throw new InputError('--grad-out', 'expected --dq, --dk and --dv output files with it');
  if (!f.gradOut && grads.some((g) => g)) throw new InputError('--dq', 'expected --grad-out (the gradient of the output) with --dq/--dk/--dv');
  const outputs = [['--out', f.out], ['--lse', f.lse], ['--dq', f.dq], ['--dk', f.dk], ['--dv', f.dv]] as const;
  for (const [name, p] of outputs) if (p) checkOutputPath(p, name);
  checkOutputsNotInputs(outputs, [['--q', f.q], ['--k', f.k], ['--v', f.v], ['--segments', f.segments], ['--grad-out', f.gradOut]]);
  const block = intOpt('--block', f.block, { min: 1 });
  const devices = devicesOpt(f.devices, !!cuda);
  const verifyRowsN = f.verify === undefined || f.verify === false ? 0 : f.verify === true ? 16 : intOpt('--verify', f.verify, { min: 1 })!;
  const q = readNpyFloat32(f.q, '--q');
  const k = readNpyFloat32(f.k, '--k');
  const v = readNpyFloat32(f.v, '--v');
  const opts: AttentionOptions = {
    causal: !!f.causal,
    window: intOpt('--window', f.window, { min: 1 }),
    sinks: intOpt('--sinks', f.sinks, { min: 0 }),
    scale: numOpt('--scale', f.scale),
    blockQ: block,
    blockK: block,
    kernel,
    threads: intOpt('--threads', f.threads, { min: 1, max: MAX_THREADS }),
    allowNonfinite: !!f.allowNonfinite,
  };
  if (opts.sinks !== undefined && opts.window === undefined) throw new InputError('--sinks', 'expected --window with it (without a window every key is visible)');
  if (f.segments) {
    const seg = readNpyInt32(f.segments, '--segments');
    if (seg.shape.length !== 1) throw new InputError('--segments', `expected a 1-D int32 array [S], got shape [${seg.shape.join(', ')}]`);
    opts.segments = seg.data;
  }
  if (f.gradOut) opts.gradOut = readNpyFloat32(f.gradOut, '--grad-out');
  for (const [name, t] of [['--q', q], ['--k', k], ['--v', v]] as const) {
    if (t.shape.length !== 3 && t.shape.length !== 4) throw new InputError(name, `expected shape [S, H, D] or [B, S, H, D], got [${t.shape.join(', ')}]`);
  }
  if (!cuda) {
    checkInputs(q, k, v, opts); // bad input fails at once, before a first-run compile
    prepareCpuKernels(opts.kernel, f.quiet);
  }
  const t0 = performance.now();
  let res;
  let info = '';
  if (cuda && dtype) {
    const r = await cuda.attendCuda(q, k, v, { devices, layout, dtype, causal: opts.causal, window: opts.window, sinks: opts.sinks, segments: opts.segments, scale: opts.scale, gradOut: opts.gradOut, allowNonfinite: opts.allowNonfinite });
    if (!r) return; // a rank other than 0: rank 0 writes the outputs
    res = r;
    info = r.info;
  } else if (devices !== undefined) {
    const bar = f.quiet ? null : progressBar('ring');
    try {
      res = await ringAttention(q, k, v, { ...opts, devices, layout, onProgress: bar ? (d, t) => bar.update(d, t) : undefined });
    } finally {
      bar?.stop();
    }
    info = `ring of ${devices} CPU workers, ${layout}, kernel ${res.stats.kernel}`;
  } else {
    const bar = f.quiet ? null : progressBar('attention', 'query chunks');
    try {
      res = await attention(q, k, v, { ...opts, onProgress: bar ? (d, t) => bar.update(d, t) : undefined });
    } finally {
      bar?.stop();
    }
    info = 'single device';
  }
  const ms = performance.now() - t0;
  if (verifyRowsN > 0) verify(q, k, v, res.out, res.lse, opts, verifyRowsN, f.quiet, cuda && dtype ? cuda.verifyTolerance(dtype) : undefined);
  const out = new AtomicOutputs();
  try {
    out.stage(f.out, encodeNpy(res.out), '--out');
    if (f.lse) out.stage(f.lse, encodeNpy(res.lse), '--lse');
    if (f.gradOut) {
      out.stage(f.dq!, encodeNpy(res.dq!), '--dq');
      out.stage(f.dk!, encodeNpy(res.dk!), '--dk');
      out.stage(f.dv!, encodeNpy(res.dv!), '--dv');
    }
    out.commit();
  } catch (e) {
    out.abort();
    throw e;
  }
  if (!f.quiet) process.stderr.write(`ringattn attend: [${q.shape.join(', ')}] in ${(ms / 1000).toFixed(2)} s (${info})\n`);
}

function verify(q: F32Tensor, k: F32Tensor, v: F32Tensor, out: F32Tensor, lse: F32Tensor, opts: AttentionOptions, n: number, quiet?: boolean, tol = { out: 1e-5, lse: 1e-4 }): void {
  const batched = q.shape.length === 4;
  const [B, S, H, D] = batched ? q.shape : [1, ...q.shape];
  const Hk = k.shape[batched ? 2 : 1];
  let worst = 0;
  let worstLse = 0;
  for (let b = 0; b < B; b++) {
    const r = verifyRows(
      {
        q: q.data.subarray(b * S * H * D, (b + 1) * S * H * D),
        k: k.data.subarray(b * S * Hk * D, (b + 1) * S * Hk * D),
        v: v.data.subarray(b * S * Hk * D, (b + 1) * S * Hk * D),
        out: out.data.subarray(b * S * H * D, (b + 1) * S * H * D),
        lse: lse.data.subarray(b * S * H, (b + 1) * S * H),
        S, H, Hk, D,
        scale: opts.scale ?? 1 / Math.sqrt(D),
        mask: maskOf(opts),
      },
      sampleRows(S, n, b + 1),
    );
    if (!r.emptyRowsOk) throw new RingAttnError('verification failed: a row that sees no key has a non-zero output or a finite LSE');
    worst = Math.max(worst, r.maxRelErr);
    worstLse = Math.max(worstLse, r.maxLseErr);
  }
  const ok = worst <= tol.out && worstLse <= tol.lse;
  if (!quiet || !ok) process.stderr.write(`verify: ${n} rows x ${B} batch against float64: max relative error ${worst.toExponential(2)}, LSE error ${worstLse.toExponential(2)} ${ok ? 'OK' : 'FAILED'}\n`);
  if (!ok) throw new RingAttnError(`verification failed: relative error ${worst.toExponential(2)} (LSE ${worstLse.toExponential(2)}) above ${tol.out}`);
}
