import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, copyFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { entrySource, nvrtcDefines } from '../../src/cuda/compile.js';
import { InputError } from '../../src/core/errors.js';

// Per-entry NVRTC sources (CudaContext compiles only the kernels a process launches).

const kernels = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', 'src', 'cuda', 'kernels');
const entryLines = (text: string) => text.split('\n').filter((l) => /^[A-Z][A-Z0-9_]*ENTRY[A-Z0-9_]*\(/.test(l));

test('entrySource keeps the named entry-macro line, blanks the others, keeps everything else and the line numbers', () => {
  const text = [
    '#include "common.cuh"',
    '#define K_ENTRY(name, T) extern "C" __global__ void name(T* p) { run<T>(p); }',
    'template <typename T> __device__ void run(T*) {}',
    'K_ENTRY(k_f32, float)',
    'K_ENTRY(k_f32_big, float)',
    'TMA_ENTRY2( k_half , Half)',
    'extern "C" __global__ void plain() {}',
  ].join('\n');
  const one = entrySource(text, 'k_f32')!;
  const lines = one.split('\n');
  assert.equal(lines.length, 7);
  assert.deepEqual(lines, [...text.split('\n').slice(0, 4), '', '', 'extern "C" __global__ void plain() {}']);
  assert.deepEqual(entryLines(entrySource(text, 'k_half')!), ['TMA_ENTRY2( k_half , Half)']);
  assert.equal(entrySource(text, 'plain'), null, 'a kernel not declared by an entry macro: the file is compiled whole');
  assert.equal(entrySource(text, 'k_f3'), null, 'names match whole');
});

test('entrySource on the kernel files: one entry line left for every declared kernel', () => {
  for (const file of ['attn_fwd_h.cu', 'attn_bwd_h.cu', 'gemm.cu']) {
    const text = readFileSync(join(kernels, file), 'utf8');
    const names = entryLines(text).map((l) => /\(\s*(\w+)/.exec(l)![1]);
    assert.ok(names.length >= 4, `${file}: ${names.length} entries`);
    for (const name of names) {
      const one = entrySource(text, name)!;
      assert.equal(one.split('\n').length, text.split('\n').length);
      assert.deepEqual(entryLines(one).map((l) => /\(\s*(\w+)/.exec(l)![1]), [name], `${file}: ${name}`);
    }
  }
  assert.ok(entrySource(readFileSync(join(kernels, 'attn_fwd_h.cu'), 'utf8'), 'attn_fwd_ht_bf16_d128'), 'the default Hopper forward is an entry');
  // No kernel hides behind a family macro that the filter would keep whole.
  const gemm = entrySource(readFileSync(join(kernels, 'gemm.cu'), 'utf8'), 'gemm_bf16_h_nn')!;
  assert.deepEqual(gemm.replace(/\/\/.*$/gm, '').match(/\bgemm_(bf16|f32)_\w+/g), ['gemm_bf16_h_nn']);
});

const nvcc = spawnSync('bash', ['-c', 'command -v nvcc || ls /usr/local/cuda/bin/nvcc /usr/local/cuda-*/bin/nvcc 2>/dev/null | head -1'], { encoding: 'utf8' }).stdout.trim().split('\n')[0];
test('a one-entry source compiles to a cubin holding that kernel alone (nvcc, sm_90a)', { skip: nvcc ? false : 'nvcc not found (one-entry compile not checked)', timeout: 120_000 }, () => {
  const dir = mkdtempSync(join(tmpdir(), 'ra-entry-'));
  try {
    for (const h of ['common.cuh', 'hopper.cuh']) copyFileSync(join(kernels, h), join(dir, h));
    writeFileSync(join(dir, 'one.cu'), entrySource(readFileSync(join(kernels, 'attn_bwd_h.cu'), 'utf8'), 'attn_bwd_h_bf16_d128')!);
    const r = spawnSync(process.env.NVCC || nvcc, ['-arch=sm_90a', '-cubin', '-std=c++17', '-Xptxas', '-v', '-o', join(dir, 'one.cubin'), join(dir, 'one.cu')], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    const compiled = [...r.stderr.matchAll(/Compiling entry function '(\w+)'/g)].map((m) => m[1]);
    assert.deepEqual(compiled, ['attn_bwd_h_bf16_d128']);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('nvrtcDefines: RINGATTN_NVRTC_DEFINES as -D options (none when unset); anything else is an InputError naming the variable', () => {
  assert.deepEqual(nvrtcDefines(undefined), []);
  assert.deepEqual(nvrtcDefines('  '), []);
  assert.deepEqual(nvrtcDefines('-DFWDH_LAZY=1  -DX -DY=2.5'), ['-DFWDH_LAZY=1', '-DX', '-DY=2.5']);
  for (const bad of ['FWDH_LAZY=1', '-I/tmp', '-DX;rm', '--use_fast_math', '-D1X']) {
    assert.throws(() => nvrtcDefines(bad), (e: Error) => e instanceof InputError && /RINGATTN_NVRTC_DEFINES/.test(e.message) && e.message.includes(bad));
  }
});
