/**
 * NumPy `.npy` files (format versions 1.0, 2.0, 3.0), little-endian C-order numeric arrays.
 *
 * Layout: magic `\x93NUMPY`, major, minor, header length (u16 LE for 1.0, u32 LE for 2.0/3.0),
 * a Python-literal dict `{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }` padded
 * with spaces and ended by '\n' (latin1 for 1.0/2.0, utf8 for 3.0), then the raw data.
 */
import { InputError } from '../core/errors.js';
import { type DType, type Tensor, arrayMismatch, numel, shapeStr } from '../core/tensor.js';
import { readInputFile, writeFileAtomic } from './atomic.js';
import { toFloat32 } from './safetensors.js';

const MAGIC = [0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59]; // \x93NUMPY

/** Tensor dtypes a .npy file can hold here (bfloat16 has no NumPy dtype). */
export type NpyDType = Exclude<DType, 'bfloat16'>;

const ITEM_SIZE: Record<DType, number> = {
  float32: 4,
  float64: 8,
  float16: 2,
  bfloat16: 2,
  int32: 4,
  int64: 8,
  uint8: 1,
};

const DESCR_OUT: Record<NpyDType, string> = {
  float32: '<f4',
  float64: '<f8',
  float16: '<f2',
  int32: '<i4',
  int64: '<i8',
  uint8: '|u1',
};

const SUPPORTED = "'<f4', '<f8', '<f2', '<i4', '<i8', '|u1' or '|b1'";

if (new Uint8Array(new Uint16Array([1]).buffer)[0] !== 1) {
  // Typed arrays use host byte order; every platform Node supports in practice is little-endian.
  throw new Error('ringattn io: big-endian hosts are not supported');
}

// ---------------------------------------------------------------------------------------------
// A small parser for the Python literals NumPy writes in the header.

type PyValue = string | number | boolean | null | PyValue[] | PyTuple | PyDict;
class PyTuple {
  constructor(readonly items: PyValue[]) {}
}
class PyDict {
  constructor(readonly entries: Map<string, PyValue>) {}
}

class PyLiteralParser {
  private i = 0;
  private depth = 0;
  constructor(
    private readonly s: string,
    private readonly arg: string,
  ) {}

  private fail(what: string): never {
    const near = JSON.stringify(this.s.slice(this.i, this.i + 20));
    throw new InputError(this.arg, `malformed .npy header: ${what} at offset ${this.i} (near ${near}); expected a Python dict literal`);
  }

  private ws(): void {
    while (this.i < this.s.length && /\s/.test(this.s[this.i])) this.i++;
  }

  private eat(ch: string): boolean {
    this.ws();
    if (this.s[this.i] === ch) {
      this.i++;
      return true;
    }
    return false;
  }

  parseAll(): PyValue {
    const v = this.value();
    this.ws();
    if (this.i !== this.s.length) this.fail('unexpected text after the dict');
    return v;
  }

  private value(): PyValue {
    // NumPy's headers nest two deep; a malicious one could nest past the call stack.
    if (++this.depth > 32) this.fail('nested more than 32 deep');
    try {
      return this.valueAt();
    } finally {
      this.depth--;
    }
  }

  private valueAt(): PyValue {
    this.ws();
    const c = this.s[this.i];
    if (c === undefined) this.fail('unexpected end of header');
    if (c === '{') return this.dict();
    if (c === '(') return new PyTuple(this.seq('(', ')'));
    if (c === '[') return this.seq('[', ']');
    if (c === "'" || c === '"') return this.str();
    if (c === '-' || c === '+' || (c >= '0' && c <= '9')) return this.int();
    const m = /^[A-Za-z_]+/.exec(this.s.slice(this.i));
    if (m) {
      this.i += m[0].length;
      if (m[0] === 'True') return true;
      if (m[0] === 'False') return false;
      if (m[0] === 'None') return null;
      this.i -= m[0].length;
      this.fail(`unknown name '${m[0]}'`);
    }
    this.fail(`unexpected character ${JSON.stringify(c)}`);
  }

  private dict(): PyDict {
    this.i++; // '{'
    const entries = new Map<string, PyValue>();
    for (;;) {
      if (this.eat('}')) return new PyDict(entries);
      const k = this.value();
      if (typeof k !== 'string') this.fail('dict key is not a string');
      if (entries.has(k)) this.fail(`duplicate key '${k}'`);
      if (!this.eat(':')) this.fail("expected ':'");
      entries.set(k, this.value());
      if (this.eat('}')) return new PyDict(entries);
      if (!this.eat(',')) this.fail("expected ',' or '}'");
    }
  }

