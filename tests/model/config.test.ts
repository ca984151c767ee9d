import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { InputError } from '../../src/core/errors.js';
import { configToJson, parseHfConfig, readHfConfig } from '../../src/model/config.js';

function rejects(fn: () => unknown, ...fragments: string[]): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof InputError, `expected InputError, got ${String(err)}`);
    for (const f of fragments) assert.ok(err.message.includes(f), `message ${JSON.stringify(err.message)} lacks ${JSON.stringify(f)}`);
    assert.ok(!err.message.includes('\n'), 'one line');
    return true;
  });
}

/** Llama 3.2 1B's config.json as transformers 4.45 writes it. */
const llama32 = {
  architectures: ['LlamaForCausalLM'],
  attention_bias: false,
  attention_dropout: 0.0,
  bos_token_id: 128000,
  eos_token_id: 128001,
  head_dim: 64,
  hidden_act: 'silu',
  hidden_size: 2048,
  initializer_range: 0.02,
  intermediate_size: 8192,
  max_position_embeddings: 131072,
  mlp_bias: false,
  model_type: 'llama',
  num_attention_heads: 32,
  num_hidden_layers: 16,
  num_key_value_heads: 8,
  pretraining_tp: 1,
  rms_norm_eps: 1e-5,
  rope_scaling: { factor: 32.0, high_freq_factor: 4.0, low_freq_factor: 1.0, original_max_position_embeddings: 8192, rope_type: 'llama3' },
  rope_theta: 500000.0,
  tie_word_embeddings: true,
  torch_dtype: 'bfloat16',
  transformers_version: '4.45.0.dev0',
  use_cache: true,
  vocab_size: 128256,
};

const mistral7b = {
  architectures: ['MistralForCausalLM'],
  bos_token_id: 1,
  eos_token_id: 2,
  hidden_act: 'silu',
  hidden_size: 4096,
  intermediate_size: 14336,
  max_position_embeddings: 32768,
  model_type: 'mistral',
  num_attention_heads: 32,
  num_hidden_layers: 32,
  num_key_value_heads: 8,
  rms_norm_eps: 1e-5,
  rope_theta: 10000.0,
  sliding_window: 4096,
  tie_word_embeddings: false,
  vocab_size: 32000,
};

const qwen25 = {
  architectures: ['Qwen2ForCausalLM'],
  hidden_size: 896,
  intermediate_size: 4864,
  max_position_embeddings: 32768,
  max_window_layers: 2,
  model_type: 'qwen2',
  num_attention_heads: 14,
  num_hidden_layers: 4,
  num_key_value_heads: 2,
  rms_norm_eps: 1e-6,
  rope_theta: 1000000.0,
  sliding_window: 32768,
  tie_word_embeddings: true,
  use_sliding_window: false,
  vocab_size: 151936,
  eos_token_id: [151645, 151643],
};

test('llama 3.2: llama3 rope scaling, tied embeddings, GQA, explicit head_dim', () => {
  const c = parseHfConfig(llama32);
  assert.equal(c.modelType, 'llama');
  assert.equal(c.hiddenSize, 2048);
  assert.equal(c.numHeads, 32);
  assert.equal(c.numKvHeads, 8);
  assert.equal(c.headDim, 64);
  assert.equal(c.rmsNormEps, 1e-5);
  assert.equal(c.tieWordEmbeddings, true);
  assert.deepEqual(c.rope, { theta: 500000, type: 'llama3', factor: 32, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 8192 });
  assert.equal(c.attentionBias, false);
  assert.equal(c.oBias, false);
  assert.equal(c.mlpBias, false);
  assert.deepEqual(c.slidingWindow, new Array(16).fill(null));
  assert.equal(c.bosTokenId, 128000);
  assert.equal(c.eosTokenId, 128001);
  assert.equal(c.maxPositionEmbeddings, 131072);
  // attention_bias / mlp_bias on llama cover q, k, v and o, and gate, up, down
  const b = parseHfConfig({ ...llama32, attention_bias: true, mlp_bias: true });
  assert.deepEqual([b.attentionBias, b.oBias, b.mlpBias], [true, true, true]);
});

