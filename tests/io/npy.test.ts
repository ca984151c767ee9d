import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { InputError } from '../../src/core/errors.js';
import { type DType, type Tensor, f32ToF16Bits, numel } from '../../src/core/tensor.js';
import { encodeNpy, parseNpy, readNpy, readNpyFloat32, readNpyInt32, writeNpy } from '../../src/io/npy.js';

function tmp(): string {
  return mkdtempSync(join(tmpdir(), 'ringattn-npy-'));
}

/** Assert `fn` throws an InputError whose message contains every fragment. */
function rejects(fn: () => unknown, ...fragments: string[]): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof InputError, `expected InputError, got ${String(err)}`);
    for (const f of fragments) assert.ok(err.message.includes(f), `message ${JSON.stringify(err.message)} lacks ${JSON.stringify(f)}`);
    return true;
  });
}

/** Hand-built .npy bytes: magic, version, header length, header (padded to 64 unless told), data. */
function npyBytes(dict: string, data: Uint8Array, opts: { major?: number; pad?: boolean; utf8?: boolean } = {}): Uint8Array {
  const major = opts.major ?? 1;
  const pre = major === 1 ? 10 : 12;
  let header = opts.utf8 ? Buffer.from(dict + '\n', 'utf8') : Buffer.from(dict + '\n', 'latin1');
  if (opts.pad !== false) {
    const total = Math.ceil((pre + header.length) / 64) * 64;
    header = Buffer.concat([Buffer.from(dict, opts.utf8 ? 'utf8' : 'latin1'), Buffer.alloc(total - pre - header.length, ' '), Buffer.from('\n')]);
  }
  const out = new Uint8Array(pre + header.length + data.length);
  out.set([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, major, 0]);
  const dv = new DataView(out.buffer);
  if (major === 1) dv.setUint16(8, header.length, true);
  else dv.setUint32(8, header.length, true);
  out.set(header, pre);
  out.set(data, pre + header.length);
  return out;
}

const bytesOf = (a: ArrayBufferView) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);

function sample(dtype: DType, n: number): Tensor['data'] {
  const f = Array.from({ length: n }, (_, i) => (i % 7) - 3 + i / 8);
  switch (dtype) {
    case 'float32': return Float32Array.from(f);
    case 'float64': return Float64Array.from(f, (x) => x + 1e-12);
    case 'float16': case 'bfloat16': return Uint16Array.from(f, (x) => f32ToF16Bits(x));
    case 'int32': return Int32Array.from(f, (x) => Math.round(x * 1000) - 2 ** 30);
    case 'int64': return BigInt64Array.from(f, (x) => BigInt(Math.round(x)) * 2n ** 40n);
    case 'uint8': return Uint8Array.from(f, (x) => Math.abs(Math.round(x * 10)) % 256);
  }
}

test('npy: round trips every dtype and shape, data 64-byte aligned', () => {
  const dtypes: DType[] = ['float32', 'float64', 'float16', 'int32', 'int64', 'uint8'];
  const shapes = [[], [5], [2, 3, 4, 5], [0], [3, 0, 2], [1, 1]];
  for (const dtype of dtypes) {
    for (const shape of shapes) {
      const t = { dtype, shape, data: sample(dtype, numel(shape)) } as Tensor;
      const bytes = encodeNpy(t);
      assert.equal(bytes[6], 1, 'version 1.0');
      const hlen = bytes[8] | (bytes[9] << 8);
      assert.equal((10 + hlen) % 64, 0, 'data starts on a 64-byte boundary');
      assert.equal(bytes[10 + hlen - 1], 0x0a, 'header ends with newline');
      const back = parseNpy(bytes, 'x.npy');
      assert.equal(back.dtype, dtype);
      assert.deepEqual(back.shape, shape);
      assert.deepEqual(back.data, t.data, `${dtype} ${JSON.stringify(shape)}`);
    }
  }
});

