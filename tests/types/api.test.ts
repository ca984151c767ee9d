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
});
