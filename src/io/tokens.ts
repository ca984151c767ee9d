import { readInputFile } from './atomic.js';
import { parseNpy, npyToInt32 } from './npy.js';
import { InputError } from '../core/errors.js';

/**
 * Token ids from a file: a 1-D int32/int64 `.npy`, a JSON array, or whitespace-separated ids.
 */
export function readTokens(path: string, arg = '--tokens'): Int32Array {
  const bytes = readInputFile(path, arg);
  if (bytes.length >= 6 && bytes[0] === 0x93 && String.fromCharCode(...bytes.subarray(1, 6)) === 'NUMPY') {
    const t = npyToInt32(parseNpy(bytes, arg), arg);
    if (t.shape.length !== 1) throw new InputError(arg, `expected a 1-D array of token ids, got shape [${t.shape.join(', ')}]`);
    return t.data;
  }
  const text = new TextDecoder().decode(bytes).trim();
  let values: unknown[];
  if (text.startsWith('[')) {
    try {
      values = JSON.parse(text) as unknown[];
    } catch (e) {
      throw new InputError(arg, `expected a JSON array of token ids (${(e as Error).message})`);
    }
    if (!Array.isArray(values)) throw new InputError(arg, 'expected a JSON array of token ids');
  } else {
    values = text.length ? text.split(/\s+/).map(Number) : [];
  }
  return Int32Array.from(values, (v, i) => {
    if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v > 0x7fffffff) throw new InputError(arg, `token ${i} is ${JSON.stringify(v)}; expected a non-negative integer id`);
    return v;
  });
}