test('npy: writeNpy/readNpy through a file; no temp files left', () => {
  const dir = tmp();
  try {
    const p = join(dir, 'a.npy');
    writeNpy(p, { dtype: 'float32', shape: [2, 2], data: Float32Array.of(1, 2, 3, 4) });
    assert.deepEqual(readNpyFloat32(p).data, Float32Array.of(1, 2, 3, 4));
    writeNpy(p, { dtype: 'int64', shape: [3], data: BigInt64Array.of(1n, -2n, 3n) }); // overwrite
    assert.deepEqual(readNpyInt32(p).data, Int32Array.of(1, -2, 3));
    assert.deepEqual(readdirSync(dir), ['a.npy']);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('npy: a header over 65535 bytes is written as format 2.0', () => {
  const shape = new Array(22000).fill(1);
  const bytes = encodeNpy({ dtype: 'float32', shape, data: Float32Array.of(7) });
  assert.equal(bytes[6], 2);
  const hlen = new DataView(bytes.buffer).getUint32(8, true);
  assert.ok(hlen > 65535);
  assert.equal((12 + hlen) % 64, 0);
  const back = parseNpy(bytes, 'big.npy');
  assert.deepEqual(back.shape, shape);
  assert.deepEqual(back.data, Float32Array.of(7));
});

test('npy: hand-built v1/v2/v3 headers, float16/float64/int64 input', () => {
  const f8 = Float64Array.of(1.5, -2.25, 1e300);
  const v1 = parseNpy(npyBytes("{'descr': '<f8', 'fortran_order': False, 'shape': (3,), }", bytesOf(f8)), 'v1.npy');
  assert.equal(v1.dtype, 'float64');
  assert.deepEqual(v1.data, f8);

  const f2 = Uint16Array.of(0x3c00, 0xc000, 0x3555, 0x7c00); // 1, -2, ~0.333, +inf
  const v2 = parseNpy(npyBytes("{'descr': '<f2', 'fortran_order': False, 'shape': (2, 2), }", bytesOf(f2), { major: 2 }), 'v2.npy');
  assert.equal(v2.dtype, 'float16');
  assert.deepEqual(v2.shape, [2, 2]);
  assert.deepEqual(v2.data, f2);

  const i8 = BigInt64Array.of(5n, -7n, 2n ** 40n);
  // v3: UTF-8 header; also unpadded, double quotes, no trailing comma, odd spacing.
  const v3 = parseNpy(npyBytes('{"shape":(3,),"fortran_order":False,"descr":"<i8"}   ', bytesOf(i8), { major: 3, utf8: true, pad: false }), 'v3.npy');
  assert.equal(v3.dtype, 'int64');
  assert.deepEqual(v3.data, i8);

  const scalar = parseNpy(npyBytes("{'descr': '<i4', 'fortran_order': False, 'shape': (), }", bytesOf(Int32Array.of(-9))), 's.npy');
  assert.deepEqual(scalar.shape, []);
  assert.deepEqual(scalar.data, Int32Array.of(-9));

  const u1 = parseNpy(npyBytes("{'descr': '|u1', 'fortran_order': False, 'shape': (2,), }", Uint8Array.of(0, 255)), 'u.npy');
  assert.deepEqual(u1.data, Uint8Array.of(0, 255));
});

test('npy: data is copied into aligned typed arrays even from an odd offset', () => {
  const bytes = encodeNpy({ dtype: 'float64', shape: [2], data: Float64Array.of(3, 4) });
  const shifted = new Uint8Array(bytes.length + 1);
  shifted.set(bytes, 1);
  const t = parseNpy(shifted.subarray(1), 'odd.npy');
  assert.deepEqual(t.data, Float64Array.of(3, 4));
  assert.equal(t.data.byteOffset % 8, 0);
  shifted.fill(0); // the result must not alias the input
  assert.deepEqual(t.data, Float64Array.of(3, 4));
});

test('npy: float16/float64 convert to float32; int64 to int32 when it fits', () => {
  const dir = tmp();
  try {
    const p16 = join(dir, 'h.npy');
    writeFileSync(p16, npyBytes("{'descr': '<f2', 'fortran_order': False, 'shape': (3,), }", bytesOf(Uint16Array.of(0x3c00, 0xc000, 0x3800))));
    assert.deepEqual(readNpyFloat32(p16).data, Float32Array.of(1, -2, 0.5));
    const p64 = join(dir, 'd.npy');
    writeNpy(p64, { dtype: 'float64', shape: [2], data: Float64Array.of(0.1, -3) });
    const f = readNpyFloat32(p64);
    assert.equal(f.dtype, 'float32');
    assert.deepEqual(f.data, Float32Array.of(0.1, -3));
    const pi = join(dir, 'i.npy');
    writeNpy(pi, { dtype: 'int64', shape: [2], data: BigInt64Array.of(2147483647n, -2147483648n) });
    assert.deepEqual(readNpyInt32(pi).data, Int32Array.of(2147483647, -2147483648));
    writeNpy(pi, { dtype: 'int64', shape: [2], data: BigInt64Array.of(1n, 2147483648n) });
    rejects(() => readNpyInt32(pi, '--tokens'), '--tokens', 'element 1 is 2147483648', 'fit in int32');
    rejects(() => readNpyInt32(p64, '--tokens'), '--tokens', 'float64', 'expected an integer array');
    rejects(() => readNpyFloat32(pi, '--q'), '--q', 'int64', 'expected a floating-point array');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('npy: rejects bad files with InputErrors naming the arg and the expectation', () => {
  const ok = "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }";
  const two = bytesOf(Float32Array.of(1, 2));
  const bad = (dict: string, data = two) => () => parseNpy(npyBytes(dict, data), 'q.npy');

  rejects(() => parseNpy(Uint8Array.from(Buffer.from('PK\x03\x04 not numpy')), 'q.npy'), 'q.npy', 'not a .npy file', 'magic');
  rejects(() => parseNpy(new Uint8Array(3), 'q.npy'), 'q.npy', 'not a .npy file');
  const v4 = npyBytes(ok, two);
  v4[6] = 4;
  rejects(() => parseNpy(v4, 'q.npy'), 'q.npy', 'version 4.0', 'expected 1.0, 2.0 or 3.0');
  rejects(bad(ok.replace('<f4', '>f4')), 'q.npy', 'big-endian', "expected little-endian ('<')");
  rejects(bad(ok.replace('False', 'True')), 'q.npy', 'fortran_order: True', 'expected C order');
  rejects(bad(ok.replace("'<f4'", "'|O'")), 'q.npy', 'object arrays', 'expected a numeric dtype');
  rejects(bad(ok.replace("'<f4'", "[('a', '<f4'), ('b', '<i4')]")), 'q.npy', 'structured dtypes', 'expected a plain numeric dtype');
  rejects(bad(ok.replace("'<f4'", "'<c8'")), 'q.npy', "unsupported dtype '<c8'", "expected one of '<f4'");
  rejects(bad("{'descr': '<f4', 'shape': (2,), }"), 'q.npy', 'keys are [descr, shape]', 'expected exactly descr, fortran_order, shape');
  rejects(bad("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'x': 1}"), 'q.npy', 'expected exactly descr');
  rejects(bad("{'descr': '<f4', 'fortran_order': False, 'shape': (2,)"), 'q.npy', 'malformed .npy header', 'expected');
  rejects(bad("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), } junk"), 'q.npy', 'malformed .npy header');
  rejects(bad("{'descr': '<f4', 'fortran_order': Maybe, 'shape': (2,), }"), 'q.npy', "unknown name 'Maybe'");
  rejects(bad(ok.replace('(2,)', '(2)')), 'q.npy', "trailing comma, as in '(3,)'");
  rejects(bad(ok.replace('(2,)', '(-2,)')), 'q.npy', 'expected non-negative integers');
  rejects(bad(ok.replace('(2,)', '(2.5,)')), 'q.npy', 'expected an integer');
  rejects(bad(ok.replace('(2,)', '[2]')), 'q.npy', "'shape' must be a tuple");
  rejects(bad(ok, two.subarray(0, 7)), 'q.npy', 'truncated: expected 8 bytes of data, found 7');
  rejects(bad(ok, new Uint8Array(9)), 'q.npy', 'trailing data: expected 8 bytes of data', 'found 9');
  const cut = npyBytes(ok, two).subarray(0, 40);
  rejects(() => parseNpy(cut, 'q.npy'), 'q.npy', 'truncated', 'header claims');
  rejects(() => parseNpy(npyBytes(ok, two).subarray(0, 9), 'q.npy'), 'q.npy', 'truncated');
  const badUtf8 = npyBytes(ok, two, { major: 3 });
  badUtf8[20] = 0xff;
  rejects(() => parseNpy(badUtf8, 'q.npy'), 'q.npy', 'not valid UTF-8');
});

test('npy: a header nested past 32 levels, and data of another dtype than declared, are InputErrors', () => {
  for (const open of ['[', '(', "{'a': "]) {
    const h = `{'descr': '<f4', 'fortran_order': False, 'shape': ${open.repeat(20000)}}`;
    const buf = new Uint8Array(12 + h.length);
    buf.set([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, 2, 0]);
    new DataView(buf.buffer).setUint32(8, h.length, true);
    for (let i = 0; i < h.length; i++) buf[12 + i] = h.charCodeAt(i);
    assert.throws(() => parseNpy(buf, 'deep.npy'), (e: unknown) => e instanceof InputError && /^deep\.npy: malformed \.npy header: nested more than 32 deep/.test(e.message), open);
  }
  // (a Float32Array written as int32 had read back as its bit patterns)
  for (const [dtype, data] of [['int32', new Float32Array([1.5, 2.5])], ['float32', new Float64Array(2)], ['int64', new Int32Array(2)]] as const) {
    assert.throws(() => encodeNpy({ dtype, shape: [2], data } as unknown as Tensor, 'out.npy'), (e: unknown) => e instanceof InputError && e.message.startsWith(`out.npy: dtype ${dtype} holds a `), dtype);
  }
});

test('npy: file-system errors are InputErrors naming the path', () => {
  const dir = tmp();
  try {
    rejects(() => readNpy(join(dir, 'missing.npy')), 'missing.npy', 'no such file');
    rejects(() => readNpy(join(dir, 'missing.npy'), '--q'), '--q', 'no such file');
    rejects(() => readNpy(dir), dir, 'is a directory');
    const out = join(dir, 'nodir', 'o.npy');
    rejects(() => writeNpy(out, { dtype: 'float32', shape: [1], data: Float32Array.of(1) }, '--out'), '--out', 'does not exist', 'expected an existing directory');
    rejects(() => encodeNpy({ dtype: 'bfloat16', shape: [1], data: Uint16Array.of(0) }), 'bfloat16', 'expected float32');
    rejects(() => encodeNpy({ dtype: 'float32', shape: [2, 2], data: Float32Array.of(1) }), 'holds 1 elements; expected 4');
    assert.deepEqual(readdirSync(dir), []);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

const hasNumpy = spawnSync('python3', ['-c', 'import numpy'], { stdio: 'ignore' }).status === 0;

test('npy: interoperates with NumPy both ways', (t) => {
  if (!hasNumpy) {
    t.skip('python3 with numpy is not available on this machine');
    return;
  }
  const dir = tmp();
  try {
    const py = (code: string) => {
      const r = spawnSync('python3', ['-c', code, dir], { encoding: 'utf8' });
      assert.equal(r.status, 0, r.stderr);
      return r.stdout;
    };
    // NumPy writes, we read.
    py(`
import sys, numpy as np, json
from numpy.lib import format as F
d = sys.argv[1]
arrs = {
  'f4': np.arange(6, dtype='<f4').reshape(2, 3) / 7,
  'f8': np.array(3.25, dtype='<f8'),
  'f2': np.array([1, -0.5, 65504, 1e-7], dtype='<f2'),
  'i8': np.array([[1, -2], [2**40, 7]], dtype='<i8'),
  'i4': np.zeros((0, 3), dtype='<i4'),
  'u1': np.array([0, 1, 255], dtype='u1'),
}
for k, a in arrs.items(): np.save(f'{d}/{k}.npy', a)
for v in [(2, 0), (3, 0)]:
  with open(f'{d}/v{v[0]}.npy', 'wb') as fh: F.write_array(fh, arrs['f4'], version=v)
json.dump({k: [str(x) for x in a.ravel().tolist()] for k, a in arrs.items()}, open(f'{d}/values.json', 'w'))
`);
    const values = JSON.parse(readFileSync(join(dir, 'values.json'), 'utf8')) as Record<string, string[]>;
    const f4 = readNpy(join(dir, 'f4.npy'));
    assert.deepEqual(f4.shape, [2, 3]);
    assert.deepEqual(f4.data, Float32Array.from(values.f4.map(Number)));
    for (const v of ['v2', 'v3']) assert.deepEqual(readNpy(join(dir, `${v}.npy`)).data, f4.data);
    assert.deepEqual(readNpy(join(dir, 'f8.npy')).shape, []);
    assert.deepEqual(readNpyFloat32(join(dir, 'f8.npy')).data, Float32Array.of(3.25));
    assert.deepEqual(readNpyFloat32(join(dir, 'f2.npy')).data, Float32Array.from(values.f2.map(Number)));
    assert.deepEqual(readNpy(join(dir, 'i8.npy')).data, BigInt64Array.from(values.i8.map(BigInt)));
    assert.deepEqual(readNpy(join(dir, 'i4.npy')).shape, [0, 3]);
    assert.deepEqual(readNpy(join(dir, 'u1.npy')).data, Uint8Array.of(0, 1, 255));

    // We write, NumPy reads.
    writeNpy(join(dir, 'o_f4.npy'), { dtype: 'float32', shape: [2, 1, 2], data: Float32Array.of(1.5, -2, 0.25, 8) });
    writeNpy(join(dir, 'o_i8.npy'), { dtype: 'int64', shape: [3], data: BigInt64Array.of(-1n, 0n, 2n ** 50n) });
    writeNpy(join(dir, 'o_i4.npy'), { dtype: 'int32', shape: [], data: Int32Array.of(42) });
    writeNpy(join(dir, 'o_f8.npy'), { dtype: 'float64', shape: [0, 2], data: new Float64Array(0) });
    writeNpy(join(dir, 'o_big.npy'), { dtype: 'float32', shape: new Array(22000).fill(1), data: Float32Array.of(5) });
    const out = JSON.parse(py(`
import sys, json, numpy as np
d = sys.argv[1]
r = {}
for k in ['f4', 'i8', 'i4', 'f8']:
  a = np.load(f'{d}/o_{k}.npy')
  r[k] = [a.dtype.str, list(a.shape), [str(x) for x in a.ravel().tolist()]]
# ndarray allows at most 64 dims, so check the 2.0 header with NumPy's own header reader.
with open(f'{d}/o_big.npy', 'rb') as fh:
  v = np.lib.format.read_magic(fh)
  shape, fortran, dt = np.lib.format.read_array_header_2_0(fh, max_header_size=10**6)
  r['big'] = [list(v), len(shape), fortran, dt.str, fh.read().hex()]
print(json.dumps(r))
`)) as Record<string, unknown[]>;
    assert.deepEqual(out.f4, ['<f4', [2, 1, 2], ['1.5', '-2.0', '0.25', '8.0']]);
    assert.deepEqual(out.i8, ['<i8', [3], ['-1', '0', String(2n ** 50n)]]);
    assert.deepEqual(out.i4, ['<i4', [], ['42']]);
    assert.deepEqual(out.f8, ['<f8', [0, 2], []]);
    assert.deepEqual(out.big, [[2, 0], 22000, false, '<f4', '0000a040']);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