test('defaults: num_key_value_heads = heads, head_dim = hidden / heads, default rope, untied', () => {
  const c = parseHfConfig({ model_type: 'llama', hidden_size: 64, intermediate_size: 128, num_hidden_layers: 2, num_attention_heads: 4, vocab_size: 100 });
  assert.equal(c.numKvHeads, 4);
  assert.equal(c.headDim, 16);
  assert.deepEqual(c.rope, { theta: 10000, type: 'default' });
  assert.equal(c.tieWordEmbeddings, false);
  assert.equal(c.rmsNormEps, 1e-6);
  assert.equal(c.maxPositionEmbeddings, 2048);
  // head_dim may differ from hidden / heads (and null means "derive it", as Mistral writes it)
  assert.equal(parseHfConfig({ ...llama32, hidden_size: 512, num_attention_heads: 4, num_key_value_heads: 2, head_dim: 256 }).headDim, 256);
  assert.equal(parseHfConfig({ ...mistral7b, head_dim: null }).headDim, 128);
});

test('mistral: sliding_window on every layer; null means full attention; no biases', () => {
  const c = parseHfConfig(mistral7b);
  assert.deepEqual(c.slidingWindow, new Array(32).fill(4096));
  assert.equal(c.attentionBias, false);
  assert.deepEqual(parseHfConfig({ ...mistral7b, sliding_window: null }).slidingWindow, new Array(32).fill(null));
  assert.deepEqual(parseHfConfig({ ...mistral7b, head_dim: 128 }).headDim, 128);
});

test('qwen2: q/k/v biases but not o; use_sliding_window with max_window_layers; layer_types win', () => {
  const c = parseHfConfig(qwen25);
  assert.deepEqual([c.attentionBias, c.oBias, c.mlpBias], [true, false, false]);
  assert.deepEqual(c.slidingWindow, [null, null, null, null], 'use_sliding_window false: no window anywhere');
  assert.deepEqual(c.eosTokenId, [151645, 151643]);
  assert.equal(c.tieWordEmbeddings, true);
  const on = parseHfConfig({ ...qwen25, use_sliding_window: true, sliding_window: 1024 });
  assert.deepEqual(on.slidingWindow, [null, null, 1024, 1024], 'layers i >= max_window_layers slide');
  const zero = parseHfConfig({ ...qwen25, use_sliding_window: true, sliding_window: 8, max_window_layers: 0 });
  assert.deepEqual(zero.slidingWindow, [8, 8, 8, 8]);
  const types = ['sliding_attention', 'full_attention', 'sliding_attention', 'full_attention'];
  const lt = parseHfConfig({ ...qwen25, use_sliding_window: true, sliding_window: 64, layer_types: types });
  assert.deepEqual(lt.slidingWindow, [64, null, 64, null], 'layer_types take precedence over max_window_layers');
  const off = parseHfConfig({ ...qwen25, use_sliding_window: false, layer_types: types });
  assert.deepEqual(off.slidingWindow, [null, null, null, null], 'sliding layers without use_sliding_window attend fully');
  const noKey = parseHfConfig({ ...qwen25, use_sliding_window: true, sliding_window: undefined, max_window_layers: 3 });
  assert.deepEqual(noKey.slidingWindow, [null, null, null, 4096], 'Qwen2Config default window 4096');
});

