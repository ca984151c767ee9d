import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync, existsSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseHfConfig } from '../../src/model/config.js';
import { initWeights, saveWeights } from '../../src/model/weights.js';
import { readNpy, readNpyFloat32 } from '../../src/io/index.js';
import { RingModel } from '../../src/llm.js';
import { assertClose } from '../helpers/check.js';

const BIN = join(process.cwd(), 'bin', 'ringattn.js');
const cli = (args: string[], env?: NodeJS.ProcessEnv) => {
  const r = spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8', env: env ? { ...process.env, ...env } : undefined });
  return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
};
const WORDS = 'the quick brown fox jumps over lazy dog a b c d e f g h i j k l m n o p q r s t u v w x y z'.split(' ');

/** A tiny checkpoint directory: config.json, model.safetensors, a word-level tokenizer.json. */
function checkpoint() {
  const dir = mkdtempSync(join(tmpdir(), 'ringattn-model-'));
  const vocab = Object.fromEntries([['[UNK]', 0], ...WORDS.map((w, i) => [w, i + 1])]);
  const cfg = parseHfConfig({ model_type: 'mistral', vocab_size: WORDS.length + 1, hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2, rms_norm_eps: 1e-6, rope_theta: 10000, sliding_window: 11, tie_word_embeddings: true, max_position_embeddings: 1024 });
  const weights = initWeights(cfg, 11, 0.3);
  saveWeights(dir, cfg, weights);
  writeFileSync(
    join(dir, 'tokenizer.json'),
    JSON.stringify({ version: '1.0', truncation: null, padding: null, added_tokens: [], normalizer: null, pre_tokenizer: { type: 'Whitespace' }, post_processor: null, decoder: null, model: { type: 'WordLevel', vocab, unk_token: '[UNK]' } }),
  );
  return { dir, cfg, weights };
}

test('logits, generate and tokenize on a checkpoint directory', async () => {
  const { dir, cfg, weights } = checkpoint();
  const ids = Array.from({ length: 45 }, (_, i) => (i * 7 + 3) % cfg.vocabSize);
  writeFileSync(join(dir, 'ids.json'), JSON.stringify(ids));
  writeFileSync(join(dir, 'ids.txt'), ids.join(' '));
  const ref = await RingModel.create(cfg, weights, { devices: 1 });
  try {
    const want = await ref.prefill(Int32Array.from(ids), 'all');
    const r = cli(['logits', '--model', dir, '--tokens', join(dir, 'ids.json'), '--out', join(dir, 'logits.npy'), '--devices', '3', '--layout', 'striped']);
    assert.equal(r.code, 0, r.stderr);
    const got = readNpyFloat32(join(dir, 'logits.npy'));
    assert.deepEqual(got.shape, [45, cfg.vocabSize]);
    assertClose(got.data, want, 1e-4, 'logits');

    const greedy = await ref.generate(Int32Array.from(ids), { maxNewTokens: 5 });
    const g = cli(['generate', '--model', dir, '--tokens', join(dir, 'ids.txt'), '--max-new-tokens', '5', '--devices', '2', '--out-tokens', join(dir, 'new.npy')]);
    assert.equal(g.code, 0, g.stderr);
    const newIds = readNpy(join(dir, 'new.npy'));
    assert.equal(newIds.dtype, 'int32');
    assert.deepEqual([...newIds.data], [...greedy]);
    assert.match(g.stderr, /tokens\/s/);
    assert.match(g.stderr, /peak per rank/);
  } finally {
    await ref.close();
  }
  const t = cli(['tokenize', '--model', dir, '--text', 'the quick brown fox']);
  assert.equal(t.code, 0, t.stderr);
  assert.deepEqual(JSON.parse(t.stdout), [1, 2, 3, 4]);
  writeFileSync(join(dir, 'prompt.txt'), 'the lazy dog jumps over the quick brown fox a b c');
  const p = cli(['generate', '--model', dir, '--prompt-file', join(dir, 'prompt.txt'), '--max-new-tokens', '4', '--devices', '2', '--quiet']);
  assert.equal(p.code, 0, p.stderr);
  assert.equal(p.stdout.trim().split(/\s+/).length, 4, `four words: ${p.stdout}`);
  for (const w of p.stdout.trim().split(/\s+/)) assert.ok(WORDS.includes(w), w);
});

