import { test } from 'node:test';
import assert from 'node:assert/strict';
import koffi from 'koffi';
import { bwdTensorMaps, chooseKernel, fwdTensorMaps, headGroup, misaligned, supported, wgFwdGrid, wgFwdSmem, wgmmaBackward, wgmmaForward } from '../../src/cuda/attention.js';
import type { CudaContext } from '../../src/cuda/context.js';
import { InputError } from '../../src/core/errors.js';
import { encode, roundTo } from '../../src/cuda/convert.js';
import { bf16BitsToF32, f16BitsToF32, f32ToBf16Bits, f32ToF16Bits } from '../../src/core/tensor.js';
import { freshSeed, randn, rng, withEnv } from '../helpers/check.js';

// Pure host-side parts of the CUDA backend (no GPU).

test('chooseKernel: tensor cores for 16-bit inputs at D 64/128 on sm_80+, the generic path otherwise', () => {
  assert.equal(chooseKernel({ dtype: 'bfloat16', D: 128 }, [9, 0]), 'mma16-d128');
  assert.equal(chooseKernel({ dtype: 'float16', D: 64 }, [8, 0]), 'mma16-d64');
  assert.equal(chooseKernel({ dtype: 'float32', D: 128 }, [9, 0]), 'generic');
  assert.equal(chooseKernel({ dtype: 'bfloat16', D: 96 }, [9, 0]), 'generic');
  assert.equal(chooseKernel({ dtype: 'bfloat16', D: 64 }, [7, 5]), 'generic');
});

test('wgmmaForward: the Hopper forward for tensor-core tags on sm_90 by default, mma.sync with RINGATTN_WGMMA_ATTN=0 or RINGATTN_NO_WGMMA=1', () => {
  const env = (attn: string | undefined, no?: string) => ({ RINGATTN_WGMMA_ATTN: attn, RINGATTN_NO_WGMMA: no });
  for (const [v, want, want64] of [[undefined, 'ht', 'hw'], ['', 'ht', 'hw'], ['1', 'h', 'h']] as const) {
    withEnv(env(v), () => {
      assert.equal(wgmmaForward('mma16-d128', [9, 0]), want);
      assert.equal(wgmmaForward('mma16-d64', [9, 0]), want64);
      assert.equal(wgmmaForward('generic', [9, 0]), null);
      assert.equal(wgmmaForward('mma16-d128', [8, 0]), null);
      assert.equal(wgmmaForward('mma16-d128', [10, 0]), null);
    });
  }
  withEnv(env('0'), () => assert.equal(wgmmaForward('mma16-d128', [9, 0]), null));
  withEnv(env(undefined), () => {
    assert.equal(wgmmaForward('mma16-d128', [9, 0], 0.088), 'ht');
    assert.equal(wgmmaForward('mma16-d128', [9, 0], -0.088), null, 'the scale is folded after the raw maximum: scale > 0 only');
    assert.equal(wgmmaForward('mma16-d128', [9, 0], 0), null);
  });
  for (const [v, want] of [['2', 'hp'], ['3', 'hs'], ['4', 'hq'], ['5', 'ht']] as const) {
    withEnv(env(v), () => {
      assert.equal(wgmmaForward('mma16-d64', [9, 0]), want);
      assert.equal(wgmmaForward('mma16-d128', [9, 0]), want);
    });
  }
  withEnv(env('6'), () => {
    assert.equal(wgmmaForward('mma16-d64', [9, 0]), 'hw', 'three consumer warpgroups at D=64');
    assert.equal(wgmmaForward('mma16-d128', [9, 0]), 'ht', 'no hw kernel at D=128 (its consumers would need 240 registers)');
  });
  withEnv(env('7'), () => {
    assert.equal(wgmmaForward('mma16-d128', [9, 0]), 'hl', '176-key tiles at D=128');
    assert.equal(wgmmaForward('mma16-d64', [9, 0]), 'hw', 'no hl kernel at D=64: its default');
    assert.equal(wgmmaForward('mma16-d128', [8, 0]), null);
  });
  withEnv(env('8'), () => {
    assert.equal(wgmmaForward('mma16-d128', [9, 0]), 'hc', 'clusters of two at D=128 (the kernel object sends masked blocks to ht)');
    assert.equal(wgmmaForward('mma16-d64', [9, 0]), 'hw', 'no hc kernel at D=64: its default');
    assert.equal(wgmmaForward('mma16-d128', [8, 0]), null);
  });
  withEnv(env('2', '1'), () => assert.equal(wgmmaForward('mma16-d64', [9, 0]), null));
  withEnv(env(undefined, '1'), () => assert.equal(wgmmaForward('mma16-d128', [9, 0]), null));
  for (const bad of ['9', '10', 'yes', 'constructor', ' 4']) {
    withEnv(env(bad), () => assert.throws(() => wgmmaForward('mma16-d128', [9, 0]), (e: Error) => e instanceof InputError && /RINGATTN_WGMMA_ATTN/.test(e.message) && e.message.includes(`'${bad}'`)));
  }
});

