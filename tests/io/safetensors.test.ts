import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { InputError } from '../../src/core/errors.js';
import { type DType, type Tensor, bf16BitsToF32, f16BitsToF32, f32ToBf16Bits, f32ToF16Bits, numel } from '../../src/core/tensor.js';
import {
  encodeSafetensors,
  parseSafetensors,
  readSafetensors,
  readSafetensorsIndex,
  writeSafetensors,
} from '../../src/io/safetensors.js';

function tmp(): string {
  return mkdtempSync(join(tmpdir(), 'ringattn-st-'));
}

function rejects(fn: () => unknown, ...fragments: string[]): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof InputError, `expected InputError, got ${String(err)}`);
    for (const f of fragments) assert.ok(err.message.includes(f), `message ${JSON.stringify(err.message)} lacks ${JSON.stringify(f)}`);
    return true;
  });
}

/** Hand-built safetensors bytes from a header (object or raw JSON text) and a data buffer. */
function stBytes(header: unknown, data: Uint8Array = new Uint8Array(0)): Uint8Array {
  const json = Buffer.from(typeof header === 'string' ? header : JSON.stringify(header), 'utf8');
  const out = new Uint8Array(8 + json.length + data.length);
  new DataView(out.buffer).setBigUint64(0, BigInt(json.length), true);
  out.set(json, 8);
  out.set(data, 8 + json.length);
  return out;
}

const bytesOf = (a: ArrayBufferView) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);

function sample(dtype: DType, n: number): Tensor['data'] {
  const f = Array.from({ length: n }, (_, i) => ((i * 37) % 11) - 5 + i / 16);
  switch (dtype) {
    case 'float32': return Float32Array.from(f);
    case 'float64': return Float64Array.from(f, (x) => x / 3);
    case 'float16': return Uint16Array.from(f, (x) => f32ToF16Bits(x));
    case 'bfloat16': return Uint16Array.from(f, (x) => f32ToBf16Bits(x));
    case 'int32': return Int32Array.from(f, (x) => Math.round(x * 1e6));
    case 'int64': return BigInt64Array.from(f, (x) => BigInt(Math.round(x)) * 2n ** 45n);
    case 'uint8': return Uint8Array.from(f, (x) => Math.abs(Math.round(x)));
  }
}

test('safetensors: round trips every dtype and shape with metadata; aligned layout', () => {
  const dtypes: DType[] = ['float32', 'float64', 'float16', 'bfloat16', 'int32', 'int64', 'uint8'];
  const shapes = [[], [5], [2, 3, 4, 5], [0], [3, 0, 2]];
  const tensors: Record<string, Tensor> = {};
  for (const dtype of dtypes) {
    shapes.forEach((shape, i) => (tensors[`${dtype}.${i}`] = { dtype, shape, data: sample(dtype, numel(shape)) } as Tensor));
  }
  const bytes = encodeSafetensors(tensors, { format: 'pt', note: 'héllo' });
  const n = Number(new DataView(bytes.buffer).getBigUint64(0, true));
  assert.equal(n % 8, 0, 'header padded to a multiple of 8');
  assert.equal(bytes[8 + n - 1], 0x20, 'padding is spaces');
  const f = parseSafetensors(bytes, 'm.safetensors');
  assert.deepEqual(f.metadata, { format: 'pt', note: 'héllo' });
  assert.deepEqual(f.names().sort(), Object.keys(tensors).sort());
  for (const [name, t] of Object.entries(tensors)) {
    const e = f.tensors.get(name)!;
    const size = t.data.BYTES_PER_ELEMENT;
    assert.equal(e.offset % size, 0, `${name} aligned to its item size`);
    assert.equal(e.byteLength, t.data.byteLength);
    const back = f.getTensor(name);
    assert.equal(back.dtype, t.dtype);
    assert.deepEqual(back.shape, t.shape);
    assert.deepEqual(back.data, t.data, name);
    assert.equal(back.data.byteOffset % size, 0);
  }
  // no metadata: no __metadata__ key at all
  const plain = encodeSafetensors({ x: { dtype: 'float32', shape: [1], data: Float32Array.of(1) } });
  assert.ok(!Buffer.from(plain).toString('latin1').includes('__metadata__'));
  assert.deepEqual(parseSafetensors(plain, 'p').metadata, {});
});

