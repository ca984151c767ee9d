import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { attention, ringAttention, QUERY_CHUNK, type AttentionOptions } from '../../src/attention.js';
import { LAYOUTS } from '../../src/core/layout.js';
import type { F32Tensor } from '../../src/core/tensor.js';
import { InputError, RankError } from '../../src/core/errors.js';
import { refForward, refBackward } from '../ref/attention64.js';
import { TOL } from '../ref/tolerances.js';
import { assertClose, assertCloseLse, freshSeed, randn, rng } from '../helpers/check.js';

const t3 = (S: number, H: number, D: number, r: () => number, scale = 1): F32Tensor => ({ dtype: 'float32', shape: [S, H, D], data: randn(S * H * D, r, scale) });

const segmentsOf = (S: number) => Int32Array.from({ length: S }, (_, i) => (i < S / 3 ? 0 : i < (2 * S) / 3 ? 1 : 2));

const MASKS: [string, (S: number) => AttentionOptions][] = [
  ['full', () => ({})],
  ['causal', () => ({ causal: true })],
  ['causal window', () => ({ causal: true, window: 23 })],
  ['window (bidirectional)', () => ({ window: 17 })],
  ['causal window sinks', () => ({ causal: true, window: 19, sinks: 4 })],
  // Sink queries see the keys after them inside the window: on a ring their rank must still
  // compute the blocks holding those keys, also where every row of the rank is a sink (here the
  // first third of the sequence: whole shards at P >= 3).
  ['window sinks (bidirectional)', (S) => ({ window: 13, sinks: Math.ceil(S / 3) })],
  ['causal segments', (S) => ({ causal: true, segments: segmentsOf(S) })],
  ['segments window', (S) => ({ window: 11, segments: segmentsOf(S) })],
];

/** Ring output, LSE and gradients equal single-device blockwise attention (both fp32). */
async function compare(S: number, H: number, Hk: number, D: number, P: number, layout: (typeof LAYOUTS)[number], mask: AttentionOptions, seed: number, grads: boolean): Promise<void> {
  const r = rng(seed);
  const q = t3(S, H, D, r);
  const k = t3(S, Hk, D, r);
  const v = t3(S, Hk, D, r);
  const gradOut = grads ? t3(S, H, D, r) : undefined;
  const what = `seed ${seed} S=${S} H=${H}/${Hk} D=${D} P=${P} ${layout} ${JSON.stringify({ ...mask, segments: !!mask.segments })}`;
  const one = await attention(q, k, v, { ...mask, gradOut, threads: 1 });
  const ring = await ringAttention(q, k, v, { ...mask, gradOut, devices: P, layout });
  assertClose(ring.out.data, one.out.data, TOL.ringVsSingle, `${what} out`);
  assertClose(ring.lse.data, one.lse.data, TOL.ringVsSingle, `${what} lse`);
  if (grads) {
    assertClose(ring.dq!.data, one.dq!.data, TOL.ringVsSingle, `${what} dq`);
    assertClose(ring.dk!.data, one.dk!.data, TOL.ringVsSingle, `${what} dk`);
    assertClose(ring.dv!.data, one.dv!.data, TOL.ringVsSingle, `${what} dv`);
  }
}

test('ring equals single-device for P in {1,2,3,4,7}, every layout and mask, forward and backward', async () => {
  const seed = freshSeed();
  for (const P of [1, 2, 3, 4, 7])
    for (const layout of LAYOUTS)
      for (const [, m] of MASKS) {
        const S = 97 + P; // never divisible by P or 2P for these P
        await compare(S, 4, 2, 16, P, layout, m(S), seed + P, true);
      }
});

test('ring with GQA/MQA, head dims 64 and 128, ragged shards', async () => {
  const seed = freshSeed();
  await compare(131, 8, 1, 64, 3, 'zigzag', { causal: true }, seed, true);
  await compare(61, 6, 3, 128, 4, 'striped', { causal: true, window: 9, sinks: 2 }, seed + 1, true);
  await compare(5, 2, 2, 16, 7, 'zigzag', { causal: true }, seed + 2, true); // ranks with no tokens
  // Ranks with no tokens still take part in the sink keys' gather and compute on them (no rows).
  await compare(3, 2, 1, 8, 4, 'contiguous', { causal: true, window: 2, sinks: 1 }, seed + 3, true);
  await compare(5, 2, 2, 16, 7, 'zigzag', { window: 2, sinks: 2 }, seed + 4, true);
  await compare(5, 2, 2, 16, 7, 'contiguous', { window: 3, sinks: 2, segments: Int32Array.of(0, 0, 0, 1, 1) }, seed + 5, true);
});

