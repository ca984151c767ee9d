import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  plan, formatPlan, pairsPerRank, formatBytes, formatSeconds, DEVICE_PRESETS, BYTES_PER_ELEMENT,
  type PlanOptions,
} from '../../src/core/plan.js';
import { LAYOUTS, shardPositions } from '../../src/core/layout.js';
import { InputError } from '../../src/core/errors.js';

const MiB = 2 ** 20;
const GiB = 2 ** 30;

/** |a - b| <= rel·|b|, for times (floating-point divisions). */
function close(a: number, b: number, rel = 1e-12, msg?: string): void {
  assert.ok(Math.abs(a - b) <= rel * Math.abs(b), `${msg ?? ''} ${a} != ${b}`);
}

// The running example: S = 131072 = 2^17 on P = 8 H200s, H = 32, Hk = 8, D = 128, bf16.
const base: PlanOptions = { seq: 131072, heads: 32, kvHeads: 8, headDim: 128, devices: 8 };

test('presets: one table, bytes per element', () => {
  assert.equal(DEVICE_PRESETS.h200.tflops, 600);
  assert.equal(DEVICE_PRESETS.h200.linkGBps, 300);
  assert.equal(DEVICE_PRESETS.h200.memoryGB, 141);
  assert.equal(DEVICE_PRESETS.h200.hbmGBps, 4800);
  assert.equal(DEVICE_PRESETS.h100.memoryGB, 80);
  assert.equal(DEVICE_PRESETS.h100.hbmGBps, 3350);
  assert.equal(DEVICE_PRESETS.a100.hbmGBps, 2039);
  assert.equal(DEVICE_PRESETS.cpu.memoryGB, 24);
  assert.deepEqual(BYTES_PER_ELEMENT, { bf16: 2, fp16: 2, fp32: 4 });
});

test('KV cache of 1M tokens x 32 KV heads x 128 dims in bf16: 16 GiB per layer, 512 GiB for 32 layers', () => {
  // 2 (K and V) · 2^20 tokens · 2^5 heads · 2^7 dims · 2 bytes = 2^34 bytes = 16 GiB per layer;
  // 32 layers: 2^39 = 512 GiB.
  const p = plan({ seq: 2 ** 20, heads: 32, kvHeads: 32, headDim: 128, devices: 1, layers: 32, mode: 'decode' });
  assert.equal(p.singleDevice.kvCachePerLayer, 16 * GiB);
  assert.equal(p.singleDevice.kvCacheAllLayers, 512 * GiB);
  assert.equal(p.kvCachePerLayerPerDevice, 16 * GiB);
  assert.equal(p.memory.kvCache, 512 * GiB);
  // Decode memory besides the cache: one query token per sequence.
  // q = o = 32·128·2 = 8192, lse = 32·4 = 128, fp32 O accumulator = 32·128·4 = 16384.
  assert.equal(p.memory.q, 8192);
  assert.equal(p.memory.o, 8192);
  assert.equal(p.memory.lse, 128);
  assert.equal(p.memory.oAccum, 16384);
  assert.equal(p.memory.kv, 0);
  assert.equal(p.memory.ringBlocks, 0);
  assert.equal(p.memory.total, 512 * GiB + 8192 + 8192 + 128 + 16384);
  assert.equal(p.memory.fits, false); // 549.8e9 > 141e9
  // 2^39/P + 24704 <= 141e9: P = 3 gives c = 349526, 349526 · 524288 B/token = 183.3e9 (no);
  // P = 4 gives 2^37 = 137.4e9 (yes).
  assert.equal(p.minDevicesToFit, 4);
  // One decode step reads the 16 GiB of a layer at 4.8 TB/s: 2^34 / 4.8e12 = 3.579 ms per layer.
  assert.ok(p.decode);
  close(p.decode.memoryTimePerLayerS, 2 ** 34 / 4.8e12);
  assert.equal(p.decode.collectiveTimePerLayerS, 0);
  close(p.decode.timePerTokenS, (32 * 2 ** 34) / 4.8e12);
  close(p.singleDevice.timePerLayerS, 2 ** 34 / 4.8e12);
});