test('headGroup: unmasked launches one head at a time; masked ones interleave the fewest heads whose tiles make two waves, at most 4, in groups that divide the heads; RINGATTN_HEAD_GROUP overrides', async () => {
  await withEnv({ RINGATTN_HEAD_GROUP: undefined }, () => {
    assert.equal(headGroup(64, 32, false, 132), 1);  // 8k, 128-row tiles, no mask
    assert.equal(headGroup(64, 32, true, 132), 4);  // ceil(264 / 64) = 5, capped
    assert.equal(headGroup(43, 8, true, 132), 4);  // hw's 192-row tiles at 8k
    assert.equal(headGroup(86, 32, true, 132), 4);  // hw at 16k
    assert.equal(headGroup(100, 32, true, 132), 4);  // ceil(264 / 100) = 3 does not divide 32
    assert.equal(headGroup(128, 32, true, 132), 4);  // 16k: likewise
    assert.equal(headGroup(128, 24, true, 132), 3);
    assert.equal(headGroup(128, 6, true, 132), 3);
    assert.equal(headGroup(64, 6, true, 132), 3);  // 5 wanted: no divisor of 6 from 5 to 4, so the largest under it
    assert.equal(headGroup(64, 5, true, 132), 1);  // 5 heads: groups of 1 (no short last group)
    assert.equal(headGroup(256, 32, true, 132), 2);  // 32k
    assert.equal(headGroup(512, 32, true, 132), 1);
    assert.equal(headGroup(3, 4, true, 132), 4);  // never more than the heads
    assert.equal(headGroup(0, 4, true, 132), 1);
  });
  await withEnv({ RINGATTN_HEAD_GROUP: '3' }, () => {
    assert.equal(headGroup(64, 32, false, 132), 3);
    assert.equal(headGroup(64, 2, true, 132), 2);
  });
  await withEnv({ RINGATTN_HEAD_GROUP: 'x' }, () => assert.equal(headGroup(64, 32, true, 132), 4));
  await withEnv({ RINGATTN_HEAD_GROUP: '8' }, () => assert.equal(headGroup(64, 32, true, 132), 8));
});

