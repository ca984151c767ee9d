import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { InputError } from '../../src/core/errors.js';
import { bf16BitsToF32, f16BitsToF32, f32ToBf16Bits, f32ToF16Bits, type Tensor } from '../../src/core/tensor.js';
import { writeSafetensors } from '../../src/io/safetensors.js';
import { parseHfConfig, readHfConfig, type ModelConfig } from '../../src/model/config.js';
import { countParams, expectedTensors, initWeights, loadWeights, saveWeights, weightsToTensors } from '../../src/model/weights.js';

const base = {
  model_type: 'llama', hidden_size: 8, intermediate_size: 12, num_hidden_layers: 2, num_attention_heads: 2,
  num_key_value_heads: 1, head_dim: 6, vocab_size: 11, rms_norm_eps: 1e-5,
};
const cfg = parseHfConfig(base);
const tied = parseHfConfig({ ...base, tie_word_embeddings: true });
const biased = parseHfConfig({ ...base, attention_bias: true, mlp_bias: true });
const qwen = parseHfConfig({ ...base, model_type: 'qwen2' });

function withDir(fn: (dir: string) => void): void {
  const dir = mkdtempSync(join(tmpdir(), 'ringattn-weights-'));
  try {
    fn(dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

function rejects(fn: () => unknown, ...fragments: string[]): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof InputError, `expected InputError, got ${String(err)}`);
    for (const f of fragments) assert.ok(err.message.includes(f), `message ${JSON.stringify(err.message)} lacks ${JSON.stringify(f)}`);
    assert.ok(!err.message.includes('\n'), 'one line');
    return true;
  });
}

/** The checkpoint's tensors as fp32 safetensors entries, edited by `edit` before writing. */
function writeCheckpoint(path: string, c: ModelConfig, seed: number, edit?: (t: Record<string, Tensor>) => void): void {
  const t: Record<string, Tensor> = {};
  for (const [name, { shape, data }] of weightsToTensors(c, initWeights(c, seed))) t[name] = { dtype: 'float32', shape, data };
  edit?.(t);
  writeSafetensors(path, t, { format: 'pt' });
}

test('expectedTensors: HF names and shapes, biases per config, lm_head unless tied; countParams', () => {
  const e = expectedTensors(cfg);
  assert.deepEqual(e.get('model.embed_tokens.weight'), [11, 8]);
  assert.deepEqual(e.get('model.layers.1.self_attn.q_proj.weight'), [12, 8]);
  assert.deepEqual(e.get('model.layers.1.self_attn.k_proj.weight'), [6, 8]);
  assert.deepEqual(e.get('model.layers.0.self_attn.o_proj.weight'), [8, 12]);
  assert.deepEqual(e.get('model.layers.0.mlp.down_proj.weight'), [8, 12]);
  assert.deepEqual(e.get('model.layers.0.post_attention_layernorm.weight'), [8]);
  assert.deepEqual(e.get('lm_head.weight'), [11, 8]);
  assert.equal(e.size, 1 + 2 * 9 + 2);
  assert.ok(![...e.keys()].some((n) => n.endsWith('.bias')));
  assert.ok(!expectedTensors(tied).has('lm_head.weight'));
  const b = expectedTensors(biased);
  assert.deepEqual(b.get('model.layers.0.self_attn.o_proj.bias'), [8]);
  assert.deepEqual(b.get('model.layers.0.mlp.gate_proj.bias'), [12]);
  assert.deepEqual(b.get('model.layers.0.mlp.down_proj.bias'), [8]);
  const q = expectedTensors(qwen);
  assert.deepEqual(q.get('model.layers.0.self_attn.v_proj.bias'), [6]);
  assert.ok(!q.has('model.layers.0.self_attn.o_proj.bias') && !q.has('model.layers.0.mlp.up_proj.bias'));
  const perLayer = 8 + 12 * 8 + 2 * 6 * 8 + 8 * 12 + 8 + 3 * 12 * 8;
  assert.equal(countParams(cfg), 2 * 11 * 8 + 2 * perLayer + 8);
  assert.equal(countParams(tied), 11 * 8 + 2 * perLayer + 8);
});

