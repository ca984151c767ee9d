import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { findNvcc } from '../helpers/nvcc.js';

// Every kernel must compile for sm_90a and sm_80 (nvcc, no GPU needed): scripts/nvcc-check.sh, which
// also compiles the other builds kept for A/B runs (its OPTINS: -DFWD_Q_SMEM since session 32) at sm_90a, held to
// the same spill rules.

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
const script = join(root, 'scripts', 'nvcc-check.sh');

const skip = !existsSync(script) ? `no ${script}` : findNvcc() ? false : 'nvcc not found: the CUDA kernels were not compiled (install the CUDA toolkit or set NVCC)';

test('every src/cuda/kernels/*.cu compiles with nvcc (sm_90a, sm_80; the A/B builds in its OPTINS at sm_90a) without spills in the tensor-core kernels (ht: its producer thread only)', { skip, timeout: 600_000 }, () => {
  const r = spawnSync('bash', [script], { encoding: 'utf8', maxBuffer: 16 << 20 });
  const out = `${r.stdout}${r.stderr}`;
  assert.equal(r.status, 0, out);
  assert.doesNotMatch(out, /FAILED/, out);
  let arch = '';
  for (const line of out.split('\n')) {
    arch = /^== .*\((sm_\w+)\)/.exec(line)?.[1] ?? arch;
    // The decode kernels are checked where they run as built: sm_90a (decode_ldg is chosen only there).
    if (/attn_(fwd|bwd)_mma/.test(line) || (arch === 'sm_90a' && /^\s+(decode_(ldg|mma)_|attn_bwd_h|attn_fwd_h[^t])/.test(line))) {
      assert.match(line, /spill st\/ld 0\/0/, `a tensor-core kernel spills (${arch}): ${line}`);
    }
    // The persistent ht's producer thread (24 registers) spills ~110 bytes outside the tile loop;
    // when its consumers spilled (P around every P·V) it was 350 bytes and more (kernels/NOTES.md, session 26).
    const ht = arch === 'sm_90a' ? /attn_fwd_ht_\w+ .*spill st\/ld (\d+)\//.exec(line) : null;
    if (ht) assert.ok(Number(ht[1]) <= 128, `ht spills more than its producer thread's ~110 bytes: ${line}`);
  }
});
