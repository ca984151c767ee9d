import { test } from 'node:test';
import assert from 'node:assert/strict';
import { sampleRows, verifyRows, type VerifyInput } from '../../src/core/verify.js';
import { refForward, type RefMask } from '../ref/attention64.js';
import { freshSeed, randn, rng } from '../helpers/check.js';

/**
 * The spot check behind `attend --verify` and `demo` must pass a correct result and catch a
 * wrong one: the float64 reference (independent of src/) rounded to fp32 passes at fp32
 * precision; one corrupted output element or LSE in a sampled row fails it.
 */
test('verifyRows passes a correct result and flags a corrupted output or LSE', () => {
  const seed = freshSeed();
  const r = rng(seed);
  const cases: { S: number; H: number; Hk: number; D: number; m: RefMask }[] = [
    { S: 97, H: 4, Hk: 2, D: 16, m: { causal: true } },
    { S: 130, H: 6, Hk: 3, D: 8, m: { causal: true, window: 17, sinks: 3 } },
    { S: 64, H: 2, Hk: 1, D: 32, m: { window: 9 } },
    { S: 80, H: 4, Hk: 4, D: 16, m: { causal: true, segments: Int32Array.from({ length: 80 }, (_, i) => (i < 23 ? 0 : i < 61 ? 1 : 2)) } },
  ];
  for (const { S, H, Hk, D, m } of cases) {
    const what = `seed ${seed} S=${S} H=${H} Hk=${Hk} D=${D} ${JSON.stringify({ ...m, segments: m.segments ? 'yes' : undefined })}`;
    const q = randn(S * H * D, r), k = randn(S * Hk * D, r), v = randn(S * Hk * D, r);
    const scale = 1 / Math.sqrt(D);
    const ref = refForward(q, k, v, S, H, Hk, D, m, scale);
    const inp: VerifyInput = { q, k, v, out: Float32Array.from(ref.o), lse: Float32Array.from(ref.lse), S, H, Hk, D, scale, mask: { ...m, segments: m.segments as Int32Array | undefined } };
    const rows = sampleRows(S, 12, seed);
    assert.ok(rows.includes(0) && rows.includes(S - 1) && rows.length === 12, what);
    const good = verifyRows(inp, rows);
    assert.equal(good.rows, 12, what);
    assert.ok(good.maxRelErr < 1e-6, `${what}: correct output judged ${good.maxRelErr}`);
    assert.ok(good.maxLseErr < 1e-5, `${what}: correct LSE judged ${good.maxLseErr}`);
    assert.ok(good.emptyRowsOk, what);

    const row = rows[1 + Math.floor(r() * 10)], h = Math.floor(r() * H), d = Math.floor(r() * D);
    const badOut = Float32Array.from(inp.out);
    badOut[(row * H + h) * D + d] += 1e-3;
    const b1 = verifyRows({ ...inp, out: badOut }, rows);
    assert.ok(b1.maxRelErr > 1e-4, `${what}: output off by 1e-3 at row ${row} judged ${b1.maxRelErr}`);
    const badLse = Float32Array.from(inp.lse);
    badLse[row * H + h] += 1e-3;
    assert.ok(verifyRows({ ...inp, lse: badLse }, rows).maxLseErr > 5e-4, `${what}: LSE off by 1e-3 at row ${row}`);
    // A row outside the sample is not looked at (it is a spot check, not a proof).
    const other = Array.from({ length: S }, (_, i) => i).find((i) => !rows.includes(i))!;
    const offSample = Float32Array.from(inp.out);
    offSample[(other * H + h) * D + d] += 1;
    assert.ok(verifyRows({ ...inp, out: offSample }, rows).maxRelErr < 1e-6, what);
  }
});
