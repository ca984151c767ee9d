import { cpus } from 'node:os';
import type { Command } from 'commander';
import { existsSync, readFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { InputError } from '../../core/errors.js';
import { parseLayout } from '../../core/layout.js';
import { plan, formatPlan } from '../../core/plan.js';
import type { RunReport } from '../../core/trace.js';
import { parseHfConfig, readHfConfig, type ModelConfig } from '../../model/config.js';
import { initWeights, loadWeights, saveWeights } from '../../model/weights.js';
import { argmax } from '../../model/layers.js';
import { recallSequence, recallVocab, DEFAULT_RECALL, type RecallSpec } from '../../model/recall.js';
import { RingModel } from '../../llm.js';
import { writeReport } from '../../report/html.js';
import { encodeSafetensors, readSafetensors } from '../../io/safetensors.js';
import { writeFileAtomic, checkOutputDir, checkOutputPath } from '../../io/index.js';
import { backendOpt, devicesOpt, intOpt, kernelOpt, modelDtypeOpt, numOpt, printPlanOnce, SEED_MAX } from '../util.js';
import { formatTable } from '../table.js';

interface TrainFlags {
  seq: string;
  devices?: string;
  layout: string;
  steps: string;
  lr: string;
  warmup: string;
  schedule: string;
  hidden: string;
  layers: string;
  heads: string;
  window: string;
  compare: boolean;
  curriculum: string;
  seed: string;
  report: string;
  checkpoint?: string;
  resume?: string;
  evalSeqs: string;
  kernel: string;
  plan?: boolean;
  ropeTheta: string;
  backend: string;
  dtype?: string;
}

/**
 * Sequence length at a step: `start` for the first 40% (the model learns the lookup where it
 * is cheap), then doubling in stages of equal length over the next half (each stage sharpens
 * the attention a little more against the longer filler), and `end` for the last 10%.
 */
export function curriculumLength(step: number, steps: number, start: number, end: number): number {
  if (start >= end) return end;
  const stages = Math.ceil(Math.log2(end / start));
  const a = Math.floor(steps * 0.4);
  const b = Math.floor(steps * 0.9);
  if (step < a) return start;
  if (step >= b) return end;
  const stage = 1 + Math.floor(((step - a) / Math.max(1, b - a)) * stages);
  return Math.min(end, start * 2 ** stage);
}

/** xorshift32 from `seed`; `state()` is what `rng(state, true)` continues from exactly. */
function rng(seed: number, isState = false): (() => number) & { state: () => number } {
  let s = isState ? seed >>> 0 : seed >>> 0 || 0x9e3779b9;
  const next = () => {
    s ^= s << 13; s >>>= 0; s ^= s >>> 17; s ^= s << 5; s >>>= 0;
    return s / 4294967296;
  };
  return Object.assign(next, { state: () => s });
}

interface RunResult {
  name: string;
  curve: [number, number][];
  finalLoss: number;
  accuracy: number;
  seconds: number;
  model: RingModel;
  /** The training data generator's state after the last step (a checkpoint saves it). */
  dataRng: number;
}

/**
 * Standard deviation of the initial weight matrices: 0.5/sqrt(hidden), so q·k and the value
 * path start at the same scale whatever the width. GPT-2's fixed 0.02 (tuned for hidden 768)
 * is 3x smaller at hidden 64: the lookup needs the product of five matrices (embedding, q, k,
 * v·o, lm_head) to grow, the gradient that starts it scales with that product, and from 0.02
 * the 1-layer model sat at chance for 1500 steps even at 64 tokens (it learns in ~200 here).
 */
export function initStd(hidden: number): number {
  return 0.5 / Math.sqrt(hidden);
}

/** Linear warmup over `warmup` steps, then constant or a cosine decay to 10% at the last step. */
export function learningRate(step: number, steps: number, peak: number, warmup: number, cosine: boolean): number {
  if (step < warmup) return (peak * (step + 1)) / Math.max(1, warmup);
  if (!cosine) return peak;
  const t = Math.min(1, (step - warmup) / Math.max(1, steps - 1 - warmup));
  return peak * (0.1 + 0.45 * (1 + Math.cos(Math.PI * t)));
}

/**
 * Where a checkpoint directory's training stopped (its trainer_state.json): the step, and the
 * state of the training data's generator after that step's sequence (absent in checkpoints
 * written before it was saved: the generator is then replayed through the steps done).
 */
function savedState(dir: string): { step: number; dataRng?: number } {
  const file = join(dir, 'trainer_state.json');
  let st: { step?: unknown; dataRng?: unknown };
  try {
    st = JSON.parse(readFileSync(file, 'utf8')) as typeof st;
  } catch (e) {
    throw new InputError('--resume', `${file} could not be read (${(e as Error).message})`);
  }
  const { step, dataRng } = st;
  if (typeof step !== 'number' || !Number.isInteger(step) || step < 0) throw new InputError('--resume', `${file}: expected a non-negative integer "step", got ${JSON.stringify(step)}`);
  if (dataRng !== undefined && (typeof dataRng !== 'number' || !Number.isInteger(dataRng) || dataRng < 1 || dataRng >= 2 ** 32)) {
    throw new InputError('--resume', `${file}: expected "dataRng" to be a generator state (an integer in [1, 2^32)), got ${JSON.stringify(dataRng)}`);
  }
  return { step, dataRng: dataRng as number | undefined };
}

type TrainOptions = { steps: number; seq: number; start: number; lr: number; warmup: number; devices: number; seed: number; resume?: { dir: string; step: number; dataRng?: number } };

/** One model's training run. Its ranks are closed if it fails (a caller that got no result could not). */
async function trainOne(name: string, cfg: ModelConfig, f: TrainFlags, spec: RecallSpec, o: TrainOptions): Promise<RunResult> {
  const weights = o.resume ? loadWeights(o.resume.dir, cfg) : initWeights(cfg, o.seed, initStd(cfg.hiddenSize));
  const gpu = f.backend === 'cuda';
  const model = await RingModel.create(cfg, weights, { devices: o.devices, layout: parseLayout(f.layout, '--layout'), kernel: kernelOpt(f.kernel), backend: gpu ? 'cuda' : 'cpu', dtype: gpu ? modelDtypeOpt(f.dtype) : undefined });
  try {
    return await trainModel(name, model, cfg, f, spec, o);
  } catch (e) {
    await model.close();
    throw e;
  }
}

async function trainModel(name: string, model: RingModel, cfg: ModelConfig, f: TrainFlags, spec: RecallSpec, o: TrainOptions): Promise<RunResult> {
  const lead = model.rank === 0;
  let first = 0;
  let rand = rng(o.seed * 7919 + 1);
  if (o.resume) {
    const file = join(o.resume.dir, 'optimizer.safetensors');
    let state: Record<string, Float32Array>;
    try {
      const st = readSafetensors(file);
      state = Object.fromEntries(st.names().map((n) => [n, st.getFloat32(n)]));
    } catch (e) {
      throw e instanceof InputError ? new InputError('--resume', e.message) : e;
    }
    await model.loadOptimizerState(state, o.lr, 0.01);
    first = o.resume.step;
    // The data continue where the checkpoint's run stopped: its generator's saved state, or, for
    // an older checkpoint, the sequences of the steps done drawn again, at the lengths that run
    // gave them (its --steps was the checkpoint's step; the same --seq and --curriculum assumed).
    if (o.resume.dataRng !== undefined) rand = rng(o.resume.dataRng, true);
    else for (let step = 0; step < first; step++) recallSequence(spec, curriculumLength(step, first, o.start, o.seq), rand);
  }
  const curve: [number, number][] = [];
  const t0 = performance.now();
  let avg = NaN;
  let diverged = false;
  const tty = process.stderr.isTTY;
  for (let step = first; step < o.steps; step++) {
    const S = curriculumLength(step, o.steps, o.start, o.seq);
    const { ids, targets } = recallSequence(spec, S, rand);
    const lr = learningRate(step, o.steps, o.lr, o.warmup, f.schedule === 'cosine');
    const r = await model.trainStep(ids, targets, { lr, clip: 1, weightDecay: 0.01 });
    if (!Number.isFinite(r.loss) && !diverged && lead) process.stderr.write(`\nnote: ${name}: the loss is ${r.loss} at step ${step + 1}: training diverged (a lower --lr than ${o.lr} helps)\n`);
    diverged ||= !Number.isFinite(r.loss);
    avg = Number.isNaN(avg) ? r.loss : 0.9 * avg + 0.1 * r.loss;
    curve.push([step + 1, r.loss]);
    const line = `${name}: step ${step + 1}/${o.steps}  seq ${S}  loss ${r.loss.toFixed(4)} (avg ${avg.toFixed(4)})  ${((performance.now() - t0) / 1000).toFixed(1)} s`;
    if (!lead) continue;
    if (tty) process.stderr.write(`\r${line}\u001b[K`);
    else if ((step + 1) % 25 === 0 || step + 1 === o.steps) process.stderr.write(line + '\n');
  }
  if (tty && lead) process.stderr.write('\n');
  const dataState = rand.state();
  // Recall accuracy at the full length on fresh sequences.
  let right = 0;
  let total = 0;
  const evalRand = rng(o.seed * 31 + 5);
  for (let e = 0; e < Number(f.evalSeqs); e++) {
    const { ids, targets } = recallSequence(spec, o.seq, evalRand);
    const logits = await model.prefill(ids, 'all');
    for (let t = 0; t < ids.length; t++) {
      if (targets[t] < 0) continue;
      total++;
      const row = logits.subarray(t * cfg.vocabSize, (t + 1) * cfg.vocabSize);
      if (row.every(Number.isNaN)) continue; // a diverged model (noted above) recalls nothing
      if (argmax(row) === targets[t]) right++;
    }
  }
  const tail = curve.slice(-10);
  return { name, curve, finalLoss: tail.reduce((a, [, l]) => a + l, 0) / Math.max(1, tail.length), accuracy: total ? right / total : 0, seconds: (performance.now() - t0) / 1000, model, dataRng: dataState };
}

export function registerTrain(program: Command): void {
  program
    .command('train')
    .description('train a small model on key-value recall across a long sequence on a ring of CPU ranks; compare with a sliding-window model')
    .option('--seq <S>', 'final sequence length', '16384')
    .option('--devices <P>', 'ranks: CPU workers (default: the cores, 2 to 4), or GPUs with --backend cuda (default: this machine\'s GPUs, at most 4; in a launched job, its ranks)')
    .option('--backend <name>', 'cpu (worker threads) or cuda (one rank per GPU)', 'cpu')
    .option('--dtype <name>', 'with --backend cuda: fp32 (default) or bf16 (tensor cores)', 'fp32')
    .option('--layout <name>', 'contiguous, zigzag or striped', 'zigzag')
    .option('--steps <n>', 'optimizer steps', '600')
    .option('--lr <x>', 'peak learning rate (AdamW)', '2e-3')
    .option('--warmup <n>', 'warmup steps', '50')
    .option('--schedule <name>', 'after the warmup: constant, or cosine (decay to 10% of --lr at the last step)', 'constant')
    .option('--hidden <n>', 'hidden size', '64')
    .option('--layers <n>', 'decoder layers', '1')
    .option('--heads <n>', 'attention heads', '2')
    .option('--rope-theta <x>', 'RoPE base: a large one keeps low frequencies nearly still over long distances, so a lookup by content works at any distance', '1000000')
    .option('--window <W>', 'sliding window of the comparison model', '256')
    .option('--no-compare', 'train only the full-attention model')
    .option('--curriculum <S0>', 'train at this length for the first 40% of the steps, then double in stages up to --seq (held for the last 10%)', '64')
    .option('--seed <n>', 'seed', '1')
    .option('--eval-seqs <n>', 'fresh sequences of length --seq for the recall accuracy', '2')
    .option('--report <file>', 'HTML report with both loss curves', 'ringattn-train.html')
    .option('--checkpoint <dir>', 'save the full-attention model here (config.json, model.safetensors, optimizer state)')
    .option('--resume <dir>', 'continue from a checkpoint saved by --checkpoint')
    .option('--kernel <name>', 'auto, c or ts', 'auto')
    .option('--plan', 'print the planner\'s prediction first')
    .action(async (f: TrainFlags, cmd: Command) => {
      kernelOpt(f.kernel);
      const gpu = backendOpt(f.backend) === 'cuda';
      if (gpu) modelDtypeOpt(f.dtype);
      const seq = intOpt('--seq', f.seq, { min: 64 })!;
      // More CPU workers than cores only time-slice the same cores (4 on 2 cores: 1.8x slower than 2).
      // On GPUs: one rank a GPU here, at most 4, or the launched job's ranks (defaultGpuRanks).
      const devices = devicesOpt(f.devices ?? String(gpu ? (await import('../../cuda/cli.js')).defaultGpuRanks() : Math.min(4, Math.max(2, cpus().length))), gpu)!;
      const steps = intOpt('--steps', f.steps, { min: 1 })!;
      const lr = numOpt('--lr', f.lr, { positive: true })!;
      const warmup = intOpt('--warmup', f.warmup, { min: 0 })!;
      if (f.schedule !== 'cosine' && f.schedule !== 'constant') throw new InputError('--schedule', `expected cosine or constant, got '${f.schedule}'`);
      // (A toy model trained from scratch: bounds far past it, so that a typo is named, not a V8 abort.)
      let hidden = intOpt('--hidden', f.hidden, { min: 8, max: 65536 })!;
      let layers = intOpt('--layers', f.layers, { min: 1, max: 1024 })!;
      let heads = intOpt('--heads', f.heads, { min: 1 })!;
      const window = intOpt('--window', f.window, { min: 1 })!;
      const start = Math.min(seq, intOpt('--curriculum', f.curriculum, { min: 48 })!);
      const seed = intOpt('--seed', f.seed, { min: 0, max: SEED_MAX })!;
      let ropeTheta = numOpt('--rope-theta', f.ropeTheta, { positive: true })!;
      intOpt('--eval-seqs', f.evalSeqs, { min: 0 });
      if (hidden % heads !== 0 || (hidden / heads) % 2 !== 0) throw new InputError('--heads', `expected a divisor of --hidden (${hidden}) leaving an even head size, got ${heads}`);
      checkOutputPath(f.report, '--report');
      if (f.checkpoint) checkOutputDir(f.checkpoint, '--checkpoint');
      if (f.resume) {
        for (const file of ['trainer_state.json', 'optimizer.safetensors']) {
          if (!existsSync(join(f.resume, file))) throw new InputError('--resume', `${f.resume} has no ${file}; expected a directory written by --checkpoint`);
        }
      }
      const spec = DEFAULT_RECALL;
      // A resumed run continues the checkpoint's model to --steps in all (the count from the start
      // of training); its shape comes from the checkpoint (for --plan, the report and the comparison too).
      const resumed = f.resume ? readHfConfig(f.resume) : undefined;
      const saved = f.resume ? savedState(f.resume) : { step: 0 };
      if (f.resume && resumed) {
        if (steps <= saved.step) throw new InputError('--steps', `expected more than the checkpoint's ${saved.step} steps (--steps counts from the start of training), got ${steps}`);
        if (resumed.vocabSize !== recallVocab(spec)) throw new InputError('--resume', `${f.resume}/config.json has vocab_size ${resumed.vocabSize}; expected ${recallVocab(spec)} (the recall task's tokens): a checkpoint of this command`);
        for (const [opt, flag] of [['hidden', '--hidden'], ['layers', '--layers'], ['heads', '--heads'], ['ropeTheta', '--rope-theta']]) {
          if (cmd.getOptionValueSource(opt) === 'cli') throw new InputError(flag, `a resumed run keeps the checkpoint's model (${f.resume}/config.json); leave ${flag} out`);
        }
        [hidden, layers, heads, ropeTheta] = [resumed.hiddenSize, resumed.numLayers, resumed.numHeads, resumed.rope.theta];
      }
      const base = {
        vocab_size: recallVocab(spec), hidden_size: hidden, intermediate_size: resumed?.intermediateSize ?? 2 * hidden, num_hidden_layers: layers,
        num_attention_heads: heads, num_key_value_heads: resumed?.numKvHeads ?? heads, rms_norm_eps: 1e-5, rope_theta: ropeTheta, max_position_embeddings: Math.max(seq, 4096), tie_word_embeddings: false,
      };
      const full = resumed ?? parseHfConfig({ model_type: 'llama', ...base });
      if (f.plan) printPlanOnce(() => formatPlan(plan({ seq, heads, kvHeads: heads, headDim: hidden / heads, devices, dtype: gpu && modelDtypeOpt(f.dtype) === 'bfloat16' ? 'bf16' : 'fp32', device: gpu ? 'h100' : 'cpu', layers, mode: 'train' })));
      if (gpu) {
        // --devices N GPUs outside a launched job: this command runs again as N ranks.
        const { launchSelfIfNeeded } = await import('../../cuda/cli.js');
        if (await launchSelfIfNeeded(devices)) return;
      }
      const lead = (process.env.RANK ?? '0') === '0';
      if (lead) process.stderr.write(`ringattn train: key-value recall (${spec.pairs} pairs of ${spec.keys} keys x ${spec.values} values, ${spec.queries} queries) at up to ${seq} tokens on ${devices} ${gpu ? 'GPU' : 'CPU'} ranks\n`);
      const runs: RunResult[] = [];
      try {
        runs.push(await trainOne('full attention', full, f, spec, { steps, seq, start, lr, warmup, devices, seed, resume: f.resume ? { dir: f.resume, ...saved } : undefined }));
        if (f.compare) {
          const win = parseHfConfig({ model_type: 'mistral', ...base, sliding_window: window });
          runs.push(await trainOne(`window ${window}`, win, f, spec, { steps, seq, start, lr, warmup, devices, seed }));
        }
        if (f.checkpoint) {
          const m = runs[0].model;
          const opt = await m.optimizerState(); // every rank takes part
          if (lead) mkdirSync(f.checkpoint, { recursive: true });
          if (lead) saveWeights(f.checkpoint, m.cfg, m.weights);
          if (opt && lead) writeFileAtomic(join(f.checkpoint, 'optimizer.safetensors'), encodeSafetensors(Object.fromEntries(Object.entries(opt.state).map(([k, v]) => [k, { dtype: 'float32', shape: [v.length], data: v }]))), '--checkpoint');
          if (lead) writeFileAtomic(join(f.checkpoint, 'trainer_state.json'), JSON.stringify({ step: steps, seq, task: spec, dataRng: runs[0].dataRng }, null, 2), '--checkpoint');
        }
      } finally {
        for (const r of runs) await r.model.close();
      }
      if (!lead) return;
      const chance = Math.log(spec.values);
      const rows = runs.map((r) => [r.name, r.finalLoss.toFixed(4), `${(100 * r.accuracy).toFixed(1)}%`, r.seconds.toFixed(1)]);
      process.stdout.write('\n' + formatTable(['model', 'final loss', `recall accuracy at ${seq}`, 'seconds'], rows) + `\n(chance: loss ${chance.toFixed(3)}, accuracy ${(100 / spec.values).toFixed(0)}%)\n`);
      const report: RunReport = {
        title: `ringattn train: key-value recall at ${seq} tokens`,
        config: { seq, devices, layout: f.layout, steps, lr, hidden, layers, heads, ropeTheta, window, curriculumStart: start, seed, ...(f.resume ? {} : { initStd: Number(initStd(hidden).toPrecision(4)) }) },
        ranks: devices,
        steps: 0,
        events: [],
        memoryPerRank: [],
        summary: runs.flatMap((r) => [
          { label: `${r.name}: final loss`, value: r.finalLoss.toFixed(4) },
          { label: `${r.name}: recall accuracy at ${seq}`, value: `${(100 * r.accuracy).toFixed(1)}%` },
        ]).concat([{ label: 'chance level', value: `loss ${chance.toFixed(3)}, accuracy ${(100 / spec.values).toFixed(0)}%` }]),
        curves: [{ title: 'training loss', xLabel: 'step', yLabel: 'cross-entropy', series: runs.map((r) => ({ name: r.name, points: r.curve })) }],
      };
      writeReport(f.report, report, '--report');
      process.stdout.write(`report: ${f.report}\n`);
      if (runs[0].finalLoss > 0.5 * chance) process.stderr.write(`note: the full-attention model is still far from zero loss (${runs[0].finalLoss.toFixed(3)}); more --steps help\n`);
    });
}
