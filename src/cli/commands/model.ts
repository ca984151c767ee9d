import type { Command } from 'commander';
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { InputError } from '../../core/errors.js';
import { parseLayout } from '../../core/layout.js';
import { plan, formatPlan } from '../../core/plan.js';
import { formatBytes } from '../../core/plan.js';
import { encodeNpy, readInputFile, readTokens, writeFileAtomic, checkOutputPath, checkOutputsNotInputs } from '../../io/index.js';
import { readHfConfig, type ModelConfig } from '../../model/config.js';
import { hasTokenizer, loadTokenizer } from '../../model/tokenizer.js';
import { checkTokenIds, RingModel } from '../../llm.js';
import { withFlagNames, backendOpt, devicesOpt, intOpt, kernelOpt, modelDtypeOpt, numOpt, printPlanOnce, SEED_MAX } from '../util.js';
import { progressBar } from '../progress.js';

/** The files a checkpoint directory is made of (weights, their index, configs, tokenizer). */
const CHECKPOINT_FILE = /(\.safetensors|\.safetensors\.index\.json|^(config|generation_config|tokenizer|tokenizer_config|special_tokens_map|trainer_state)\.json)$/;

/**
 * The --model directory's checkpoint files, as inputs no output may replace: an output written
 * over model.safetensors or config.json would destroy the checkpoint it was read from.
 */
function modelFiles(f: { model: string }): [string, string][] {
  try {
    return readdirSync(f.model).filter((name) => CHECKPOINT_FILE.test(name)).map((name) => ['--model', join(f.model, name)]);
  } catch {
    return []; // not a readable directory: the checkpoint loader names the problem
  }
}

interface ModelFlags {
  model: string;
  backend: string;
  devices: string;
  layout: string;
  kernel: string;
  sinks?: string;
  dtype?: string;
}

function modelOptions(c: Command): Command {
  return c
    .requiredOption('--model <dir>', 'checkpoint directory: config.json, model.safetensors (or an index and shards), tokenizer.json')
    .option('--devices <P>', 'ranks in the ring: CPU workers, or GPUs with --backend cuda', '1')
    .option('--layout <name>', 'contiguous, zigzag or striped', 'zigzag')
    .option('--kernel <name>', 'auto, c or ts', 'auto')
    .option('--backend <name>', 'cpu (worker threads) or cuda (one rank per GPU)', 'cpu')
    .option('--dtype <name>', 'with --backend cuda: fp32 (exact, default) or bf16 (tensor cores)', 'fp32')
    .option('--sinks <N>', 'attention sinks kept visible in sliding-window layers');
}

function checkBackend(f: ModelFlags): void {
  backendOpt(f.backend);
}

/**
 * With --backend cuda and --devices N > 1 outside a launched job, run this very command as N
 * GPU ranks and return true (the ranks did the work); false: do the work in this process.
 */
async function launchedElsewhere(f: ModelFlags): Promise<boolean> {
  checkBackend(f);
  if (f.backend !== 'cuda') return false;
  modelDtypeOpt(f.dtype);
  const { launchSelfIfNeeded } = await import('../../cuda/cli.js');
  return launchSelfIfNeeded(devicesOpt(f.devices, true) ?? 1);
}

function checkModelDir(f: { model: string }): void {
  if (!existsSync(f.model)) throw new InputError('--model', `${f.model} does not exist; expected a checkpoint directory`);
}

/** --model's config.json (the directory must exist). */
function modelConfig(f: { model: string }): ModelConfig {
  checkModelDir(f);
  return readHfConfig(f.model);
}

async function open(f: ModelFlags): Promise<RingModel> {
  checkBackend(f);
  checkModelDir(f);
  const kernel = kernelOpt(f.kernel);
  return RingModel.load(f.model, {
    devices: devicesOpt(f.devices, f.backend === 'cuda'),
    layout: parseLayout(f.layout, '--layout'),
    kernel,
    sinks: intOpt('--sinks', f.sinks, { min: 0 }),
    backend: backendOpt(f.backend),
    dtype: modelDtypeOpt(f.dtype),
  });
}

/** A text file's contents (UTF-8); a missing file or a directory is an InputError naming `flag`. */
function readText(path: string, flag: string): string {
  return new TextDecoder().decode(readInputFile(path, flag));
}

