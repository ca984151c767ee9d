/**
 * Model configuration from a Hugging Face `config.json` (model_type llama, mistral, qwen2), as
 * written by transformers 4.x and 5.x, and back.
 *
 * Sliding-window semantics. In transformers (4.53+ and 5.x) the sliding-window mask is
 * `sliding_window_overlay(W)`: `kv_idx > q_idx - W`, i.e. query i sees key j iff
 * `i - j < W` (and `j <= i` from the causal mask): W keys counting the query itself.
 * Source: huggingface/transformers src/transformers/masking_utils.py (`sliding_window_overlay`,
 * `sliding_window_causal_mask_function`). The flash-attention path agrees: it passes
 * `window_size = (W - 1, W - 1)` (modeling_flash_attention_utils.py), i.e. `i - j <= W - 1`.
 * Issue huggingface/transformers#29623 shows the eager mask of that era also capped a row at
 * W keys. (Some 4.4x releases built the 4D mask with `diagonal = past - W - 1`, which let a
 * query see W + 1 keys; masking_utils replaced that code.) Our mask contract (DESIGN.md) is
 * `i - j < window`, so a config's `sliding_window` W maps to `window = W` unchanged.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { InputError } from '../core/errors.js';

export type RopeType = 'default' | 'linear' | 'llama3' | 'yarn';

export interface RopeConfig {
  theta: number;
  type: RopeType;
  /** linear, llama3, yarn: the context extension factor. */
  factor?: number;
  /** llama3 */
  lowFreqFactor?: number;
  highFreqFactor?: number;
  /** llama3, yarn: the pre-extension training length. */
  originalMaxPositionEmbeddings?: number;
  /** yarn */
  betaFast?: number;
  betaSlow?: number;
  attentionFactor?: number;
  mscale?: number;
  mscaleAllDim?: number;
  truncate?: boolean;
}

export type ModelType = 'llama' | 'mistral' | 'qwen2';

export interface ModelConfig {
  modelType: ModelType;
  vocabSize: number;
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  rmsNormEps: number;
  rope: RopeConfig;
  tieWordEmbeddings: boolean;
  /** q/k/v projections carry a bias. */
  attentionBias: boolean;
  /** o projection carries a bias (llama attention_bias; never qwen2). */
  oBias: boolean;
  /** gate/up/down projections carry a bias (llama mlp_bias). */
  mlpBias: boolean;
  /** Per layer: the window W (query i sees keys with i - j < W), or null for full causal. */
  slidingWindow: (number | null)[];
  maxPositionEmbeddings: number;
  bosTokenId?: number;
  eosTokenId?: number | number[];
}

const MODEL_TYPES: readonly ModelType[] = ['llama', 'mistral', 'qwen2'];
const ARCHITECTURES: Record<ModelType, string> = {
  llama: 'LlamaForCausalLM',
  mistral: 'MistralForCausalLM',
  qwen2: 'Qwen2ForCausalLM',
};
const ROPE_TYPES: readonly RopeType[] = ['default', 'linear', 'llama3', 'yarn'];

/** transformers' defaults for keys a config may leave out. */
const DEFAULTS: Record<ModelType, { maxPos: number; theta: number }> = {
  llama: { maxPos: 2048, theta: 10000 },
  mistral: { maxPos: 4096 * 32, theta: 10000 },
  qwen2: { maxPos: 32768, theta: 10000 },
};

type Json = Record<string, unknown>;