test('wgFwdGrid: ht on a persistent grid of min(items, SMs, RINGATTN_FWD_CTAS) CTAs, the others (and ht in the -DFWD_TRACE build without -DFWD_TRACE_ITEMS) one CTA a (query tile, head); a bad cap is an InputError naming the variable', async () => {
  await withEnv({ RINGATTN_NVRTC_DEFINES: undefined, RINGATTN_FWD_CTAS: undefined }, () => {
    assert.deepEqual(wgFwdGrid('ht', 64, 32, 132), [132, 1, 1]);
    assert.deepEqual(wgFwdGrid('ht', 3, 4, 132), [12, 1, 1]);
    for (const wg of ['hw', 'hl', 'hc', 'hq', 'h'] as const) assert.deepEqual(wgFwdGrid(wg, 64, 32, 132), [64, 32, 1], wg);
  });
  await withEnv({ RINGATTN_NVRTC_DEFINES: undefined, RINGATTN_FWD_CTAS: '7' }, () => {
    assert.deepEqual(wgFwdGrid('ht', 64, 32, 132), [7, 1, 1]);
    assert.deepEqual(wgFwdGrid('hw', 64, 32, 132), [64, 32, 1]);
  });
  // a value does not matter to #ifdef: the trace build all the same
  for (const d of ['-DFWD_TRACE', '-DFWD_TRACE=1', '-DFWD_TRACE=0', '-DOTHER_FLAG -DFWD_TRACE']) {
    await withEnv({ RINGATTN_NVRTC_DEFINES: d, RINGATTN_FWD_CTAS: '7' }, () => assert.deepEqual(wgFwdGrid('ht', 64, 32, 132), [64, 32, 1], d));
  }
  await withEnv({ RINGATTN_NVRTC_DEFINES: '-DFWD_TRACES', RINGATTN_FWD_CTAS: undefined }, () => assert.deepEqual(wgFwdGrid('ht', 64, 32, 132), [132, 1, 1]));
  // the per-item trace (-DFWD_TRACE_ITEMS) keeps ht persistent, as it runs untraced
  for (const d of ['-DFWD_TRACE -DFWD_TRACE_ITEMS', '-DFWD_TRACE_ITEMS=1 -DFWD_TRACE']) {
    await withEnv({ RINGATTN_NVRTC_DEFINES: d, RINGATTN_FWD_CTAS: '7' }, () => assert.deepEqual(wgFwdGrid('ht', 64, 32, 132), [7, 1, 1], d));
  }
  for (const bad of ['0', '-2', '1.5', 'x', 'Infinity', '1e3']) {
    await withEnv({ RINGATTN_NVRTC_DEFINES: undefined, RINGATTN_FWD_CTAS: bad }, () => {
      assert.throws(() => wgFwdGrid('ht', 64, 32, 132), (e: unknown) => e instanceof InputError && /RINGATTN_FWD_CTAS/.test(e.message), bad);
    });
  }
});

test('wgFwdSmem: the Hopper forwards\' shared memory as fwdh::Cfg lays it out (attn_fwd_h.cu): one Q buffer, three stages at D=128 with 128-key tiles, two with 176, four at D=64', () => {
  // slack + Q + stages x (K + V) + the stages' full and empty barriers + Q's barrier, qFree and slot
  assert.equal(wgFwdSmem(128, 128), 1024 + 128 * 128 * 2 + 3 * 2 * 128 * 128 * 2 + 2 * 3 * 8 + 72);
  assert.equal(wgFwdSmem(64, 192), 1024 + 192 * 64 * 2 + 4 * 2 * 128 * 64 * 2 + 2 * 4 * 8 + 72);
  assert.equal(wgFwdSmem(128, 128, 176), 1024 + 128 * 128 * 2 + 2 * 2 * 176 * 128 * 2 + 2 * 2 * 8 + 72);
  for (const bytes of [wgFwdSmem(128, 128), wgFwdSmem(64, 192), wgFwdSmem(128, 128, 176)]) assert.ok(bytes <= 227 * 1024);
});

test('misaligned: null for 16-byte-aligned addresses, else the argument named', () => {
  assert.equal(misaligned({ q: 0x7f0000000000, k: 0x7f0000000100, v: 16 }), null);
  assert.match(misaligned({ q: 0x7f0000000000, k: 0x7f0000000108, v: 16 })!, /^k: expected a 16-byte-aligned device address .* got 0x7f0000000108$/);
});

