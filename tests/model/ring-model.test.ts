import { test } from 'node:test';
import assert from 'node:assert/strict';
import { RingModel } from '../../src/llm.js';
import { parseHfConfig, type ModelConfig } from '../../src/model/config.js';
import { initWeights, type ModelWeights } from '../../src/model/weights.js';
import { LAYOUTS } from '../../src/core/layout.js';
import { assertClose, freshSeed, rng } from '../helpers/check.js';

/** A tiny llama (or mistral with a window) with non-trivial norm weights drawn from `seed`. */
function tiny(window?: number, seed = 7): { cfg: ModelConfig; weights: ModelWeights } {
  const cfg = parseHfConfig({
    model_type: window ? 'mistral' : 'llama',
    vocab_size: 61,
    hidden_size: 32,
    intermediate_size: 48,
    num_hidden_layers: 2,
    num_attention_heads: 4,
    num_key_value_heads: 2,
    rms_norm_eps: 1e-5,
    rope_theta: 10000,
    max_position_embeddings: 4096,
    tie_word_embeddings: false,
    ...(window ? { sliding_window: window } : {}),
  });
  const weights = initWeights(cfg, seed, 0.2);
  const r = rng(seed ^ 0x2545f491);
  for (const l of weights.layers) for (const n of [l.inputNorm, l.postNorm]) for (let i = 0; i < n.length; i++) n[i] = 0.5 + r();
  return { cfg, weights };
}

function tokens(n: number, vocab: number, seed: number): Int32Array {
  const r = rng(seed);
  return Int32Array.from({ length: n }, () => Math.floor(r() * vocab));
}

test('ring prefill logits on P ranks equal one rank (every layout, full and windowed layers)', async () => {
  const seed = freshSeed();
  for (const window of [undefined, 13]) {
    const { cfg, weights } = tiny(window, seed);
    const ids = tokens(71, cfg.vocabSize, seed);
    const one = await RingModel.create(cfg, weights, { devices: 1 });
    const ref = await one.prefill(ids, 'all');
    await one.close();
    for (const P of [3, 4])
      for (const layout of LAYOUTS) {
        const m = await RingModel.create(cfg, weights, { devices: P, layout });
        try {
          const got = await m.prefill(ids, 'all');
          assertClose(got, ref, 1e-4, `seed ${seed} window ${window} P=${P} ${layout}`);
          assert.equal(m.cacheTokens.reduce((a, b) => a + b, 0), ids.length);
        } finally {
          await m.close();
        }
      }
  }
});

test('decode after prefill equals recomputing the whole sequence; the cache stays balanced', async () => {
  const seed = freshSeed();
  const { cfg, weights } = tiny(9, seed);
  const prompt = tokens(40, cfg.vocabSize, seed);
  const more = tokens(7, cfg.vocabSize, seed + 1);
  const m = await RingModel.create(cfg, weights, { devices: 3, layout: 'zigzag' });
  const full = await RingModel.create(cfg, weights, { devices: 2, layout: 'striped' });
  try {
    await m.prefill(prompt, 'last', more.length);
    let seq = prompt;
    for (const t of more) {
      const got = await m.decode(t);
      seq = Int32Array.from([...seq, t]);
      const want = await full.prefill(seq, 'last');
      assertClose(got, want, 1e-4, `seed ${seed} after ${seq.length} tokens`);
    }
    const c = m.cacheTokens;
    assert.equal(c.reduce((a, b) => a + b, 0), prompt.length + more.length);
    assert.ok(Math.max(...c) - Math.min(...c) <= 1, `balanced cache: ${c}`);
  } finally {
    await m.close();
    await full.close();
  }
});

test('greedy generation is the same on 1 and 4 ranks', async () => {
  // Fixed weights and prompt on purpose: with random ones a near-tie between two logits (equal
  // to fp32 rounding) could pick different tokens on 1 and 4 ranks; the logits themselves are
  // compared on fresh weights above.
  const { cfg, weights } = tiny();
  const prompt = tokens(33, cfg.vocabSize, 5);
  const outs: Int32Array[] = [];
  for (const P of [1, 4]) {
    const m = await RingModel.create(cfg, weights, { devices: P });
    try {
      outs.push(await m.generate(prompt, { maxNewTokens: 6 }));
    } finally {
      await m.close();
    }
  }
  assert.deepEqual([...outs[1]], [...outs[0]]);
  assert.equal(outs[0].length, 6);
});

test('bad token ids and arguments are named', async () => {
  const { cfg, weights } = tiny();
  const m = await RingModel.create(cfg, weights, { devices: 2 });
  try {
    await assert.rejects(m.prefill(Int32Array.of(1, 2, 999)), /tokens: token 2 is 999; expected an id in \[0, 61\)/);
    await assert.rejects(m.decode(3), /expected a prefill first/);
    await assert.rejects(m.prefill([1, 2, 3] as unknown as Int32Array), /^InputError: tokens: expected an Int32Array of token ids, got Array/);
    await assert.rejects(m.prefill(Int32Array.of(1, 2), 'every' as 'all'), /^InputError: which: expected 'all' or 'last', got "every"/);
    await assert.rejects(m.generate(Int32Array.of(1, 2), undefined as unknown as { maxNewTokens: number }), /^InputError: options: expected \{ maxNewTokens/);
    const want = await m.prefill(Int32Array.of(5, 6), 'last');
    assert.equal(want.length, 61);
    // Not an id: refused, not truncated (1.5 and 2^32 + 1 had decoded token 1; NaN and null token 0).
    for (const t of [1.5, 2 ** 32 + 1, Number.NaN, -0.5, null, '1']) {
      await assert.rejects(m.decode(t as number), (e: unknown) => e instanceof Error && /^token: expected an id in \[0, 61\), got /.test(e.message), String(t));
    }
  } finally {
    await m.close();
  }
});

test('RingModel options are checked before any rank starts', async () => {
  const { cfg, weights } = tiny();
  const cases: [Record<string, unknown>, RegExp][] = [
    [{ layout: 'spiral' }, /^layout: expected one of contiguous, zigzag, striped, got "spiral"/],
    [{ kernel: 'fast' }, /^kernel: expected 'auto', 'c' or 'ts', got "fast"/],
    [{ dtype: 'int8' }, /^dtype: expected 'float32' or 'bfloat16', got "int8"/],
    [{ dtype: 'bfloat16' }, /^dtype: 'bfloat16' runs on the cuda backend/],
    [{ sinks: 2 }, /^sinks: the model has no sliding-window layer/],
    [{ threads: 0 }, /^threads: expected an integer in \[1, 1024\], got 0/],
    [{ backend: 'tpu' }, /^backend: expected 'cpu' or 'cuda', got "tpu"/],
  ];
  for (const [opts, re] of cases) {
    await assert.rejects(RingModel.create(cfg, weights, opts as never), (e: unknown) => e instanceof Error && re.test(e.message), JSON.stringify(opts));
  }
  // With a window, sinks are accepted.
  const w = tiny(8);
  const m = await RingModel.create(w.cfg, w.weights, { devices: 1, sinks: 2 });
  await m.close();
});
