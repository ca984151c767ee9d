import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { bwdParamFields, fwdParamFields, type DeviceBackwardArgs, type DeviceForwardArgs } from '../../src/cuda/attention.js';
import { packStruct } from '../../src/cuda/context.js';
import { findNvcc } from '../helpers/nvcc.js';

// The kernels take FwdParams / BwdParams (kernels/common.cuh) by value, and the host writes them
// byte by byte (packStruct of fwdParamFields / bwdParamFields). A field added on one side only
// would shift every field after it, and only a GPU would notice. Here nvcc compiles a host program
// that prints each field's offset and size as the C++ compiler lays the struct out (the field
// names parsed from common.cuh), and every field of the packed bytes must hold the value the host
// put there. No GPU needed.

const kernels = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', 'src', 'cuda', 'kernels');
const nvcc = findNvcc();
const skip = nvcc ? false : 'nvcc not found: the struct layouts were not checked (install the CUDA toolkit or set NVCC)';

/** Field names of `struct name { ... };` in common.cuh, in order. */
function fieldNames(source: string, name: string): string[] {
  const m = new RegExp(`struct ${name} \\{([\\s\\S]*?)\\n\\};`).exec(source);
  assert.ok(m, `struct ${name} not found in common.cuh`);
  const body = m[1].replace(/\/\/.*$/gm, '');
  return body.split(';').map((d) => d.trim()).filter(Boolean).flatMap((decl) => {
    // "const int* qPos" -> qPos; "int Sq, Sk, H" -> Sq, Sk, H
    const [first, ...rest] = decl.split(',');
    return [first.trim().split(/[\s*]+/).pop()!, ...rest.map((x) => x.trim())];
  });
}

function cLayout(structs: string[], names: Record<string, string[]>): Map<string, { off: number; size: number }> & { sizes: Record<string, number> } {
  const dir = mkdtempSync(join(tmpdir(), 'ringattn-layout-'));
  try {
    const lines = [`#include "${join(kernels, 'common.cuh')}"`, '#include <cstdio>', '#include <cstddef>', 'int main() {'];
    for (const s of structs) {
      lines.push(`  std::printf("${s} sizeof %zu 0\\n", sizeof(${s}));`);
      for (const f of names[s]) lines.push(`  std::printf("${s} ${f} %zu %zu\\n", offsetof(${s}, ${f}), sizeof(((${s}*)0)->${f}));`);
    }
    lines.push('  return 0;', '}');
    writeFileSync(join(dir, 'layout.cu'), lines.join('\n'));
    const build = spawnSync(nvcc!, ['-std=c++17', '-o', join(dir, 'layout'), join(dir, 'layout.cu')], { encoding: 'utf8' });
    assert.equal(build.status, 0, `nvcc: ${build.stdout}${build.stderr}`);
    const run = spawnSync(join(dir, 'layout'), { encoding: 'utf8' });
    assert.equal(run.status, 0, run.stderr);
    const out = new Map<string, { off: number; size: number }>() as Map<string, { off: number; size: number }> & { sizes: Record<string, number> };
    out.sizes = {};
    for (const line of run.stdout.trim().split('\n')) {
      const [s, f, a, b] = line.split(' ');
      if (f === 'sizeof') out.sizes[s] = Number(a);
      else out.set(`${s}.${f}`, { off: Number(a), size: Number(b) });
    }
    return out;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

test('FwdParams and BwdParams: the bytes the host packs are the C structs the kernels read (nvcc, no GPU)', { skip, timeout: 120_000 }, () => {
  const source = readFileSync(join(kernels, 'common.cuh'), 'utf8');
  const names = { FwdParams: fieldNames(source, 'FwdParams'), BwdParams: fieldNames(source, 'BwdParams') };
  const layout = cLayout(['FwdParams', 'BwdParams'], names);
  // Distinct values in every field: pointers 0x1000 + i, integers 11.., the scale 0.375.
  const shape = { Sq: 11, Sk: 12, H: 13, Hk: 14, D: 15, causal: true, window: 17, sinks: 18, scale: 0.375, dtype: 'bfloat16' as const };
  const ptrs = ['q', 'k', 'v', 'qPos', 'kPos', 'qSeg', 'kSeg', 'o', 'lse', 'trace', 'dO', 'delta', 'dq', 'dk', 'dv'];
  const p: Record<string, number> = Object.fromEntries(ptrs.map((n, i) => [n, 0x1000 + i]));
  const fwdExtra = { qTiles: 0x2001, kTiles: 0x2002, headGroup: 19, qSpans: 0x2003 };
  const bwdExtra = { qTiles: 0x2001, kTiles: 0x2002, split: 20, headGroup: 21 };
  const fwd = packStruct(fwdParamFields({ ...shape, ...p } as unknown as DeviceForwardArgs, fwdExtra.qTiles, fwdExtra.kTiles, fwdExtra.headGroup, fwdExtra.qSpans));
  const bwd = packStruct(bwdParamFields({ ...shape, ...p } as unknown as DeviceBackwardArgs, bwdExtra.qTiles, bwdExtra.kTiles, bwdExtra.split, bwdExtra.headGroup));
  const { dtype: _, ...numeric } = shape;
  const expected = (extra: Record<string, number>): Record<string, number> => ({ ...p, ...numeric, causal: 1, ...extra });
  for (const [s, buf, want] of [['FwdParams', fwd, expected(fwdExtra)], ['BwdParams', bwd, expected(bwdExtra)]] as const) {
    assert.equal(buf.length, layout.sizes[s], `${s}: the host packs ${buf.length} bytes, sizeof is ${layout.sizes[s]}`);
    for (const f of names[s]) {
      const { off, size } = layout.get(`${s}.${f}`)!;
      assert.ok(f in want, `${s}.${f}: a field this test does not know; give it a value above`);
      const got = size === 8 ? Number(buf.readBigUInt64LE(off)) : f === 'scale' ? buf.readFloatLE(off) : buf.readInt32LE(off);
      assert.equal(got, want[f], `${s}.${f} at offset ${off}: packed ${got}, expected ${want[f]}`);
    }
  }
});