test('safetensors: getFloat32 converts F16, BF16 and F64; refuses integers', () => {
  const vals = [1, -2.5, 0.333, 65504, -1e-5, 0];
  const h = Uint16Array.from(vals, f32ToF16Bits);
  const b = Uint16Array.from(vals, f32ToBf16Bits);
  const d = Float64Array.from(vals);
  const f = parseSafetensors(encodeSafetensors({
    h: { dtype: 'float16', shape: [6], data: h },
    b: { dtype: 'bfloat16', shape: [2, 3], data: b },
    d: { dtype: 'float64', shape: [6], data: d },
    i: { dtype: 'int64', shape: [1], data: BigInt64Array.of(1n) },
  }), 'w.safetensors');
  assert.deepEqual(f.getFloat32('h'), Float32Array.from(h, f16BitsToF32));
  assert.deepEqual(f.getFloat32('b'), Float32Array.from(b, bf16BitsToF32));
  assert.deepEqual(f.getFloat32('d'), Float32Array.from(vals));
  rejects(() => f.getFloat32('i'), 'w.safetensors', "tensor 'i' has dtype I64", 'expected a floating-point dtype');
  rejects(() => f.getTensor('nope'), 'w.safetensors', "no tensor named 'nope'", 'the file holds: ');
});

test('safetensors: a tensor named __proto__ round trips; data of another dtype than declared is refused', () => {
  // (an object literal's __proto__ would set the prototype: the record is built with it as a key)
  const rec = Object.create(null) as Record<string, Tensor>;
  rec['__proto__'] = { dtype: 'float32', shape: [2], data: Float32Array.of(4, 5) };
  const f = parseSafetensors(encodeSafetensors(rec), 'p.safetensors');
  assert.deepEqual(f.names(), ['__proto__']);
  assert.deepEqual([...f.getFloat32('__proto__')], [4, 5]);
  assert.throws(() => encodeSafetensors({ w: { dtype: 'int64', shape: [2], data: new Int32Array(2) } as unknown as Tensor }, undefined, 'out'), (e: unknown) => e instanceof InputError && /^out: tensor 'w': dtype int64 holds a BigInt64Array, got Int32Array/.test(e.message));
});

test('safetensors index: a shard whose name starts with two dots is inside the directory', () => {
  const dir = tmp();
  writeSafetensors(join(dir, '..shard1.safetensors'), { w: { dtype: 'float32', shape: [2], data: Float32Array.of(1, 2) } });
  writeFileSync(join(dir, 'model.safetensors.index.json'), JSON.stringify({ metadata: {}, weight_map: { w: '..shard1.safetensors' } }));
  assert.deepEqual([...readSafetensorsIndex(dir).getFloat32('w')], [1, 2]);
  writeFileSync(join(dir, 'model.safetensors.index.json'), JSON.stringify({ metadata: {}, weight_map: { w: '../x.safetensors' } }));
  rejects(() => readSafetensorsIndex(dir), 'outside');
  rmSync(dir, { recursive: true, force: true });
});

test('safetensors: hand-built file with unsorted header, BOOL and an unpadded header', () => {
  const data = new Uint8Array(4 + 8 + 2);
  data.set(bytesOf(Float32Array.of(2.5)), 0);
  data.set(bytesOf(BigInt64Array.of(-3n)), 4);
  data.set([1, 0], 12);
  const f = parseSafetensors(stBytes({
    flags: { dtype: 'BOOL', shape: [2], data_offsets: [12, 14] },
    a: { dtype: 'F32', shape: [], data_offsets: [0, 4] },
    ids: { dtype: 'I64', shape: [1, 1], data_offsets: [4, 12] },
  }, data), 'h.safetensors');
  assert.deepEqual(f.names(), ['a', 'ids', 'flags'], 'file order');
  assert.deepEqual(f.getTensor('a'), { dtype: 'float32', shape: [], data: Float32Array.of(2.5) });
  assert.deepEqual(f.getTensor('ids').data, BigInt64Array.of(-3n)); // unaligned in the buffer: copied
  assert.deepEqual(f.getTensor('flags'), { dtype: 'uint8', shape: [2], data: Uint8Array.of(1, 0) });
});