test('supported: null for valid arguments, a reason naming the argument otherwise', () => {
  const ok = { Sq: 100, Sk: 100, H: 8, Hk: 2, D: 128, dtype: 'bfloat16' as const, causal: true, window: 0, sinks: 0, scale: 0.1 };
  assert.equal(supported(ok), null);
  assert.match(supported({ ...ok, D: 512 })!, /^D: /);
  assert.match(supported({ ...ok, Hk: 3 })!, /^H: /);
  assert.match(supported({ ...ok, scale: NaN })!, /^scale: /);
  assert.match(supported({ ...ok, window: -1 })!, /^window: /);
});

test('encode/roundTo agree with the scalar conversions in core/tensor.ts', () => {
  const seed = freshSeed();
  const x = randn(4096, rng(seed), 3);
  x.set([0, -0, 1e-8, -1e-6, 65504, 70000, -70000, Infinity, -Infinity, 6.1e-5, 5.9e-8], 0);
  const bf = encode(x, 'bfloat16') as Uint16Array;
  const hf = encode(x, 'float16') as Uint16Array;
  const rb = roundTo(x, 'bfloat16');
  const rh = roundTo(x, 'float16');
  for (let i = 0; i < x.length; i++) {
    assert.equal(bf[i], f32ToBf16Bits(x[i]), `bf16 bits of ${x[i]} (seed ${seed})`);
    assert.equal(hf[i], f32ToF16Bits(x[i]), `f16 bits of ${x[i]} (seed ${seed})`);
    assert.equal(rb[i], bf16BitsToF32(bf[i]));
    assert.ok(Object.is(rh[i], f16BitsToF32(hf[i])) || rh[i] === f16BitsToF32(hf[i]));
  }
  assert.equal(encode(x, 'float32'), x);
});

test('fwdTensorMaps: three 64-byte-aligned 128-byte maps of q [Sq, H, D], k and v [Sk, Hk, D] for TMA (uint16, box 64 x 1 x 128, 128-byte swizzle, zero fill); null without the driver function', () => {
  const calls: { map: Buffer; args: unknown[] }[] = [];
  const drv = {
    cuTensorMapEncodeTiled: (map: Buffer, ...args: unknown[]) => {
      calls.push({ map, args });
      map.fill(calls.length); // what the driver would write
      return 0;
    },
  };
  const checked: string[] = [];
  const ctx = { drv, check: (what: string, code: number) => { checked.push(what); if (code !== 0) throw new Error(what); } } as unknown as CudaContext;
  const a = { q: 0x10000, k: 0x20000, v: 0x30000, qPos: 0, kPos: 0, Sq: 300, Sk: 500, H: 32, Hk: 8, D: 128, dtype: 'bfloat16' as const, causal: true, window: 0, sinks: 0, scale: 0.1 };
  const maps = fwdTensorMaps(ctx, a)!;
  assert.equal(maps.length, 3 * 128);
  assert.equal(koffi.address(maps) % 64n, 0n, 'the maps start 64-byte aligned');
  assert.equal(calls.length, 3);
  const u64 = (b: unknown) => Array.from(new BigUint64Array((b as Buffer).buffer, (b as Buffer).byteOffset, (b as Buffer).byteLength / 8)).map(Number);
  const u32 = (b: unknown) => Array.from(new Uint32Array((b as Buffer).buffer, (b as Buffer).byteOffset, (b as Buffer).byteLength / 4));
  const want = [[a.q, a.Sq, a.H], [a.k, a.Sk, a.Hk], [a.v, a.Sk, a.Hk]];
  calls.forEach(({ map, args }, i) => {
    const [dtype, rank, ptr, dims, strides, box, elem, interleave, swizzle, l2, oob] = args;
    assert.equal(koffi.address(map) - koffi.address(maps), BigInt(i * 128), `map ${i} in its slot`);
    assert.deepEqual([dtype, rank, ptr, interleave, swizzle, l2, oob], [1, 3, want[i][0], 0, 3, 3, 0]);
    assert.deepEqual(u64(dims), [a.D, want[i][2], want[i][1]]);
    assert.deepEqual(u64(strides), [a.D * 2, want[i][2] * a.D * 2], 'rank - 1 strides in bytes');
    assert.deepEqual(u32(box), [64, 1, 128]);
    assert.deepEqual(u32(elem), [1, 1, 1]);
    assert.equal(maps[i * 128], i + 1, 'the driver wrote into the slot passed');
  });
  assert.deepEqual(checked.map((c) => c.split('(')[0]), ['cuTensorMapEncodeTiled', 'cuTensorMapEncodeTiled', 'cuTensorMapEncodeTiled']);
  assert.match(checked[1], /k \[500, 8, 128\]/);
  assert.equal(fwdTensorMaps({ drv: {}, check: () => {} } as unknown as CudaContext, a), null);
  // hw's 192-row query tiles: only q's box changes.
  calls.length = 0;
  fwdTensorMaps(ctx, { ...a, D: 64 }, 192);
  assert.deepEqual(calls.map(({ args }) => u32(args[5])), [[64, 1, 192], [64, 1, 128], [64, 1, 128]]);
  // hl's 176-row key tiles: k's and v's boxes.
  calls.length = 0;
  fwdTensorMaps(ctx, { ...a, k: a.k + 0x1000 }, 128, 176);
  assert.deepEqual(calls.map(({ args }) => u32(args[5])), [[64, 1, 128], [64, 1, 176], [64, 1, 176]]);
});