/** Random document boundaries: 1-4 segments of random lengths (some possibly a single token). */
function randomSegments(S: number, r: () => number): Int32Array {
  const cuts = new Set<number>();
  const n = Math.floor(r() * 4);
  for (let i = 0; i < n; i++) cuts.add(1 + Math.floor(r() * (S - 1)));
  const seg = new Int32Array(S);
  let id = 0;
  for (let i = 0; i < S; i++) {
    if (cuts.has(i)) id++;
    seg[i] = id;
  }
  return seg;
}

test('ring results equal the float64 reference: random masks, scales, segment boundaries, ring sizes, layouts, batches, both kernels', async () => {
  const seed = freshSeed();
  const r = rng(seed);
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(r() * xs.length)];
  for (let c = 0; c < 10; c++) {
    const S = 20 + Math.floor(r() * 90), [H, Hk] = pick([[4, 2], [3, 1], [2, 2], [6, 3]] as const), D = pick([8, 16, 32]);
    const B = c % 4 === 3 ? 2 : 1, P = pick([1, 2, 3, 5]), layout = pick(LAYOUTS), kernel = c % 2 === 0 ? 'auto' : 'ts';
    const causal = r() < 0.6, window = r() < 0.5 ? 1 + Math.floor(r() * 30) : undefined;
    const sinks = window !== undefined && r() < 0.6 ? Math.floor(r() * 5) : undefined;
    const segments = r() < 0.4 ? randomSegments(S, r) : undefined;
    const scale = r() < 0.5 ? 0.05 + r() * 0.5 : undefined;
    const mask = { causal, window, sinks, segments };
    const what = `seed ${seed} case ${c}: B=${B} S=${S} H=${H}/${Hk} D=${D} P=${P} ${layout} ${kernel} scale=${scale} ${JSON.stringify({ ...mask, segments: segments ? new Set(segments).size : undefined })}`;
    const lead = B === 2 ? [B] : [];
    const mk = (h: number): F32Tensor => ({ dtype: 'float32', shape: [...lead, S, h, D], data: randn(B * S * h * D, r) });
    const q = mk(H), k = mk(Hk), v = mk(Hk), dO = mk(H);
    const ring = await ringAttention(q, k, v, { ...mask, scale, gradOut: dO, devices: P, layout, kernel });
    if (kernel === 'ts') assert.equal(ring.stats.kernel, 'ts', what);
    assert.deepEqual(ring.out.shape, q.shape, what);
    const at = (x: Float32Array, b: number, h: number) => x.subarray(b * S * h * D, (b + 1) * S * h * D);
    for (let b = 0; b < B; b++) {
      const sc = scale ?? 1 / Math.sqrt(D);
      const g = refBackward(at(q.data, b, H), at(k.data, b, Hk), at(v.data, b, Hk), at(dO.data, b, H), S, H, Hk, D, mask, sc), ref = g;
      const w = `${what} batch ${b}`;
      assertClose(at(ring.out.data, b, H), ref.o, TOL.fp32Forward, `${w} out`);
      assertCloseLse(ring.lse.data.subarray(b * S * H, (b + 1) * S * H), ref.lse, TOL.fp32Forward, `${w} lse`);
      assertClose(at(ring.dq!.data, b, H), g.dq, TOL.fp32Grad, `${w} dq`);
      assertClose(at(ring.dk!.data, b, Hk), g.dk, TOL.fp32Grad, `${w} dk`);
      assertClose(at(ring.dv!.data, b, Hk), g.dv, TOL.fp32Grad, `${w} dv`);
    }
  }
});

test('onProgress: (0, total) when the ring starts, then one call a computed step up to (total, total)', async () => {
  const r = rng(freshSeed());
  const q = t3(40, 2, 8, r), k = t3(40, 1, 8, r), v = t3(40, 1, 8, r);
  for (const gradOut of [undefined, t3(40, 2, 8, r)]) {
    const calls: [number, number][] = [];
    await ringAttention(q, k, v, { causal: true, devices: 3, layout: 'zigzag', gradOut, onProgress: (d, t) => calls.push([d, t]) });
    const total = calls[0][1];
    assert.deepEqual(calls[0], [0, total], 'the first call, before any step');
    assert.deepEqual(calls.map(([d]) => d), Array.from({ length: total + 1 }, (_, i) => i), 'one call a step, in order');
    assert.ok(calls.every(([, t]) => t === total));
  }
});

