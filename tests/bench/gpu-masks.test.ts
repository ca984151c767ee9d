import { test } from 'node:test';
import assert from 'node:assert/strict';
import { flexTable, MASK_CASES, maskBench, parseCases, seen } from '../../bench/gpu-masks.js';
import { traceBench } from '../../bench/gpu-trace.js';

// The mask benchmark's pieces that need no GPU: the visible-pair count its TFLOP/s are taken
// from, and its argument checks and the trace's (made before a GPU is opened).

test('seen: the keys a query position sees (causal, with and without a window) equal a brute-force count', () => {
  let state = 12345;
  const rand = () => ((state = (state * 1103515245 + 12345) >>> 0) / 2 ** 32);
  for (let trial = 0; trial < 20; trial++) {
    const n = 1 + Math.floor(rand() * 200);
    const kPos = Int32Array.from({ length: n }, () => Math.floor(rand() * 400)).sort();
    const window = trial % 3 === 0 ? 0 : 1 + Math.floor(rand() * 100);
    for (let x = -5; x < 420; x += 7) {
      const brute = kPos.filter((k) => k <= x && (window === 0 || x - k < window)).length;
      assert.equal(seen(kPos, x, window), brute, `n=${n} window=${window} x=${x}`);
    }
  }
});

test('maskBench: a bad size, count or timing mode is an error naming it, before any GPU is opened', () => {
  assert.throws(() => maskBench(100, 5), /S: expected a multiple of 4 of at least 256, got 100/);
  assert.throws(() => maskBench(16384, 0), /reps: expected a positive integer, got 0/);
  assert.throws(() => maskBench(16384, 5, 'kernel'), /masks: the timing is step .*, pass .*, fresh .*, finite .* or spaced .*, got 'kernel'/);
  assert.throws(() => maskBench(16384, 5, 'step', 'none,edges'), /masks: the cases are a comma-separated list of none, all, diagonal, zigzag, edge, unseen \(or all-cases\), got 'none,edges'/);
});

test('parseCases: keys picked in the bench order; every case by default', () => {
  assert.deepEqual(parseCases(undefined), ['none', 'all', 'diagonal', 'zigzag', 'edge', 'unseen']);
  assert.deepEqual(parseCases('all-cases'), parseCases(undefined));
  assert.deepEqual(parseCases('edge, none'), ['none', 'edge']);
  assert.throws(() => parseCases(''), /got ''/);
});

test('MASK_CASES: the block positions (S queries and S keys, sorted) and the visible fractions the header states', () => {
  const S = 1024;
  const frac: Record<string, number> = {};
  for (const c of MASK_CASES) {
    const q = c.qPos(S), k = Int32Array.from(c.kPos(S));
    assert.equal(q.length, S, c.key);
    assert.equal(k.length, S, c.key);
    assert.ok(k.every((x, i) => i === 0 || x > k[i - 1]), `${c.key}: key positions sorted`);
    let pairs = 0;
    for (const x of q) pairs += c.causal ? seen(k, x, c.window(S)) : S;
    frac[c.key] = pairs / (S * S);
  }
  assert.equal(frac.none, 1);
  assert.equal(frac.all, 1);
  assert.ok(Math.abs(frac.diagonal - 0.5) < 1 / S, `diagonal ${frac.diagonal}`);
  assert.equal(frac.zigzag, 0.5); // chunk 0 sees nothing of chunks 1-2, chunk 3 sees all of them
  assert.ok(Math.abs(frac.edge - 0.125) < 1 / S, `edge ${frac.edge}`); // the first S/2 queries' window reaches back into the block
  assert.equal(frac.unseen, 0);
});

test('flexTable: each side against its own unmasked rate, and flex over ours in time; a missing peer row or a failed peer reads -', () => {
  const ours = [
    { name: 'none', key: 'none', f: 2, b: 6, rf: 500, rb: 400, pairs: 100 },
    { name: 'window edge', key: 'edge', f: 0.5, b: 1.5, rf: 450, rb: 380, pairs: 20 },
    { name: 'causal, none seen', key: 'unseen', f: 0.01, b: 0.01, rf: 0, rb: 0, pairs: 0 },
  ];
  const t = flexTable(ours, { rows: [{ case: 'none', fwdMs: 3, fwdTflops: 400, bwdMs: 9, bwdTflops: 300 }, { case: 'edge', fwdMs: 1, fwdTflops: 200, bwdMs: 3, bwdTflops: 180 }], notes: ['torch_flex_masks.py: exit 1'] });
  const line = (name: string) => t.split('\n').find((l) => l.startsWith(name)) ?? '';
  assert.match(line('window edge'), /1\.000\s+200\s+0\.50 \|\s+3\.000\s+180\s+0\.60 \|\s+2\.00\s+2\.00$/);
  assert.match(line('none '), /3\.000\s+400\s+1\.00 \|\s+9\.000\s+300\s+1\.00 \|\s+1\.50\s+1\.50$/);
  assert.match(line('causal, none seen'), /-\s+-\s+- \|\s+-\s+-\s+- \|\s+-\s+-$/);
  assert.match(t, /peer unavailable: torch_flex_masks.py: exit 1/);
});

test('traceBench: a bad timing mode or kernel is an error naming it, before any GPU is opened', () => {
  assert.throws(() => traceBench(8192, 32, 128, 'none', 20, 'fwd', 'kernel'), /trace: the timing is step .*, pass .*, fresh .*, finite .* or spaced .*, got 'kernel'/);
  assert.throws(() => traceBench(8192, 32, 128, 'none', 20, 'both' as 'fwd'), /kernel: expected fwd, items .* or bwd, got both/);
});
