/**
 * A long-context model on a ring of CPU ranks: prefill a long prompt split across the ranks by
 * layout, then decode with the KV cache sharded across them.
 *
 *   const m = await RingModel.create(cfg, weights, { devices: 4 });
 *   const logits = await m.prefill(ids, 'all');      // [S, vocab]
 *   const next = await m.generate(ids, { maxNewTokens: 32 });
 */
import { describe, InputError } from './core/errors.js';
import { checkInt, checkKernelChoice, checkRanks, MAX_THREADS } from './core/inputs.js';
import { LAYOUTS, shardPositions, gatherRows, scatterRows, type Layout } from './core/layout.js';
import type { ModelConfig } from './model/config.js';
import { readHfConfig } from './model/config.js';
import { loadWeights, type ModelWeights, type LayerWeights } from './model/weights.js';
import { argmax, sampleTopP } from './model/layers.js';
import type { ModelOptions } from './model/llama.js';
import type { PrefillArg, TrainArg } from './model/program.js';

/** What RingModel drives: a CPU group of worker ranks, or (each process one rank) a GPU group. */
interface ProgramGroup {
  readonly ranks: number;
  readonly kernel: string;
  call<T>(method: string, args: unknown[]): Promise<T[]>;
  close(): Promise<void>;
}

export interface RingModelOptions extends ModelOptions {
  devices?: number;
  /**
   * 'cpu' (default): worker threads of this process. 'cuda': this process is one GPU rank of a
   * launched job (or the only one), and every rank runs the same RingModel calls.
   */
  backend?: 'cpu' | 'cuda';
  /** With backend 'cuda': float32 (exact, default) or bfloat16 GPU work. */
  dtype?: 'float32' | 'bfloat16';
  layout?: Layout;
  kernel?: 'auto' | 'c' | 'ts';
}

export interface GenerateOptions {
  maxNewTokens: number;
  /** 0 (the default) is greedy. */
  temperature?: number;
  topP?: number;
  seed?: number;
  /** Stop at any of these token ids (default: the config's eos_token_id). */
  stop?: number[];
  onToken?: (token: number) => void;
  onPrefill?: () => void;
}

/** Token ids for a model of `vocabSize`: a non-empty Int32Array of ids in [0, vocabSize), else an InputError naming `arg`. */
export function checkTokenIds(ids: Int32Array, vocabSize: number, arg: string): void {
  if (!(ids instanceof Int32Array)) throw new InputError(arg, `expected an Int32Array of token ids, got ${describe(ids)}`);
  if (ids.length === 0) throw new InputError(arg, 'expected at least one token');
  for (let i = 0; i < ids.length; i++) {
    if (ids[i] < 0 || ids[i] >= vocabSize) throw new InputError(arg, `token ${i} is ${ids[i]}; expected an id in [0, ${vocabSize}) (the model's vocab_size)`);
  }
}

/** RingModel's options, each checked before any rank starts (a bad one found later left them running). */
function checkModelOptions(cfg: ModelConfig, o: RingModelOptions): void {
  if (o.backend !== undefined && o.backend !== 'cpu' && o.backend !== 'cuda') throw new InputError('backend', `expected 'cpu' or 'cuda', got ${describe(o.backend)}`);
  if (o.layout !== undefined && !(LAYOUTS as readonly string[]).includes(o.layout)) throw new InputError('layout', `expected one of ${LAYOUTS.join(', ')}, got ${describe(o.layout)}`);
  checkKernelChoice(o.kernel);
  if (o.dtype !== undefined) {
    if (o.dtype !== 'float32' && o.dtype !== 'bfloat16') throw new InputError('dtype', `expected 'float32' or 'bfloat16', got ${describe(o.dtype)}`);
    if (o.dtype === 'bfloat16' && (o.backend ?? 'cpu') === 'cpu') throw new InputError('dtype', `'bfloat16' runs on the cuda backend; the CPU computes in float32`);
  }
  if (o.sinks !== undefined) {
    checkInt('sinks', o.sinks, 0);
    if (o.sinks > 0 && !cfg.slidingWindow.some((w) => w !== null)) throw new InputError('sinks', `the model has no sliding-window layer (sinks are the first keys a window keeps visible), got ${o.sinks}`);
  }
  if (o.threads !== undefined) checkInt('threads', o.threads, 1, MAX_THREADS);
}