test('decode on a ring of 8: the cache splits, a small merge is added', () => {
  const p = plan({ seq: 2 ** 20, heads: 32, kvHeads: 8, headDim: 128, devices: 8, layers: 32, mode: 'decode' });
  // c = 2^17; per layer 2·2^17·8·128·2 = 2^29 = 512 MiB; 32 layers = 16 GiB.
  assert.equal(p.tokensPerDevice, 2 ** 17);
  assert.equal(p.memory.kvCache, 16 * GiB);
  assert.ok(p.decode);
  assert.equal(p.decode.kvBytesReadPerLayer, 512 * MiB);
  close(p.decode.memoryTimePerLayerS, 2 ** 29 / 4.8e12);
  // merge: ceil(log2 8) = 3 latencies of 10 us + 7 partials of 32·129·4 bytes at 300 GB/s.
  close(p.decode.collectiveTimePerLayerS, 3 * 10e-6 + (7 * 32 * 129 * 4) / 300e9);
  // compute 4·c·D·H = 4·2^17·128·32 = 2^31 FLOP at 600 TFLOP/s is less than the read.
  assert.equal(p.decode.flopsPerLayer, 2 ** 31);
  close(p.decode.timePerLayerS, 2 ** 29 / 4.8e12 + 3 * 10e-6 + (7 * 32 * 129 * 4) / 300e9);
  assert.equal(p.forward, null);
});

test('prefill memory terms, S = 131072 on 8 x h200 (hand-computed)', () => {
  const p = plan(base);
  assert.equal(p.options.dtype, 'bf16');
  assert.equal(p.options.device, 'h200');
  assert.equal(p.tokensPerDevice, 16384); // 131072 / 8
  const m = p.memory;
  assert.equal(m.q, 128 * MiB); // 16384·32·128·2 = 2^27
  assert.equal(m.kv, 64 * MiB); // 2·16384·8·128·2 = 2^26
  assert.equal(m.o, 128 * MiB);
  assert.equal(m.lse, 2 * MiB); // 16384·32·4 = 2^21
  assert.equal(m.ringBlocks, 128 * MiB); // 2 blocks in flight · 64 MiB
  assert.equal(m.oAccum, 256 * MiB); // 16384·32·128·4 = 2^28
  assert.equal(m.dO + m.dQAccum + m.dKVAccum + m.savedActivations + m.kvCache, 0);
  assert.equal(m.total, (128 + 64 + 128 + 2 + 128 + 256) * MiB); // 706 MiB
  assert.equal(m.total, m.terms.reduce((s, t) => s + t.bytes, 0));
  assert.equal(m.capacity, 141e9);
  assert.equal(m.fits, true);
  assert.equal(p.minDevicesToFit, 1);
  // One device alone: c = S, no ring blocks: 1 GiB + 512 MiB + 1 GiB + 16 MiB + 2 GiB.
  assert.equal(p.singleDevice.memory.total, 1 * GiB + 512 * MiB + 1 * GiB + 16 * MiB + 2 * GiB);
  assert.equal(p.singleDevice.kvCachePerLayer, 512 * MiB);
});

test('fp32 has no separate O accumulator; batch multiplies every term', () => {
  const p = plan({ ...base, dtype: 'fp32', batch: 2 });
  assert.equal(p.memory.oAccum, 0);
  assert.equal(p.memory.q, 2 * 16384 * 32 * 128 * 4);
  assert.equal(p.memory.kv, 2 * 2 * 16384 * 8 * 128 * 4);
  assert.equal(p.memory.lse, 2 * 16384 * 32 * 4);
});