test('initWeights: deterministic per seed, N(0, 0.02²) matrices, unit norms, zero biases, tied head shares the table', () => {
  const a = initWeights(biased, 7), b = initWeights(biased, 7), c = initWeights(biased, 8);
  assert.deepEqual(a, b);
  assert.notDeepEqual(a.layers[0].q, c.layers[0].q);
  assert.ok(a.layers[1].inputNorm.every((v) => v === 1) && a.finalNorm.every((v) => v === 1));
  assert.ok(a.layers[0].qBias!.every((v) => v === 0) && a.layers[0].downBias!.every((v) => v === 0));
  const big = initWeights(parseHfConfig({ ...base, vocab_size: 5000 }), 3).embed;
  const mean = big.reduce((s, v) => s + v, 0) / big.length;
  const std = Math.sqrt(big.reduce((s, v) => s + (v - mean) ** 2, 0) / big.length);
  assert.ok(Math.abs(mean) < 1e-3 && Math.abs(std - 0.02) < 1e-3, `mean ${mean}, std ${std}`);
  const t = initWeights(tied, 1);
  assert.equal(t.lmHead, t.embed);
});

test('save -> load round trip in fp32 (exact) with config.json, atomically', () => {
  withDir((dir) => {
    for (const c of [cfg, biased, qwen]) {
      const w = initWeights(c, 11);
      saveWeights(dir, c, w);
      assert.deepEqual(readdirSync(dir).sort(), ['config.json', 'model.safetensors']);
      assert.deepEqual(readHfConfig(dir), c);
      const back = loadWeights(dir, c);
      assert.deepEqual(back, w);
      assert.notEqual(back.lmHead, back.embed);
      const header = readFileSync(join(dir, 'model.safetensors')).subarray(8, 200).toString();
      assert.ok(header.includes('"format":"pt"'));
    }
  });
});

