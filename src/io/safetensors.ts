/**
 * safetensors files: u64 LE header length N, N bytes of JSON
 * `{ name: { dtype, shape, data_offsets: [begin, end] }, "__metadata__"?: { str: str } }`,
 * then the data buffer that the offsets index. Validation follows the reference
 * implementation: offsets must tile the buffer exactly, in order, with no gap or overlap.
 */
import { existsSync, statSync } from 'node:fs';
import { isAbsolute, join, relative, resolve, sep } from 'node:path';
import { InputError } from '../core/errors.js';
import { type DType, type Tensor, arrayMismatch, f16BitsToF32, numel, shapeStr } from '../core/tensor.js';
import { readInputFile, writeFileAtomic } from './atomic.js';

export type SafetensorsDType = 'F32' | 'F16' | 'BF16' | 'F64' | 'I32' | 'I64' | 'U8' | 'BOOL';

/** safetensors dtype -> in-memory dtype and item size. BOOL is read as uint8 (0/1). */
const DTYPES: Record<SafetensorsDType, { dtype: DType; size: number }> = {
  F32: { dtype: 'float32', size: 4 },
  F16: { dtype: 'float16', size: 2 },
  BF16: { dtype: 'bfloat16', size: 2 },
  F64: { dtype: 'float64', size: 8 },
  I32: { dtype: 'int32', size: 4 },
  I64: { dtype: 'int64', size: 8 },
  U8: { dtype: 'uint8', size: 1 },
  BOOL: { dtype: 'uint8', size: 1 },
};

const TO_ST: Record<DType, SafetensorsDType> = {
  float32: 'F32',
  float16: 'F16',
  bfloat16: 'BF16',
  float64: 'F64',
  int32: 'I32',
  int64: 'I64',
  uint8: 'U8',
};

const SUPPORTED = Object.keys(DTYPES).join(', ');

/** One tensor's place in the file: `offset` is relative to the start of the data buffer. */
export interface SafetensorsEntry {
  dtype: SafetensorsDType;
  shape: number[];
  offset: number;
  byteLength: number;
}

export interface SafetensorsFile {
  /** The file name (or label) that errors name. */
  readonly file: string;
  /** Entries in file order (by offset). */
  readonly tensors: Map<string, SafetensorsEntry>;
  readonly metadata: Record<string, string>;
  /** The data buffer (everything after the header). */
  readonly buffer: Uint8Array;
  names(): string[];
  has(name: string): boolean;
  /** The tensor as stored (F16/BF16 as Uint16Array bits, BOOL as uint8), in a fresh aligned copy. */
  getTensor(name: string): Tensor;
  /** A floating-point tensor converted to float32 (F32, F16, BF16, F64). */
  getFloat32(name: string): Float32Array;
}