test('train adds dO, fp32 dQ, travelling fp32 dK/dV and the other layers\' saved activations', () => {
  const p = plan({ ...base, mode: 'train', layers: 4 });
  const m = p.memory;
  assert.equal(m.dO, 128 * MiB); // like Q
  assert.equal(m.dQAccum, 256 * MiB); // 16384·32·128·4
  assert.equal(m.dKVAccum, 256 * MiB); // double-buffered: 2 · (2·16384·8·128·4 = 2^27)
  assert.equal(m.savedActivations, 3 * (128 + 64 + 128 + 2) * MiB); // L-1 = 3 other layers
  assert.equal(m.layerActivations, 0); // no mlpHidden
  assert.equal(m.total, (706 + 128 + 256 + 256 + 966) * MiB);
  // with mlpHidden 14336, hidden 4096: 4 layers · 16384 · (2·4096 + 2·14336) · 2 bytes
  const q = plan({ ...base, mode: 'train', layers: 4, mlpHidden: 14336 });
  assert.equal(q.options.hiddenSize, 32 * 128);
  assert.equal(q.memory.layerActivations, 4 * 16384 * (2 * 4096 + 2 * 14336) * 2);
  // backward step: 2.5x compute; transfer KV (64 MiB) + fp32 dK/dV (128 MiB)
  assert.ok(p.backward && p.forward);
  assert.equal(p.backward.transferBytesPerStep, 192 * MiB);
  assert.equal(p.backward.flopsPerStep, 2.5 * p.forward.flopsPerStep);
  close(p.timePerLayerS, p.forward.timeS + p.backward.timeS);
  close(p.timeAllLayersS, 4 * p.timePerLayerS);
  // train: 3.5x forward on one device
  close(p.singleDevice.timePerLayerS, (3.5 * p.flops.forwardTotal) / 600e12);
});

test('least tokens per device to hide a transfer (the overlap condition)', () => {
  // non-causal: 600e12 / 300e9 = 2000 FLOP per byte; 2000 · 2·8·2 / (4·32) = 2000 · 32/128 = 500
  const nc = plan({ ...base, causal: false });
  assert.equal(nc.overlap.flopsPerByte, 2000);
  assert.equal(nc.overlap.stepPairFraction, 1);
  assert.equal(nc.overlap.cMin, 500);
  assert.equal(nc.overlap.seqMin, 4000);
  // causal zigzag: a non-diagonal step computes half a block, so c_min doubles: 1000, S_min 8000
  const zz = plan(base);
  assert.equal(zz.overlap.stepPairFraction, 0.5);
  assert.equal(zz.overlap.cMin, 1000);
  assert.equal(zz.overlap.seqMin, 8000);
  assert.equal(zz.overlap.hidden, true); // 16384 >= 1000
  // causal contiguous: the busiest rank computes whole blocks off the diagonal: 500
  assert.equal(plan({ ...base, layout: 'contiguous' }).overlap.cMin, 500);
  // backward: 2000 · 2·8·(2+4) / (2.5·4·32·0.5) = 192000 / 160 = 1200; train S_min = 1200·8
  const tr = plan({ ...base, mode: 'train' });
  assert.equal(tr.overlap.cMinBackward, 1200);
  assert.equal(tr.overlap.seqMin, 9600);
  // overrides: 300 TFLOP/s halves it; a 600 GB/s link halves it again
  assert.equal(plan({ ...base, causal: false, tflops: 300 }).overlap.cMin, 250);
  assert.equal(plan({ ...base, causal: false, tflops: 300, linkGBps: 600 }).overlap.cMin, 125);
  // MHA (Hk = H) sends 4x the bytes of GQA-4 per FLOP: 2000 · 2·32·2 / (4·32) = 2000
  assert.equal(plan({ ...base, kvHeads: 32, causal: false }).overlap.cMin, 2000);
});