test('fwdTensorMaps: a set of arguments is encoded once and its maps reused (the last 64 sets kept); a driver error is not kept', () => {
  let encodes = 0, fail = false;
  const drv = { cuTensorMapEncodeTiled: (map: Buffer) => (encodes++, map.fill(encodes & 0xff), fail ? 1 : 0) };
  const ctx = { drv, check: (what: string, code: number) => { if (code !== 0) throw new Error(what); } } as unknown as CudaContext;
  const base = 0x7000_0000_0000; // addresses no other test uses
  const a = { q: base, k: base + 0x100000, v: base + 0x200000, qPos: 0, kPos: 0, Sq: 4096, Sk: 4096, H: 32, Hk: 8, D: 128, dtype: 'bfloat16' as const, causal: true, window: 0, sinks: 0, scale: 0.1 };
  const first = fwdTensorMaps(ctx, a)!;
  assert.equal(encodes, 3);
  const bytes = Buffer.from(first);
  assert.equal(fwdTensorMaps(ctx, a), first, 'the same arguments: the same maps, not encoded again');
  assert.equal(encodes, 3);
  for (const change of [{ v: a.v + 0x1000 }, { Sk: 4097 }, { Hk: 4 }, { D: 64 }]) {
    const before: number = encodes;
    assert.notEqual(fwdTensorMaps(ctx, { ...a, ...change }), first, `${JSON.stringify(change)}: other maps`);
    assert.equal(encodes, before + 3, `${JSON.stringify(change)}: encoded`);
  }
  assert.notEqual(fwdTensorMaps(ctx, a, 192), first, 'another query tile: another q map');
  // 64 other sets push the first out.
  for (let i = 1; i <= 64; i++) fwdTensorMaps(ctx, { ...a, k: a.k + i * 0x10000 });
  const beforeAgain: number = encodes;
  const again = fwdTensorMaps(ctx, a)!;
  assert.equal(encodes, beforeAgain + 3, 'evicted after 64 newer sets: encoded again');
  assert.equal(again.length, bytes.length);
  fail = true;
  assert.throws(() => fwdTensorMaps(ctx, { ...a, q: base + 0x900000 }));
  fail = false;
  const n = encodes;
  fwdTensorMaps(ctx, { ...a, q: base + 0x900000 });
  assert.ok(encodes > n, 'a failed encode is not cached');
});

