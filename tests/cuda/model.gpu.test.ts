import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { cudaAvailable } from '../../src/cuda/check.js';
import { loadNccl } from '../../src/cuda/bindings/nccl.js';
import { launch } from '../../src/cuda/launch.js';
import { readNpyFloat32 } from '../../src/io/index.js';
import { RingModel } from '../../src/llm.js';
import { parseHfConfig, readHfConfig } from '../../src/model/config.js';
import { initWeights } from '../../src/model/weights.js';
import { freshSeed, relErr, rng } from '../helpers/check.js';

// The model on the CUDA backend: Hugging Face fixtures (transformers' fp32 logits and greedy
// continuations) on 1 GPU in fp32 and bf16; decode with the KV cache on the GPU (the split-KV
// kernel, checked by the stats' deviceDecodes) against transformers and against recomputing the
// sequence, windows and sinks included, on 1 GPU and on 2 ranks (the exact NCCL combine), and the
// host fallback where the kernel has no head dim; the CLI's logits and generate on 2 GPU ranks (1
// where only one is visible); a training step's loss and gradients on as many GPU ranks against
// the CPU backend. Skipped with the reason where there is no GPU.

// The model's GPU decode (CudaRank.decodeLayer) is the default; these tests check it (and, at head
// dim 6, the host fallback). A RINGATTN_GPU_DECODE=0 in the caller's environment is cleared so
// that ranks and CLI runs, which inherit it, decode on the GPU.
delete process.env.RINGATTN_GPU_DECODE;

const avail = cudaAvailable();
const nccl = avail.ok ? loadNccl() : null;
const skip1 = !avail.ok ? `${avail.reason} (GPU model tests skipped)` : nccl && 'error' in nccl ? `${nccl.error} (GPU model tests skipped)` : false;

const ROOT = fileURLToPath(new URL('../../../tests/fixtures/hf/', import.meta.url));
const FIXTURES = existsSync(ROOT) ? ROOT : fileURLToPath(new URL('../fixtures/hf/', import.meta.url));
const cliJs = fileURLToPath(new URL('../../../bin/ringattn.js', import.meta.url));
const rankJs = fileURLToPath(new URL('./model-rank.js', import.meta.url));
// The fixtures are committed: a missing meta.json is a broken checkout, not a reason to pass with no cases.
const CASES = (JSON.parse(readFileSync(join(FIXTURES, 'meta.json'), 'utf8')) as { cases: { name: string }[] }).cases.map((c) => c.name);
const NAMED = ['llama-bf16-sharded', 'mistral-window', 'qwen2-biases'];

test('the transformers fixtures are present (every GPU model test below reads them)', () => {
  assert.ok(CASES.length >= 6, `expected the committed fixtures in ${FIXTURES}, found ${CASES.length} cases`);
  for (const n of NAMED) assert.ok(CASES.includes(n), `fixture ${n} missing from ${FIXTURES}meta.json`);
});

const TOL = 2e-4;

function maxAbs(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i] - b[i]);
    if (!(d <= m)) m = Number.isNaN(d) ? Infinity : d;
  }
  return m;
}

function fixture(name: string) {
  const dir = join(FIXTURES, name);
  const ids = Int32Array.from((JSON.parse(readFileSync(join(dir, 'ids.json'), 'utf8')) as { ids: number[] }).ids);
  const greedy = JSON.parse(readFileSync(join(dir, 'greedy.json'), 'utf8')) as { new_tokens: number[]; max_abs_logit: number };
  return { dir, ids, greedy, logits: () => readNpyFloat32(join(dir, 'logits.npy'), 'logits').data };
}

test('1 GPU, fp32: logits within 2e-4 of transformers and the same greedy tokens, every fixture', { skip: skip1, timeout: 300_000 }, async () => {
  for (const name of CASES) {
    const f = fixture(name);
    const m = await RingModel.load(f.dir, { backend: 'cuda', dtype: 'float32' });
    try {
      const got = await m.prefill(f.ids, 'all');
      const err = maxAbs(got, f.logits());
      assert.ok(err <= TOL, `${name}: logits differ by ${err} > ${TOL}`);
      const out = await m.generate(f.ids, { maxNewTokens: f.greedy.new_tokens.length, stop: [] });
      assert.deepEqual([...out], f.greedy.new_tokens, `${name}: greedy tokens differ`);
      const st = (await m.stats())[0];
      assert.equal(st.deviceDecodes, (out.length - 1) * m.cfg.numLayers, `${name}: every decode step attends on the GPU (${st.hostDecode})`);
      console.log(`${name}: max |logit - transformers| ${err.toExponential(2)}, greedy identical`);
    } finally {
      await m.close();
    }
  }
});

