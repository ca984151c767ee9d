import { test } from 'node:test';
import assert from 'node:assert/strict';
import { bf16BitsToF32, f16BitsToF32, f32ToBf16Bits, f32ToF16Bits } from '../../src/core/tensor.js';

test('every half value survives half -> float -> half; rounding is to nearest even', () => {
  for (let h = 0; h < 0x10000; h++) {
    const x = f16BitsToF32(h);
    if (Number.isNaN(x)) {
      assert.ok(Number.isNaN(f16BitsToF32(f32ToF16Bits(x))));
      continue;
    }
    assert.equal(f32ToF16Bits(x), h, `half 0x${h.toString(16)}`);
  }
  assert.equal(f32ToF16Bits(1 + 2 ** -11), f32ToF16Bits(1)); // tie -> even (1.0)
  assert.equal(f32ToF16Bits(1 + 3 * 2 ** -11), f32ToF16Bits(1 + 2 ** -9)); // tie -> even (up)
  assert.equal(f16BitsToF32(f32ToF16Bits(1e6)), Infinity);
  assert.equal(f16BitsToF32(f32ToF16Bits(2 ** -24)), 2 ** -24); // smallest subnormal
});

test('bf16: every value survives; fp32 rounds to nearest even', () => {
  for (let b = 0; b < 0x10000; b += 7) {
    const x = bf16BitsToF32(b);
    if (Number.isNaN(x)) continue;
    assert.equal(f32ToBf16Bits(x), b);
  }
  assert.equal(bf16BitsToF32(f32ToBf16Bits(1 + 2 ** -8)), 1); // tie -> even
  assert.equal(bf16BitsToF32(f32ToBf16Bits(1 + 3 * 2 ** -8)), 1 + 2 ** -6);
  assert.ok(Number.isNaN(bf16BitsToF32(f32ToBf16Bits(NaN))));
});
