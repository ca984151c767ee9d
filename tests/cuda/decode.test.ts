import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { CudaContext } from '../../src/cuda/context.js';
import { CudaDecode } from '../../src/cuda/decode.js';
import { withEnv } from '../helpers/check.js';

// The decode kernel a shape gets (host side, no GPU): CudaDecode.kernelName reads only the
// device's compute capability.

test('decode kernel choice: the register-staged kernel at D=64 and 128 (<= 8 rows a KV head, 16-bit, sm_90+) by default, never with RINGATTN_DECODE_LDG=0', () => {
  const on = (cc: [number, number]) => new CudaDecode({ computeCapability: cc } as unknown as CudaContext);
  const h100 = on([9, 0]), a100 = on([8, 0]);
  withEnv({ RINGATTN_DECODE_LDG: undefined }, () => {
    assert.equal(h100.kernelName('bfloat16', 128, 1, 4), 'cuda-decode/ldg-d128/bfloat16');
    assert.equal(h100.kernelName('float16', 128, 2, 4), 'cuda-decode/ldg-d128/float16');
    assert.equal(h100.kernelName('bfloat16', 128, 3, 4), 'cuda-decode/mma-d128-m1/bfloat16'); // 12 rows
    assert.equal(h100.kernelName('bfloat16', 64, 1, 4), 'cuda-decode/ldg-d64/bfloat16');
    assert.equal(h100.kernelName('bfloat16', 64, 1, 8), 'cuda-decode/ldg-d64/bfloat16');
    assert.equal(h100.kernelName('float16', 128, 1, 8), 'cuda-decode/ldg-d128/float16'); // 8 rows: the most it takes
    assert.equal(h100.kernelName('bfloat16', 64, 1, 16), 'cuda-decode/mma-d64-m1/bfloat16'); // 16 rows
    assert.equal(a100.kernelName('bfloat16', 64, 1, 4), 'cuda-decode/mma-d64-m1/bfloat16'); // sm_80: untried there
    assert.equal(a100.kernelName('bfloat16', 128, 1, 4), 'cuda-decode/mma-d128-m1/bfloat16');
    assert.equal(h100.kernelName('float32', 128, 1, 4), 'cuda-decode/generic/float32');
    assert.equal(h100.kernelName('bfloat16', 96, 1, 4), 'cuda-decode/generic/bfloat16');
  });
  withEnv({ RINGATTN_DECODE_LDG: '0' }, () => {
    assert.equal(h100.kernelName('bfloat16', 128, 1, 4), 'cuda-decode/mma-d128-m1/bfloat16');
    assert.equal(h100.kernelName('bfloat16', 64, 1, 4), 'cuda-decode/mma-d64-m1/bfloat16');
  });
});
