import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CudaContext } from '../../src/cuda/context.js';
import { DeviceKvCache } from '../../src/cuda/kv-cache.js';
import { fakeCuda } from '../mock/fakeCuda.js';

// The model's device KV cache (src/cuda/kv-cache.ts) over the fake driver (fp32: the copies run
// on the host; the bf16 conversion kernel runs only on a GPU, in model.gpu.test.ts).

test('device KV cache: appends prefill rows and decoded tokens, doubles when full, keeps every row', () => {
  const drv = fakeCuda();
  const ctx = CudaContext.open(0, drv);
  const row = 6;
  const kv = new DeviceKvCache({ ctx, syncStream: () => ctx.sync() }, 'float32', row, 5);
  const k = Float32Array.from({ length: 40 * row }, (_, i) => i + 0.5);
  const v = Float32Array.from({ length: 40 * row }, (_, i) => -i);
  const pos = Int32Array.from({ length: 40 }, (_, i) => 3 * i);
  const src = ctx.alloc(2 * k.byteLength);
  ctx.upload(src, k);
  ctx.upload(src, v, k.byteLength);
  // A prompt shard of 4 rows, then tokens one at a time past the capacity of 5.
  kv.append(src.ptr, src.ptr + k.byteLength, pos.subarray(0, 4));
  assert.equal(kv.capacity, 5);
  for (let t = 4; t < 40; t++) kv.append(src.ptr + t * row * 4, src.ptr + k.byteLength + t * row * 4, pos.subarray(t, t + 1));
  assert.equal(kv.n, 40);
  assert.throws(() => kv.append(src.ptr, src.ptr, Int32Array.of(3 * 39)), /pos: expected positions ascending after 117, got 117/);
  assert.equal(kv.capacity, 64); // 5 -> 16 (at least 16) -> 32 -> 64
  const host = kv.toHost();
  assert.deepEqual([...host.k.subarray(0, 40 * row)], [...k]);
  assert.deepEqual([...host.v.subarray(0, 40 * row)], [...v]);
  assert.deepEqual([...host.pos.subarray(0, 40)], [...pos]);
  const view = kv.view();
  assert.deepEqual({ n: view.n, sorted: view.sorted }, { n: 40, sorted: true });
  assert.equal(kv.bytes, kv.capacity * (2 * row * 4 + 4));
  kv.dispose();
  ctx.free(src);
  assert.equal(drv.allocated(), 0, 'every buffer freed, the replaced ones included');
  ctx.dispose();
});