test('1 GPU, bf16: logits within 2% (of the largest logit) of transformers', { skip: skip1, timeout: 300_000 }, async () => {
  for (const name of CASES) {
    const f = fixture(name);
    const m = await RingModel.load(f.dir, { backend: 'cuda', dtype: 'bfloat16' });
    try {
      const want = f.logits();
      const err = maxAbs(await m.prefill(f.ids, 'all'), want);
      const scale = want.reduce((a, x) => Math.max(a, Math.abs(x)), 0);
      assert.ok(err <= 2e-2 * scale, `${name}: bf16 logits differ by ${err} (largest logit ${scale})`);
      console.log(`${name}: bf16 max |logit - transformers| ${err.toExponential(2)} (largest ${scale.toFixed(2)})`);
    } finally {
      await m.close();
    }
  }
});

/** Teacher-forced decode of the last `steps` tokens of `ids` after a prefill of the rest (no reserve: the cache grows). */
async function decodeTail(m: RingModel, ids: Int32Array, steps: number): Promise<Float32Array[]> {
  const S0 = ids.length - steps;
  await m.prefill(ids.subarray(0, S0), 'last');
  const got: Float32Array[] = [];
  for (let t = S0; t < ids.length; t++) got.push(await m.decode(ids[t]));
  return got;
}

test('1 GPU: decode with the KV cache on the GPU equals transformers and recomputing the sequence (fp32, bf16; windows, sinks)', { skip: skip1, timeout: 300_000 }, async () => {
  const STEPS = 8;
  for (const name of CASES) {
    const f = fixture(name);
    const hf = f.logits();
    const S = f.ids.length, S0 = S - STEPS;
    const V = hf.length / S;
    const windowed = readHfConfig(f.dir).slidingWindow.some((w) => w);
    for (const dtype of ['float32', 'bfloat16'] as const) {
      // Sinks change the mask (transformers has none): checked against our own recompute only.
      for (const sinks of windowed ? [0, 3] : [0]) {
        const tag = `${name} ${dtype}${sinks ? ` sinks ${sinks}` : ''}`;
        const m = await RingModel.load(f.dir, { backend: 'cuda', dtype, sinks });
        try {
          const got = await decodeTail(m, f.ids, STEPS);
          const st = (await m.stats())[0];
          assert.equal(st.hostDecode, null, tag);
          assert.equal(st.deviceDecodes, STEPS * m.cfg.numLayers, `${tag}: every decode step attends on the GPU`);
          assert.equal(st.cached, S, tag);
          const full = await m.prefill(f.ids, 'all');
          const row = (a: Float32Array, s: number) => a.subarray((S0 + s) * V, (S0 + s + 1) * V);
          let rec = 0, vsHf = 0;
          got.forEach((g, s) => {
            rec = Math.max(rec, relErr(g, row(full, s)));
            vsHf = Math.max(vsHf, maxAbs(g, row(hf, s)));
          });
          const tol = dtype === 'float32' ? 1e-4 : 2e-2;
          assert.ok(rec <= tol, `${tag}: decode logits differ from recomputing the sequence by ${rec} (relative) > ${tol}`);
          if (dtype === 'float32' && !sinks) assert.ok(vsHf <= TOL, `${tag}: decode logits differ from transformers by ${vsHf} > ${TOL}`);
          console.log(`${tag}: decode vs recompute ${rec.toExponential(2)} relative${sinks ? '' : `, vs transformers ${vsHf.toExponential(2)}`}`);
        } finally {
          await m.close();
        }
      }
    }
  }
});

test('1 GPU, head dim 6 (no GPU decode kernel): the decode falls back to the host cache, with the reason, and equals recomputing', { skip: skip1, timeout: 300_000 }, async () => {
  const cfg = parseHfConfig({
    model_type: 'mistral', vocab_size: 53, hidden_size: 24, intermediate_size: 40, num_hidden_layers: 2, num_attention_heads: 4,
    num_key_value_heads: 2, head_dim: 6, rms_norm_eps: 1e-5, rope_theta: 10000, max_position_embeddings: 4096, sliding_window: 11, tie_word_embeddings: false,
  });
  const seed = freshSeed();
  const r = rng(seed);
  const ids = Int32Array.from({ length: 45 }, () => Math.floor(r() * cfg.vocabSize));
  const m = await RingModel.create(cfg, initWeights(cfg, seed, 0.2), { backend: 'cuda', dtype: 'float32', sinks: 2 });
  try {
    const got = await decodeTail(m, ids, 6);
    const st = (await m.stats())[0];
    assert.equal(st.deviceDecodes, 0);
    assert.match(st.hostDecode ?? '', /head dim 6/);
    const full = await m.prefill(ids, 'all');
    const S0 = ids.length - got.length;
    got.forEach((g, s) => {
      const e = relErr(g, full.subarray((S0 + s) * cfg.vocabSize, (S0 + s + 1) * cfg.vocabSize));
      assert.ok(e <= 1e-4, `seed ${seed} step ${s}: host-fallback decode differs from recomputing by ${e}`);
    });
  } finally {
    await m.close();
  }
});

const cliDevices = avail.ok ? Math.min(2, avail.devices) : 1;

