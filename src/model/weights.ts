/**
 * Model weights: the Hugging Face tensor names and shapes a config implies, loading them from
 * safetensors (fp32, bf16, fp16; one file or an index of shards) with one-line errors, seeded
 * initialisation for tests, and saving our own checkpoints as model.safetensors + config.json.
 * Linear weights keep the nn.Linear layout [out, in].
 */
import { existsSync, mkdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { InputError } from '../core/errors.js';
import { numel, shapeStr, type Tensor } from '../core/tensor.js';
import { AtomicOutputs } from '../io/atomic.js';
import { encodeSafetensors, readSafetensorsIndex, INDEX_FILE, SINGLE_FILE } from '../io/safetensors.js';
import { configToJson, type ModelConfig } from './config.js';

export interface LayerWeights {
  inputNorm: Float32Array; // [hidden]
  q: Float32Array; // [H·hd, hidden]
  k: Float32Array; // [Hk·hd, hidden]
  v: Float32Array; // [Hk·hd, hidden]
  o: Float32Array; // [hidden, H·hd]
  qBias?: Float32Array;
  kBias?: Float32Array;
  vBias?: Float32Array;
  oBias?: Float32Array;
  postNorm: Float32Array; // [hidden]
  gate: Float32Array; // [inter, hidden]
  up: Float32Array; // [inter, hidden]
  down: Float32Array; // [hidden, inter]
  gateBias?: Float32Array;
  upBias?: Float32Array;
  downBias?: Float32Array;
}

export interface ModelWeights {
  embed: Float32Array; // [vocab, hidden]
  layers: LayerWeights[];
  finalNorm: Float32Array; // [hidden]
  /** [vocab, hidden]; the very same array as `embed` when embeddings are tied. */
  lmHead: Float32Array;
}

type LayerKey = keyof LayerWeights;

/** HF name suffix under `model.layers.{i}.` for each layer field. */
const LAYER_NAMES: [LayerKey, string][] = [
  ['inputNorm', 'input_layernorm.weight'],
  ['q', 'self_attn.q_proj.weight'],
  ['k', 'self_attn.k_proj.weight'],
  ['v', 'self_attn.v_proj.weight'],
  ['o', 'self_attn.o_proj.weight'],
  ['qBias', 'self_attn.q_proj.bias'],
  ['kBias', 'self_attn.k_proj.bias'],
  ['vBias', 'self_attn.v_proj.bias'],
  ['oBias', 'self_attn.o_proj.bias'],
  ['postNorm', 'post_attention_layernorm.weight'],
  ['gate', 'mlp.gate_proj.weight'],
  ['up', 'mlp.up_proj.weight'],
  ['down', 'mlp.down_proj.weight'],
  ['gateBias', 'mlp.gate_proj.bias'],
  ['upBias', 'mlp.up_proj.bias'],
  ['downBias', 'mlp.down_proj.bias'],
];

/** Shapes of one layer's tensors for `cfg` (fields the config leaves out are absent). */
function layerShapes(cfg: ModelConfig): Map<LayerKey, number[]> {
  const h = cfg.hiddenSize;
  const qd = cfg.numHeads * cfg.headDim;
  const kvd = cfg.numKvHeads * cfg.headDim;
  const f = cfg.intermediateSize;
  const m = new Map<LayerKey, number[]>([
    ['inputNorm', [h]],
    ['q', [qd, h]],
    ['k', [kvd, h]],
    ['v', [kvd, h]],
    ['o', [h, qd]],
  ]);
  if (cfg.attentionBias) {
    m.set('qBias', [qd]);
    m.set('kBias', [kvd]);
    m.set('vBias', [kvd]);
  }
  if (cfg.oBias) m.set('oBias', [h]);
  m.set('postNorm', [h]);
  m.set('gate', [f, h]);
  m.set('up', [f, h]);
  m.set('down', [h, f]);
  if (cfg.mlpBias) {
    m.set('gateBias', [f]);
    m.set('upBias', [f]);
    m.set('downBias', [h]);
  }
  return m;
}

/** Every tensor a checkpoint for `cfg` holds, by HF name, with its shape (in a fixed order). */
export function expectedTensors(cfg: ModelConfig): Map<string, number[]> {
  const out = new Map<string, number[]>();
  out.set('model.embed_tokens.weight', [cfg.vocabSize, cfg.hiddenSize]);
  const shapes = layerShapes(cfg);
  for (let i = 0; i < cfg.numLayers; i++) {
    for (const [key, suffix] of LAYER_NAMES) {
      const s = shapes.get(key);
      if (s) out.set(`model.layers.${i}.${suffix}`, s);
    }
  }
  out.set('model.norm.weight', [cfg.hiddenSize]);
  if (!cfg.tieWordEmbeddings) out.set('lm_head.weight', [cfg.vocabSize, cfg.hiddenSize]);
  return out;
}

/** Parameter count (a tied head counts once). */
export function countParams(cfg: ModelConfig): number {
  let n = 0;
  for (const s of expectedTensors(cfg).values()) n += numel(s);
  return n;
}

/**
 * Stored names we accept and skip: old checkpoints (transformers < 4.3x) saved the RoPE buffer
 * `rotary_emb.inv_freq` per layer, which transformers itself ignores on load; we compute it.
 */
const IGNORED = /^model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$/;
const FLOAT_DTYPES = new Set(['F32', 'F16', 'BF16', 'F64']);

function listNames(names: string[], max = 5): string {
  const shown = names.slice(0, max).join(', ');
  return names.length > max ? `${shown}, ... (${names.length} in all)` : shown;
}

/** Map from HF name to the field of ModelWeights it fills. */
function assign(weights: ModelWeights, cfg: ModelConfig, name: string, data: Float32Array): void {
  if (name === 'model.embed_tokens.weight') weights.embed = data;
  else if (name === 'model.norm.weight') weights.finalNorm = data;
  else if (name === 'lm_head.weight') weights.lmHead = data;
  else {
    const m = /^model\.layers\.(\d+)\.(.+)$/.exec(name)!;
    const key = LAYER_NAMES.find(([, s]) => s === m[2])![0];
    (weights.layers[Number(m[1])] as unknown as Record<string, Float32Array>)[key] = data;
  }
}

/**
 * Load the weights of `cfg` from `dir` (model.safetensors, or model.safetensors.index.json and
 * its shards), converting F32/BF16/F16 (and F64) to Float32Array. Every tensor is checked
 * before any is converted: a missing, extra, misshapen or non-float tensor throws an
 * InputError naming the file, the tensor and the shape the config expects. With tied
 * embeddings a stored `lm_head.weight` is accepted and ignored: `lmHead` is the embedding
 * table, as transformers ties it (the head is the embedding parameter; some exports, e.g. early
 * Qwen1.5 ones, carry a redundant copy). A stored head that differs from the embedding is
 * ignored too; vllm-project/vllm#51665 reports that recent transformers keeps such a head
 * untied instead, which we do not do.
 */
export function loadWeights(dir: string, cfg: ModelConfig): ModelWeights {
  const index = readSafetensorsIndex(dir);
  const expected = expectedTensors(cfg);
  const stored = new Set(index.names());
  const where = checkpointFile(dir);
  const missing = [...expected.keys()].filter((n) => !stored.has(n));
  if (missing.length > 0) {
    const n = missing[0];
    throw new InputError(where, `missing tensor '${n}' (expected shape ${shapeStr(expected.get(n)!)} for model_type ${cfg.modelType})${missing.length > 1 ? `; also missing: ${listNames(missing.slice(1))}` : ''}`);
  }
  const extra = [...stored].filter((n) => !expected.has(n) && !IGNORED.test(n) && !(cfg.tieWordEmbeddings && n === 'lm_head.weight'));
  if (extra.length > 0) {
    throw new InputError(index.shardOf(extra[0]), `unexpected tensor '${extra[0]}' for this config (${cfg.numLayers} layers, model_type ${cfg.modelType}, attention bias ${cfg.attentionBias}, tied embeddings ${cfg.tieWordEmbeddings})${extra.length > 1 ? `; also: ${listNames(extra.slice(1))}` : ''}`);
  }
  for (const [name, shape] of expected) {
    const e = index.entry(name);
    const file = index.shardOf(name);
    if (!FLOAT_DTYPES.has(e.dtype)) {
      throw new InputError(file, `tensor '${name}' has dtype ${e.dtype}; expected F32, BF16 or F16 with shape ${shapeStr(shape)}`);
    }
    if (e.shape.length !== shape.length || e.shape.some((d, i) => d !== shape[i])) {
      throw new InputError(file, `tensor '${name}' has shape ${shapeStr(e.shape)}; expected ${shapeStr(shape)} from the config`);
    }
  }
  const weights: ModelWeights = {
    embed: new Float32Array(0),
    layers: Array.from({ length: cfg.numLayers }, () => ({}) as LayerWeights),
    finalNorm: new Float32Array(0),
    lmHead: new Float32Array(0),
  };
  for (const name of expected.keys()) {
    let data = index.getFloat32(name);
    // float32 data comes back as a view of a private copy; keep it, never a view of a shared buffer.
    if (data.byteOffset !== 0 || data.buffer.byteLength !== data.byteLength) data = data.slice();
    // A NaN or infinite weight would reach attention as a query or key the kernels cannot rank:
    // its row reads as one that sees no key (output 0), and the logits come out finite and wrong.
    for (let i = 0; i < data.length; i++) {
      if (!Number.isFinite(data[i])) throw new InputError(index.shardOf(name), `tensor '${name}' element ${i} is ${data[i]}; expected finite weights`);
    }
    assign(weights, cfg, name, data);
  }
  if (cfg.tieWordEmbeddings) weights.lmHead = weights.embed;
  return weights;
}

/** The file that lists a checkpoint's tensors (what readSafetensorsIndex opens), for error messages. */
function checkpointFile(dir: string): string {
  try {
    if (!statSync(dir).isDirectory()) return dir;
  } catch {
    return dir;
  }
  return existsSync(join(dir, INDEX_FILE)) ? join(dir, INDEX_FILE) : join(dir, SINGLE_FILE);
}

/** mulberry32 + Box–Muller: a small deterministic normal generator (independent of Math.random). */
function normalRng(seed: number): () => number {
  let a = seed >>> 0;
  const uniform = (): number => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  let spare: number | null = null;
  return () => {
    if (spare !== null) {
      const s = spare;
      spare = null;
      return s;
    }
    const u = Math.max(uniform(), 1e-300);
    const v = uniform();
    const r = Math.sqrt(-2 * Math.log(u));
    spare = r * Math.sin(2 * Math.PI * v);
    return r * Math.cos(2 * Math.PI * v);
  };
}

/**
 * Seeded initialisation like transformers' `_init_weights` for these models: linear weights and
 * embeddings ~ N(0, std²) with std = initializer_range (0.02), biases 0, norm weights 1.
 */
export function initWeights(cfg: ModelConfig, seed: number, std = 0.02): ModelWeights {
  const rnd = normalRng(seed);
  const normal = (n: number): Float32Array => {
    const a = new Float32Array(n);
    for (let i = 0; i < n; i++) a[i] = rnd() * std;
    return a;
  };
  const weights: ModelWeights = {
    embed: new Float32Array(0),
    layers: Array.from({ length: cfg.numLayers }, () => ({}) as LayerWeights),
    finalNorm: new Float32Array(0),
    lmHead: new Float32Array(0),
  };
  for (const [name, shape] of expectedTensors(cfg)) {
    const n = numel(shape);
    const isNorm = /(layernorm|norm)\.weight$/.test(name);
    const isBias = name.endsWith('.bias');
    assign(weights, cfg, name, isNorm ? new Float32Array(n).fill(1) : isBias ? new Float32Array(n) : normal(n));
  }
  if (cfg.tieWordEmbeddings) weights.lmHead = weights.embed;
  return weights;
}

/** The HF-named tensors of `weights`, checked against the shapes `cfg` implies. */
export function weightsToTensors(cfg: ModelConfig, weights: ModelWeights): Map<string, { shape: number[]; data: Float32Array }> {
  const out = new Map<string, { shape: number[]; data: Float32Array }>();
  if (weights.layers.length !== cfg.numLayers) {
    throw new InputError('weights.layers', `has ${weights.layers.length} layers; expected ${cfg.numLayers}`);
  }
  for (const [name, shape] of expectedTensors(cfg)) {
    let data: Float32Array | undefined;
    if (name === 'model.embed_tokens.weight') data = weights.embed;
    else if (name === 'model.norm.weight') data = weights.finalNorm;
    else if (name === 'lm_head.weight') data = weights.lmHead;
    else {
      const m = /^model\.layers\.(\d+)\.(.+)$/.exec(name)!;
      const key = LAYER_NAMES.find(([, s]) => s === m[2])![0];
      data = weights.layers[Number(m[1])][key];
    }
    if (!(data instanceof Float32Array) || data.length !== numel(shape)) {
      throw new InputError(`weights: ${name}`, `holds ${data instanceof Float32Array ? `${data.length} floats` : String(data)}; expected a Float32Array of ${numel(shape)} for ${shapeStr(shape)}`);
    }
    out.set(name, { shape, data });
  }
  return out;
}

/** fp32 -> bf16 bits, round to nearest even (NaN stays a quiet NaN). */
function toBf16(src: Float32Array): Uint16Array {
  const u = new Uint32Array(src.buffer, src.byteOffset, src.length);
  const out = new Uint16Array(src.length);
  for (let i = 0; i < u.length; i++) {
    const x = u[i];
    out[i] = (x & 0x7fffffff) > 0x7f800000 ? (x >>> 16) | 0x40 : ((x + 0x7fff + ((x >>> 16) & 1)) >>> 16) & 0xffff;
  }
  return out;
}

/**
 * Save `weights` to `dir` as model.safetensors (F32 or BF16) plus config.json, both appearing
 * together or not at all. A tied head is not written (as transformers saves tied models).
 * The safetensors header carries `format: pt`, which transformers checks when loading.
 */
export function saveWeights(dir: string, cfg: ModelConfig, weights: ModelWeights, dtype: 'float32' | 'bfloat16' = 'float32'): void {
  if (dtype !== 'float32' && dtype !== 'bfloat16') throw new InputError('dtype', `is ${JSON.stringify(dtype)}; expected float32 or bfloat16`);
  const tensors: Record<string, Tensor> = {};
  for (const [name, { shape, data }] of weightsToTensors(cfg, weights)) {
    tensors[name] = dtype === 'float32' ? { dtype: 'float32', shape, data } : { dtype: 'bfloat16', shape, data: toBf16(data) };
  }
  const configJson = JSON.stringify(configToJson(cfg, dtype), null, 2) + '\n';
  if (existsSync(join(dir, INDEX_FILE))) {
    throw new InputError(dir, `holds ${INDEX_FILE}, which loaders read before ${SINGLE_FILE}; expected a directory without a sharded checkpoint`);
  }
  const bytes = encodeSafetensors(tensors, { format: 'pt' }, dir);
  mkdirSync(dir, { recursive: true });
  const out = new AtomicOutputs();
  try {
    out.stage(join(dir, SINGLE_FILE), bytes);
    out.stage(join(dir, 'config.json'), configJson);
    out.commit();
  } catch (err) {
    out.abort();
    throw err;
  }
}