function listNames(names: string[], max = 8): string {
  if (names.length === 0) return '(none)';
  const shown = names.slice(0, max).join(', ');
  return names.length > max ? `${shown}, ... (${names.length} in all)` : shown;
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function checkShape(v: unknown, file: string, name: string): number[] {
  if (!Array.isArray(v) || v.some((d) => typeof d !== 'number' || !Number.isSafeInteger(d) || d < 0)) {
    throw new InputError(file, `tensor '${name}': shape ${JSON.stringify(v)} is invalid; expected an array of non-negative integers`);
  }
  if (!Number.isSafeInteger(numel(v))) throw new InputError(file, `tensor '${name}': shape ${shapeStr(v)} has too many elements`);
  return [...v];
}

/** Parse a whole safetensors file held in memory; `file` names it in every error. */
export function parseSafetensors(buf: Uint8Array, file: string): SafetensorsFile {
  if (buf.length < 8) {
    throw new InputError(file, `truncated: ${buf.length} bytes; expected at least the 8-byte header length of a safetensors file`);
  }
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const n64 = dv.getBigUint64(0, true);
  if (n64 > BigInt(buf.length - 8)) {
    throw new InputError(file, `header length ${n64} exceeds the ${buf.length - 8} bytes after the length prefix; expected a safetensors file (truncated?)`);
  }
  const n = Number(n64);
  let json: unknown;
  try {
    json = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(buf.subarray(8, 8 + n)));
  } catch (err) {
    throw new InputError(file, `header is not valid UTF-8 JSON (${err instanceof Error ? err.message : String(err)}); expected a safetensors JSON header`);
  }
  if (!isPlainObject(json)) throw new InputError(file, 'header is not a JSON object; expected { name: { dtype, shape, data_offsets } }');
  const buffer = buf.subarray(8 + n);

  const metadata: Record<string, string> = {};
  const entries: [string, SafetensorsEntry][] = [];
  for (const [name, info] of Object.entries(json)) {
    if (name === '__metadata__') {
      if (!isPlainObject(info)) throw new InputError(file, '__metadata__ is not an object; expected { string: string }');
      for (const [k, v] of Object.entries(info)) {
        if (typeof v !== 'string') throw new InputError(file, `__metadata__['${k}'] is ${JSON.stringify(v)}; expected a string value`);
        metadata[k] = v;
      }
      continue;
    }
    if (!isPlainObject(info)) throw new InputError(file, `tensor '${name}': entry is not an object; expected { dtype, shape, data_offsets }`);
    const dtype = info.dtype;
    if (typeof dtype !== 'string' || !(dtype in DTYPES)) {
      throw new InputError(file, `tensor '${name}': unsupported dtype ${JSON.stringify(dtype)}; expected one of ${SUPPORTED}`);
    }
    const shape = checkShape(info.shape, file, name);
    const offs = info.data_offsets;
    if (!Array.isArray(offs) || offs.length !== 2 || offs.some((o) => typeof o !== 'number' || !Number.isSafeInteger(o) || o < 0)) {
      throw new InputError(file, `tensor '${name}': data_offsets ${JSON.stringify(offs)} is invalid; expected [begin, end] non-negative integers`);
    }
    const [begin, end] = offs as [number, number];
    if (end < begin) throw new InputError(file, `tensor '${name}': data_offsets [${begin}, ${end}] end before they begin; expected begin <= end`);
    const st = dtype as SafetensorsDType;
    const want = numel(shape) * DTYPES[st].size;
    if (end - begin !== want) {
      throw new InputError(file, `tensor '${name}': data_offsets [${begin}, ${end}] span ${end - begin} bytes; expected ${want} for ${st} ${shapeStr(shape)}`);
    }
    if (end > buffer.length) {
      throw new InputError(file, `truncated: tensor '${name}' data_offsets [${begin}, ${end}] run past the ${buffer.length}-byte data buffer; expected end <= ${buffer.length}`);
    }
    entries.push([name, { dtype: st, shape, offset: begin, byteLength: end - begin }]);
  }

  // The tensors must tile the buffer: sorted by offset, each starts where the previous ended.
  entries.sort((a, b) => a[1].offset - b[1].offset || a[1].byteLength - b[1].byteLength);
  let pos = 0;
  let prev = '';
  for (const [name, e] of entries) {
    if (e.offset < pos) {
      throw new InputError(file, `tensor '${name}' at bytes [${e.offset}, ${e.offset + e.byteLength}) overlaps tensor '${prev}' ending at ${pos}; expected disjoint data_offsets`);
    }
    if (e.offset > pos) {
      throw new InputError(file, `bytes [${pos}, ${e.offset}) of the data buffer belong to no tensor; expected data_offsets to cover the buffer without gaps`);
    }
    pos = e.offset + e.byteLength;
    prev = name;
  }
  if (pos !== buffer.length) {
    throw new InputError(file, `the data buffer has ${buffer.length} bytes but tensors cover ${pos}; expected data_offsets to cover it exactly (trailing data?)`);
  }

  const tensors = new Map(entries);
  const entry = (name: string): SafetensorsEntry => {
    const e = tensors.get(name);
    if (!e) throw new InputError(file, `no tensor named '${name}'; the file holds: ${listNames([...tensors.keys()])}`);
    return e;
  };
  return {
    file,
    tensors,
    metadata,
    buffer,
    names: () => [...tensors.keys()],
    has: (name) => tensors.has(name),
    getTensor: (name) => entryToTensor(buffer, entry(name)),
    getFloat32: (name) => entryToFloat32(buffer, entry(name), file, name),
  };
}