function isObject(v: unknown): v is Json {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

class Reader {
  constructor(readonly file: string, readonly json: Json, readonly prefix = '') {}

  err(key: string, message: string): InputError {
    return new InputError(`${this.file}: ${this.prefix}${key}`, message);
  }

  has(key: string): boolean {
    return this.json[key] !== undefined && this.json[key] !== null;
  }

  int(key: string, opts: { min?: number; def?: number } = {}): number {
    const v = this.json[key];
    if (v === undefined || v === null) {
      if (opts.def !== undefined) return opts.def;
      throw this.err(key, `missing; expected an integer`);
    }
    if (typeof v !== 'number' || !Number.isSafeInteger(v)) throw this.err(key, `is ${JSON.stringify(v)}; expected an integer`);
    const min = opts.min ?? 1;
    if (v < min) throw this.err(key, `is ${v}; expected an integer >= ${min}`);
    return v;
  }

  num(key: string, opts: { def?: number; positive?: boolean } = {}): number {
    const v = this.json[key];
    if (v === undefined || v === null) {
      if (opts.def !== undefined) return opts.def;
      throw this.err(key, 'missing; expected a number');
    }
    if (typeof v !== 'number' || !Number.isFinite(v)) throw this.err(key, `is ${JSON.stringify(v)}; expected a finite number`);
    if (opts.positive && !(v > 0)) throw this.err(key, `is ${v}; expected a positive number`);
    return v;
  }

  optNum(key: string, positive = false): number | undefined {
    return this.has(key) ? this.num(key, { positive }) : undefined;
  }

  bool(key: string, def: boolean): boolean {
    const v = this.json[key];
    if (v === undefined || v === null) return def;
    if (typeof v !== 'boolean') throw this.err(key, `is ${JSON.stringify(v)}; expected true or false`);
    return v;
  }
}

/**
 * RoPE: transformers 4.x writes `rope_theta` plus `rope_scaling` ({ type | rope_type, factor,
 * ... } or null); transformers 5.x writes `rope_parameters` ({ rope_type, rope_theta, ... }).
 * As in transformers 5 (RotaryEmbeddingConfigMixin.standardize_rope_params), llama3 and yarn
 * take `original_max_position_embeddings` from the dict, else from a top-level key of that
 * name, else from `max_position_embeddings`.
 */
function parseRope(r: Reader, modelType: ModelType, maxPos: number): RopeConfig {
  let dict: Json | undefined;
  let prefix = '';
  if (r.has('rope_parameters')) {
    const rp = r.json.rope_parameters;
    if (!isObject(rp)) throw r.err('rope_parameters', `is ${JSON.stringify(rp)}; expected an object`);
    if (isObject(rp.full_attention) || isObject(rp.sliding_attention)) {
      throw r.err('rope_parameters', 'holds one RoPE per layer type; expected a single { rope_type, rope_theta, ... } object');
    }
    dict = rp;
    prefix = 'rope_parameters.';
  }
  if (r.has('rope_scaling')) {
    const rs = r.json.rope_scaling;
    if (!isObject(rs)) throw r.err('rope_scaling', `is ${JSON.stringify(rs)}; expected an object or null`);
    // transformers 5 takes a legacy rope_scaling instead of rope_parameters (`rope_scaling or rope_parameters`)
    dict = rs;
    prefix = 'rope_scaling.';
  }
  const d = new Reader(r.file, dict ?? {}, prefix);
  const theta = d.has('rope_theta') ? d.num('rope_theta', { positive: true }) : r.num('rope_theta', { def: DEFAULTS[modelType].theta, positive: true });
  const rawType = d.json.rope_type ?? d.json.type ?? 'default';
  if (typeof rawType !== 'string' || !(ROPE_TYPES as readonly string[]).includes(rawType)) {
    throw d.err(d.json.rope_type !== undefined ? 'rope_type' : 'type', `unsupported RoPE type ${JSON.stringify(rawType)}; expected one of ${ROPE_TYPES.join(', ')}`);
  }
  const type = rawType as RopeType;
  const prf = d.json.partial_rotary_factor ?? r.json.partial_rotary_factor;
  if (prf !== undefined && prf !== null && prf !== 1) {
    throw r.err('partial_rotary_factor', `is ${JSON.stringify(prf)}; expected 1 (partial rotary embeddings are not supported)`);
  }
  const rope: RopeConfig = { theta, type };
  if (type === 'default') return rope;
  const origMax = (): number =>
    d.has('original_max_position_embeddings')
      ? d.int('original_max_position_embeddings')
      : r.int('original_max_position_embeddings', { def: maxPos });
  if (type === 'linear') {
    rope.factor = d.num('factor', { positive: true });
  } else if (type === 'llama3') {
    rope.factor = d.num('factor', { positive: true });
    rope.lowFreqFactor = d.num('low_freq_factor', { positive: true });
    rope.highFreqFactor = d.num('high_freq_factor', { positive: true });
    if (!(rope.highFreqFactor > rope.lowFreqFactor)) {
      throw d.err('high_freq_factor', `is ${rope.highFreqFactor}; expected more than low_freq_factor (${rope.lowFreqFactor})`);
    }
    rope.originalMaxPositionEmbeddings = origMax();
  } else {
    rope.originalMaxPositionEmbeddings = origMax();
    // transformers 5: an explicit factor wins; without one, max_position_embeddings / original.
    // (transformers 4.4x-4.5x replaced an explicit factor by max / original whenever the dict
    // named original_max_position_embeddings; 5.x only warns when the two disagree.)
    rope.factor = d.has('factor') ? d.num('factor', { positive: true }) : maxPos / rope.originalMaxPositionEmbeddings;
    const opt = (key: string, positive = false) => d.optNum(key, positive);
    const set = <K extends keyof RopeConfig>(k: K, v: RopeConfig[K] | undefined) => {
      if (v !== undefined) rope[k] = v;
    };
    set('betaFast', opt('beta_fast', true));
    set('betaSlow', opt('beta_slow', true));
    set('attentionFactor', opt('attention_factor', true));
    set('mscale', opt('mscale'));
    set('mscaleAllDim', opt('mscale_all_dim'));
    if (d.has('truncate')) rope.truncate = d.bool('truncate', true);
  }
  return rope;
}

/**
 * Sliding window per layer, as transformers decides it:
 * - llama: none (LlamaModel builds a plain causal mask whatever the config says).
 * - mistral: `sliding_window` (int or null) on every layer.
 * - qwen2: the window is `sliding_window` only when `use_sliding_window` is true; layer i uses it
 *   when `layer_types[i] == 'sliding_attention'`, where `layer_types` defaults to
 *   'sliding_attention' for i >= max_window_layers (Qwen2Config). A 'sliding_attention' layer
 *   with no effective window attends fully, as Qwen2Attention does.
 */
function parseWindows(r: Reader, modelType: ModelType, numLayers: number): (number | null)[] {
  if (modelType === 'llama') return new Array(numLayers).fill(null);
  const win = r.has('sliding_window') ? r.int('sliding_window') : modelType === 'qwen2' ? 4096 : null;
  if (modelType === 'mistral') return new Array(numLayers).fill(win);
  const effective = r.bool('use_sliding_window', false) ? win : null;
  let types: string[];
  if (r.has('layer_types')) {
    const lt = r.json.layer_types;
    if (!Array.isArray(lt) || lt.length !== numLayers) {
      throw r.err('layer_types', `is ${JSON.stringify(lt)}; expected an array of ${numLayers} layer types (num_hidden_layers)`);
    }
    lt.forEach((t, i) => {
      if (t !== 'sliding_attention' && t !== 'full_attention') {
        throw r.err(`layer_types[${i}]`, `is ${JSON.stringify(t)}; expected 'sliding_attention' or 'full_attention'`);
      }
    });
    types = lt as string[];
  } else {
    const mwl = r.int('max_window_layers', { min: 0, def: 28 });
    types = Array.from({ length: numLayers }, (_, i) => (effective !== null && i >= mwl ? 'sliding_attention' : 'full_attention'));
  }
  return types.map((t) => (t === 'sliding_attention' ? effective : null));
}

function parseTokenIds(r: Reader): { bosTokenId?: number; eosTokenId?: number | number[] } {
  const out: { bosTokenId?: number; eosTokenId?: number | number[] } = {};
  if (r.has('bos_token_id')) out.bosTokenId = r.int('bos_token_id', { min: 0 });
  if (r.has('eos_token_id')) {
    const e = r.json.eos_token_id;
    if (Array.isArray(e)) {
      if (e.some((x) => typeof x !== 'number' || !Number.isSafeInteger(x) || x < 0)) {
        throw r.err('eos_token_id', `is ${JSON.stringify(e)}; expected a token id or an array of token ids`);
      }
      out.eosTokenId = [...(e as number[])];
    } else {
      out.eosTokenId = r.int('eos_token_id', { min: 0 });
    }
  }
  return out;
}

/** Parse a config.json object; `file` names it in errors (`config.json: <key>: ...`). */
export function parseHfConfig(json: unknown, file = 'config.json'): ModelConfig {
  if (!isObject(json)) throw new InputError(file, 'is not a JSON object; expected a Hugging Face model config');
  const r = new Reader(file, json);
  const mt = json.model_type;
  if (typeof mt !== 'string' || !(MODEL_TYPES as readonly string[]).includes(mt)) {
    throw r.err('model_type', `${mt === undefined ? 'missing' : `unsupported model type ${JSON.stringify(mt)}`}; expected one of ${MODEL_TYPES.join(', ')}`);
  }
  const modelType = mt as ModelType;
  if (r.has('architectures')) {
    const a = json.architectures;
    const want = ARCHITECTURES[modelType];
    if (!Array.isArray(a) || a.length !== 1 || typeof a[0] !== 'string' || a[0].toLowerCase() !== want.toLowerCase()) {
      throw r.err('architectures', `is ${JSON.stringify(a)}; expected ["${want}"] for model_type ${modelType}`);
    }
  }
  if (r.has('hidden_act') && json.hidden_act !== 'silu') {
    throw r.err('hidden_act', `is ${JSON.stringify(json.hidden_act)}; expected "silu" (SwiGLU)`);
  }
  const hiddenSize = r.int('hidden_size');
  const numHeads = r.int('num_attention_heads');
  const numKvHeads = r.int('num_key_value_heads', { def: numHeads });
  if (numHeads % numKvHeads !== 0) {
    throw r.err('num_key_value_heads', `is ${numKvHeads}; expected a divisor of num_attention_heads (${numHeads})`);
  }
  let headDim: number;
  if (r.has('head_dim')) {
    headDim = r.int('head_dim');
  } else {
    if (hiddenSize % numHeads !== 0) {
      throw r.err('num_attention_heads', `is ${numHeads}; expected a divisor of hidden_size (${hiddenSize}) when head_dim is not given`);
    }
    headDim = hiddenSize / numHeads;
  }
  if (headDim % 2 !== 0) throw r.err('head_dim', `is ${headDim}; expected an even head dimension (RoPE rotates pairs)`);
  const numLayers = r.int('num_hidden_layers');
  const maxPositionEmbeddings = r.int('max_position_embeddings', { def: DEFAULTS[modelType].maxPos });
  const qwen = modelType === 'qwen2';
  const llama = modelType === 'llama';
  const attnBias = llama && r.bool('attention_bias', false);
  return {
    modelType,
    vocabSize: r.int('vocab_size'),
    hiddenSize,
    intermediateSize: r.int('intermediate_size'),
    numLayers,
    numHeads,
    numKvHeads,
    headDim,
    rmsNormEps: r.num('rms_norm_eps', { def: 1e-6, positive: true }),
    rope: parseRope(r, modelType, maxPositionEmbeddings),
    tieWordEmbeddings: r.bool('tie_word_embeddings', false),
    // Qwen2Attention: q/k/v always biased, o never; Mistral: no biases at all.
    attentionBias: qwen || attnBias,
    oBias: attnBias,
    mlpBias: llama && r.bool('mlp_bias', false),
    slidingWindow: parseWindows(r, modelType, numLayers),
    maxPositionEmbeddings,
    ...parseTokenIds(r),
  };
}

/** Read and parse `<dir>/config.json`. */
export function readHfConfig(dir: string): ModelConfig {
  const path = join(dir, 'config.json');
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new InputError(path, `cannot be read (${err instanceof Error ? err.message : String(err)}); expected a Hugging Face config.json`);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new InputError(path, `is not valid JSON (${err instanceof Error ? err.message : String(err)})`);
  }
  return parseHfConfig(json, path);
}