test(`decode on ${cliDevices} GPU rank(s): the KV cache on the GPUs, partials combined exactly; logits equal recomputing (and the CPU backend in fp32)`, { skip: skip1, timeout: 300_000 }, async () => {
  const seed = freshSeed();
  for (const dtype of ['float32', 'bfloat16']) {
    const out: string[] = [], err: string[] = [];
    const r = await launch({ nproc: cliDevices, command: [process.execPath, rankJs, 'decode', String(seed), dtype], stdout: (l) => out.push(l), stderr: (l) => err.push(l) });
    assert.equal(r.code, 0, `seed ${seed} ${dtype}: ${r.message}\n${err.join('\n')}`);
    const line = out.find((l) => l.includes('RESULT '));
    assert.ok(line, out.join('\n'));
    const res = JSON.parse(line.slice(line.indexOf('RESULT ') + 7)) as { errs: Record<string, number>; deviceDecodes: number[]; cached: number[]; hostDecode: (string | null)[]; want: number };
    assert.deepEqual(res.hostDecode, res.deviceDecodes.map(() => null), `${dtype}: host fallback`);
    assert.deepEqual(res.deviceDecodes, res.deviceDecodes.map(() => res.want), `${dtype}: every rank's decode steps attend on its GPU`);
    assert.equal(res.cached.reduce((a, b) => a + b, 0), 203 + 12, `${dtype}: cached tokens ${res.cached}`);
    const tol = dtype === 'float32' ? 1e-4 : 2e-2;
    for (const [k, e] of Object.entries(res.errs)) assert.ok(e <= tol, `seed ${seed} ${dtype}: decode vs ${k} relative error ${e} > ${tol}`);
    console.log(`seed ${seed} ${dtype} on ${cliDevices} rank(s): decode vs ${Object.entries(res.errs).map(([k, v]) => `${k} ${v.toExponential(2)}`).join(', ')}; cache ${res.cached.join('/')}`);
  }
});

test(`ringattn logits and generate --backend cuda --devices ${cliDevices} equal transformers`, { skip: skip1, timeout: 300_000 }, () => {
  const tmp = mkdtempSync(join(tmpdir(), 'ringattn-gpu-model-'));
  try {
    for (const name of NAMED) {
      const f = fixture(name);
      const tokens = join(tmp, `${name}.json`);
      writeFileSync(tokens, JSON.stringify([...f.ids]));
      const out = join(tmp, `${name}.npy`);
      const p = spawnSync(process.execPath, [cliJs, 'logits', '--backend', 'cuda', '--devices', String(cliDevices), '--layout', 'zigzag', '--model', f.dir, '--tokens', tokens, '--out', out], { encoding: 'utf8' });
      assert.equal(p.status, 0, `${name}: ${p.stdout}\n${p.stderr}`);
      const err = maxAbs(readNpyFloat32(out, 'out').data, f.logits());
      assert.ok(err <= TOL, `${name}: ${cliDevices}-GPU logits differ by ${err}`);
      const newIds = join(tmp, `${name}-new.npy`);
      const gen = spawnSync(process.execPath, [cliJs, 'generate', '--backend', 'cuda', '--devices', String(cliDevices), '--model', f.dir, '--tokens', tokens, '--max-new-tokens', String(f.greedy.new_tokens.length), '--out-tokens', newIds, '--quiet'], { encoding: 'utf8' });
      assert.equal(gen.status, 0, `${name}: ${gen.stdout}\n${gen.stderr}`);
      const buf = readFileSync(newIds);
      const got = [...new Int32Array(buf.buffer.slice(buf.byteOffset + buf.length - 4 * f.greedy.new_tokens.length, buf.byteOffset + buf.length))];
      assert.deepEqual(got, f.greedy.new_tokens, `${name}: ${cliDevices}-GPU greedy tokens differ`);
      console.log(`${name}: ${cliDevices} GPU(s) via the CLI, max |logit - transformers| ${err.toExponential(2)}, greedy identical`);
    }
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
});

test(`training step on ${cliDevices} GPU rank(s): loss, logits and every gradient equal the CPU backend`, { skip: skip1, timeout: 300_000 }, async () => {
  const seed = freshSeed();
  const out: string[] = [], err: string[] = [];
  const r = await launch({ nproc: cliDevices, command: [process.execPath, rankJs, 'grads', String(seed)], stdout: (l) => out.push(l), stderr: (l) => err.push(l) });
  assert.equal(r.code, 0, `seed ${seed}: ${r.message}\n${err.join('\n')}`);
  const line = out.find((l) => l.includes('RESULT '));
  assert.ok(line, out.join('\n'));
  const res = JSON.parse(line.slice(line.indexOf('RESULT ') + 7)) as { errs: Record<string, number> };
  for (const [k, e] of Object.entries(res.errs)) assert.ok(e <= 1e-4, `seed ${seed}: ${k} relative error ${e} > 1e-4`);
  console.log(`seed ${seed}: worst ${Object.entries(res.errs).sort((a, b) => b[1] - a[1]).slice(0, 3).map(([k, v]) => `${k} ${v.toExponential(1)}`).join(', ')}`);
});