function entryToTensor(buffer: Uint8Array, e: SafetensorsEntry): Tensor {
  const { dtype, size } = DTYPES[e.dtype];
  const ab = new ArrayBuffer(e.byteLength);
  new Uint8Array(ab).set(buffer.subarray(e.offset, e.offset + e.byteLength));
  const count = e.byteLength / size;
  let data: Tensor['data'];
  switch (dtype) {
    case 'float32':
      data = new Float32Array(ab, 0, count);
      break;
    case 'float64':
      data = new Float64Array(ab, 0, count);
      break;
    case 'float16':
    case 'bfloat16':
      data = new Uint16Array(ab, 0, count);
      break;
    case 'int32':
      data = new Int32Array(ab, 0, count);
      break;
    case 'int64':
      data = new BigInt64Array(ab, 0, count);
      break;
    case 'uint8':
      data = new Uint8Array(ab, 0, count);
      break;
  }
  return { dtype, shape: [...e.shape], data } as Tensor;
}

let f16Lut: Float32Array | undefined;

/** Convert any float tensor (float32/float64/float16/bfloat16 bits) to a Float32Array (float32 data is returned as is, not copied). */
export function toFloat32(t: Tensor, arg: string): Float32Array {
  switch (t.dtype) {
    case 'float32':
      return t.data as Float32Array;
    case 'float64':
      return Float32Array.from(t.data as Float64Array);
    case 'float16': {
      if (!f16Lut) {
        f16Lut = new Float32Array(65536);
        for (let h = 0; h < 65536; h++) f16Lut[h] = f16BitsToF32(h);
      }
      const src = t.data as Uint16Array;
      const out = new Float32Array(src.length);
      for (let i = 0; i < src.length; i++) out[i] = f16Lut[src[i]];
      return out;
    }
    case 'bfloat16': {
      // bf16 is the top half of an fp32: shifting the bits is exact (same as bf16BitsToF32).
      const src = t.data as Uint16Array;
      const bits = new Uint32Array(src.length);
      for (let i = 0; i < src.length; i++) bits[i] = src[i] << 16;
      return new Float32Array(bits.buffer);
    }
    default:
      throw new InputError(arg, `has dtype ${t.dtype}; expected a floating-point tensor (float32, float16, bfloat16 or float64)`);
  }
}

function entryToFloat32(buffer: Uint8Array, e: SafetensorsEntry, file: string, name: string): Float32Array {
  if (!(e.dtype === 'F32' || e.dtype === 'F16' || e.dtype === 'BF16' || e.dtype === 'F64')) {
    throw new InputError(file, `tensor '${name}' has dtype ${e.dtype}; expected a floating-point dtype (F32, F16, BF16 or F64)`);
  }
  return toFloat32(entryToTensor(buffer, e), file);
}

/** Read a whole safetensors file; `arg` names it in errors (the path by default). */
export function readSafetensors(path: string, arg: string = path): SafetensorsFile {
  return parseSafetensors(readInputFile(path, arg), arg);
}

/**
 * Encode tensors as safetensors bytes. Tensors are laid out by item size (largest first), then
 * name, so each starts aligned to its item size; the header is padded with spaces so the data
 * buffer starts on an 8-byte boundary, as the reference implementation does.
 */
