import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseTrace, summarizeTrace } from '../../bench/gpu-trace.js';

// bench/gpu-trace.ts's reading of the -DFWD_TRACE records (kernels/attn_fwd_h.cu, Trace), on a
// made-up trace whose answers are known: a 2 GHz SM clock; per working CTA 2 us until Q lands,
// 1.5 us for the first tile, 1 us for each further tile and 1 us of epilogue (so time = 3.5 us +
// 1 us x tiles), two CTAs on SM 0 with a 0.5 us gap, then one that sees nothing, and one long CTA on SM 1.

function record(sm: number, tiles: number, qt: number, h: number, startNs: number): bigint[] {
  const marks = tiles ? [0, 2000, 3500, 3500 + 1000 * (tiles - 1), 4500 + 1000 * (tiles - 1)] : [0, 0, 0, 0, 300];
  const c = marks.map((ns) => BigInt(2 * (startNs + ns)));  // 2 cycles a ns
  const info = BigInt(sm) | (BigInt(tiles) << 16n) | (BigInt(qt) << 32n) | (BigInt(h) << 48n);
  return [info, ...c, BigInt(startNs), BigInt(startNs + marks[4])];
}

test('the trace summary: phases, the per-tile and per-CTA fit, gaps between CTAs and the idle tail', () => {
  const start = 1_000_000;  // %globaltimer does not start at 0
  const rows = [
    record(0, 10, 3, 0, start),              // 13.5 us
    record(0, 4, 1, 1, start + 14_000),       // after a 0.5 us gap: 7.5 us, ends at 21.5
    record(1, 20, 7, 0, start),              // 23.5 us: the kernel's end
    record(0, 0, 0, 1, start + 22_000),       // sees nothing: 0.3 us after another 0.5 us gap
  ];
  const raw = new BigUint64Array(8 * 6);  // two slots no CTA wrote
  rows.forEach((r, i) => raw.set(r, 8 * i));
  const { records } = parseTrace(raw, 6);
  assert.equal(records.length, 4);
  assert.deepEqual([records[0].sm, records[0].tiles, records[0].qt, records[0].h], [0, 10, 3, 0]);
  const s = summarizeTrace(records);
  assert.equal(s.working, 3);
  assert.equal(s.sms, 2);
  assert.ok(Math.abs(s.ghz - 2) < 1e-12, `clock ${s.ghz}`);
  assert.ok(Math.abs(s.spanUs - 23.5) < 1e-9, `span ${s.spanUs}`);
  assert.ok(Math.abs(s.fit.perTile - 1) < 1e-9 && Math.abs(s.fit.perCta - 3.5) < 1e-9 && Math.abs(s.fit.r2 - 1) < 1e-9, JSON.stringify(s.fit));
  const ph = Object.fromEntries(s.phases.map((p) => [p.name, p]));
  assert.equal(ph['start to Q landed'].med, 2);
  assert.equal(ph['first tile (S, softmax)'].med, 1.5);
  assert.equal(ph['other tiles, per tile'].med, 1);
  assert.equal(ph['epilogue (o, lse stored)'].med, 1);
  assert.equal(ph['CTAs that see nothing'].med, 0.3);
  assert.equal(ph['gap between CTAs on an SM'].med, 0.5);
  // SM 0 ends 1.2 us before the kernel, SM 1 ends it.
  const tail = ph['idle after the last CTA'];
  assert.ok(tail.p10 === 0 && Math.abs(tail.p90! - 1.2) < 1e-9, JSON.stringify(tail));
  // Shares of 2 SMs x 23.5 us: the tiles after the first take (9 + 3 + 19) us.
  assert.ok(Math.abs(ph['other tiles, per tile'].share - 31 / 47) < 1e-9, `${ph['other tiles, per tile'].share}`);
  const whole = s.phases.reduce((a, p) => a + p.share, 0);
  assert.ok(Math.abs(whole - 1) < 1e-9, `the phases, gaps and idle time add up to the SMs' time: ${whole}`);
  assert.throws(() => summarizeTrace([]), /no CTA wrote a record/);
});