test('single-device attention in query chunks (S past QUERY_CHUNK): a batch of two, packed documents, causal window + sinks, forward and backward vs float64; progress a chunk at a time', async () => {
  const seed = freshSeed();
  const r = rng(seed);
  const S = QUERY_CHUNK + 701, H = 2, Hk = 1, D = 8;
  const mk = (h: number): F32Tensor => ({ dtype: 'float32', shape: [2, S, h, D], data: randn(2 * S * h * D, r) });
  const q = mk(H), k = mk(Hk), v = mk(Hk), dO = mk(H);
  const segments = randomSegments(S, r);
  const mask = { causal: true, window: 900, sinks: 3, segments };
  const calls: number[] = [];
  const res = await attention(q, k, v, { ...mask, gradOut: dO, onProgress: (d, t) => calls.push(d / t) });
  assert.deepEqual(calls, [0, 1, 2, 3, 4, 5, 6, 7, 8].map((i) => i / 8), 'two sequences x two chunks x forward and backward');
  const at = (x: Float32Array, b: number, h: number) => x.subarray(b * S * h * D, (b + 1) * S * h * D);
  for (let b = 0; b < 2; b++) {
    const g = refBackward(at(q.data, b, H), at(k.data, b, Hk), at(v.data, b, Hk), at(dO.data, b, H), S, H, Hk, D, mask, 1 / Math.sqrt(D));
    const w = `seed ${seed} batch ${b}`;
    assertClose(at(res.out.data, b, H), g.o, TOL.fp32Forward, `${w} out`);
    assertCloseLse(res.lse.data.subarray(b * S * H, (b + 1) * S * H), g.lse, TOL.fp32Forward, `${w} lse`);
    assertClose(at(res.dq!.data, b, H), g.dq, TOL.fp32Grad, `${w} dq`);
    assertClose(at(res.dk!.data, b, Hk), g.dk, TOL.fp32Grad, `${w} dk`);
    assertClose(at(res.dv!.data, b, Hk), g.dv, TOL.fp32Grad, `${w} dv`);
  }
});

test('transfers follow the schedule: window reach, causal contiguous, bytes per step', async () => {
  const r = rng(freshSeed());
  const [S, H, Hk, D, P] = [400, 2, 2, 16, 8];
  const q = t3(S, H, D, r), k = t3(S, Hk, D, r), v = t3(S, Hk, D, r);
  const win = await ringAttention(q, k, v, { causal: true, window: 60, devices: P, layout: 'contiguous' });
  const transfers = win.stats.events.filter((e) => e.kind === 'transfer');
  // 50 tokens per rank, window 60: block b is seen by ranks b, b+1, b+2 -> 2 hops (fewer at the end).
  assert.equal(transfers.length, [2, 2, 2, 2, 2, 2, 1, 0].reduce((a, b) => a + b));
  const row = (50 * Hk * D * 4) * 2 + 50 * 4 + 64; // K + V + positions + header
  for (const t of transfers) assert.equal(t.bytes, row);
  const causal = await ringAttention(q, k, v, { causal: true, devices: P, layout: 'contiguous' });
  assert.equal(causal.stats.events.filter((e) => e.kind === 'transfer').length, (P * (P - 1)) / 2);
  const full = await ringAttention(q, k, v, { devices: P, layout: 'zigzag' });
  assert.equal(full.stats.events.filter((e) => e.kind === 'transfer').length, P * (P - 1));
  assert.equal(full.stats.events.filter((e) => e.kind === 'compute').length, P * P);
});

test('sink keys reach every rank once; the first shard travels only as far as the window', async () => {
  const r = rng(freshSeed());
  const [S, H, Hk, D, P] = [400, 2, 1, 16, 8];
  const q = t3(S, H, D, r), k = t3(S, Hk, D, r), v = t3(S, Hk, D, r), dO = t3(S, H, D, r);
  const mask = { causal: true, window: 60, sinks: 4 };
  const res = await ringAttention(q, k, v, { ...mask, gradOut: dO, devices: P, layout: 'contiguous' });
  const one = await attention(q, k, v, { ...mask, gradOut: dO, threads: 1 });
  for (const key of ['out', 'lse', 'dq', 'dk', 'dv'] as const) assertClose(res[key]!.data, one[key]!.data, TOL.ringVsSingle, key);
  // Ring hops as without sinks: block b is needed 2 hops on (1 for block 6, none for block 7).
  assert.equal(res.stats.schedule.lastStep.join(','), '2,2,2,2,2,2,1,0');
  const gathers = res.stats.events.filter((e) => e.kind === 'transfer' && e.phase === 'forward' && e.bytes === 4 * 4 * (2 * Hk * D + 2));
  assert.equal(gathers.length, P - 1, 'every rank but the owner receives the 4 sink rows once');
});