export function encodeSafetensors(tensors: Record<string, Tensor>, metadata?: Record<string, string>, arg = 'tensors'): Uint8Array {
  const items = Object.entries(tensors).map(([name, t]) => {
    if (name === '__metadata__') throw new InputError(arg, "'__metadata__' is reserved; expected another tensor name");
    const st = TO_ST[t.dtype];
    if (!st) throw new InputError(arg, `tensor '${name}': unknown dtype ${String(t.dtype)}; expected one of ${Object.keys(TO_ST).join(', ')}`);
    if (!Array.isArray(t.shape) || t.shape.some((d) => !Number.isSafeInteger(d) || d < 0)) {
      throw new InputError(arg, `tensor '${name}': shape ${JSON.stringify(t.shape)} is invalid; expected non-negative integers`);
    }
    const wrong = arrayMismatch(t.dtype, t.data);
    if (wrong) throw new InputError(arg, `tensor '${name}': ${wrong}; expected the array of its dtype`);
    if (t.data.length !== numel(t.shape)) {
      throw new InputError(arg, `tensor '${name}': data holds ${t.data.length} elements; expected ${numel(t.shape)} for shape ${shapeStr(t.shape)}`);
    }
    return { name, t, st, size: DTYPES[st].size };
  });
  items.sort((a, b) => b.size - a.size || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));

  // No prototype: a tensor named '__proto__' is an entry like any other (on a plain object the
  // assignment set the prototype and the tensor vanished from the header).
  const header: Record<string, unknown> = Object.create(null) as Record<string, unknown>;
  if (metadata !== undefined) {
    for (const [k, v] of Object.entries(metadata)) {
      if (typeof v !== 'string') throw new InputError(arg, `metadata '${k}' is ${JSON.stringify(v)}; expected a string value`);
    }
    header.__metadata__ = metadata;
  }
  let pos = 0;
  for (const it of items) {
    const len = it.t.data.byteLength;
    header[it.name] = { dtype: it.st, shape: it.t.shape, data_offsets: [pos, pos + len] };
    pos += len;
  }
  const json = new TextEncoder().encode(JSON.stringify(header));
  const padded = Math.ceil(json.length / 8) * 8;
  const out = new Uint8Array(8 + padded + pos);
  new DataView(out.buffer).setBigUint64(0, BigInt(padded), true);
  out.set(json, 8);
  out.fill(0x20, 8 + json.length, 8 + padded);
  let at = 8 + padded;
  for (const it of items) {
    out.set(new Uint8Array(it.t.data.buffer, it.t.data.byteOffset, it.t.data.byteLength), at);
    at += it.t.data.byteLength;
  }
  return out;
}

/** Write tensors to `path` as safetensors, atomically. */
export function writeSafetensors(path: string, tensors: Record<string, Tensor>, metadata?: Record<string, string>, arg: string = path): void {
  writeFileAtomic(path, encodeSafetensors(tensors, metadata, arg), arg);
}

// ---------------------------------------------------------------------------------------------
// Sharded checkpoints (Hugging Face layout).

export const INDEX_FILE = 'model.safetensors.index.json';
export const SINGLE_FILE = 'model.safetensors';

/** Tensors of a checkpoint by name, across shards; shards are read on first use and kept. */
export interface SafetensorsIndex {
  /** The directory (or index/file path) it was opened from. */
  readonly source: string;
  /** `metadata` of the index file (e.g. total_size), or the single file's `__metadata__`. */
  readonly metadata: Record<string, unknown>;
  names(): string[];
  has(name: string): boolean;
  /** Path of the shard that holds `name`. */
  shardOf(name: string): string;
  /** Header entry of `name` (loads its shard). */
  entry(name: string): SafetensorsEntry;
  getTensor(name: string): Tensor;
  getFloat32(name: string): Float32Array;
  /** Load every shard and check that each listed tensor is present. */
  validate(): void;
}

function readJson(path: string, arg: string): unknown {
  const bytes = readInputFile(path, arg);
  try {
    return JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes));
  } catch (err) {
    throw new InputError(arg, `${path} is not valid JSON (${err instanceof Error ? err.message : String(err)}); expected a safetensors index`);
  }
}

/**
 * Open a checkpoint: a directory holding `model.safetensors.index.json` (with
 * `weight_map: { tensorName: shardFile }`) or `model.safetensors`; a path to an index file or
 * to one `.safetensors` file works too. Shard files are checked for existence up front.
 */
