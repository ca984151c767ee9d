import { BackendError, InputError } from '../core/errors.js';
import { checkAtLeast, checkDecodeCacheRows, checkDecodeHeads, checkDecodeOut, checkDecodeQueries, checkInt, checkKernelChoice, MAX_THREADS, type DecodeCallArgs } from '../core/inputs.js';
import { bf16BitsToF32, f16BitsToF32 } from '../core/tensor.js';
import { loadNative } from './build.js';

/**
 * Decode attention: Sq (1..64; 1 for plain decoding, a few for speculative drafts) new query
 * tokens of each of B sequences against that sequence's KV cache, split-KV over threads
 * (kernels/decode.c), with a TypeScript fallback of the same semantics.
 *
 * Masks are on global positions exactly as DESIGN.md says. The result is merged in place into the
 * running (o, lse) like the block kernel's forward, so ranks that hold shards of a cache combine
 * their partials with mergeRow; a row that sees no key keeps its (o, lse) (fresh: 0, -Infinity).
 */
export interface DecodeCache {
  /**
   * [n, Hk, D] (at least n * Hk * D elements; a larger, growing buffer is fine): Float32Array for
   * kvDtype 'float32', Uint16Array of bf16 or IEEE half bits for 'bfloat16' / 'float16'.
   */
  k: Float32Array | Uint16Array;
  v: Float32Array | Uint16Array;
  /** Global position of each cache row [n]. */
  pos: Int32Array;
  /** Segment id of each cache row (packed documents); with qSeg, both or neither. */
  seg?: Int32Array;
  /** Rows in use (default pos.length). */
  n?: number;
}

export interface DecodeArgs extends DecodeCallArgs<DecodeCache> {
  /**
   * Element type of every cache's k and v (default 'float32'). The 16-bit types halve the bytes a
   * step reads; they are widened to fp32 on load and all arithmetic stays fp32 (q, o, lse are fp32).
   */
  kvDtype?: DecodeKvDtype;
  /** Cache rows per split-KV work item (0 or absent: chosen from the work and the threads). */
  chunk?: number;
  /** Threads the C kernel may use (default 1). */
  threads?: number;
  /** 'auto' (default) uses the C kernel when it builds, 'c' requires it, 'ts' is the fallback. */
  kernel?: 'auto' | 'c' | 'ts';
}

export type DecodeKvDtype = 'float32' | 'bfloat16' | 'float16';
const DTYPE_CODE: Record<DecodeKvDtype, number> = { float32: 0, bfloat16: 1, float16: 2 };

export interface DecodeResult {
  o: Float32Array;
  lse: Float32Array;
}

const MAX_SQ = 64;

type Fn = (...args: unknown[]) => number;
let bound: { fn: Fn; name: string } | { error: string } | undefined;

function bind(): { fn: Fn; name: string } | { error: string } {
  if (bound) return bound;
  const n = loadNative();
  if ('error' in n) return (bound = { error: n.error });
  try {
    const fn = n.lib.func(
      'int ra_decode(const float* q, const int32_t* qpos, const int32_t* qseg, const void** k, const void** v, ' +
        'const int32_t** kpos, const int32_t** kseg, const int64_t* len, int B, int Sq, int H, int Hk, int D, int dtype, ' +
        'int causal, int window, int sinks, float scale, int sorted, int chunk, int threads, float* o, float* lse)',
    ) as Fn;
    bound = { fn, name: `c/${n.isa}` };
  } catch (e) {
    bound = { error: `binding ra_decode in ${n.path} failed: ${(e as Error).message}` };
  }
  return bound;
}

/** The kernel decodeAttention uses by default: 'c/<isa>' or 'ts'. */
export function decodeKernelName(): string {
  const b = bind();
  return 'error' in b ? 'ts' : b.name;
}

interface Checked {
  dtype: DecodeKvDtype;
  B: number;
  Sq: number;
  n: number[];
  window: number;
  sinks: number;
  scale: number;
  o: Float32Array;
  lse: Float32Array;
}

function validate(a: DecodeArgs): Checked {
  const h = checkDecodeHeads(a);
  const { B, H, D, window, sinks, scale } = h;
  checkKernelChoice(a.kernel);
  if (typeof a.causal !== 'boolean') throw new InputError('causal', `expected true or false, got ${JSON.stringify(a.causal)}`);
  if (a.chunk !== undefined) checkInt('chunk', a.chunk, 0);
  if (a.threads !== undefined) checkInt('threads', a.threads, 1, MAX_THREADS);
  const Sq = checkDecodeQueries(a, h, MAX_SQ);
  const segs = a.qSeg !== undefined;
  if (segs) checkAtLeast('qSeg', a.qSeg, B * Sq, `[B = ${B}, Sq = ${Sq}]`);
  const dtype = a.kvDtype ?? 'float32';
  if (!Object.prototype.hasOwnProperty.call(DTYPE_CODE, dtype)) {
    throw new InputError('kvDtype', `expected 'float32', 'bfloat16' or 'float16', got ${String(dtype)}`);
  }
  const Arr = dtype === 'float32' ? Float32Array : Uint16Array;
  const arr = dtype === 'float32' ? 'Float32Array' : `Uint16Array (${dtype} bits)`;
  const n = a.caches.map((c, b) => {
    const tag = `caches[${b}]`;
    if (!c || !(c.pos instanceof Int32Array)) throw new InputError(tag, `expected { k: ${arr}, v: ${arr}, pos: Int32Array }`);
    for (const kv of ['k', 'v'] as const) {
      if (!(c[kv] instanceof Arr)) throw new InputError(`${tag}.${kv}`, `expected a ${arr} for kvDtype '${dtype}'`);
    }
    return checkDecodeCacheRows(b, c, h, segs);
  });
  const o = a.o ?? new Float32Array(B * Sq * H * D);
  const lse = a.lse ?? new Float32Array(B * Sq * H).fill(-Infinity);
  checkDecodeOut(o, lse, h, Sq);
  return { dtype, B, Sq, n, window, sinks, scale, o, lse };
}

