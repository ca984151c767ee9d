import { test } from 'node:test';
import assert from 'node:assert/strict';
import { normRelErr, sampleRows, verifyGradRows, verifyKeyGradRows, verifyRows, type VerifyInput } from '../../src/core/verify.js';
import { refBackward, refForward, type RefMask } from '../ref/attention64.js';
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

/**
 * The gradient spot checks behind `demo --backward`: the float64 reference's gradients (rounded to
 * fp32) pass at fp32 precision, with the key rows' sums taking the reference's own LSE and output;
 * a sampled row of dQ, dK or dV off by 1e-3 fails.
 */
test('verifyGradRows and verifyKeyGradRows pass correct gradients and flag a corrupted row', () => {
  const seed = freshSeed();
  const r = rng(seed);
  const cases: { S: number; H: number; Hk: number; D: number; m: RefMask }[] = [
    { S: 90, H: 4, Hk: 2, D: 16, m: { causal: true } },
    { S: 120, H: 6, Hk: 3, D: 8, m: { causal: true, window: 17, sinks: 3 } },
    { S: 64, H: 2, Hk: 1, D: 32, m: { window: 9 } },
  ];
  for (const { S, H, Hk, D, m } of cases) {
    const what = `seed ${seed} S=${S} H=${H} Hk=${Hk} D=${D} ${JSON.stringify(m)}`;
    const q = randn(S * H * D, r), k = randn(S * Hk * D, r), v = randn(S * Hk * D, r), dO = randn(S * H * D, r);
    const scale = 1 / Math.sqrt(D);
    const g = refBackward(q, k, v, dO, S, H, Hk, D, m, scale), fwd = g;
    const f32 = (x: ArrayLike<number>) => Float32Array.from(x);
    const base = { q, k, v, S, H, Hk, D, scale, mask: { ...m, segments: undefined }, dO };
    const rows = sampleRows(S, 8, seed);
    const dq = f32(g.dq), dk = f32(g.dk), dv = f32(g.dv), oAll = f32(fwd.o), lseAll = f32(fwd.lse);
    assert.ok(verifyGradRows({ ...base, out: oAll, lse: lseAll, dq }, rows).normRelErr < 1e-6, `${what}: correct dQ`);
    const good = verifyKeyGradRows({ ...base, dk, dv, oAll, lseAll }, rows);
    assert.ok(good.dkNormRelErr < 1e-5 && good.dvNormRelErr < 1e-6, `${what}: correct dK/dV judged ${good.dkNormRelErr} / ${good.dvNormRelErr}`);
    const row = rows[1 + Math.floor(r() * 6)];
    const bump = (x: Float32Array, heads: number) => {
      const y = Float32Array.from(x);
      y[(row * heads + Math.floor(r() * heads)) * D + Math.floor(r() * D)] += 1e-3 * Math.max(...Array.from(x, Math.abs));
      return y;
    };
    assert.ok(verifyGradRows({ ...base, out: oAll, lse: lseAll, dq: bump(dq, H) }, rows).normRelErr > 1e-4, `${what}: dQ off at row ${row}`);
    assert.ok(verifyKeyGradRows({ ...base, dk: bump(dk, Hk), dv, oAll, lseAll }, rows).dkNormRelErr > 1e-4, `${what}: dK off at row ${row}`);
    assert.ok(verifyKeyGradRows({ ...base, dk, dv: bump(dv, Hk), oAll, lseAll }, rows).dvNormRelErr > 1e-4, `${what}: dV off at row ${row}`);
    assert.equal(normRelErr(dk, dk), 0);
  }
});
