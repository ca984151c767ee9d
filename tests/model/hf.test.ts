/**
 * The ring model against transformers itself. tests/fixtures/hf/<case>/ holds a tiny random
 * checkpoint written by `save_pretrained`, a prompt, transformers' fp32 eager logits for it and
 * its 12-token greedy continuation (tests/fixtures/make_hf_fixtures.py made them; hf/meta.json
 * names the transformers version). Logits must agree within 2e-4 absolute for P in {1, 3, 4}
 * and every layout, and greedy decoding (KV cache sharded over the ranks) must pick the very
 * same tokens.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { RingModel } from '../../src/llm.js';
import { readHfConfig } from '../../src/model/config.js';
import { ropeInvFreq } from '../../src/model/rope.js';
import { LAYOUTS, type Layout } from '../../src/core/layout.js';

/** tests/fixtures/hf, from dist/tests/model or tests/model alike. */
const ROOT = fileURLToPath(new URL('../../../tests/fixtures/hf/', import.meta.url));
const FIXTURES = existsSync(ROOT) ? ROOT : fileURLToPath(new URL('../fixtures/hf/', import.meta.url));

const TOL = 2e-4;

interface Meta {
  transformers: string;
  new_tokens: number;
  cases: { name: string; model_type: string; S: number }[];
}

interface Greedy {
  new_tokens: number[];
  min_margin: number;
  inv_freq: number[];
  attention_scaling: number;
}

function readJson<T>(...parts: string[]): T {
  return JSON.parse(readFileSync(join(FIXTURES, ...parts), 'utf8')) as T;
}

/** A little-endian float32 .npy (format 1.x/2.x/3.x, C order) as [shape, data]. */
function readNpyF32(file: string): { shape: number[]; data: Float32Array } {
  const buf = readFileSync(file);
  assert.equal(buf.subarray(0, 6).toString('latin1'), '\x93NUMPY', `${file}: not a .npy file`);
  const major = buf[6];
  const headerLen = major === 1 ? buf.readUInt16LE(8) : buf.readUInt32LE(8);
  const start = (major === 1 ? 10 : 12) + headerLen;
  const header = buf.subarray(major === 1 ? 10 : 12, start).toString('latin1');
  assert.match(header, /'descr':\s*'<f4'/, `${file}: expected little-endian float32, header ${header}`);
  assert.match(header, /'fortran_order':\s*False/, `${file}: expected C order`);
  const shape = [...header.match(/'shape':\s*\(([^)]*)\)/)![1].matchAll(/\d+/g)].map((m) => Number(m[0]));
  const n = shape.reduce((a, b) => a * b, 1);
  const data = new Float32Array(n);
  const body = buf.subarray(start, start + 4 * n);
  assert.equal(body.length, 4 * n, `${file}: truncated`);
  for (let i = 0; i < n; i++) data[i] = body.readFloatLE(4 * i);
  return { shape, data };
}

function maxAbsDiff(a: Float32Array, b: Float32Array): { err: number; at: number } {
  assert.equal(a.length, b.length, 'length mismatch');
  let err = 0;
  let at = -1;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i] - b[i]);
    if (!(d <= err)) {
      err = d;
      at = i;
    }
  }
  return { err, at };
}

const meta = readJson<Meta>('meta.json');

test('fixtures come from transformers 5 and hold every case', () => {
  assert.match(meta.transformers, /^5\./);
  assert.deepEqual(
    meta.cases.map((c) => c.name),
    ['llama-bf16-sharded', 'llama-tied', 'mistral-window', 'llama3-scaled', 'qwen2-biases', 'llama-yarn'],
  );
  const sharded = join(FIXTURES, 'llama-bf16-sharded');
  assert.ok(existsSync(join(sharded, 'model.safetensors.index.json')), 'the bf16 case is sharded');
});