/** Copy the weights into one SharedArrayBuffer so every rank reads them without a copy each. */
function shareWeights(w: ModelWeights): ModelWeights {
  const arrays: Float32Array[] = [w.embed, w.finalNorm, ...w.layers.flatMap((l) => Object.values(l).filter(Boolean) as Float32Array[])];
  if (w.lmHead !== w.embed) arrays.push(w.lmHead);
  const total = arrays.reduce((n, a) => n + a.length, 0);
  const sab = new SharedArrayBuffer(total * 4);
  let off = 0;
  const share = (a: Float32Array) => {
    const v = new Float32Array(sab, off * 4, a.length);
    v.set(a);
    off += a.length;
    return v;
  };
  const embed = share(w.embed);
  const layers = w.layers.map((l) => Object.fromEntries(Object.entries(l).filter(([, a]) => a).map(([k, a]) => [k, share(a as Float32Array)])) as unknown as LayerWeights);
  return { embed, finalNorm: share(w.finalNorm), layers, lmHead: w.lmHead === w.embed ? embed : share(w.lmHead) };
}

export class RingModel {
  private cachedPerRank: number[] = [];
  /** The weights the ranks read (shared memory; training updates them in place). */
  private shared!: ModelWeights;
  private nextPos = 0;

  private constructor(
    readonly cfg: ModelConfig,
    private readonly group: ProgramGroup,
    readonly layout: Layout,
  ) {}

  get devices(): number {
    return this.group.ranks;
  }

  get kernel(): string {
    return this.group.kernel;
  }

  static async create(cfg: ModelConfig, weights: ModelWeights, opts: RingModelOptions = {}): Promise<RingModel> {
    checkModelOptions(cfg, opts);
    const backend = opts.backend ?? 'cpu';
    // CPU ranks are worker threads of this process (at most MAX_RANKS); GPU ranks are processes.
    const P = backend === 'cpu' ? checkRanks('devices', opts.devices ?? 1) : checkInt('devices', opts.devices ?? 1, 1);
    const program = new URL('./model/program.js', import.meta.url).href;
    let group: ProgramGroup;
    let shared: ModelWeights;
    let rank = 0;
    if (backend === 'cuda') {
      const { CudaProgramGroup } = await import('./cuda/program-group.js');
      const g = await CudaProgramGroup.start(program, { dtype: opts.dtype });
      if (g.ranks !== P) {
        await g.close();
        throw new InputError('devices', `expected ${g.ranks} (the GPU ranks launched), got ${P}`);
      }
      group = g;
      rank = g.rank;
      shared = weights; // each GPU process holds its own copy
    } else {
      const { CpuGroup } = await import('./cpu/group.js');
      group = await CpuGroup.start(P, { kernel: opts.kernel, program });
      shared = shareWeights(weights);
    }
    try {
      await group.call('setup', Array.from({ length: P }, () => ({ cfg, weights: shared, opts: { sinks: opts.sinks, threads: opts.threads } })));
    } catch (e) {
      await group.close().catch(() => {});
      throw e;
    }
    const m = new RingModel(cfg, group, opts.layout ?? 'zigzag');
    m.shared = shared;
    m.rank = rank;
    m.weightBytes = [weights.embed, weights.finalNorm, ...weights.layers.flatMap((l) => Object.values(l).filter(Boolean) as Float32Array[]), ...(weights.lmHead === weights.embed ? [] : [weights.lmHead])].reduce((n, a) => n + a.byteLength, 0);
    return m;
  }