test('save -> load in bf16 rounds to nearest even; fp16 checkpoints load too', () => {
  withDir((dir) => {
    const w = initWeights(cfg, 5);
    saveWeights(dir, cfg, w, 'bfloat16');
    assert.equal(JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')).torch_dtype, 'bfloat16');
    const back = loadWeights(dir, cfg);
    assert.deepEqual(back.layers[1].gate, w.layers[1].gate.map((v) => bf16BitsToF32(f32ToBf16Bits(v))));
    assert.deepEqual(back.lmHead, w.lmHead.map((v) => bf16BitsToF32(f32ToBf16Bits(v))));
    const f16 = join(dir, 'model.safetensors');
    const t: Record<string, Tensor> = {};
    for (const [name, { shape, data }] of weightsToTensors(cfg, w)) t[name] = { dtype: 'float16', shape, data: Uint16Array.from(data, f32ToF16Bits) };
    writeSafetensors(f16, t);
    const h = loadWeights(dir, cfg);
    assert.deepEqual(h.embed, w.embed.map((v) => f16BitsToF32(f32ToF16Bits(v))));
  });
});

test('tied embeddings: no lm_head written; a stored lm_head.weight is accepted and ignored', () => {
  withDir((dir) => {
    const w = initWeights(tied, 2);
    saveWeights(dir, tied, w);
    const back = loadWeights(dir, tied);
    assert.equal(back.lmHead, back.embed);
    assert.deepEqual(back.embed, w.embed);
    writeCheckpoint(join(dir, 'model.safetensors'), tied, 2, (t) => {
      t['lm_head.weight'] = { dtype: 'float32', shape: [11, 8], data: new Float32Array(88).fill(3) };
    });
    const again = loadWeights(dir, tied);
    assert.equal(again.lmHead, again.embed);
    assert.deepEqual(again.embed, w.embed);
    // the untied config needs it
    writeCheckpoint(join(dir, 'model.safetensors'), tied, 2);
    rejects(() => loadWeights(dir, cfg), join(dir, 'model.safetensors'), "missing tensor 'lm_head.weight'", '[11, 8]');
  });
});

test('a sharded checkpoint (index + shards) loads; old rotary inv_freq buffers are ignored', () => {
  withDir((dir) => {
    const w = initWeights(cfg, 9);
    const all = weightsToTensors(cfg, w);
    const shards: Record<string, Tensor>[] = [{}, {}];
    const map: Record<string, string> = {};
    [...all].forEach(([name, { shape, data }], i) => {
      shards[i % 2][name] = { dtype: 'float32', shape, data };
      map[name] = `model-0000${(i % 2) + 1}-of-00002.safetensors`;
    });
    shards[1]['model.layers.0.self_attn.rotary_emb.inv_freq'] = { dtype: 'float32', shape: [3], data: new Float32Array(3) };
    map['model.layers.0.self_attn.rotary_emb.inv_freq'] = 'model-00002-of-00002.safetensors';
    writeSafetensors(join(dir, 'model-00001-of-00002.safetensors'), shards[0]);
    writeSafetensors(join(dir, 'model-00002-of-00002.safetensors'), shards[1]);
    writeFileSync(join(dir, 'model.safetensors.index.json'), JSON.stringify({ metadata: {}, weight_map: map }));
    assert.deepEqual(loadWeights(dir, cfg), w);
    // saving beside an index would be shadowed by it
    rejects(() => saveWeights(dir, cfg, w), 'model.safetensors.index.json');
  });
});

test('bad checkpoints: one-line InputErrors naming the file, the tensor and the expected shape', () => {
  withDir((dir) => {
    const file = join(dir, 'model.safetensors');
    writeCheckpoint(file, cfg, 1, (t) => delete t['model.layers.1.mlp.up_proj.weight']);
    rejects(() => loadWeights(dir, cfg), file, "missing tensor 'model.layers.1.mlp.up_proj.weight'", '[12, 8]');

    writeCheckpoint(file, cfg, 1, (t) => {
      t['model.layers.0.self_attn.k_proj.weight'] = { dtype: 'float32', shape: [8, 8], data: new Float32Array(64) };
    });
    rejects(() => loadWeights(dir, cfg), file, "'model.layers.0.self_attn.k_proj.weight'", 'shape [8, 8]', 'expected [6, 8]');

    writeCheckpoint(file, cfg, 1, (t) => {
      t['model.norm.weight'] = { dtype: 'int32', shape: [8], data: new Int32Array(8) };
    });
    rejects(() => loadWeights(dir, cfg), file, "'model.norm.weight'", 'dtype I32', 'F32, BF16 or F16', '[8]');

    writeCheckpoint(file, cfg, 1, (t) => {
      t['model.layers.0.self_attn.q_norm.weight'] = { dtype: 'float32', shape: [6], data: new Float32Array(6) };
    });
    rejects(() => loadWeights(dir, cfg), file, "unexpected tensor 'model.layers.0.self_attn.q_norm.weight'");

    // a checkpoint with more layers than the config
    writeCheckpoint(file, parseHfConfig({ ...base, num_hidden_layers: 3 }), 1);
    rejects(() => loadWeights(dir, cfg), file, "unexpected tensor 'model.layers.2.");

    // attention biases the config does not have (a qwen2 checkpoint loaded as llama)
    writeCheckpoint(file, qwen, 1);
    rejects(() => loadWeights(dir, cfg), file, "unexpected tensor 'model.layers.0.self_attn.", '.bias');

    // truncated file
    writeCheckpoint(file, cfg, 1);
    const bytes = readFileSync(file);
    writeFileSync(file, bytes.subarray(0, bytes.length - 10));
    rejects(() => loadWeights(dir, cfg), file, 'truncated');
    writeFileSync(file, bytes.subarray(0, 5));
    rejects(() => loadWeights(dir, cfg), file, 'truncated');

    rmSync(file);
    rejects(() => loadWeights(dir, cfg), dir, 'model.safetensors');
  });
});

test('saveWeights validates the weights against the config', () => {
  withDir((dir) => {
    const w = initWeights(cfg, 1);
    w.layers[1].v = new Float32Array(5);
    rejects(() => saveWeights(dir, cfg, w), 'model.layers.1.self_attn.v_proj.weight', '48');
    assert.deepEqual(readdirSync(dir), [], 'nothing written');
  });
});