function ropeToJson(rope: RopeConfig): Json | null {
  if (rope.type === 'default') return null;
  const out: Json = { rope_type: rope.type, factor: rope.factor };
  const put = (k: string, v: unknown) => {
    if (v !== undefined) out[k] = v;
  };
  put('low_freq_factor', rope.lowFreqFactor);
  put('high_freq_factor', rope.highFreqFactor);
  put('original_max_position_embeddings', rope.originalMaxPositionEmbeddings);
  put('beta_fast', rope.betaFast);
  put('beta_slow', rope.betaSlow);
  put('attention_factor', rope.attentionFactor);
  put('mscale', rope.mscale);
  put('mscale_all_dim', rope.mscaleAllDim);
  put('truncate', rope.truncate);
  return out;
}

/**
 * A transformers-compatible config.json for `cfg` (keys of cfg.modelType; llama for our own
 * models). RoPE goes out as `rope_theta` + `rope_scaling`, which transformers 4.x and 5.x both
 * read. Throws when the model type cannot express the config (e.g. windows on llama).
 * `dtype` sets `torch_dtype`.
 */
export function configToJson(cfg: ModelConfig, dtype: 'float32' | 'bfloat16' | 'float16' = 'float32'): Json {
  const windows = cfg.slidingWindow;
  const json: Json = {
    architectures: [ARCHITECTURES[cfg.modelType]],
    model_type: cfg.modelType,
    vocab_size: cfg.vocabSize,
    hidden_size: cfg.hiddenSize,
    intermediate_size: cfg.intermediateSize,
    num_hidden_layers: cfg.numLayers,
    num_attention_heads: cfg.numHeads,
    num_key_value_heads: cfg.numKvHeads,
    head_dim: cfg.headDim,
    hidden_act: 'silu',
    max_position_embeddings: cfg.maxPositionEmbeddings,
    rms_norm_eps: cfg.rmsNormEps,
    rope_theta: cfg.rope.theta,
    rope_scaling: ropeToJson(cfg.rope),
    tie_word_embeddings: cfg.tieWordEmbeddings,
    torch_dtype: dtype,
  };
  const fail = (what: string) => new InputError('config', `${what} cannot be written as model_type ${cfg.modelType}`);
  if (windows.length !== cfg.numLayers) throw new InputError('config.slidingWindow', `has ${windows.length} entries; expected ${cfg.numLayers} (numLayers)`);
  if (cfg.modelType === 'llama') {
    if (windows.some((w) => w !== null)) throw fail('a sliding window');
    if (cfg.attentionBias !== cfg.oBias) throw fail('q/k/v biases without an o bias (or the reverse)');
    json.attention_bias = cfg.attentionBias;
    json.mlp_bias = cfg.mlpBias;
  } else if (cfg.modelType === 'mistral') {
    if (cfg.attentionBias || cfg.oBias || cfg.mlpBias) throw fail('projection biases');
    if (windows.some((w) => w !== windows[0])) throw fail('different windows per layer');
    json.sliding_window = windows[0] ?? null;
  } else {
    if (!cfg.attentionBias || cfg.oBias || cfg.mlpBias) throw fail('biases other than q/k/v');
    const w = windows.find((x) => x !== null) ?? null;
    if (windows.some((x) => x !== null && x !== w)) throw fail('different windows per layer');
    json.use_sliding_window = w !== null;
    json.sliding_window = w;
    json.max_window_layers = cfg.numLayers;
    json.layer_types = windows.map((x) => (x === null ? 'full_attention' : 'sliding_attention'));
  }
  if (cfg.bosTokenId !== undefined) json.bos_token_id = cfg.bosTokenId;
  if (cfg.eosTokenId !== undefined) json.eos_token_id = cfg.eosTokenId;
  return json;
}