  private seq(open: string, close: string): PyValue[] {
    this.i++; // open
    const items: PyValue[] = [];
    let sawComma = false;
    for (;;) {
      if (this.eat(close)) break;
      items.push(this.value());
      if (this.eat(close)) break;
      if (!this.eat(',')) this.fail(`expected ',' or '${close}'`);
      sawComma = true;
    }
    // `(3)` is just 3 in Python, not a tuple; NumPy always writes `(3,)`.
    if (open === '(' && items.length === 1 && !sawComma) this.fail("a one-element tuple needs a trailing comma, as in '(3,)'");
    return items;
  }

  private str(): string {
    const q = this.s[this.i++];
    let out = '';
    for (;;) {
      const c = this.s[this.i++];
      if (c === undefined) this.fail('unterminated string');
      if (c === q) return out;
      if (c === '\\') {
        const e = this.s[this.i++];
        if (e === undefined) this.fail('unterminated string');
        const simple: Record<string, string> = { n: '\n', t: '\t', r: '\r', '\\': '\\', "'": "'", '"': '"', '0': '\0' };
        if (e in simple) out += simple[e];
        else if (e === 'x' || e === 'u') {
          const len = e === 'x' ? 2 : 4;
          const hex = this.s.slice(this.i, this.i + len);
          if (!new RegExp(`^[0-9a-fA-F]{${len}}$`).test(hex)) this.fail('bad escape in string');
          out += String.fromCharCode(parseInt(hex, 16));
          this.i += len;
        } else out += '\\' + e;
      } else out += c;
    }
  }

  private int(): number {
    const m = /^[-+]?[0-9]+L?/.exec(this.s.slice(this.i));
    if (!m) this.fail('bad number');
    const next = this.s[this.i + m[0].length];
    if (next === '.' || next === 'e' || next === 'E') this.fail('expected an integer, found a float');
    this.i += m[0].length;
    const n = Number(m[0].replace(/L$/, ''));
    if (!Number.isSafeInteger(n)) this.fail(`integer ${m[0]} out of range`);
    return n;
  }
}

// ---------------------------------------------------------------------------------------------

interface DescrInfo {
  dtype: NpyDType;
  itemSize: number;
}

function parseDescr(descr: PyValue, arg: string): DescrInfo {
  if (Array.isArray(descr) || descr instanceof PyTuple) {
    throw new InputError(arg, `structured dtypes are not supported; expected a plain numeric dtype (${SUPPORTED})`);
  }
  if (typeof descr !== 'string') throw new InputError(arg, `.npy header 'descr' must be a dtype string; expected one of ${SUPPORTED}`);
  const m = /^([<>|=])?([a-zA-Z])(\d*)$/.exec(descr);
  if (!m) throw new InputError(arg, `unsupported dtype '${descr}'; expected one of ${SUPPORTED}`);
  const [, order = '|', kind, sizeStr] = m;
  if (kind === 'O') throw new InputError(arg, `object arrays ('${descr}') are not supported; expected a numeric dtype (${SUPPORTED})`);
  const size = sizeStr === '' ? 0 : Number(sizeStr);
  if (size === 1 && (kind === 'u' || kind === 'b')) return { dtype: 'uint8', itemSize: 1 };
  if (order === '>') throw new InputError(arg, `big-endian dtype '${descr}' is not supported; expected little-endian ('<'), e.g. save arr.astype('<f4')`);
  const table: Record<string, NpyDType> = { f4: 'float32', f8: 'float64', f2: 'float16', i4: 'int32', i8: 'int64' };
  const dtype = table[kind + sizeStr];
  if (!dtype) throw new InputError(arg, `unsupported dtype '${descr}'; expected one of ${SUPPORTED}`);
  // '=' is native order; NumPy never writes it, but on our little-endian hosts it means '<'.
  if (order === '|') throw new InputError(arg, `dtype '${descr}' lacks a byte order; expected '<${kind}${sizeStr}'`);
  return { dtype, itemSize: size };
}

function parseShape(v: PyValue, arg: string): number[] {
  if (!(v instanceof PyTuple)) throw new InputError(arg, `.npy header 'shape' must be a tuple; expected e.g. (2, 3) or ()`);
  const shape: number[] = [];
  for (const d of v.items) {
    if (typeof d !== 'number' || !Number.isSafeInteger(d) || d < 0) {
      throw new InputError(arg, `.npy header 'shape' ${formatShapeValue(v)} is invalid; expected non-negative integers`);
    }
    shape.push(d);
  }
  if (!Number.isSafeInteger(numel(shape))) throw new InputError(arg, `.npy shape ${shapeStr(shape)} has too many elements`);
  return shape;
}