test('forward timing: hidden at c = 16384, exposed at c = 512 (hand-computed)', () => {
  const p = plan(base);
  assert.ok(p.forward);
  const f = p.forward;
  // 4·D·H = 4·128·32 = 2^14 FLOP per pair; zigzag off-diagonal step: c²/2 = 2^27 pairs -> 2^41 FLOP
  assert.equal(f.flopsPerStep, 2 ** 41);
  // diagonal step: c(c+1)/2 = 2^13·16385 pairs
  assert.equal(f.flopsDiagonalStep, 2 ** 14 * 2 ** 13 * 16385);
  close(f.computeStepS, 2 ** 41 / 600e12); // 3.665 ms
  assert.equal(f.transferBytesPerStep, 64 * MiB);
  close(f.transferStepS, 2 ** 26 / 300e9); // 224 us
  assert.equal(f.steps, 8);
  assert.equal(f.transfers, 7);
  assert.equal(f.hidden, true);
  assert.equal(f.overlapFraction, 1);
  assert.equal(f.exposedTransferS, 0);
  close(f.timeS, (2 ** 27 * 16385 + 7 * 2 ** 41) / 600e12);
  assert.equal(p.hidden, true);
  close(p.timePerLayerS, f.timeS);

  // S = 4096: c = 512 < 1000. Compute 2^14 · 2^17 = 2^31 FLOP = 3.58 us; transfer 2·512·8·128·2 =
  // 2^21 bytes = 6.99 us. Hidden fraction (2^31/6e14)/(2^21/3e11) = 1024/2000 = 0.512.
  const s = plan({ ...base, seq: 4096 });
  assert.ok(s.forward);
  assert.equal(s.forward.hidden, false);
  assert.equal(s.hidden, false);
  assert.equal(s.overlap.hidden, false);
  close(s.forward.overlapFraction, 0.512);
  close(s.forward.exposedTransferS, 7 * (2 ** 21 / 300e9 - 2 ** 31 / 600e12), 1e-9);
  close(s.forward.timeS, (2 ** 14 * 256 * 513) / 600e12 + 7 * (2 ** 21 / 300e9), 1e-12);

  // one device: no transfers, all compute
  const one = plan({ ...base, devices: 1 });
  assert.ok(one.forward);
  assert.equal(one.forward.transfers, 0);
  assert.equal(one.forward.hidden, true);
  assert.equal(one.memory.ringBlocks, 0);
  close(one.forward.timeS, one.flops.forwardTotal / 600e12);
});

test('causal fraction and FLOPs: (S(S+1)/2)/S^2', () => {
  const p = plan(base);
  assert.equal(p.flops.causalFraction, 131073 / 262144); // (S+1)/(2S)
  // 4·S²·D·H·frac = 2^14 · S(S+1)/2 = 2^14 · 2^16 · 131073
  assert.equal(p.flops.forwardTotal, 2 ** 30 * 131073);
  assert.equal(p.flops.backwardTotal, 2.5 * 2 ** 30 * 131073);
  assert.equal(plan({ ...base, causal: false }).flops.causalFraction, 1);
  assert.equal(plan({ ...base, causal: false }).flops.forwardTotal, 2 ** 14 * 2 ** 34);
  assert.equal(plan({ seq: 4, heads: 1, kvHeads: 1, headDim: 1, devices: 1 }).flops.causalFraction, 10 / 16);
});

test('contiguous vs zigzag: the busiest rank', () => {
  // zigzag, S = 2^17 on 8: chunk k (8192 tokens) has Σ(t+1) = 8192·(8192k) + 8192·8193/2;
  // rank r holds k = r and 15-r: 8192·8192·15 + 8192·8193 = 8192·131073 for every r = total/8.
  const zz = plan(base);
  assert.equal(zz.flops.forwardBusiest, 2 ** 14 * 8192 * 131073);
  assert.equal(zz.flops.forwardBusiest, zz.flops.forwardPerDeviceMean);
  assert.equal(zz.flops.imbalance, 1);
  // contiguous: rank 7 holds 114688..131071: c·7c + c(c+1)/2 pairs with c = 16384.
  const ct = plan({ ...base, layout: 'contiguous' });
  const c = 16384;
  assert.equal(ct.flops.busiestRank, 7);
  assert.equal(ct.flops.forwardBusiest, 2 ** 14 * (7 * c * c + (c * (c + 1)) / 2));
  close(ct.flops.imbalance, (7 * c * c + (c * (c + 1)) / 2) / (8192 * 131073)); // about 15/8
  // its ring time: diagonal + 7 whole blocks, the busiest rank's work
  assert.ok(ct.forward);
  close(ct.forward.timeS, ct.flops.forwardBusiest / 600e12);
});

test('pairsPerRank matches the positions layout.ts hands out', () => {
  for (const layout of LAYOUTS)
    for (const S of [1, 7, 64, 101, 1000])
      for (const P of [1, 2, 3, 4, 7, 9])
        for (const causal of [true, false]) {
          const want = shardPositions(S, P, layout).map((pos) => [...pos].reduce((s, t) => s + (causal ? t + 1 : S), 0));
          assert.deepEqual(pairsPerRank(S, P, layout, causal), want, `${layout} S=${S} P=${P} causal=${causal}`);
        }
});

