import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freshSeed } from '../helpers/check.js';

const BIN = join(process.cwd(), 'bin', 'ringattn.js');

/** Tags in order, checked with a stack: every non-void element closes, properly nested. */
function assertWellFormed(html: string): void {
  const voids = new Set(['meta', 'br', 'hr', 'img', 'input', 'link', 'col', 'wbr']);
  const stack: string[] = [];
  const body = html.replace(/<script type="application\/json"[^>]*>[\s\S]*?<\/script>/g, '').replace(/<!--[\s\S]*?-->/g, '');
  for (const m of body.matchAll(/<(\/?)([a-zA-Z][\w:-]*)([^>]*?)(\/?)>/g)) {
    const [, close, name, , self] = m;
    const tag = name.toLowerCase();
    if (close) {
      assert.equal(stack.pop(), tag, `</${tag}> closes the wrong element`);
    } else if (!self && !voids.has(tag)) stack.push(tag);
  }
  assert.deepEqual(stack, [], 'unclosed elements');
}

test('demo runs the ring forward and backward, verifies, and writes a well-formed offline report', () => {
  const dir = mkdtempSync(join(tmpdir(), 'ringattn-demo-'));
  const report = join(dir, 'r.html');
  const seed = String(freshSeed()); // fresh inputs each run: the verdict is not one fixed case's
  const r = spawnSync(process.execPath, [BIN, 'demo', '--seq', '1500', '--heads', '4', '--kv-heads', '2', '--head-dim', '32', '--devices', '3', '--window', '400', '--sinks', '4', '--backward', '--seed', seed, '--report', report], { encoding: 'utf8' });
  assert.equal(r.status, 0, `seed ${seed}\n` + r.stderr + r.stdout);
  assert.match(r.stdout, /OK: ring result verified/);
  assert.match(r.stdout, /gradients vs single-device \(all rows\)\s+dQ, dK, dV: relative error \d\.\d+e-\d+/);
  assert.match(r.stdout, /gradients vs float64 \(sampled rows\)\s+dQ, dK, dV of 8 rows: relative error \d\.\d+e-\d+/);
  assert.match(r.stdout, /GFLOP\/s/);
  for (const rank of [0, 1, 2]) assert.match(r.stdout, new RegExp(`^${rank}\\s+500\\s`, 'm'));
  const html = readFileSync(report, 'utf8');
  assertWellFormed(html);
  assert.ok(!/https?:\/\/(?!www\.w3\.org)/.test(html), 'no external references');
  const data = JSON.parse(html.match(/<script type="application\/json" id="ringattn-data">([\s\S]*?)<\/script>/)![1].replace(/\\u003c/g, '<'));
  assert.equal(data.ranks, 3);
  assert.ok(data.events.some((e: { kind: string; phase: string }) => e.kind === 'compute' && e.phase === 'backward'));
  assert.ok(data.events.some((e: { kind: string }) => e.kind === 'transfer'));
  assert.ok(data.blockMap.cells.flat().some((c: { cls: string }) => c.cls === 'empty'), 'the window skips blocks');
  assert.ok(data.plan.length > 0);
});

test('demo rejects bad options with exit 2', () => {
  const r = spawnSync(process.execPath, [BIN, 'demo', '--heads', '8', '--kv-heads', '3'], { encoding: 'utf8' });
  assert.equal(r.status, 2);
  assert.match(r.stderr, /^ringattn: --kv-heads: expected a divisor of --heads \(8\), got 3\n$/);
});

test('demo without the C kernel: the fallback is said once (not once a worker), and the run still verifies', { skip: process.env.RINGATTN_KERNEL === 'ts' && 'RINGATTN_KERNEL=ts (the notice names that instead)' }, () => {
  const dir = mkdtempSync(join(tmpdir(), 'ringattn-demo-'));
  const r = spawnSync(process.execPath, [BIN, 'demo', '--seq', '256', '--devices', '3', '--report', join(dir, 'r.html')], {
    encoding: 'utf8', env: { ...process.env, RINGATTN_CPU_ISA: 'bogus' }, // an invalid choice makes the C kernel unavailable
  });
  assert.equal(r.status, 0, r.stderr);
  const notices = r.stderr.split('\n').filter((l) => /the C kernel is unavailable \(RINGATTN_CPU_ISA: expected native, avx2 or scalar, got 'bogus'\); using the TypeScript kernel/.test(l));
  assert.equal(notices.length, 1, r.stderr);
  assert.match(r.stdout, /kernel\s+ts/);
});