test('a rank that throws ends the run with its error, quickly, for every rank position', async () => {
  const r = rng(1);
  const [S, H, D] = [200, 2, 16];
  const q = t3(S, H, D, r), k = t3(S, H, D, r), v = t3(S, H, D, r);
  for (const [rank, step, mode] of [[0, 0, 'throw'], [2, 1, 'throw'], [3, 3, 'exit'], [1, 2, 'exit']] as const) {
    const t0 = Date.now();
    await assert.rejects(
      ringAttention(q, k, v, { causal: true, devices: 4, fail: { rank, step, mode } }),
      (e: unknown) => e instanceof RankError && e.rank === rank && (mode === 'throw' ? /injected failure at forward step/.test(e.message) : /exited with code 3/.test(e.message)),
    );
    assert.ok(Date.now() - t0 < 5000, 'stopped promptly');
  }
});

test('a rank that fails in the backward (while dK/dV travel) ends the run with its error, quickly', async () => {
  const r = rng(freshSeed());
  const [S, H, D] = [200, 2, 16];
  const q = t3(S, H, D, r), k = t3(S, H, D, r), v = t3(S, H, D, r), dO = t3(S, H, D, r);
  for (const [rank, step, mode, layout] of [[1, 0, 'throw', 'zigzag'], [3, 2, 'throw', 'contiguous'], [0, 3, 'exit', 'zigzag'], [2, 1, 'exit', 'striped']] as const) {
    const t0 = Date.now();
    await assert.rejects(
      ringAttention(q, k, v, { causal: rank !== 2, gradOut: dO, devices: 4, layout, fail: { rank, step, mode, phase: 'backward' } }),
      (e: unknown) => e instanceof RankError && e.rank === rank && (mode === 'throw' ? /injected failure at backward step/.test(e.message) : /exited with code 3/.test(e.message)),
    );
    assert.ok(Date.now() - t0 < 5000, 'stopped promptly');
  }
});

test('a process that exits right after a rank failure exits cleanly (no worker ended inside a native call)', () => {
  // Each run in a fresh process that catches the RankError and returns: the process must end on
  // its own, status 0, without a heap-corruption abort or a fatal error.
  const script = `
    import { ringAttention } from ${JSON.stringify(new URL('../../src/attention.js', import.meta.url).href)};
    const [rank, step, mode, phase] = process.argv.slice(1);
    const S = 240, H = 2, D = 16;
    let x = ${freshSeed()};
    const t = () => ({ dtype: 'float32', shape: [S, H, D], data: Float32Array.from({ length: S * H * D }, () => ((x = (Math.imul(x, 1664525) + 1013904223) >>> 0) / 2 ** 32 - 0.5)) });
    try {
      await ringAttention(t(), t(), t(), { causal: true, gradOut: t(), devices: 4, fail: { rank: +rank, step: +step, mode, phase } });
      console.log('no error');
    } catch (e) {
      console.log(e.name, e.message);
    }`;
  for (const args of [['1', '0', 'throw', 'backward'], ['0', '3', 'exit', 'backward'], ['2', '1', 'exit', 'forward'], ['3', '2', 'throw', 'backward']]) {
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', script, ...args], { encoding: 'utf8', timeout: 60_000 });
    assert.equal(r.status, 0, `${args.join(' ')}: status ${r.status} signal ${r.signal}\n${r.stderr}`);
    // the injected failure itself (not, say, workers that could not start)
    const expected = args[2] === 'throw' ? `rank ${args[0]}: injected failure at ${args[3]} step ${args[1]}` : `rank ${args[0]}: worker exited with code 3`;
    assert.equal(r.stdout.trim(), `RankError ${expected}`, args.join(' '));
    assert.doesNotMatch(r.stderr, /corrupted|FATAL|Aborted/, args.join(' '));
  }
});


