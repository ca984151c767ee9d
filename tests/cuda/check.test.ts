import { test } from 'node:test';
import assert from 'node:assert/strict';
import { check, cudaAvailable, describeFromTable } from '../../src/cuda/check.js';
import { BackendError } from '../../src/core/errors.js';
import { fakeCuda } from '../mock/fakeCuda.js';
import { withEnv } from '../helpers/check.js';

// No GPU needed: the error paths and the "no driver" message.

test('check() passes on 0 and names the call and the code otherwise', () => {
  check('cuInit', 0);
  assert.throws(
    () => check('cuMemAlloc_v2(1024 bytes)', 2),
    (e: unknown) => e instanceof BackendError && /cuMemAlloc_v2\(1024 bytes\) failed: CUDA_ERROR_OUT_OF_MEMORY \(out of memory\)/.test(e.message),
  );
  assert.throws(() => check('cuLaunchKernel', 123456), /cuLaunchKernel failed: CUresult 123456 \[code 123456\]/);
  assert.equal(describeFromTable(700), 'CUDA_ERROR_ILLEGAL_ADDRESS (an illegal memory access was encountered)');
});

test('cudaAvailable: no driver library gives one clear line, never a throw', () => {
  withEnv({ RINGATTN_LIBCUDA: '/nonexistent/libcuda.so.1' }, () => {
    const r = cudaAvailable();
    assert.equal(r.ok, false);
    if (!r.ok) {
      assert.match(r.reason, /^CUDA unavailable: CUDA driver library not found: RINGATTN_LIBCUDA=\/nonexistent\/libcuda.so.1 could not be loaded/);
      assert.ok(!r.reason.includes('\n'), 'one line');
    }
  });
});

test('cudaAvailable: a driver without a device names the failing call and the code', () => {
  const r = cudaAvailable(fakeCuda({ fail: { cuInit: 100 } }));
  assert.equal(r.ok, false);
  if (!r.ok) assert.match(r.reason, /cuInit failed with CUDA_ERROR_NO_DEVICE \(no CUDA-capable device is detected\)/);
  const none = cudaAvailable(fakeCuda({ devices: 0 }));
  assert.equal(none.ok, false);
  if (!none.ok) assert.match(none.reason, /sees no GPU/);
  const err = cudaAvailable({ error: 'CUDA driver library not found: none of libcuda.so.1 could be loaded' });
  assert.equal(err.ok, false);
});

test('cudaAvailable: a working (fake) driver reports devices, name and compute capability', () => {
  const r = cudaAvailable(fakeCuda({ devices: 2, name: 'Fake H100', computeCapability: [9, 0] }));
  assert.deepEqual(r.ok && { devices: r.devices, name: r.name, cc: r.computeCapability }, { devices: 2, name: 'Fake H100', cc: [9, 0] });
});