  /** Load a Hugging Face style checkpoint directory (config.json + safetensors). */
  static async load(dir: string, opts: RingModelOptions = {}): Promise<RingModel> {
    const cfg = readHfConfig(dir);
    return RingModel.create(cfg, loadWeights(dir, cfg), opts);
  }

  private checkIds(ids: Int32Array, arg: string): void {
    checkTokenIds(ids, this.cfg.vocabSize, arg);
  }

  /**
   * Run the prompt through the model on the ring; the KV cache is kept for decode. Returns the
   * logits of every position ([S, vocab], 'all') or of the last one ([vocab], 'last').
   */
  async prefill(ids: Int32Array, which: 'all' | 'last' = 'last', reserve = 0): Promise<Float32Array> {
    this.checkIds(ids, 'tokens');
    if (which !== 'all' && which !== 'last') throw new InputError('which', `expected 'all' or 'last', got ${describe(which)}`);
    checkInt('reserve', reserve, 0);
    const S = ids.length;
    const P = this.group.ranks;
    // Each rank keeps a layer's keys (and values) in one Float32Array: past 2^32 values V8 refuses it.
    const cap = (Math.ceil(S / P) + Math.ceil(reserve / P) + 1) * this.cfg.numKvHeads * this.cfg.headDim;
    if (cap > 2 ** 32) throw new InputError(reserve > 0 ? 'reserve' : 'tokens', `expected a KV cache of at most 2^32 values a layer on each of the ${P} ranks; ${S} prompt tokens + ${reserve} reserved need ${cap}`);
    const positions = shardPositions(S, P, this.layout);
    const args: PrefillArg[] = positions.map((pos) => ({ ids: gatherRows(ids, 1, pos), pos, positions, reserve: Math.ceil(reserve / P) + 1, logits: which, lastPos: S - 1 }));
    const res = await this.group.call<{ logits: Float32Array | null; cached: number }>('prefill', args);
    this.cachedPerRank = res.map((r) => r.cached);
    this.nextPos = S;
    const V = this.cfg.vocabSize;
    if (which === 'last') return res.find((r) => r.logits)!.logits!;
    const out = new Float32Array(S * V);
    res.forEach((r, i) => scatterRows(out, V, positions[i], r.logits!));
    return out;
  }

  /**
   * Feed one token (at the next position) and return the logits after it. Its key/value join
   * the rank holding the fewest cached tokens, so cache memory stays balanced.
   */
  async decode(token: number): Promise<Float32Array> {
    if (this.nextPos === 0) throw new InputError('decode', 'expected a prefill first');
    // (Int32Array.of would truncate 1.5 to 1 and wrap 2^32 + 1 to 1 before the check saw them)
    if (typeof token !== 'number' || !Number.isInteger(token) || token < 0 || token >= this.cfg.vocabSize) {
      throw new InputError('token', `expected an id in [0, ${this.cfg.vocabSize}), got ${describe(token)}`);
    }
    const owner = this.cachedPerRank.indexOf(Math.min(...this.cachedPerRank));
    const pos = this.nextPos++;
    const res = await this.group.call<{ logits: Float32Array | null; cached: number }>('decode', this.cachedPerRank.map(() => ({ token, pos, owner })));
    this.cachedPerRank = res.map((r) => r.cached);
    return res[0].logits!;
  }

  /**
   * Per rank: KV cache bytes, ring (and other backend) buffer bytes, cached tokens, decode layer
   * steps attended on a device, and why a device backend's decode attends on the host (or null).
   */
  async stats(): Promise<{ cacheBytes: number; ringBytes: number; cached: number; deviceDecodes: number; hostDecode: string | null }[]> {
    return this.group.call('stats', Array(this.group.ranks).fill(null));
  }

  /** This process's rank: 0 on the CPU backend; the GPU rank with backend 'cuda' (rank 0 reports). */
  rank = 0;

  /** Bytes of the weights (one copy shared by the ranks on a CPU; one per GPU). */
  weightBytes = 0;