test('warm workers: later runs of a ring size reuse its workers, exactly, with events from the call; a failed run leaves them usable; closeIdleRingWorkers ends them', async () => {
  const { closeIdleRingWorkers, WARM_MAX_BYTES } = await import('../../src/cpu/ring.js');
  await closeIdleRingWorkers();
  const seed = freshSeed();
  const r = rng(seed);
  // Different shapes, masks, passes and batches one after another on the same 3 workers.
  const runs: [number, number, number, number, AttentionOptions, boolean, number][] = [
    [50, 4, 2, 16, { causal: true }, false, 1],
    [77, 2, 1, 32, { causal: true, window: 9, sinks: 2 }, true, 1],
    [40, 6, 3, 8, { window: 7 }, true, 2],
    [61, 4, 4, 16, { causal: true, segments: segmentsOf(61) }, true, 1],
  ];
  for (const [i, [S, H, Hk, D, mask, grads, B]] of runs.entries()) {
    const what = `seed ${seed} run ${i}: B=${B} S=${S} H=${H}/${Hk} D=${D} ${JSON.stringify({ ...mask, segments: !!mask.segments })}`;
    const lead = B > 1 ? [B] : [];
    const mk = (h: number): F32Tensor => ({ dtype: 'float32', shape: [...lead, S, h, D], data: randn(B * S * h * D, r) });
    const q = mk(H), k = mk(Hk), v = mk(Hk), dO = grads ? mk(H) : undefined;
    const ring = await ringAttention(q, k, v, { ...mask, gradOut: dO, devices: 3, layout: 'zigzag' });
    assert.equal(ring.stats.warm, i > 0, `${what}: warm`);
    // the events of this call only, timed from it
    const starts = ring.stats.events.map((e) => e.start), ends = ring.stats.events.map((e) => e.end);
    assert.ok(ring.stats.events.length > 0 && Math.min(...starts) >= 0 && Math.max(...ends) <= ring.stats.wallMs + 1, `${what}: event times ${Math.min(...starts)}..${Math.max(...ends)} ms, wall ${ring.stats.wallMs} ms`);
    assert.ok(ring.stats.events.every((e) => e.phase === 'forward') === !grads, `${what}: phases`);
    const sc = 1 / Math.sqrt(D);
    const at = (x: Float32Array, b: number, h: number) => x.subarray(b * S * h * D, (b + 1) * S * h * D);
    for (let b = 0; b < B; b++) {
      const qb = at(q.data, b, H), kb = at(k.data, b, Hk), vb = at(v.data, b, Hk);
      const g = dO ? refBackward(qb, kb, vb, at(dO.data, b, H), S, H, Hk, D, mask, sc) : undefined;
      const ref = g ?? refForward(qb, kb, vb, S, H, Hk, D, mask, sc);
      assertClose(at(ring.out.data, b, H), ref.o, TOL.fp32Forward, `${what} out`);
      if (!g) continue;
      assertClose(at(ring.dq!.data, b, H), g.dq, TOL.fp32Grad, `${what} dq`);
      assertClose(at(ring.dk!.data, b, Hk), g.dk, TOL.fp32Grad, `${what} dk`);
      assertClose(at(ring.dv!.data, b, Hk), g.dv, TOL.fp32Grad, `${what} dv`);
    }
  }
  // Another ring size, a run that fails (on workers of its own), then the warm 3 again.
  const t = (S: number, h: number) => t3(S, h, 8, r);
  assert.equal((await ringAttention(t(30, 2), t(30, 2), t(30, 2), { devices: 2 })).stats.warm, false);
  await assert.rejects(ringAttention(t(30, 2), t(30, 2), t(30, 2), { devices: 3, fail: { rank: 1, step: 0, mode: 'throw' } }), RankError);
  const q = t(45, 2), k = t(45, 1), v = t(45, 1);
  const again = await ringAttention(q, k, v, { devices: 3, causal: true });
  assert.equal(again.stats.warm, true, 'the warm workers survive a failed run of the same size');
  assertClose(again.out.data, refForward(q.data, k.data, v.data, 45, 2, 1, 8, { causal: true }, 1 / Math.sqrt(8)).o, TOL.fp32Forward, `seed ${seed} after a failure`);
  assert.equal((await ringAttention(q, k, v, { devices: 2 })).stats.warm, true, 'both sizes kept');
  await closeIdleRingWorkers();
  assert.equal((await ringAttention(q, k, v, { devices: 3 })).stats.warm, false, 'closeIdleRingWorkers ended them');
  assert.equal((await ringAttention(q, k, v, { devices: 3 })).stats.warm, true);
  // A run whose ranks held more than WARM_MAX_BYTES closes its workers (their buffers go with them).
  const big = (h: number) => t3(6144, h, 128, r);
  const large = await ringAttention(big(8), big(8), big(8), { devices: 3 });
  assert.equal(large.stats.warm, true);
  assert.ok(Math.max(...large.stats.bytesHeld) > WARM_MAX_BYTES, `bytes held ${large.stats.bytesHeld}`);
  assert.equal((await ringAttention(q, k, v, { devices: 3 })).stats.warm, false, 'the large run closed its workers');
  await closeIdleRingWorkers();
});