test('bwdTensorMaps: dq [Sq, H, D] fp32 (box 32 x 1 x 16) for the backward\'s TMA reduce-adds, q and dO 16-bit (box 64 x 1 x the query tile: 128 rows at D=64, 64 at D=128) for its TMA loads; 128-byte swizzle, 64-byte aligned; null without the driver function', () => {
  const calls: unknown[][] = [];
  const drv = { cuTensorMapEncodeTiled: (_map: Buffer, ...args: unknown[]) => (calls.push(args), 0) };
  const ctx = { drv, check: (what: string, code: number) => assert.equal(code, 0, what) } as unknown as CudaContext;
  const a = { dq: 0x40000, q: 0x50000, dO: 0x60000, Sq: 333, H: 8, D: 64 };
  const maps = bwdTensorMaps(ctx, a)!;
  assert.equal(maps.length, 3 * 128);
  assert.equal(koffi.address(maps) % 64n, 0n);
  const u64 = (b: unknown) => Array.from(new BigUint64Array((b as Buffer).buffer, (b as Buffer).byteOffset, (b as Buffer).byteLength / 8)).map(Number);
  const u32 = (b: unknown) => Array.from(new Uint32Array((b as Buffer).buffer, (b as Buffer).byteOffset, (b as Buffer).byteLength / 4));
  const want = [[7, a.dq, 4, [32, 1, 16]], [1, a.q, 2, [64, 1, 128]], [1, a.dO, 2, [64, 1, 128]]] as const;
  calls.forEach(([dtype, rank, ptr, dims, strides, box, elem, interleave, swizzle], i) => {
    const [wantType, wantPtr, bytes, wantBox] = want[i];
    assert.deepEqual([dtype, rank, ptr, interleave, swizzle], [wantType, 3, wantPtr, 0, 3], `map ${i}`);
    assert.deepEqual(u64(dims), [64, 8, 333]);
    assert.deepEqual(u64(strides), [64 * bytes, 8 * 64 * bytes]);
    assert.deepEqual(u32(box), wantBox);
    assert.deepEqual(u32(elem), [1, 1, 1]);
  });
  assert.equal(bwdTensorMaps({ drv: {}, check: () => {} } as unknown as CudaContext, a), null);
  calls.length = 0;
  bwdTensorMaps(ctx, { ...a, D: 128 });
  assert.deepEqual(calls.map((c) => u32(c[5])), [[32, 1, 16], [64, 1, 64], [64, 1, 64]]);
});

test('wgmmaBackward: ht by default on sm_90 for tensor-core tags, h with RINGATTN_WGMMA_BWD=1, mma.sync with =0; unknown values rejected', () => {
  const env = (v: string | undefined, no?: string) => ({ RINGATTN_WGMMA_BWD: v, RINGATTN_NO_WGMMA: no });
  withEnv(env(undefined), () => assert.equal(wgmmaBackward('mma16-d128', [9, 0]), 'ht', 'the default on Hopper'));
  withEnv(env(''), () => assert.equal(wgmmaBackward('mma16-d64', [9, 0]), 'ht', 'empty is the default'));
  withEnv(env('0'), () => assert.equal(wgmmaBackward('mma16-d128', [9, 0]), null));
  withEnv(env(undefined), () => assert.equal(wgmmaBackward('mma16-d64', [8, 9]), null, 'sm_90a only'));
  withEnv(env('2'), () => assert.equal(wgmmaBackward('mma16-d64', [9, 0]), 'ht'));
  withEnv(env('1'), () => {
    assert.equal(wgmmaBackward('mma16-d128', [9, 0]), 'h');
    assert.equal(wgmmaBackward('mma16-d64', [9, 0]), 'h');
    assert.equal(wgmmaBackward('generic', [9, 0]), null);
    assert.equal(wgmmaBackward('mma16-d128', [8, 0]), null);
  });
  withEnv(env('1', '1'), () => assert.equal(wgmmaBackward('mma16-d128', [9, 0]), null));
  withEnv(env('yes'), () => assert.throws(() => wgmmaBackward('mma16-d128', [9, 0]), /RINGATTN_WGMMA_BWD: expected 0 \(mma.sync\), 1 \(h\) or 2 \(ht\), got 'yes'/));
});