/** Decode attention of `q` against each sequence's cache, merged into (o, lse); returns them. */
export function decodeAttention(a: DecodeArgs): DecodeResult {
  const c = validate(a);
  const choice = a.kernel ?? (process.env.RINGATTN_KERNEL === 'ts' ? 'ts' : 'auto');
  const b = choice === 'ts' ? undefined : bind();
  if (b && 'error' in b && choice === 'c') throw new BackendError(`C decode kernel unavailable: ${b.error}`);
  if (!b || 'error' in b) {
    decodeTs(a, c);
    return { o: c.o, lse: c.lse };
  }
  if (c.B === 0) return { o: c.o, lse: c.lse };
  const empty = c.dtype === 'float32' ? new Float32Array(0) : new Uint16Array(0);
  const emptyI = new Int32Array(0);
  // koffi passes the typed arrays of these lists as pointers to their memory, without copies.
  const ks = a.caches.map((x, i) => (c.n[i] > 0 ? x.k : empty));
  const vs = a.caches.map((x, i) => (c.n[i] > 0 ? x.v : empty));
  const ps = a.caches.map((x, i) => (c.n[i] > 0 ? x.pos : emptyI));
  const ss = a.qSeg ? a.caches.map((x, i) => (c.n[i] > 0 ? (x.seg as Int32Array) : emptyI)) : null;
  const rc = b.fn(
    a.q, a.qPos, a.qSeg ?? null, ks, vs, ps, ss, BigInt64Array.from(c.n, (x) => BigInt(x)), c.B, c.Sq, a.H, a.Hk, a.D,
    DTYPE_CODE[c.dtype], a.causal ? 1 : 0, c.window, c.sinks, c.scale, a.kvSorted === undefined ? -1 : a.kvSorted ? 1 : 0,
    a.chunk ?? 0, a.threads ?? 1, c.o, c.lse,
  );
  if (rc !== 0) throw new BackendError(`ra_decode returned ${rc} (${rc === 1 ? 'invalid arguments' : rc === 2 ? 'out of memory' : 'error'})`);
  return { o: c.o, lse: c.lse };
}

let f16Lut: Float32Array | undefined;

/** The cache's elements as numbers: the array itself for fp32, a widened copy of the rows in use otherwise. */
function widen(x: Float32Array | Uint16Array, count: number, dtype: DecodeKvDtype): ArrayLike<number> {
  if (dtype === 'float32') return x;
  const out = new Float32Array(count);
  if (dtype === 'bfloat16') {
    for (let i = 0; i < count; i++) out[i] = bf16BitsToF32(x[i]);
  } else {
    if (!f16Lut) {
      f16Lut = new Float32Array(65536);
      for (let h = 0; h < 65536; h++) f16Lut[h] = f16BitsToF32(h);
    }
    for (let i = 0; i < count; i++) out[i] = f16Lut[x[i]];
  }
  return out;
}

/** The fallback: per (sequence, query, head) a two-pass softmax in float64 over the visible rows. */
function decodeTs(a: DecodeArgs, c: Checked): void {
  const { H, Hk, D, causal } = a;
  const { Sq, window: w, sinks, scale } = c;
  const G = H / Hk;
  const acc = new Float64Array(D);
  for (let b = 0; b < c.B; b++) {
    const n = c.n[b];
    const src = a.caches[b];
    const cache = { ...src, k: widen(src.k, n * Hk * D, c.dtype), v: widen(src.v, n * Hk * D, c.dtype) };
    const s = new Float64Array(n);
    for (let i = 0; i < Sq; i++) {
      const qi = a.qPos[b * Sq + i];
      const qs = a.qSeg ? a.qSeg[b * Sq + i] : 0;
      for (let h = 0; h < H; h++) {
        const kh = Math.floor(h / G);
        const qo = ((b * Sq + i) * H + h) * D;
        let mx = -Infinity;
        for (let j = 0; j < n; j++) {
          const kj = cache.pos[j];
          let ok = (!cache.seg || cache.seg[j] === qs) && (!causal || kj <= qi);
          if (ok && w > 0) ok = (qi - kj < w && (causal || kj - qi < w)) || kj < sinks;
          if (!ok) { s[j] = -Infinity; continue; }
          let dot = 0;
          const ko = (j * Hk + kh) * D;
          for (let d = 0; d < D; d++) dot += a.q[qo + d] * cache.k[ko + d];
          s[j] = dot * scale;
          if (s[j] > mx || s[j] !== s[j]) mx = s[j]; // a NaN score (a NaN input) stays: its row is NaN, not empty
        }
        if (mx === -Infinity) continue;
        acc.fill(0);
        let sum = 0;
        for (let j = 0; j < n; j++) {
          if (s[j] === -Infinity) continue;
          const p = Math.exp(s[j] - mx);
          sum += p;
          const vo = (j * Hk + kh) * D;
          for (let d = 0; d < D; d++) acc[d] += p * cache.v[vo + d];
        }
        const row = (b * Sq + i) * H + h;
        const blse = mx + Math.log(sum);
        const old = c.lse[row];
        const m = Math.max(old, blse);
        const wa = old === -Infinity ? 0 : Math.exp(old - m);
        const wb = Math.exp(blse - m);
        const tot = wa + wb;
        for (let d = 0; d < D; d++) c.o[row * D + d] = (wa * c.o[row * D + d] + (wb * acc[d]) / sum) / tot;
        c.lse[row] = m + Math.log(tot);
      }
    }
  }
}