function formatShapeValue(v: PyTuple): string {
  return `(${v.items.map((x) => String(x)).join(', ')})`;
}

function decodeHeader(bytes: Uint8Array, utf8: boolean, arg: string): string {
  if (utf8) {
    try {
      return new TextDecoder('utf-8', { fatal: true }).decode(bytes);
    } catch {
      throw new InputError(arg, 'malformed .npy header: not valid UTF-8 (format 3.0 headers are UTF-8)');
    }
  }
  let s = '';
  for (let i = 0; i < bytes.length; i++) s += String.fromCharCode(bytes[i]); // latin1
  return s;
}

/** Copy `byteLength` bytes at `offset` into a fresh, aligned typed array of `dtype`. */
function copyTyped(dtype: DType, src: Uint8Array, offset: number, count: number): Tensor['data'] {
  const bytes = count * ITEM_SIZE[dtype];
  const ab = new ArrayBuffer(bytes);
  new Uint8Array(ab).set(src.subarray(offset, offset + bytes));
  switch (dtype) {
    case 'float32':
      return new Float32Array(ab);
    case 'float64':
      return new Float64Array(ab);
    case 'float16':
    case 'bfloat16':
      return new Uint16Array(ab);
    case 'int32':
      return new Int32Array(ab);
    case 'int64':
      return new BigInt64Array(ab);
    case 'uint8':
      return new Uint8Array(ab);
  }
}

/**
 * Parse a whole `.npy` file held in memory. `arg` (the path or option name) prefixes every
 * error. The returned data is a fresh copy, aligned for its typed array.
 */
export function parseNpy(buf: Uint8Array, arg: string): Tensor<NpyDType> {
  if (buf.length < 8 || MAGIC.some((b, i) => buf[i] !== b)) {
    throw new InputError(arg, 'not a .npy file; expected it to start with the magic string \\x93NUMPY');
  }
  const major = buf[6];
  const minor = buf[7];
  if (!((major === 1 || major === 2 || major === 3) && minor === 0)) {
    throw new InputError(arg, `unsupported .npy format version ${major}.${minor}; expected 1.0, 2.0 or 3.0`);
  }
  const lenBytes = major === 1 ? 2 : 4;
  const pre = 8 + lenBytes;
  if (buf.length < pre) throw new InputError(arg, `truncated: file of ${buf.length} bytes ends inside the .npy preamble`);
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const headerLen = major === 1 ? dv.getUint16(8, true) : dv.getUint32(8, true);
  const dataStart = pre + headerLen;
  if (dataStart > buf.length) {
    throw new InputError(arg, `truncated: the .npy header claims ${headerLen} bytes but the file has only ${buf.length - pre} after the preamble`);
  }
  const text = decodeHeader(buf.subarray(pre, dataStart), major === 3, arg);
  const parsed = new PyLiteralParser(text, arg).parseAll();
  if (!(parsed instanceof PyDict)) throw new InputError(arg, 'malformed .npy header: expected a dict literal');
  const keys = [...parsed.entries.keys()].sort();
  const want = ['descr', 'fortran_order', 'shape'];
  if (keys.length !== want.length || keys.some((k, i) => k !== want[i])) {
    throw new InputError(arg, `malformed .npy header: keys are [${keys.join(', ')}]; expected exactly descr, fortran_order, shape`);
  }
  const { dtype, itemSize } = parseDescr(parsed.entries.get('descr')!, arg);
  const fortran = parsed.entries.get('fortran_order');
  if (typeof fortran !== 'boolean') throw new InputError(arg, `.npy header 'fortran_order' must be True or False`);
  if (fortran) {
    throw new InputError(arg, 'Fortran-order arrays (fortran_order: True) are not supported; expected C order (save np.ascontiguousarray(a))');
  }
  const shape = parseShape(parsed.entries.get('shape')!, arg);
  const n = numel(shape);
  const expected = n * itemSize;
  const found = buf.length - dataStart;
  if (found < expected) throw new InputError(arg, `truncated: expected ${expected} bytes of data, found ${found}`);
  if (found > expected) {
    throw new InputError(arg, `trailing data: expected ${expected} bytes of data for ${dtype} ${shapeStr(shape)}, found ${found}`);
  }
  return { dtype, shape, data: copyTyped(dtype, buf, dataStart, n) } as Tensor<NpyDType>;
}

/** Read a `.npy` file; errors name `arg` (the path unless an option name is given). */
export function readNpy(path: string, arg: string = path): Tensor<NpyDType> {
  return parseNpy(readInputFile(path, arg), arg);
}