/** Prompt ids from --tokens or --prompt-file/--text (through the model's tokenizer). */
function promptIds(f: { model: string; tokens?: string; promptFile?: string }): Int32Array {
  if (f.tokens && f.promptFile) throw new InputError('--tokens', 'expected either --tokens or --prompt-file, not both');
  if (f.tokens) return readTokens(f.tokens, '--tokens');
  if (f.promptFile) return Int32Array.from(loadTokenizer(f.model, 'or pass token ids with --tokens').encode(readText(f.promptFile, '--prompt-file')));
  throw new InputError('--tokens', 'expected --tokens FILE or --prompt-file FILE');
}

/**
 * The prompt's ids against the model's vocabulary, before any weight is read; and a note when the
 * sequence runs past the positions the model was trained for (RoPE goes on; quality may not).
 */
function checkPrompt(ids: Int32Array, cfg: ModelConfig, flag: string, total: number, quiet?: boolean): void {
  if (ids.length === 0 && flag === '--prompt-file') throw new InputError(flag, 'the text encodes to no token; expected a prompt');
  checkTokenIds(ids, cfg.vocabSize, flag);
  if (!quiet && total > cfg.maxPositionEmbeddings && (process.env.RANK ?? '0') === '0') {
    process.stderr.write(`note: ${total} positions pass the model's max_position_embeddings (${cfg.maxPositionEmbeddings}); it computes them, but was not trained for them\n`);
  }
}

/** The library's argument names (RingModel) as these commands' flags. */
const FLAGS = {
  tokens: '--tokens', token: '--tokens', devices: '--devices', layout: '--layout', kernel: '--kernel', backend: '--backend', dtype: '--dtype', sinks: '--sinks',
  maxNewTokens: '--max-new-tokens', temperature: '--temperature', topP: '--top-p', seed: '--seed', reserve: '--max-new-tokens',
} as const;