test('safetensors: rejects bad files naming the file, the tensor and the expectation', () => {
  const F = 'bad.safetensors';
  const p = (h: unknown, d?: Uint8Array) => () => parseSafetensors(stBytes(h, d), F);
  const four = new Uint8Array(4);
  rejects(() => parseSafetensors(new Uint8Array(5), F), F, 'truncated', 'expected at least the 8-byte header length');
  const long = stBytes({ a: { dtype: 'F32', shape: [1], data_offsets: [0, 4] } }, four);
  new DataView(long.buffer).setBigUint64(0, 2n ** 40n, true);
  rejects(() => parseSafetensors(long, F), F, `header length ${2n ** 40n} exceeds`, 'expected a safetensors file');
  rejects(p('{"a": {'), F, 'not valid UTF-8 JSON', 'expected a safetensors JSON header');
  rejects(p('[1, 2]'), F, 'not a JSON object');
  rejects(p({ a: { dtype: 'F8_E4M3', shape: [4], data_offsets: [0, 4] } }, four), F, "tensor 'a'", 'unsupported dtype "F8_E4M3"', 'expected one of F32');
  rejects(p({ a: { dtype: 'F32', shape: [-1], data_offsets: [0, 4] } }, four), "tensor 'a'", 'expected an array of non-negative integers');
  rejects(p({ a: { dtype: 'F32', shape: [1], data_offsets: [0] } }, four), "tensor 'a'", 'expected [begin, end]');
  rejects(p({ a: { dtype: 'F32', shape: [1], data_offsets: [4, 0] } }, four), "tensor 'a'", 'expected begin <= end');
  rejects(p({ a: { dtype: 'F32', shape: [2], data_offsets: [0, 4] } }, four), F, "tensor 'a'", 'span 4 bytes; expected 8 for F32 [2]');
  rejects(p({ a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] } }, four), F, 'truncated', "tensor 'a'", 'expected end <= 4');
  rejects(p({ a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] }, b: { dtype: 'F32', shape: [1], data_offsets: [4, 8] } }, new Uint8Array(8)),
    F, "tensor 'b'", "overlaps tensor 'a'", 'expected disjoint data_offsets');
  rejects(p({ a: { dtype: 'F32', shape: [1], data_offsets: [4, 8] } }, new Uint8Array(8)), F, 'bytes [0, 4)', 'belong to no tensor', 'without gaps');
  rejects(p({ a: { dtype: 'F32', shape: [1], data_offsets: [0, 4] } }, new Uint8Array(6)), F, 'has 6 bytes but tensors cover 4', 'expected data_offsets to cover it exactly');
  rejects(p({ __metadata__: { n: 3 } }), F, "__metadata__['n']", 'expected a string value');
  rejects(p({ __metadata__: [] }), F, '__metadata__ is not an object');
  rejects(p({ a: 5 }), F, "tensor 'a'", 'expected { dtype, shape, data_offsets }');
  // a good file cut short
  const good = encodeSafetensors({ w: { dtype: 'float32', shape: [4], data: new Float32Array(4) } });
  rejects(() => parseSafetensors(good.subarray(0, good.length - 1), F), F, 'truncated', "tensor 'w'");
  // writer-side validation
  const t1 = { dtype: 'float32', shape: [2], data: Float32Array.of(1) } as Tensor;
  rejects(() => encodeSafetensors({ x: t1 }), "tensor 'x'", 'holds 1 elements; expected 2');
  rejects(() => encodeSafetensors({ __metadata__: t1 }), "'__metadata__' is reserved");
});