test('rope: transformers 5 rope_parameters (theta inside), legacy `type` key, linear and yarn', () => {
  const base = { model_type: 'qwen2', hidden_size: 64, intermediate_size: 128, num_hidden_layers: 1, num_attention_heads: 4, vocab_size: 10, max_position_embeddings: 131072 };
  const y = parseHfConfig({ ...base, rope_parameters: { rope_type: 'yarn', rope_theta: 1e6, factor: 4, original_max_position_embeddings: 32768, beta_fast: 16, truncate: false } });
  assert.deepEqual(y.rope, { theta: 1e6, type: 'yarn', factor: 4, originalMaxPositionEmbeddings: 32768, betaFast: 16, truncate: false });
  const y2 = parseHfConfig({ ...base, rope_theta: 5e5, rope_parameters: { rope_type: 'yarn', original_max_position_embeddings: 32768 } });
  assert.equal(y2.rope.theta, 5e5, 'top-level rope_theta when the dict has none');
  assert.equal(y2.rope.factor, 4, 'yarn factor defaults to max_position_embeddings / original');
  const y3 = parseHfConfig({ ...base, rope_scaling: { type: 'yarn', factor: 2, mscale: 0.707, mscale_all_dim: 0.707, attention_factor: 1.2 } });
  assert.deepEqual(y3.rope, { theta: 10000, type: 'yarn', factor: 2, originalMaxPositionEmbeddings: 131072, mscale: 0.707, mscaleAllDim: 0.707, attentionFactor: 1.2 });
  const l = parseHfConfig({ ...base, rope_theta: 1e4, rope_scaling: { type: 'linear', factor: 2 } });
  assert.deepEqual(l.rope, { theta: 1e4, type: 'linear', factor: 2 });
  const l3 = parseHfConfig({ ...base, rope_parameters: { rope_type: 'llama3', rope_theta: 5e5, factor: 8, low_freq_factor: 1, high_freq_factor: 4 } });
  assert.equal(l3.rope.originalMaxPositionEmbeddings, 131072, 'transformers 5 defaults it to max_position_embeddings');
  const d = parseHfConfig({ ...base, rope_parameters: { rope_type: 'default', rope_theta: 1e6 } });
  assert.deepEqual(d.rope, { theta: 1e6, type: 'default' });
  assert.deepEqual(parseHfConfig({ ...base, rope_scaling: null }).rope, { theta: 10000, type: 'default' });
});

test('errors name config.json and the key', () => {
  rejects(() => parseHfConfig({ ...llama32, model_type: 'gpt2' }), 'config.json: model_type', 'gpt2', 'llama, mistral, qwen2');
  rejects(() => parseHfConfig({ ...llama32, model_type: undefined }), 'config.json: model_type', 'missing');
  rejects(() => parseHfConfig({ ...llama32, architectures: ['LlamaForSequenceClassification'] }), 'config.json: architectures', 'LlamaForCausalLM');
  rejects(() => parseHfConfig({ ...llama32, rope_scaling: { rope_type: 'dynamic', factor: 2 } }), 'config.json: rope_scaling.rope_type', '"dynamic"', 'default, linear, llama3, yarn');
  rejects(() => parseHfConfig({ ...llama32, rope_scaling: { type: 'longrope', factor: 2 } }), 'rope_scaling.type', 'longrope');
  rejects(() => parseHfConfig({ ...llama32, rope_scaling: undefined, rope_parameters: { rope_type: 'ntk', rope_theta: 1 } }), 'rope_parameters.rope_type', 'ntk');
  rejects(() => parseHfConfig({ ...llama32, rope_scaling: { rope_type: 'llama3', factor: 8, high_freq_factor: 4 } }), 'rope_scaling.low_freq_factor', 'missing');
  rejects(() => parseHfConfig({ ...llama32, rope_scaling: { rope_type: 'linear' } }), 'rope_scaling.factor', 'missing');
  rejects(() => parseHfConfig({ ...llama32, hidden_size: undefined }), 'config.json: hidden_size', 'missing');
  rejects(() => parseHfConfig({ ...llama32, vocab_size: undefined }), 'config.json: vocab_size', 'missing');
  rejects(() => parseHfConfig({ ...llama32, intermediate_size: '8192' }), 'config.json: intermediate_size', 'integer');
  rejects(() => parseHfConfig({ ...llama32, num_key_value_heads: 5 }), 'config.json: num_key_value_heads', 'divisor of num_attention_heads (32)');
  rejects(() => parseHfConfig({ ...llama32, head_dim: undefined, num_attention_heads: 30, num_key_value_heads: 5 }), 'config.json: num_attention_heads', 'hidden_size (2048)');
  rejects(() => parseHfConfig({ ...llama32, head_dim: 63 }), 'config.json: head_dim', 'even');
  rejects(() => parseHfConfig({ ...llama32, rms_norm_eps: -1 }), 'config.json: rms_norm_eps', 'positive');
  rejects(() => parseHfConfig({ ...llama32, hidden_act: 'gelu' }), 'config.json: hidden_act', 'silu');
  rejects(() => parseHfConfig({ ...llama32, partial_rotary_factor: 0.5 }), 'config.json: partial_rotary_factor');
  rejects(() => parseHfConfig({ ...qwen25, layer_types: ['full_attention'] }), 'config.json: layer_types', '4 layer types');
  rejects(() => parseHfConfig({ ...qwen25, layer_types: ['full_attention', 'x', 'full_attention', 'full_attention'] }), 'config.json: layer_types[1]', '"x"');
  rejects(() => parseHfConfig({ ...mistral7b, sliding_window: 0 }), 'config.json: sliding_window', '>= 1');
  rejects(() => parseHfConfig({ ...llama32, eos_token_id: ['a'] }), 'config.json: eos_token_id');
  rejects(() => parseHfConfig([1, 2]), 'config.json', 'JSON object');
  rejects(() => parseHfConfig({ ...llama32, model_type: 'phi' }, 'some/dir/config.json'), 'some/dir/config.json: model_type');
});