export function registerModelCommands(program: Command): void {
  modelOptions(program.command('generate').description('prefill a prompt on a ring of CPU ranks, then decode over the sharded KV cache'))
    .option('--tokens <file>', 'prompt token ids: .npy (int32/int64), JSON array, or whitespace-separated')
    .option('--prompt-file <file>', 'prompt text, tokenized with the model\'s tokenizer.json')
    .option('--max-new-tokens <N>', 'tokens to generate', '32')
    .option('--temperature <T>', '0 is greedy', '0')
    .option('--top-p <X>', 'nucleus sampling mass', '1')
    .option('--seed <n>', 'sampling seed', '0')
    .option('--out-tokens <file>', 'write the new ids as int32 .npy')
    .option('--plan', 'print the planner\'s prediction first')
    .option('--quiet', 'print only the generated text or ids')
    .action(withFlagNames(FLAGS, async (f: ModelFlags & { tokens?: string; promptFile?: string; maxNewTokens: string; temperature: string; topP: string; seed: string; outTokens?: string; plan?: boolean; quiet?: boolean }) => {
      checkBackend(f);
      const maxNew = intOpt('--max-new-tokens', f.maxNewTokens, { min: 1 })!;
      const temperature = numOpt('--temperature', f.temperature)!;
      if (temperature < 0) throw new InputError('--temperature', `expected >= 0, got ${f.temperature}`);
      const topP = numOpt('--top-p', f.topP)!;
      if (!(topP > 0 && topP <= 1)) throw new InputError('--top-p', `expected 0 < p <= 1, got ${f.topP}`);
      const seed = intOpt('--seed', f.seed, { min: 0, max: SEED_MAX })!;
      if (f.outTokens) checkOutputPath(f.outTokens, '--out-tokens');
      checkOutputsNotInputs([['--out-tokens', f.outTokens]], [['--tokens', f.tokens], ['--prompt-file', f.promptFile], ...modelFiles(f)]);
      const ids = promptIds(f);
      const cfg = modelConfig(f);
      checkPrompt(ids, cfg, f.tokens ? '--tokens' : '--prompt-file', ids.length + maxNew, f.quiet);
      const P = devicesOpt(f.devices, f.backend === 'cuda')!;
      if (f.plan) {
        const gpu = f.backend === 'cuda';
        printPlanOnce(() => formatPlan(plan({ seq: ids.length + maxNew, heads: cfg.numHeads, kvHeads: cfg.numKvHeads, headDim: cfg.headDim, devices: P, dtype: gpu && modelDtypeOpt(f.dtype) === 'bfloat16' ? 'bf16' : 'fp32', device: gpu ? 'h100' : 'cpu', layers: cfg.numLayers, mode: 'prefill', layout: parseLayout(f.layout, '--layout') })));
      }
      if (await launchedElsewhere(f)) return;
      const tok = hasTokenizer(f.model) ? loadTokenizer(f.model) : null;
      const m = await open(f);
      // On GPUs every rank runs this; rank 0 alone prints and writes.
      const lead = m.rank === 0;
      const log = (s: string) => {
        if (!f.quiet && lead) process.stderr.write(s);
      };
      const stdout = (s: string) => {
        if (lead) process.stdout.write(s);
      };
      try {
        log(`ringattn generate: ${ids.length} prompt tokens on ${m.devices} ${f.backend === 'cuda' ? 'GPU' : 'CPU'} rank(s), ${m.layout}, kernel ${m.kernel}\n`);
        const bar = f.quiet || !lead ? null : progressBar('prefill');
        const t0 = performance.now();
        let t1 = t0;
        const out: number[] = [];
        let printed = '';
        const res = await m.generate(ids, {
          maxNewTokens: maxNew,
          temperature,
          topP,
          seed,
          onPrefill: () => {
            bar?.stop();
            t1 = performance.now();
          },
          onToken: (t) => {
            out.push(t);
            if (tok) {
              // Print the text as it grows (a token may complete a multi-byte character later).
              const text = tok.decode(out);
              if (text.startsWith(printed) && !text.endsWith('\uFFFD')) {
                stdout(text.slice(printed.length));
                printed = text;
              }
            } else stdout(`${out.length > 1 ? ' ' : ''}${t}`);
          },
        });
        if (tok) {
          const text = tok.decode(out);
          if (text.startsWith(printed)) stdout(text.slice(printed.length));
        }
        stdout('\n');
        const t2 = performance.now();
        const stats = await m.stats();
        const peak = Math.max(...stats.map((s) => s.cacheBytes + s.ringBytes));
        log(
          `prefill ${((t1 - t0) / 1000).toFixed(2)} s (${(ids.length / ((t1 - t0) / 1000)).toFixed(0)} tokens/s), ` +
            `decode ${res.length} tokens in ${((t2 - t1) / 1000).toFixed(2)} s (${(res.length / Math.max(1e-9, (t2 - t1) / 1000)).toFixed(1)} tokens/s); ` +
            `peak per rank ${formatBytes(peak)} (KV cache + ${f.backend === 'cuda' ? 'GPU memory' : 'ring buffers'}) + weights ${formatBytes(m.weightBytes)} ${f.backend === 'cuda' ? 'per GPU' : 'shared'}; cache tokens per rank ${m.cacheTokens.join('/')}\n`,
        );
        if (stats[0].hostDecode) log(`note: ${stats[0].hostDecode}\n`);
        if (f.outTokens && lead) writeFileAtomic(f.outTokens, encodeNpy({ dtype: 'int32', shape: [res.length], data: res }), '--out-tokens');
      } finally {
        await m.close();
      }
    }));

  modelOptions(program.command('logits').description('float32 logits [S, vocab] of every position of a token sequence'))
    .requiredOption('--tokens <file>', 'token ids: .npy (int32/int64), JSON array, or whitespace-separated')
    .requiredOption('--out <file>', 'output .npy, float32 [S, vocab]')
    .action(withFlagNames(FLAGS, async (f: ModelFlags & { tokens: string; out: string }) => {
      checkBackend(f);
      checkOutputPath(f.out, '--out');
      checkOutputsNotInputs([['--out', f.out]], [['--tokens', f.tokens], ...modelFiles(f)]);
      const ids = readTokens(f.tokens, '--tokens');
      checkPrompt(ids, modelConfig(f), '--tokens', ids.length);
      if (await launchedElsewhere(f)) return;
      const m = await open(f);
      try {
        const logits = await m.prefill(ids, 'all');
        if (m.rank === 0) writeFileAtomic(f.out, encodeNpy({ dtype: 'float32', shape: [ids.length, m.cfg.vocabSize], data: logits }), '--out');
      } finally {
        await m.close();
      }
    }));

  program
    .command('tokenize')
    .description('print the token ids of a text as a JSON array')
    .requiredOption('--model <dir>', 'directory with tokenizer.json')
    .option('--text <s>', 'the text')
    .option('--text-file <file>', 'a file holding the text')
    .action((f: { model: string; text?: string; textFile?: string }) => {
      if ((f.text === undefined) === (f.textFile === undefined)) throw new InputError('--text', 'expected exactly one of --text or --text-file');
      const text = f.text ?? readText(f.textFile!, '--text-file');
      process.stdout.write(JSON.stringify(loadTokenizer(f.model).encode(text)) + '\n');
    });
}