test('safetensors: files on disk; atomic write; missing file', () => {
  const dir = tmp();
  try {
    const path = join(dir, 'w.safetensors');
    writeSafetensors(path, { q: { dtype: 'bfloat16', shape: [2], data: Uint16Array.of(0x3f80, 0xc000) } }, { k: 'v' });
    const f = readSafetensors(path);
    assert.deepEqual(f.getFloat32('q'), Float32Array.of(1, -2));
    assert.deepEqual(readdirSync(dir), ['w.safetensors'], 'no temp left');
    rejects(() => readSafetensors(join(dir, 'none.safetensors')), 'none.safetensors', 'no such file');
    rejects(() => writeSafetensors(join(dir, 'no', 'x.safetensors'), {}, undefined, '--out'), '--out', 'does not exist');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('safetensors: sharded index fetches tensors across shards, with clear errors', () => {
  const dir = tmp();
  try {
    const t = (v: number): Tensor => ({ dtype: 'float32', shape: [2], data: Float32Array.of(v, -v) });
    writeSafetensors(join(dir, 'model-00001-of-00002.safetensors'), { 'a.weight': t(1), 'b.weight': t(2) });
    writeSafetensors(join(dir, 'model-00002-of-00002.safetensors'), { 'c.weight': t(3) });
    const index = {
      metadata: { total_size: 24 },
      weight_map: { 'a.weight': 'model-00001-of-00002.safetensors', 'b.weight': 'model-00001-of-00002.safetensors', 'c.weight': 'model-00002-of-00002.safetensors' },
    };
    writeFileSync(join(dir, 'model.safetensors.index.json'), JSON.stringify(index));
    const ix = readSafetensorsIndex(dir);
    assert.deepEqual(ix.names(), ['a.weight', 'b.weight', 'c.weight']);
    assert.deepEqual(ix.metadata, { total_size: 24 });
    assert.ok(ix.has('c.weight') && !ix.has('d'));
    assert.equal(ix.shardOf('c.weight'), join(dir, 'model-00002-of-00002.safetensors'));
    assert.deepEqual(ix.getFloat32('c.weight'), Float32Array.of(3, -3));
    assert.deepEqual(ix.getTensor('b.weight').data, Float32Array.of(2, -2));
    assert.deepEqual(ix.entry('a.weight').shape, [2]);
    ix.validate();
    rejects(() => ix.getTensor('d'), dir, "no tensor named 'd'", 'it lists: a.weight');

    // listed in the index but absent from its shard
    writeFileSync(join(dir, 'model.safetensors.index.json'), JSON.stringify({ weight_map: { ...index.weight_map, 'z.weight': 'model-00002-of-00002.safetensors' } }));
    const ix2 = readSafetensorsIndex(dir);
    rejects(() => ix2.getTensor('z.weight'), 'model-00002-of-00002.safetensors', "tensor 'z.weight' is listed in", 'absent from this shard');
    rejects(() => ix2.validate(), "tensor 'z.weight'");

    // a missing shard is reported when the index is opened
    writeFileSync(join(dir, 'model.safetensors.index.json'), JSON.stringify({ weight_map: { 'a.weight': 'model-00003-of-00003.safetensors' } }));
    rejects(() => readSafetensorsIndex(dir, '--model'), '--model', 'model-00003-of-00003.safetensors', 'is missing');
    writeFileSync(join(dir, 'model.safetensors.index.json'), JSON.stringify({ weight_map: { 'a.weight': '../evil.safetensors' } }));
    rejects(() => readSafetensorsIndex(dir), 'lies outside', 'expected a file name inside the model directory');
    writeFileSync(join(dir, 'model.safetensors.index.json'), JSON.stringify({ weights: {} }));
    rejects(() => readSafetensorsIndex(dir), "no 'weight_map' object");
    writeFileSync(join(dir, 'model.safetensors.index.json'), '{oops');
    rejects(() => readSafetensorsIndex(dir), 'is not valid JSON');

    // the index file's path works too
    writeFileSync(join(dir, 'model.safetensors.index.json'), JSON.stringify(index));
    assert.deepEqual(readSafetensorsIndex(join(dir, 'model.safetensors.index.json')).getFloat32('a.weight'), Float32Array.of(1, -1));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('safetensors: a directory with a single model.safetensors, or with neither', () => {
  const dir = tmp();
  try {
    rejects(() => readSafetensorsIndex(dir), dir, 'holds neither model.safetensors.index.json nor model.safetensors');
    rejects(() => readSafetensorsIndex(join(dir, 'nope')), 'does not exist', 'expected a model directory');
    writeSafetensors(join(dir, 'model.safetensors'), { e: { dtype: 'float16', shape: [1], data: Uint16Array.of(0x3c00) } }, { format: 'pt' });
    const ix = readSafetensorsIndex(dir);
    assert.deepEqual(ix.names(), ['e']);
    assert.deepEqual(ix.metadata, { format: 'pt' });
    assert.deepEqual(ix.getFloat32('e'), Float32Array.of(1));
    assert.equal(ix.shardOf('e'), join(dir, 'model.safetensors'));
    rejects(() => ix.getTensor('x'), "no tensor named 'x'");
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

const hasSafetensors = spawnSync('python3', ['-c', 'import numpy, safetensors.numpy'], { stdio: 'ignore' }).status === 0;

test('safetensors: interoperates with the reference implementation (Python safetensors)', (t) => {
  if (!hasSafetensors) {
    t.skip('python3 with numpy and safetensors is not available on this machine');
    return;
  }
  const dir = tmp();
  try {
    const py = (code: string) => {
      const r = spawnSync('python3', ['-c', code, dir], { encoding: 'utf8' });
      assert.equal(r.status, 0, r.stderr);
      return r.stdout;
    };
    py(`
import sys, numpy as np
from safetensors.numpy import save_file
d = sys.argv[1]
save_file({'w': (np.arange(6, dtype=np.float32).reshape(2, 3) / 4), 'h': np.array([1, -0.5], dtype=np.float16),
           'ids': np.array([[7, -8]], dtype=np.int64), 's': np.array(2.5, dtype=np.float64), 'e': np.zeros((0, 4), np.int32)},
          f'{d}/ref.safetensors', metadata={'format': 'np'})
`);
    const f = readSafetensors(join(dir, 'ref.safetensors'));
    assert.deepEqual(f.metadata, { format: 'np' });
    assert.deepEqual(f.getTensor('w'), { dtype: 'float32', shape: [2, 3], data: Float32Array.of(0, 0.25, 0.5, 0.75, 1, 1.25) });
    assert.deepEqual(f.getFloat32('h'), Float32Array.of(1, -0.5));
    assert.deepEqual(f.getTensor('ids').data, BigInt64Array.of(7n, -8n));
    assert.deepEqual(f.getTensor('s').shape, []);
    assert.deepEqual(f.getTensor('e').shape, [0, 4]);

    writeSafetensors(join(dir, 'ours.safetensors'), {
      q: { dtype: 'float32', shape: [2, 2], data: Float32Array.of(1, 2, 3, 4) },
      k: { dtype: 'float16', shape: [1], data: Uint16Array.of(0xc000) },
      t: { dtype: 'int64', shape: [], data: BigInt64Array.of(-5n) },
      z: { dtype: 'float64', shape: [0], data: new Float64Array(0) },
    }, { who: 'ringattn' });
    const out = py(`
import sys, json
from safetensors.numpy import load_file
from safetensors import safe_open
d = sys.argv[1]
m = load_file(f'{d}/ours.safetensors')
with safe_open(f'{d}/ours.safetensors', 'np') as fh: meta = fh.metadata()
print(json.dumps({k: [v.dtype.str, list(v.shape), v.ravel().tolist()] for k, v in sorted(m.items())} | {'meta': meta}))
`);
    assert.deepEqual(JSON.parse(out), {
      k: ['<f2', [1], [-2]], q: ['<f4', [2, 2], [1, 2, 3, 4]], t: ['<i8', [], [-5]], z: ['<f8', [0], []], meta: { who: 'ringattn' },
    });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