/** The configs say what the cases are meant to exercise. */
test('fixture configs parse to the intended features', () => {
  const cfg = (name: string) => readHfConfig(join(FIXTURES, name));
  assert.equal(cfg('llama-tied').tieWordEmbeddings, true);
  assert.equal(cfg('llama-tied').headDim, 24);
  assert.equal(cfg('llama-tied').oBias && cfg('llama-tied').mlpBias && cfg('llama-tied').attentionBias, true);
  assert.deepEqual(cfg('mistral-window').slidingWindow, [7, 7]);
  assert.deepEqual(cfg('qwen2-biases').slidingWindow, [null, 9, 9]);
  assert.equal(cfg('qwen2-biases').attentionBias, true);
  const l3 = cfg('llama3-scaled').rope;
  assert.equal(l3.type, 'llama3');
  assert.ok(l3.originalMaxPositionEmbeddings! < meta.cases.find((c) => c.name === 'llama3-scaled')!.S);
  assert.equal(cfg('llama-yarn').rope.type, 'yarn');
});

for (const [ci, c] of meta.cases.entries()) {
  const dir = join(FIXTURES, c.name);
  const ids = Int32Array.from(readJson<{ ids: number[] }>(c.name, 'ids.json').ids);
  const greedy = readJson<Greedy>(c.name, 'greedy.json');
  const ref = () => readNpyF32(join(dir, 'logits.npy'));

  test(`${c.name}: RoPE inverse frequencies and attention scaling equal transformers'`, () => {
    const cfg = readHfConfig(dir);
    const rope = ropeInvFreq(cfg);
    assert.equal(rope.invFreq.length, greedy.inv_freq.length);
    for (let i = 0; i < rope.invFreq.length; i++) {
      const want = greedy.inv_freq[i];
      // transformers computes them in float32 arithmetic; we round the float64 value: an ulp or two apart.
      assert.ok(Math.abs(rope.invFreq[i] - want) <= 4e-7 * want, `inv_freq[${i}]: ${rope.invFreq[i]} vs transformers ${want}`);
    }
    assert.ok(Math.abs(rope.attentionScaling - greedy.attention_scaling) < 1e-12, `attention scaling ${rope.attentionScaling} vs ${greedy.attention_scaling}`);
  });

  // P=1, every layout at P=3, and at P=4 one layout per case (rotating, so all three are covered).
  const runs: [number, Layout][] = [[1, 'contiguous'], ...LAYOUTS.map((l): [number, Layout] => [3, l]), [4, LAYOUTS[ci % LAYOUTS.length]]];
  test(`${c.name}: logits within ${TOL} of transformers (P=1, 3, 4; layouts)`, async (t) => {
    const { shape, data: want } = ref();
    const cfg = readHfConfig(dir);
    assert.deepEqual(shape, [ids.length, cfg.vocabSize]);
    for (const [P, layout] of runs) {
      const m = await RingModel.load(dir, { devices: P, layout });
      try {
        const got = await m.prefill(ids, 'all');
        const { err, at } = maxAbsDiff(got, want);
        const V = cfg.vocabSize;
        t.diagnostic(`P=${P} ${layout}: max |logit - transformers| = ${err.toExponential(2)}`);
        assert.ok(err <= TOL, `${c.name} P=${P} ${layout}: max |logit - transformers| = ${err.toExponential(3)} at position ${Math.floor(at / V)} token ${at % V} (got ${got[at]}, want ${want[at]})`);
      } finally {
        await m.close();
      }
    }
  });

  test(`${c.name}: greedy continuation equals transformers' generate (P=1 and P=4, KV cache sharded)`, async () => {
    for (const P of [1, 4]) {
      const m = await RingModel.load(dir, { devices: P, layout: 'zigzag' });
      try {
        // transformers ran with no EOS, so neither stops early.
        const out = await m.generate(ids, { maxNewTokens: greedy.new_tokens.length, stop: [] });
        assert.deepEqual([...out], greedy.new_tokens, `${c.name} P=${P}: greedy tokens differ (transformers' smallest top-2 margin ${greedy.min_margin})`);
        if (P > 1) assert.ok(m.cacheTokens.every((n) => n > 0), `every rank holds part of the KV cache: ${m.cacheTokens}`);
      } finally {
        await m.close();
      }
    }
  });
}
