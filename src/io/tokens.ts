import { readInputFile } from './atomic.js';
import { parseNpy, npyToInt32 } from './npy.js';
import { InputError } from '../core/errors.js';
import { parseDecimal } from '../core/inputs.js';

/**
 * Token ids from a file: a 1-D int32/int64 `.npy`, a JSON array (or an object whose `ids` or
 * `input_ids` is one, as tokenizers write), or whitespace-separated ids.
 */
export function readTokens(path: string, arg = '--tokens'): Int32Array {
  const bytes = readInputFile(path, arg);
  if (bytes.length >= 6 && bytes[0] === 0x93 && String.fromCharCode(...bytes.subarray(1, 6)) === 'NUMPY') {
    const t = npyToInt32(parseNpy(bytes, arg), arg);
    if (t.shape.length !== 1) throw new InputError(arg, `expected a 1-D array of token ids, got shape [${t.shape.join(', ')}]`);
    return t.data;
  }
  const text = new TextDecoder().decode(bytes).trim();
  const json = 'expected a JSON array of token ids, or an object with an "ids" or "input_ids" array';
  let values: unknown[];
  let words = false; // whitespace-separated: each a number's text
  if (text.startsWith('[') || text.startsWith('{')) {
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch (e) {
      throw new InputError(arg, `${json} (${(e as Error).message})`);
    }
    const obj = parsed as Record<string, unknown>;
    const list = Array.isArray(parsed) ? parsed : parsed && typeof parsed === 'object' ? (obj.ids ?? obj.input_ids) : undefined;
    if (!Array.isArray(list)) throw new InputError(arg, json);
    values = list;
  } else {
    values = text.length ? text.split(/\s+/) : [];
    words = true;
  }
  return Int32Array.from(values, (v, i) => {
    // whitespace-separated ids as numbers (1, 1.0, 1e3: numpy's savetxt writes 1.000000000000000000e+00)
    const n = words && typeof v === 'string' ? parseDecimal(v) : v;
    if (typeof n !== 'number' || !Number.isInteger(n) || n < 0 || n > 0x7fffffff) {
      throw new InputError(arg, `token ${i} is ${words ? `'${v}'` : JSON.stringify(v)}; expected a non-negative integer id`);
    }
    return n;
  });
}
