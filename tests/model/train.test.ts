import { test } from 'node:test';
import assert from 'node:assert/strict';
import { RingModel } from '../../src/llm.js';
import { parseHfConfig } from '../../src/model/config.js';
import { initWeights, type ModelWeights } from '../../src/model/weights.js';
import { crossEntropy, IGNORE_INDEX } from '../../src/model/layers.js';
import { assertClose, freshSeed, rng } from '../helpers/check.js';

const cfgOf = (window?: number, tie = false) =>
  parseHfConfig({ model_type: window ? 'mistral' : 'llama', vocab_size: 23, hidden_size: 16, intermediate_size: 24, num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2, rms_norm_eps: 1e-5, rope_theta: 10000, tie_word_embeddings: tie, max_position_embeddings: 512, attention_bias: true, ...(window ? { sliding_window: window } : {}) });

function clone(w: ModelWeights): ModelWeights {
  const embed = w.embed.slice();
  return { embed, finalNorm: w.finalNorm.slice(), lmHead: w.lmHead === w.embed ? embed : w.lmHead.slice(), layers: w.layers.map((l) => Object.fromEntries(Object.entries(l).map(([k, a]) => [k, (a as Float32Array).slice()]))) as unknown as ModelWeights['layers'] };
}

function data(S: number, vocab: number, seed: number) {
  const r = rng(seed);
  const ids = Int32Array.from({ length: S }, () => Math.floor(r() * vocab));
  const targets = Int32Array.from({ length: S }, (_, t) => (t + 1 < S && r() > 0.2 ? ids[t + 1] : IGNORE_INDEX));
  return { ids, targets };
}

test('model gradients on P ranks equal one rank (every layout, windowed layers, tied embeddings)', async () => {
  const seed = freshSeed();
  for (const [window, tie] of [[undefined, false], [7, true]] as const) {
    const cfg = cfgOf(window, tie);
    const w = initWeights(cfg, seed, 0.3);
    const { ids, targets } = data(37, cfg.vocabSize, seed);
    const one = await RingModel.create(cfg, clone(w), { devices: 1 });
    const ref = await one.trainStep(ids, targets, { lr: 0, returnGrads: true });
    await one.close();
    for (const [P, layout] of [[3, 'zigzag'], [4, 'striped'], [2, 'contiguous']] as const) {
      const m = await RingModel.create(cfg, clone(w), { devices: P, layout });
      try {
        const got = await m.trainStep(ids, targets, { lr: 0, returnGrads: true });
        assert.ok(Math.abs(got.loss - ref.loss) <= 1e-5 * Math.abs(ref.loss), `seed ${seed} loss ${got.loss} vs ${ref.loss}`);
        for (const [name, g] of Object.entries(ref.grads!)) assertClose(got.grads![name], g, 1e-4, `seed ${seed} P=${P} ${layout} ${name}`);
      } finally {
        await m.close();
      }
    }
  }
});

test('gradients match finite differences of the loss', async () => {
  const seed = freshSeed();
  const cfg = cfgOf(undefined, false); // llama: q/k/v/o biases too
  const w = initWeights(cfg, seed, 0.3);
  const { ids, targets } = data(20, cfg.vocabSize, seed + 1);
  const lossOf = async (weights: ModelWeights) => {
    const m = await RingModel.create(cfg, weights, { devices: 2 });
    try {
      const logits = await m.prefill(ids, 'all');
      return crossEntropy(logits, ids.length, cfg.vocabSize, targets).loss;
    } finally {
      await m.close();
    }
  };
  const m = await RingModel.create(cfg, clone(w), { devices: 2 });
  const { grads, loss } = await m.trainStep(ids, targets, { lr: 0, returnGrads: true });
  await m.close();
  assert.ok(Math.abs(loss - (await lossOf(clone(w)))) < 1e-5);
  const r = rng(seed);
  const probes: [string, (x: ModelWeights) => Float32Array][] = [
    ['layers.0.q', (x) => x.layers[0].q],
    ['layers.1.k', (x) => x.layers[1].k],
    ['layers.0.v', (x) => x.layers[0].v],
    ['layers.1.down', (x) => x.layers[1].down],
    ['layers.0.inputNorm', (x) => x.layers[0].inputNorm],
    ['layers.1.qBias', (x) => x.layers[1].qBias!],
    ['embed', (x) => x.embed],
    ['lmHead', (x) => x.lmHead],
  ];
  for (const [name, get] of probes) {
    // (embed: a row of a token the input holds; the other rows' gradient is 0)
    const i = name === 'embed' ? ids[Math.floor(r() * ids.length)] * cfg.hiddenSize + Math.floor(r() * cfg.hiddenSize) : Math.floor(r() * get(w).length);
    const eps = 1e-2;
    const plus = clone(w), minus = clone(w);
    get(plus)[i] += eps;
    get(minus)[i] -= eps;
    const fd = ((await lossOf(plus)) - (await lossOf(minus))) / (2 * eps);
    const g = grads![name][i];
    assert.ok(Math.abs(fd - g) <= 2e-3 + 2e-2 * Math.abs(g), `seed ${seed} ${name}[${i}]: analytic ${g}, finite difference ${fd}`);
  }
});
