import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { cudaAvailable } from '../../src/cuda/check.js';
import { loadNccl } from '../../src/cuda/bindings/nccl.js';
import { launch } from '../../src/cuda/launch.js';
import { encodeNpy, readNpyFloat32 } from '../../src/io/index.js';
import { freshSeed, randn, rng } from '../helpers/check.js';

// The ring on 2 GPUs (one process per GPU, NCCL between them) against one GPU and the float64
// reference, forward and backward, across masks, layouts, dtypes and GQA; a failing rank ends
// the job with its error; and `ringattn attend --backend cuda --devices 2`. Skipped with the
// reason where there are fewer than 2 GPUs, no driver or no NCCL.

const avail = cudaAvailable();
const nccl = avail.ok ? loadNccl() : null;
const skip = !avail.ok ? `${avail.reason} (2-GPU ring tests skipped)` : avail.devices < 2 ? `only ${avail.devices} GPU visible: the ring tests need 2 (skipped)` : nccl && 'error' in nccl ? `${nccl.error} (2-GPU ring tests skipped)` : false;
const rankJs = fileURLToPath(new URL('./ring-rank.js', import.meta.url));
const cliJs = fileURLToPath(new URL('../../../bin/ringattn.js', import.meta.url));

const TOL: Record<string, { fwd: number; grad: number }> = {
  bfloat16: { fwd: 1e-2, grad: 2e-2 },
  float16: { fwd: 1e-2, grad: 2e-2 },
  float32: { fwd: 1e-5, grad: 1e-5 },
};

test('ring on 2 GPUs = 1 GPU = float64 (forward and backward)', { skip, timeout: 150_000 }, async () => {
  const seed = freshSeed();
  const out: string[] = [], err: string[] = [];
  const r = await launch({ nproc: 2, command: [process.execPath, rankJs, 'cases', String(seed)], stdout: (l) => out.push(l), stderr: (l) => err.push(l) });
  assert.equal(r.code, 0, `seed ${seed}: ${r.message}\n${err.join('\n')}`);
  const results = out.filter((l) => l.includes('RESULT ')).map((l) => JSON.parse(l.slice(l.indexOf('RESULT ') + 7)) as { rank: number; name: string; dtype: string; errs: Record<string, number>; transfers: number });
  assert.equal(results.length, 12, out.join('\n'));
  for (const res of results) {
    const tol = TOL[res.dtype];
    for (const [key, e] of Object.entries(res.errs)) {
      const limit = key.startsWith('o') || key.startsWith('lse') ? tol.fwd : tol.grad;
      assert.ok(e <= limit, `seed ${seed}, rank ${res.rank}, ${res.name}: ${key} = ${e} > ${limit}`);
    }
    assert.ok(res.transfers > 0, `${res.name}: the ring moved blocks`);
  }
  console.log(results.map((x) => `${x.name} r${x.rank}: ${Object.entries(x.errs).map(([k, v]) => `${k} ${v.toExponential(1)}`).join(' ')}`).join('\n'));
});

test('a rank that throws after NCCL init ends the run with its error, no hang', { skip, timeout: 90_000 }, async () => {
  const err: string[] = [];
  const t0 = Date.now();
  const r = await launch({ nproc: 2, command: [process.execPath, rankJs, 'fail'], stdout: () => {}, stderr: (l) => err.push(l) });
  const ms = Date.now() - t0;
  assert.equal(r.failedRank, 1, `${JSON.stringify(r)}\n${err.join('\n')}`);
  assert.match(r.message ?? '', /injected failure on rank 1 after NCCL init/);
  assert.ok(err.some((l) => /\[rank 0\] ringattn: rank 0: stopped because rank 1 failed: injected failure/.test(l)), err.join('\n'));
  console.log(`failure propagated; the job ended ${ms} ms after launch (including NCCL init and one good run)`);
  assert.ok(ms < 60_000, `took ${ms} ms`);
});

test('ringattn attend --backend cuda --devices 2 equals --devices 1', { skip, timeout: 120_000 }, () => {
  const dir = mkdtempSync(join(tmpdir(), 'ringattn-gpu-'));
  try {
    const S = 1000, H = 4, Hk = 2, D = 64;
    const r = rng(freshSeed());
    const f = (name: string, shape: number[]) => {
      const p = join(dir, name);
      writeFileSync(p, encodeNpy({ dtype: 'float32', shape, data: randn(shape.reduce((a, b) => a * b, 1), r) }));
      return p;
    };
    const q = f('q.npy', [S, H, D]), k = f('k.npy', [S, Hk, D]), v = f('v.npy', [S, Hk, D]), dO = f('do.npy', [S, H, D]);
    const run = (devices: number, tag: string) => {
      const args = [cliJs, 'attend', '--backend', 'cuda', '--dtype', 'fp32', '--devices', String(devices), '--causal', '--window', '100', '--sinks', '2', '--q', q, '--k', k, '--v', v,
        '--out', join(dir, `o${tag}.npy`), '--lse', join(dir, `l${tag}.npy`), '--grad-out', dO, '--dq', join(dir, `dq${tag}.npy`), '--dk', join(dir, `dk${tag}.npy`), '--dv', join(dir, `dv${tag}.npy`), '--verify', '8'];
      const p = spawnSync(process.execPath, args, { encoding: 'utf8' });
      assert.equal(p.status, 0, `${p.stdout}\n${p.stderr}`);
      return p.stderr;
    };
    const info2 = run(2, '2');
    run(1, '1');
    assert.match(info2, /ring of 2 GPUs/);
    for (const n of ['o', 'l', 'dq', 'dk', 'dv']) {
      const a = readNpyFloat32(join(dir, `${n}2.npy`)).data, b = readNpyFloat32(join(dir, `${n}1.npy`)).data;
      let num = 0, den = 0;
      for (let i = 0; i < a.length; i++) {
        if (!Number.isFinite(b[i])) { assert.equal(a[i], b[i]); continue; }
        num = Math.max(num, Math.abs(a[i] - b[i]));
        den = Math.max(den, Math.abs(b[i]));
      }
      assert.ok(num / den <= 1e-5, `${n}: ${num / den}`);
    }
    assert.ok(readFileSync(join(dir, 'o2.npy')).length > 0);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
