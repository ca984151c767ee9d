import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CudaContext, argBuffers, packStruct } from '../../src/cuda/context.js';
import { BackendError } from '../../src/core/errors.js';
import { fakeCuda } from '../mock/fakeCuda.js';
import { withEnv } from '../helpers/check.js';
import type { NvrtcApi } from '../../src/cuda/bindings/nvrtc.js';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

test('context over the fake driver: alloc, upload, fill, download, free', () => {
  const drv = fakeCuda({ name: 'Fake H100' });
  const ctx = CudaContext.open(0, drv);
  assert.equal(ctx.name, 'Fake H100');
  assert.equal(ctx.arch, 'sm_90a');
  const b = ctx.alloc(64);
  ctx.upload(b, Float32Array.from({ length: 16 }, (_, i) => i));
  ctx.fill32(b.ptr + 8 * 4, 0xff800000, 4);
  const out = ctx.download(new Float32Array(16), b);
  assert.deepEqual([...out.subarray(6, 13)], [6, 7, -Infinity, -Infinity, -Infinity, -Infinity, 12]);
  assert.throws(() => ctx.upload(b, new Float32Array(17)), BackendError);
  ctx.free(b);
  assert.equal(drv.allocated(), 0);
  // The stream is created before any copy and every copy goes through it.
  assert.ok(drv.calls.indexOf('cuStreamCreate') < drv.calls.indexOf('cuMemcpyHtoDAsync_v2'));
  ctx.dispose();
});

test('context: a failing driver call throws a BackendError naming the call', () => {
  const ctx = CudaContext.open(0, fakeCuda({ fail: { cuMemAlloc_v2: 2 } }));
  assert.throws(() => ctx.alloc(1 << 20), /cuMemAlloc_v2\(1048576 bytes\) failed: CUDA_ERROR_OUT_OF_MEMORY \(out of memory\) \[code 2\]/);
  assert.throws(() => CudaContext.open(3, fakeCuda()), /cuDeviceGet\(3\) failed/);
});

test('packStruct lays out a C struct: pointers 8-aligned, 4-byte fields packed, size a multiple of 8', () => {
  const b = packStruct([{ ptr: 0x1234 }, { i32: -1 }, { f32: 0.5 }, { i32: 7 }]);
  assert.equal(b.length, 24);
  assert.equal(b.readBigUInt64LE(0), 0x1234n);
  assert.equal(b.readInt32LE(8), -1);
  assert.equal(b.readFloatLE(12), 0.5);
  assert.equal(b.readInt32LE(16), 7);
  const mixed = packStruct([{ i32: 1 }, { ptr: 2 }]);
  assert.equal(mixed.length, 16);
  assert.equal(mixed.readBigUInt64LE(8), 2n);
  assert.deepEqual(argBuffers([{ ptr: 5 }, { i32: 3 }]).map((x) => x.length), [8, 4]);
  // Device addresses past 32 bits (as real ones are), up to 2^53 - 1.
  for (const p of [0x7f12_3456_7890, 2 ** 32, 2 ** 53 - 1]) {
    assert.equal(packStruct([{ i32: 0 }, { ptr: p }]).readBigUInt64LE(8), BigInt(p));
    const [ptr, i32, f32] = argBuffers([{ ptr: p }, { i32: -7 }, { f32: -2.5 }]);
    assert.equal(ptr.readBigUInt64LE(0), BigInt(p));
    assert.equal(i32.readInt32LE(0), -7);
    assert.equal(f32.readFloatLE(0), -2.5);
  }
  assert.throws(() => packStruct([{ ptr: -16 }]), RangeError, 'a negative address is refused');
});

test('context.fn compiles an entry-macro kernel alone (one module per kernel, each NVRTC program holding that entry only) and other files whole, once each', () => {
  const programs: { name: string; src: string }[] = [];
  const nvrtc = {
    path: 'fake',
    nvrtcVersion: (major: [number], minor: [number]) => ((major[0] = 13), (minor[0] = 0), 0),
    nvrtcCreateProgram: (out: [unknown], src: string, name: string) => ((out[0] = programs.push({ name, src })), 0),
    nvrtcCompileProgram: () => 0,
    nvrtcGetProgramLogSize: (_p: unknown, out: [number]) => ((out[0] = 1), 0),
    nvrtcGetProgramLog: () => 0,
    nvrtcGetCUBINSize: (_p: unknown, out: [number]) => ((out[0] = 16), 0),
    nvrtcGetCUBIN: () => 0,
    nvrtcDestroyProgram: () => 0,
    nvrtcGetErrorString: () => 'fake',
  } as unknown as NvrtcApi;
  const dir = mkdtempSync(join(tmpdir(), 'ra-nvrtc-'));
  try {
    withEnv({ RINGATTN_CACHE: dir }, () => {
      const ctx = CudaContext.open(0, fakeCuda({ name: 'Fake H100' }), nvrtc);
      const entries = (src: string) => src.split('\n').filter((l) => /^[A-Z][A-Z0-9_]*ENTRY[A-Z0-9_]*\(/.test(l)).map((l) => /\(\s*(\w+)/.exec(l)![1]);
      ctx.fn('attn_fwd_h.cu', 'attn_fwd_ht_bf16_d128');
      ctx.fn('attn_fwd_h.cu', 'attn_fwd_ht_bf16_d128', 200_000);
      ctx.fn('attn_fwd_h.cu', 'attn_fwd_hq_f16_d64');
      ctx.fn('attn_fwd.cu', 'attn_fwd_mma_bf16_d64');
      ctx.fn('attn_fwd.cu', 'attn_fwd_generic_f32');
      assert.equal(programs.length, 3, programs.map((p) => p.name).join(', '));
      assert.deepEqual(entries(programs[0].src), ['attn_fwd_ht_bf16_d128']);
      assert.deepEqual(entries(programs[1].src), ['attn_fwd_hq_f16_d64']);
      assert.match(programs[2].src, /attn_fwd_mma_bf16_d64[\s\S]*attn_fwd_generic_f32/, 'a file without entry macros is one program');
      assert.deepEqual(programs.map((p) => p.name), ['attn_fwd_h.cu', 'attn_fwd_h.cu', 'attn_fwd.cu']);
      ctx.dispose();
    });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