test('configToJson round-trips through parseHfConfig for llama, mistral and qwen2', () => {
  const cases = [
    llama32,
    { ...llama32, attention_bias: true, mlp_bias: true, tie_word_embeddings: false, rope_scaling: null },
    mistral7b,
    { ...mistral7b, sliding_window: null },
    qwen25,
    { ...qwen25, use_sliding_window: true, sliding_window: 128 },
    { ...qwen25, rope_parameters: { rope_type: 'yarn', rope_theta: 1e6, factor: 4, original_max_position_embeddings: 8192, mscale: 1, mscale_all_dim: 0, truncate: false, beta_fast: 8, beta_slow: 2 } },
  ];
  for (const json of cases) {
    const cfg = parseHfConfig(json);
    const out = configToJson(cfg);
    assert.deepEqual(JSON.parse(JSON.stringify(out)), out, 'plain JSON');
    assert.deepEqual(parseHfConfig(out), cfg, `round trip of ${json.model_type}`);
  }
  const l = configToJson(parseHfConfig(llama32), 'bfloat16');
  assert.equal(l.torch_dtype, 'bfloat16');
  assert.deepEqual(l.architectures, ['LlamaForCausalLM']);
  assert.equal(l.hidden_act, 'silu');
  const withWindow = { ...parseHfConfig(llama32), slidingWindow: [4, ...new Array(15).fill(null)] };
  rejects(() => configToJson(withWindow), 'sliding window', 'llama');
  rejects(() => configToJson({ ...parseHfConfig(llama32), attentionBias: true }), 'o bias');
});

test('readHfConfig reads <dir>/config.json and names the path in errors', () => {
  const dir = mkdtempSync(join(tmpdir(), 'ringattn-config-'));
  try {
    rejects(() => readHfConfig(dir), join(dir, 'config.json'), 'cannot be read');
    writeFileSync(join(dir, 'config.json'), '{ not json');
    rejects(() => readHfConfig(dir), join(dir, 'config.json'), 'not valid JSON');
    writeFileSync(join(dir, 'config.json'), JSON.stringify(mistral7b));
    assert.equal(readHfConfig(dir).slidingWindow[0], 4096);
    writeFileSync(join(dir, 'config.json'), JSON.stringify({ ...mistral7b, num_hidden_layers: 0 }));
    rejects(() => readHfConfig(dir), `${join(dir, 'config.json')}: num_hidden_layers`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