  /** Tokens in each rank's KV cache. */
  get cacheTokens(): number[] {
    return [...this.cachedPerRank];
  }

  async generate(ids: Int32Array, o: GenerateOptions): Promise<Int32Array> {
    if (typeof o !== 'object' || o === null) throw new InputError('options', `expected { maxNewTokens, ... }, got ${describe(o)}`);
    if (!Number.isInteger(o.maxNewTokens) || o.maxNewTokens < 0) throw new InputError('maxNewTokens', `expected a non-negative integer, got ${o.maxNewTokens}`);
    this.checkIds(ids, 'tokens');
    const temperature = o.temperature ?? 0;
    const topP = o.topP ?? 1;
    if (!(temperature >= 0)) throw new InputError('temperature', `expected >= 0, got ${temperature}`);
    if (!(topP > 0 && topP <= 1)) throw new InputError('topP', `expected 0 < topP <= 1, got ${topP}`);
    const eos = this.cfg.eosTokenId;
    const stop = new Set(o.stop ?? (eos === undefined ? [] : Array.isArray(eos) ? eos : [eos]));
    let s = (o.seed ?? 0) >>> 0 || 0x9e3779b9;
    const rand = () => {
      s ^= s << 13; s >>>= 0; s ^= s >>> 17; s ^= s << 5; s >>>= 0;
      return s / 4294967296;
    };
    const out: number[] = [];
    if (o.maxNewTokens === 0) return new Int32Array(0);
    let logits = await this.prefill(ids, 'last', o.maxNewTokens);
    o.onPrefill?.();
    for (;;) {
      const t = temperature === 0 ? argmax(logits) : sampleTopP(logits, temperature, topP, rand);
      out.push(t);
      o.onToken?.(t);
      if (out.length >= o.maxNewTokens || stop.has(t)) break;
      logits = await this.decode(t);
    }
    return Int32Array.from(out);
  }

  /**
   * One training step on a sequence: `targets[t]` is the token expected after position t
   * (IGNORE_INDEX, -100, to skip). Loss is the mean over counted targets of all ranks; the
   * ranks' gradients are summed, clipped to `clip` and applied with AdamW.
   */
  async trainStep(ids: Int32Array, targets: Int32Array, o: { lr: number; clip?: number; weightDecay?: number; returnGrads?: boolean }): Promise<{ loss: number; count: number; norm: number; grads?: Record<string, Float32Array> }> {
    this.checkIds(ids, 'tokens');
    if (targets.length !== ids.length) throw new InputError('targets', `expected ${ids.length} targets (one per token), got ${targets.length}`);
    const positions = shardPositions(ids.length, this.group.ranks, this.layout);
    const args: TrainArg[] = positions.map((pos) => ({ ids: gatherRows(ids, 1, pos), pos, targets: gatherRows(targets, 1, pos), positions, lr: o.lr, clip: o.clip ?? 1, weightDecay: o.weightDecay ?? 0.01, returnGrads: o.returnGrads }));
    const res = await this.group.call<{ loss: number; count: number; norm: number; grads?: Record<string, Float32Array> }>('trainStep', args);
    this.nextPos = 0; // the KV cache no longer matches the weights
    return res[0];
  }

  /** The current weights (as training left them). */
  get weights(): ModelWeights {
    return this.shared;
  }

  /** AdamW state for a checkpoint (null before the first training step). */
  async optimizerState(): Promise<{ step: number; state: Record<string, Float32Array> } | null> {
    return (await this.group.call<{ step: number; state: Record<string, Float32Array> } | null>('optimizerState', Array(this.group.ranks).fill(null)))[0];
  }

  async loadOptimizerState(state: Record<string, Float32Array>, lr: number, weightDecay: number): Promise<void> {
    await this.group.call('loadOptimizerState', Array(this.group.ranks).fill({ state, lr, weightDecay }));
  }

  async close(): Promise<void> {
    await this.group.close();
  }
}