export function readSafetensorsIndex(dir: string, arg: string = dir): SafetensorsIndex {
  let st;
  try {
    st = statSync(dir);
  } catch {
    throw new InputError(arg, `${dir} does not exist; expected a model directory with ${INDEX_FILE} or ${SINGLE_FILE}`);
  }
  let indexPath: string | undefined;
  let singlePath: string | undefined;
  let base = dir;
  if (st.isDirectory()) {
    if (existsSync(join(dir, INDEX_FILE))) indexPath = join(dir, INDEX_FILE);
    else if (existsSync(join(dir, SINGLE_FILE))) singlePath = join(dir, SINGLE_FILE);
    else throw new InputError(arg, `${dir} holds neither ${INDEX_FILE} nor ${SINGLE_FILE}; expected a safetensors checkpoint directory`);
  } else if (dir.endsWith('.json')) {
    indexPath = dir;
    base = resolve(dir, '..');
  } else {
    singlePath = dir;
  }

  if (singlePath !== undefined) {
    const f = readSafetensors(singlePath);
    return {
      source: dir,
      metadata: f.metadata,
      names: () => f.names(),
      has: (name) => f.has(name),
      shardOf: (name) => {
        if (!f.has(name)) f.getTensor(name); // throws the "no tensor named" error
        return singlePath!;
      },
      entry: (name) => {
        const e = f.tensors.get(name);
        if (!e) f.getTensor(name);
        return e!;
      },
      getTensor: (name) => f.getTensor(name),
      getFloat32: (name) => f.getFloat32(name),
      validate: () => {},
    };
  }

  const ip = indexPath!;
  const json = readJson(ip, arg);
  if (!isPlainObject(json) || !isPlainObject(json.weight_map)) {
    throw new InputError(arg, `${ip} has no 'weight_map' object; expected { "weight_map": { tensorName: shardFile } }`);
  }
  const weightMap = new Map<string, string>();
  const shardPaths = new Map<string, string>();
  const root = resolve(base);
  for (const [name, shard] of Object.entries(json.weight_map)) {
    if (typeof shard !== 'string' || shard === '') {
      throw new InputError(arg, `${ip}: weight_map['${name}'] is ${JSON.stringify(shard)}; expected a shard file name`);
    }
    if (!shardPaths.has(shard)) {
      const p = resolve(root, shard);
      const rel = relative(root, p);
      if (isAbsolute(shard) || rel === '..' || rel.startsWith(`..${sep}`) || isAbsolute(rel)) {
        throw new InputError(arg, `${ip}: shard '${shard}' lies outside ${root}; expected a file name inside the model directory`);
      }
      if (!existsSync(p)) throw new InputError(arg, `${ip}: shard file ${p} (holding '${name}') is missing; expected it beside the index`);
      shardPaths.set(shard, p);
    }
    weightMap.set(name, shard);
  }
  const metadata = isPlainObject(json.metadata) ? json.metadata : {};

  const loaded = new Map<string, SafetensorsFile>();
  const shardName = (name: string): string => {
    const shard = weightMap.get(name);
    if (shard === undefined) {
      throw new InputError(arg, `no tensor named '${name}' in ${ip}; it lists: ${listNames([...weightMap.keys()])}`);
    }
    return shard;
  };
  const shardFor = (name: string): { file: SafetensorsFile; path: string } => {
    const shard = shardName(name);
    const path = shardPaths.get(shard)!;
    let file = loaded.get(shard);
    if (!file) {
      file = readSafetensors(path);
      loaded.set(shard, file);
    }
    if (!file.has(name)) {
      throw new InputError(path, `tensor '${name}' is listed in ${ip} but absent from this shard; expected the index to match its shards`);
    }
    return { file, path };
  };

  return {
    source: dir,
    metadata,
    names: () => [...weightMap.keys()],
    has: (name) => weightMap.has(name),
    shardOf: (name) => shardPaths.get(shardName(name))!,
    entry: (name) => shardFor(name).file.tensors.get(name)!,
    getTensor: (name) => shardFor(name).file.getTensor(name),
    getFloat32: (name) => shardFor(name).file.getFloat32(name),
    validate: () => {
      for (const name of weightMap.keys()) shardFor(name);
    },
  };
}
