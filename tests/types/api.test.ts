import { test } from 'node:test';
import assert from 'node:assert/strict';
// Compiling this file checks the public surface; running it checks the exports exist.
import * as api from '../../src/index.js';
import type { AttentionResult, RingAttentionOptions, F32Tensor, Plan } from '../../src/index.js';

test('the public API exports its functions with their documented shapes', async () => {
  for (const name of ['ringAttention', 'attention', 'plan', 'shardPositions', 'mergePartial', 'readNpy', 'writeNpy', 'renderReport', 'getKernel'] as const) {
    assert.equal(typeof api[name], 'function', name);
  }
  const q: F32Tensor = api.tensor([5, 2, 8], new Float32Array(80).fill(0.1));
  const k: F32Tensor = api.tensor([5, 1, 8], new Float32Array(40).fill(0.2));
  const opts: RingAttentionOptions = { devices: 2, layout: 'striped', causal: true };
  const res: AttentionResult = await api.ringAttention(q, k, k, opts);
  assert.deepEqual(res.out.shape, [5, 2, 8]);
  assert.deepEqual(res.lse.shape, [5, 2]);
  const p: Plan = api.plan({ seq: 1024, heads: 8, kvHeads: 2, headDim: 64, devices: 2 });
  assert.equal(p.tokensPerDevice, 512);
  await assert.rejects(api.ringAttention(q, k, k, { devices: 257 }), /devices: expected a positive integer up to 256 \(CPU ranks of one ring\), got 257/);
  await assert.rejects(api.ringAttention(q, k, k, { devices: 1.5 }), /devices: expected a positive integer up to 256/);
  await assert.rejects(api.runCpuRing(Array.from({ length: 257 }, () => ({}) as never), {} as never, {} as never), /shards: expected a positive integer up to 256/);
  await assert.rejects(api.RingModel.create({} as never, {} as never, { devices: 300 }), /devices: expected a positive integer up to 256/);
});

test('the README\'s other library names resolve: RingModel and decodeAttention from the package, the GPU APIs from ringattn/cuda (loading it needs no GPU)', async () => {
  assert.equal(typeof api.RingModel, 'function');
  assert.equal(typeof api.RingModel.load, 'function');
  assert.equal(typeof api.decodeAttention, 'function');
  const cuda = await import('ringattn/cuda');
  // Importing it loads no NVIDIA library (a CPU user's process stays clean).
  if (process.platform === 'linux') {
    const { spawnSync } = await import('node:child_process');
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', "await import('ringattn/cuda'); process.stdout.write(require('fs').readFileSync('/proc/self/maps', 'utf8'))".replace("require('fs')", "(await import('node:fs'))")], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /node/); // (the maps were read)
    assert.doesNotMatch(r.stdout, /libcuda|libnccl|libnvrtc/);
  }
  for (const name of ['CudaDecode', 'decodeAttentionCuda', 'decodeCombineRanks', 'attentionCuda', 'ringAttentionCuda', 'rankMain', 'cudaAvailable'] as const) {
    assert.equal(typeof cuda[name], 'function', name);
  }
  // decodeAttention as documented: one token of 2 heads (1 KV head) against a 3-row cache.
  const r = api.decodeAttention({
    q: new Float32Array(2 * 4).fill(0.5), qPos: Int32Array.of(2), H: 2, Hk: 1, D: 4, causal: true,
    caches: [{ k: new Float32Array(12).fill(0.1), v: Float32Array.from({ length: 12 }, (_, i) => i), pos: Int32Array.of(0, 1, 2) }],
  });
  // Equal keys: the output is the mean of the three value rows, (0 + 4 + 8) / 3 + d for column d.
  for (let h = 0; h < 2; h++) for (let d = 0; d < 4; d++) assert.ok(Math.abs(r.o[h * 4 + d] - (4 + d)) < 1e-5, `o[${h}][${d}]`);
  assert.ok(Math.abs(r.lse[0] - (Math.log(3) + 0.5 * 0.1 * 4 / 2)) < 1e-5, 'lse');
});