test('cpu preset defaults to fp32 and its own numbers', () => {
  const p = plan({ seq: 65536, heads: 8, kvHeads: 8, headDim: 64, devices: 4, device: 'cpu', causal: false });
  assert.equal(p.options.dtype, 'fp32');
  assert.equal(p.hardware.tflops, 0.1);
  assert.equal(p.hardware.linkGBps, 10);
  assert.equal(p.memory.capacity, 24e9);
  // 0.1e12 / 10e9 = 10 FLOP per byte; 10 · 2·8·4 / (4·8) = 20 tokens
  assert.equal(p.overlap.cMin, 20);
  assert.equal(plan({ ...base, memoryGB: 0.5 }).memory.fits, false); // 706 MiB > 0.5 GB
});

test('validation errors name the argument', () => {
  const bad: Array<[Record<string, unknown>, string]> = [
    [{ heads: 0 }, 'heads'],
    [{ seq: 1.5 }, 'seq'],
    [{ seq: -1 }, 'seq'],
    [{ kvHeads: 3 }, 'kvHeads'],
    [{ kvHeads: 0 }, 'kvHeads'],
    [{ headDim: 0 }, 'headDim'],
    [{ devices: 0 }, 'devices'],
    [{ layers: 0 }, 'layers'],
    [{ batch: 2.5 }, 'batch'],
    [{ dtype: 'int8' }, 'dtype'],
    [{ mode: 'infer' }, 'mode'],
    [{ device: 'tpu' }, 'device'],
    [{ layout: 'ring' }, 'layout'],
    [{ tflops: 0 }, 'tflops'],
    [{ linkGBps: -3 }, 'linkGBps'],
    [{ linkGBps: 1e308 }, 'linkGBps'], // (its sums overflowed to NaN in the overlap lines)
    [{ tflops: 1e-300 }, 'tflops'],
    [{ memoryGB: Number.NaN }, 'memoryGB'],
    [{ causal: 'yes' }, 'causal'],
    [{ mlpHidden: 0 }, 'mlpHidden'],
  ];
  for (const [patch, arg] of bad) {
    assert.throws(
      () => plan({ ...base, ...patch } as unknown as PlanOptions),
      (e: unknown) => e instanceof InputError && e.arg === arg && e.message.startsWith(`${arg}: `),
      `${JSON.stringify(patch)} should name ${arg}`,
    );
  }
});

test('formatPlan prints the key lines', () => {
  const text = formatPlan(plan(base));
  for (const want of [
    'ringattn plan: prefill, causal, zigzag, bf16 on 8 x h200',
    'tokens per device',
    '16,384',
    'Q shard',
    '128.00 MiB',
    'ring KV blocks',
    '706.00 MiB',
    'fits',
    'one device alone',
    'least tokens per device',
    '1,000',
    'least sequence length',
    '8,000',
    'hidden',
  ]) {
    assert.ok(text.includes(want), `missing '${want}' in\n${text}`);
  }
  // values right-aligned: the memory rows end their value at the same column
  const mem = text.split('\n').filter((l) => /^ {2}(Q shard|K\+V shard|LSE)/.test(l));
  assert.equal(mem.length, 3);
  assert.equal(new Set(mem.map((l) => l.indexOf('MiB'))).size, 1);
  const t = formatPlan(plan({ ...base, seq: 4096 }));
  assert.ok(t.includes('NOT hidden'), t);
  const d = formatPlan(plan({ seq: 2 ** 20, heads: 32, kvHeads: 32, headDim: 128, devices: 1, layers: 32, mode: 'decode' }));
  assert.ok(d.includes('16.00 GiB') && d.includes('512.00 GiB') && d.includes('does NOT fit') && d.includes('time per token'), d);
});

test('units', () => {
  assert.equal(formatBytes(16 * GiB), '16.00 GiB');
  assert.equal(formatBytes(706 * MiB), '706.00 MiB');
  assert.equal(formatBytes(128), '128 B');
  assert.equal(formatSeconds(3.665e-3), '3.67 ms');
  assert.equal(formatSeconds(2.237e-4), '224 us');
  assert.equal(formatSeconds(0), '0 s');
});
