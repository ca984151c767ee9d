import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

// Runs the built CLI (npx tsc -p . && node scripts/copy-assets.mjs first). This file is
// compiled to dist/tests/cli/, three levels below the repository root.
const root = fileURLToPath(new URL('../../../', import.meta.url));

function ringattn(...args: string[]): { code: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, ['bin/ringattn.js', ...args], { cwd: root, encoding: 'utf8' });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

const base = ['plan', '--seq', '131072', '--heads', '32', '--kv-heads', '8', '--head-dim', '128', '--devices', '8'];

test('ringattn plan prints the table', () => {
  const r = ringattn(...base);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /prefill, causal, zigzag, bf16 on 8 x h200/);
  assert.match(r.stdout, /tokens per device\s+16,384/);
  assert.match(r.stdout, /total\s+706\.00 MiB/);
  assert.match(r.stdout, /least tokens per device\s+1,000/); // causal zigzag: 2 · 500
  assert.match(r.stdout, /communication\s+hidden/);
});

test('ringattn plan --json, --no-causal and overrides', () => {
  const r = ringattn(...base, '--no-causal', '--tflops', '300', '--dtype', 'fp32', '--json');
  assert.equal(r.code, 0, r.stderr);
  const p = JSON.parse(r.stdout) as { options: { causal: boolean; dtype: string }; overlap: { cMin: number }; tokensPerDevice: number };
  assert.equal(p.options.causal, false);
  assert.equal(p.options.dtype, 'fp32');
  assert.equal(p.tokensPerDevice, 16384);
  // 300e12 / 300e9 = 1000 FLOP per byte; fp32 (4 bytes): 1000 · 2·8·4 / (4·32) = 64000/128 = 500
  assert.equal(p.overlap.cMin, 500);
});

test('ringattn plan --mode decode reports the KV cache of 1M tokens', () => {
  const r = ringattn('plan', '--seq', '1048576', '--heads', '32', '--kv-heads', '32', '--head-dim', '128', '--devices', '1', '--layers', '32', '--mode', 'decode');
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /KV cache per layer\s+16\.00 GiB\s+all 32 layers 512\.00 GiB/);
  assert.match(r.stdout, /least devices to fit\s+4/);
});

test('plan takes sizes past int32 (it only does arithmetic): 2^32 tokens over 1024 GPUs', () => {
  const r = ringattn('plan', '--seq', '4294967296', '--heads', '32', '--kv-heads', '8', '--head-dim', '128', '--devices', '1024', '--json');
  assert.equal(r.code, 0, r.stderr);
  assert.equal(JSON.parse(r.stdout).options.seq, 4294967296);
});

test('bad input: exit code 2 and one line naming the flag', () => {
  const r = ringattn('plan', '--seq', '1024', '--heads', '0', '--kv-heads', '1', '--head-dim', '64', '--devices', '2');
  assert.equal(r.code, 2);
  assert.equal(r.stdout, '');
  assert.equal(r.stderr.trimEnd().split('\n').length, 1, r.stderr);
  assert.match(r.stderr, /--heads/);
  const g = ringattn('plan', '--seq', '1024', '--heads', '6', '--kv-heads', '4', '--head-dim', '64', '--devices', '2');
  assert.equal(g.code, 2);
  assert.match(g.stderr, /^ringattn: --kv-heads: /);
  const m = ringattn(...base, '--mode', 'infer');
  assert.equal(m.code, 2);
  assert.match(m.stderr, /--mode/);
});