test('model commands reject bad input with exit 2 and no output file', () => {
  const { dir } = checkpoint();
  writeFileSync(join(dir, 'bad.json'), '[1, 2, 999]');
  writeFileSync(join(dir, 'bad.txt'), '1 2 x');
  writeFileSync(join(dir, 'obj.json'), '{"idx": [1, 2]}');
  writeFileSync(join(dir, 'strs.json'), '["1", "2"]');
  writeFileSync(join(dir, 'hex.txt'), '0x5 6');
  writeFileSync(join(dir, 'ok.json'), '[1, 2, 3]');
  const cases: [string[], RegExp][] = [
    [['logits', '--model', dir, '--tokens', join(dir, 'bad.txt'), '--out', join(dir, 'o.npy')], /^ringattn: --tokens: token 2 is 'x'; expected a non-negative integer id$/],
    [['logits', '--model', dir, '--tokens', join(dir, 'obj.json'), '--out', join(dir, 'o.npy')], /^ringattn: --tokens: expected a JSON array of token ids, or an object with an "ids" or "input_ids" array$/],
    [['generate', '--model', dir, '--tokens', join(dir, 'bad.json'), '--max-new-tokens', '0'], /^ringattn: --max-new-tokens: expected/],
    [['generate', '--model', dir, '--tokens', join(dir, 'ok.json'), '--max-new-tokens', '2000000000', '--devices', '2', '--quiet'], /^ringattn: --max-new-tokens: expected a KV cache of at most 2\^32 values a layer/],
    [['logits', '--model', dir, '--tokens', join(dir, 'strs.json'), '--out', join(dir, 'o.npy')], /^ringattn: --tokens: token 0 is "1"; expected a non-negative integer id$/],
    [['logits', '--model', join(dir, 'nope'), '--tokens', join(dir, 'bad.json'), '--out', join(dir, 'o.npy')], /^ringattn: --model: .*does not exist/],
    [['logits', '--model', dir, '--tokens', join(dir, 'bad.json'), '--out', join(dir, 'o.npy')], /^ringattn: --tokens: token 2 is 999; expected an id in \[0, 35\) \(the model's vocab_size\)/],
    [['logits', '--model', dir, '--tokens', join(dir, 'hex.txt'), '--out', join(dir, 'o.npy')], /^ringattn: --tokens: token 0 is '0x5'; expected a non-negative integer id$/],
    [['logits', '--model', dir, '--tokens', join(dir, 'ok.json'), '--out', join(dir, 'ok.json')], /^ringattn: --out: .*ok\.json is the --tokens input/],
    // Outputs over the checkpoint's own files would destroy it.
    [['logits', '--model', dir, '--tokens', join(dir, 'ok.json'), '--out', join(dir, 'model.safetensors')], /^ringattn: --out: .*model\.safetensors is the --model input/],
    [['generate', '--model', dir, '--tokens', join(dir, 'ok.json'), '--out-tokens', join(dir, 'config.json')], /^ringattn: --out-tokens: .*config\.json is the --model input/],
    [['logits', '--model', dir, '--tokens', join(dir, 'ok.json'), '--out', join(dir, 'o.npy'), '--sinks', '2', '--layout', 'spiral'], /^ringattn: --layout: /],
    [['generate', '--model', dir, '--tokens', join(dir, 'ok.json'), '--dtype', 'bf16'], /^ringattn: --dtype: 'bfloat16' runs on the cuda backend/],
    [['generate', '--model', dir, '--prompt-file', dir], /^ringattn: --prompt-file: .* is a directory; expected a file to read$/],
    [['tokenize', '--model', dir, '--text-file', dir], /^ringattn: --text-file: .* is a directory; expected a file to read$/],
    [['logits', '--model', dir, '--tokens', join(dir, 'missing.json'), '--out', join(dir, 'o.npy')], /^ringattn: --tokens: /],
    [['generate', '--model', dir, '--tokens', join(dir, 'bad.json'), '--top-p', '0'], /^ringattn: --top-p: expected 0 < p <= 1/],
    [['generate', '--model', dir, '--tokens', join(dir, 'bad.json'), '--out-tokens', join(dir, 'no', 'x.npy')], /^ringattn: --out-tokens: /],
    [['tokenize', '--model', dir], /^ringattn: --text: expected exactly one of --text or --text-file/],
  ];
  mkdirSync(join(dir, 'empty'));
  cases.push([['tokenize', '--model', join(dir, 'empty'), '--text', 'x'], /^ringattn: --model: .*has no tokenizer.json; expected one$/]);
  cases.push([['generate', '--model', join(dir, 'empty'), '--prompt-file', join(dir, 'bad.txt')], /^ringattn: --model: .*has no tokenizer.json; expected one, or pass token ids with --tokens$/]);
  for (const [args, re] of cases) {
    const r = cli(args);
    assert.equal(r.code, 2, `${args.join(' ')}: ${r.stderr}`);
    assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
    assert.match(r.stderr.trim(), re);
  }
  assert.ok(!existsSync(join(dir, 'o.npy')));
  // What tokenizers write, {"input_ids": [...]}, and numpy's savetxt (1.000000000000000000e+00) are read as the ids.
  writeFileSync(join(dir, 'ids-obj.json'), '{"input_ids": [1, 2, 3]}');
  writeFileSync(join(dir, 'ids-savetxt.txt'), '1.000000000000000000e+00\n2.000000000000000000e+00\n3\n');
  for (const file of ['ids-obj.json', 'ids-savetxt.txt']) {
    const ok = cli(['logits', '--model', dir, '--tokens', join(dir, file), '--out', join(dir, 'o.npy'), '--devices', '1']);
    assert.equal(ok.code, 0, ok.stderr);
    assert.deepEqual(readNpy(join(dir, 'o.npy')).shape.slice(0, 1), [3], file);
  }
});

test('bad checkpoints: exit 2 with one line naming the file or tensor, no output file', async () => {
  const { readFileSync, writeFileSync: write, rmSync } = await import('node:fs');
  const cases: [string, (dir: string) => void, RegExp][] = [
    ['unknown architecture', (d) => {
      const c = JSON.parse(readFileSync(join(d, 'config.json'), 'utf8'));
      c.model_type = 'gpt_neox';
      write(join(d, 'config.json'), JSON.stringify(c));
    }, /config\.json.*model_type/],
    ['truncated weights', (d) => {
      const b = readFileSync(join(d, 'model.safetensors'));
      write(join(d, 'model.safetensors'), b.subarray(0, b.length - 100));
    }, /model\.safetensors/],
    ['missing weights file', (d) => rmSync(join(d, 'model.safetensors')), /safetensors/],
    ['wrong shape in config', (d) => {
      const c = JSON.parse(readFileSync(join(d, 'config.json'), 'utf8'));
      c.intermediate_size = 65;
      write(join(d, 'config.json'), JSON.stringify(c));
    }, /mlp\.(gate|up|down)_proj\.weight.*\[/],
  ];
  for (const [what, breakIt, re] of cases) {
    const { dir } = checkpoint();
    breakIt(dir);
    writeFileSync(join(dir, 'ids.json'), '[1, 2, 3]');
    const r = cli(['logits', '--model', dir, '--tokens', join(dir, 'ids.json'), '--out', join(dir, 'o.npy')]);
    assert.equal(r.code, 2, `${what}: ${r.stderr}`);
    assert.equal(r.stderr.trim().split('\n').length, 1, `${what}: ${r.stderr}`);
    assert.match(r.stderr, re, what);
    assert.ok(!existsSync(join(dir, 'o.npy')), what);
  }
  // A NaN weight: refused at load (attention read its NaN query rows as rows that see nothing,
  // and the logits came out finite and wrong).
  const { dir, cfg, weights } = checkpoint();
  weights.layers[1].inputNorm[3] = Number.NaN;
  saveWeights(dir, cfg, weights);
  writeFileSync(join(dir, 'ids.json'), '[1, 2, 3]');
  const r = cli(['logits', '--model', dir, '--tokens', join(dir, 'ids.json'), '--out', join(dir, 'o.npy')]);
  assert.equal(r.code, 2, r.stderr);
  assert.match(r.stderr.trim(), /^ringattn: .*model\.safetensors: tensor 'model\.layers\.1\.input_layernorm\.weight' element 3 is NaN; expected finite weights$/);
  assert.ok(!existsSync(join(dir, 'o.npy')));
});

test('--backend cuda without a usable driver: one line naming the driver (not NCCL), exit 1, no ranks started, no output file', () => {
  const { dir } = checkpoint();
  writeFileSync(join(dir, 'ids.json'), '[1, 2, 3]');
  const noDriver = { RINGATTN_LIBCUDA: '/nonexistent/libcuda.so.1' }; // as on a machine without one, GPU or not
  for (const args of [
    ['logits', '--backend', 'cuda', '--model', dir, '--tokens', join(dir, 'ids.json'), '--out', join(dir, 'o.npy')],
    ['logits', '--backend', 'cuda', '--devices', '2', '--model', dir, '--tokens', join(dir, 'ids.json'), '--out', join(dir, 'o.npy')],
    ['demo', '--backend', 'cuda', '--devices', '2'],
  ]) {
    const r = cli(args, noDriver);
    assert.equal(r.code, 1, `${args.join(' ')}: ${r.stderr}`);
    assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
    assert.match(r.stderr.trim(), /^ringattn: CUDA unavailable: CUDA driver library not found: RINGATTN_LIBCUDA=\/nonexistent\/libcuda\.so\.1 could not be loaded/);
    assert.ok(!existsSync(join(dir, 'o.npy')));
  }
});