/** Convert a float tensor (float32, float64, float16) to float32; a float32 tensor is returned as is. */
export function npyToFloat32(t: Tensor, arg: string): Tensor<'float32'> {
  if (t.dtype === 'float32') return t as Tensor<'float32'>;
  if (t.dtype !== 'float64' && t.dtype !== 'float16') {
    throw new InputError(arg, `has dtype ${t.dtype}; expected a floating-point array (float32, float64 or float16)`);
  }
  return { dtype: 'float32', shape: t.shape, data: toFloat32(t, arg) };
}

/** Read a float array as float32 (float64 and float16 converted). */
export function readNpyFloat32(path: string, arg: string = path): Tensor<'float32'> {
  return npyToFloat32(readNpy(path, arg), arg);
}

/** Convert int32/int64 (and uint8) to int32, requiring every int64 value to fit. */
export function npyToInt32(t: Tensor, arg: string): Tensor<'int32'> {
  switch (t.dtype) {
    case 'int32':
      return t as Tensor<'int32'>;
    case 'uint8':
      return { dtype: 'int32', shape: t.shape, data: Int32Array.from(t.data as Uint8Array) };
    case 'int64': {
      const src = t.data as BigInt64Array;
      const out = new Int32Array(src.length);
      for (let i = 0; i < src.length; i++) {
        const v = src[i];
        if (v > 2147483647n || v < -2147483648n) {
          throw new InputError(arg, `element ${i} is ${v}; expected int64 values that fit in int32 [-2147483648, 2147483647]`);
        }
        out[i] = Number(v);
      }
      return { dtype: 'int32', shape: t.shape, data: out };
    }
    default:
      throw new InputError(arg, `has dtype ${t.dtype}; expected an integer array (int32 or int64)`);
  }
}

/** Read an integer array (token ids, positions) as int32. */
export function readNpyInt32(path: string, arg: string = path): Tensor<'int32'> {
  return npyToInt32(readNpy(path, arg), arg);
}

// ---------------------------------------------------------------------------------------------

function checkTensor(t: Tensor, arg: string): void {
  if (!Array.isArray(t.shape) || t.shape.some((d) => !Number.isSafeInteger(d) || d < 0)) {
    throw new InputError(arg, `shape ${JSON.stringify(t.shape)} is invalid; expected non-negative integers`);
  }
  const wrong = arrayMismatch(t.dtype, t.data);
  if (wrong) throw new InputError(arg, `${wrong}; expected the array of its dtype`);
  const n = numel(t.shape);
  if (t.data.length !== n) {
    throw new InputError(arg, `data holds ${t.data.length} elements; expected ${n} for shape ${shapeStr(t.shape)}`);
  }
}

/**
 * Encode a tensor as `.npy` bytes: format 1.0 (2.0 if the header outgrows 65535 bytes), data
 * starting on a 64-byte boundary as NumPy writes it.
 */
export function encodeNpy(t: Tensor, arg = 'tensor'): Uint8Array {
  checkTensor(t, arg);
  if (t.dtype === 'bfloat16') {
    throw new InputError(arg, 'bfloat16 has no NumPy dtype; expected float32, float64, float16, int32, int64 or uint8 (convert first)');
  }
  const descr = DESCR_OUT[t.dtype];
  if (!descr) throw new InputError(arg, `unknown dtype ${String(t.dtype)}; expected float32, float64, float16, int32, int64 or uint8`);
  const shapeLit = t.shape.length === 1 ? `(${t.shape[0]},)` : `(${t.shape.join(', ')})`;
  const dict = `{'descr': '${descr}', 'fortran_order': False, 'shape': ${shapeLit}, }`;
  let major = 1;
  let pre = 10;
  let total = Math.ceil((pre + dict.length + 1) / 64) * 64;
  if (total - pre > 0xffff) {
    major = 2;
    pre = 12;
    total = Math.ceil((pre + dict.length + 1) / 64) * 64;
  }
  const headerLen = total - pre;
  const header = dict + ' '.repeat(headerLen - dict.length - 1) + '\n';
  const src = new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength);
  const out = new Uint8Array(total + src.length);
  out.set(MAGIC, 0);
  out[6] = major;
  out[7] = 0;
  const dv = new DataView(out.buffer);
  if (major === 1) dv.setUint16(8, headerLen, true);
  else dv.setUint32(8, headerLen, true);
  for (let i = 0; i < header.length; i++) out[pre + i] = header.charCodeAt(i);
  out.set(src, total);
  return out;
}

/** Write a tensor to `path` as `.npy`, atomically. */
export function writeNpy(path: string, t: Tensor, arg: string = path): void {
  writeFileAtomic(path, encodeNpy(t, arg), arg);
}