test('warm workers never keep a program from ending; Node options (process-wide ones, --input-type) do not stop workers starting', async () => {
  const { IDLE_GROUP_MS } = await import('../../src/cpu/ring.js');
  const script = `
    import { ringAttention } from ${JSON.stringify(new URL('../../src/attention.js', import.meta.url).href)};
    const t = (h) => ({ dtype: 'float32', shape: [64, h, 16], data: Float32Array.from({ length: 64 * h * 16 }, (_, i) => Math.sin(i)) });
    const a = await ringAttention(t(2), t(1), t(1), { devices: 3, causal: true });
    const b = await ringAttention(t(2), t(1), t(1), { devices: 3, causal: true });
    console.log(a.stats.warm, b.stats.warm);`;
  const t0 = Date.now();
  // --max-old-space-size is refused in a worker's explicit options; --input-type in a module worker's
  const res = spawnSync(process.execPath, ['--max-old-space-size=1024', '--input-type=module', '-e', script], { encoding: 'utf8', timeout: 60_000 });
  const ms = Date.now() - t0;
  assert.equal(res.status, 0, res.stderr);
  assert.equal(res.stdout.trim(), 'false true');
  // Referenced idle workers would hold it for IDLE_GROUP_MS after the last run.
  assert.ok(ms < IDLE_GROUP_MS * 0.8, `the program ended ${ms} ms after it started (idle workers are kept for ${IDLE_GROUP_MS} ms)`);
});

test('attention and ringAttention reject the same malformed arguments, naming them', async () => {
  const r = rng(freshSeed());
  const [S, H, D] = [8, 2, 4];
  const q = t3(S, H, D, r), k = t3(S, H, D, r), v = t3(S, H, D, r), dO = t3(S, H, D, r);
  const short: F32Tensor = { dtype: 'float32', shape: [S, H, D], data: q.data.subarray(0, 10) };
  const f64 = { dtype: 'float32', shape: [S, H, D], data: Float64Array.from(dO.data) } as unknown as F32Tensor;
  const empty = (h: number): F32Tensor => ({ dtype: 'float32', shape: [0, S, h, D], data: new Float32Array(0) });
  const cases: [string, () => [F32Tensor, F32Tensor, F32Tensor, AttentionOptions], RegExp][] = [
    ['short q data', () => [short, k, v, {}], /^q: expected 64 elements for shape \[8, 2, 4\], got 10/],
    ['short gradOut', () => [q, k, v, { gradOut: short }], /^gradOut: expected 64 elements/],
    ['float64 gradOut', () => [q, k, v, { gradOut: f64 }], /^gradOut: expected float32 data \(a Float32Array\), got Float64Array/],
    ['batch of 0', () => [empty(H), empty(H), empty(H), {}], /^q: expected non-empty dimensions, got \[0, 8, 2, 4\]/],
    ['segments as an Array', () => [q, k, v, { segments: [0, 0, 0, 0, 1, 1, 1, 1] as unknown as Int32Array }], /^segments: expected an Int32Array of document ids, got Array/],
    ['unknown kernel', () => [q, k, v, { kernel: 'bogus' as 'c' }], /^kernel: expected 'auto', 'c' or 'ts', got "bogus"/],
    ['too many threads', () => [q, k, v, { threads: 100_000 }], /^threads: expected an integer in \[1, 1024\], got 100000/],
    ['scores past fp32', () => [q, k, v, { scale: 1e38 }], /^scale: expected scores q·k·scale within ±1e\+30/],
  ];
  for (const [what, args, re] of cases) {
    for (const [name, run] of [['attention', attention], ['ringAttention', (a: F32Tensor, b: F32Tensor, c: F32Tensor, o: AttentionOptions) => ringAttention(a, b, c, { ...o, devices: 2 })]] as const) {
      const [a, b, c, o] = args();
      await assert.rejects(Promise.resolve().then(() => run(a, b, c, o)), (e: unknown) => e instanceof InputError && re.test(e.message), `${name}: ${what}`);
    }
  }
});
