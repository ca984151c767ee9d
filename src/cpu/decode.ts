import { BackendError, InputError } from '../core/errors.js';
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
  /** [n, Hk, D] (at least n * Hk * D elements; a larger, growing buffer is fine). */
  k: Float32Array;
  v: Float32Array;
  /** Global position of each cache row [n]. */
  pos: Int32Array;
  /** Segment id of each cache row (packed documents); with qSeg, both or neither. */
  seg?: Int32Array;
  /** Rows in use (default pos.length). */
  n?: number;
}

export interface DecodeArgs {
  /** [B, Sq, H, D] */
  q: Float32Array;
  /** [B, Sq] global positions of the query tokens. */
  qPos: Int32Array;
  qSeg?: Int32Array;
  /** One cache per sequence (B = caches.length); lengths may differ, 0 included. */
  caches: DecodeCache[];
  H: number;
  Hk: number;
  D: number;
  causal: boolean;
  /** 0 or absent: no window. */
  window?: number;
  /** Only meaningful with a window. */
  sinks?: number;
  /** Default 1/sqrt(D). */
  scale?: number;
  /** Running results [B, Sq, H, D] and [B, Sq, H], merged in place; fresh (0, -Infinity) when absent. */
  o?: Float32Array;
  lse?: Float32Array;
  /**
   * true: every cache's positions are non-decreasing (a cache appended in token order), so only the
   * visible rows are read; false: every row is read and masked; absent: checked per sequence.
   */
  kvSorted?: boolean;
  /** Cache rows per split-KV work item (0 or absent: chosen from the work and the threads). */
  chunk?: number;
  /** Threads the C kernel may use (default 1). */
  threads?: number;
  /** 'auto' (default) uses the C kernel when it builds, 'c' requires it, 'ts' is the fallback. */
  kernel?: 'auto' | 'c' | 'ts';
}

export interface DecodeResult {
  o: Float32Array;
  lse: Float32Array;
}

const MAX_SQ = 64;
const INT32_MAX = 2 ** 31 - 1;

type Fn = (...args: unknown[]) => number;
let bound: { fn: Fn; name: string } | { error: string } | undefined;

function bind(): { fn: Fn; name: string } | { error: string } {
  if (bound) return bound;
  const n = loadNative();
  if ('error' in n) return (bound = { error: n.error });
  try {
    const fn = n.lib.func(
      'int ra_decode(const float* q, const int32_t* qpos, const int32_t* qseg, const float** k, const float** v, ' +
        'const int32_t** kpos, const int32_t** kseg, const int64_t* len, int B, int Sq, int H, int Hk, int D, ' +
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

function int(name: string, x: unknown, min: number, max = INT32_MAX): number {
  if (typeof x !== 'number' || !Number.isInteger(x) || x < min || x > max) {
    throw new InputError(name, `expected an integer in [${min}, ${max}], got ${String(x)}`);
  }
  return x;
}

function atLeast(name: string, arr: ArrayLike<number> | undefined, n: number, what: string): void {
  if (!arr) throw new InputError(name, `missing (expected ${what})`);
  if (arr.length < n) throw new InputError(name, `expected at least ${n} elements (${what}), got ${arr.length}`);
}

interface Checked {
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
  if (!a || typeof a !== 'object') throw new InputError('args', 'expected an object');
  if (!Array.isArray(a.caches)) throw new InputError('caches', 'expected an array of per-sequence caches');
  const B = a.caches.length;
  const H = int('H', a.H, 1), Hk = int('Hk', a.Hk, 1), D = int('D', a.D, 1);
  if (H % Hk !== 0) throw new InputError('H', `expected a multiple of Hk = ${Hk}, got ${H}`);
  const window = int('window', a.window ?? 0, 0), sinks = int('sinks', a.sinks ?? 0, 0);
  const scale = a.scale ?? 1 / Math.sqrt(D);
  if (!Number.isFinite(scale)) throw new InputError('scale', `expected a finite number, got ${scale}`);
  if (a.chunk !== undefined) int('chunk', a.chunk, 0);
  if (a.threads !== undefined) int('threads', a.threads, 1, 1024);
  if (!(a.qPos instanceof Int32Array)) throw new InputError('qPos', 'expected an Int32Array [B, Sq]');
  if (!(a.q instanceof Float32Array)) throw new InputError('q', 'expected a Float32Array [B, Sq, H, D]');
  const Sq = B === 0 ? 1 : a.qPos.length / B;
  if (B > 0 && (!Number.isInteger(Sq) || Sq < 1 || Sq > MAX_SQ)) {
    throw new InputError('qPos', `expected [B = ${B}, Sq] with 1 <= Sq <= ${MAX_SQ}, got ${a.qPos.length} elements`);
  }
  atLeast('q', a.q, B * Sq * H * D, `[B = ${B}, Sq = ${Sq}, H = ${H}, D = ${D}]`);
  const segs = a.qSeg !== undefined;
  if (segs) atLeast('qSeg', a.qSeg, B * Sq, `[B = ${B}, Sq = ${Sq}]`);
  const n: number[] = [];
  a.caches.forEach((c, b) => {
    const tag = `caches[${b}]`;
    if (!c || !(c.k instanceof Float32Array) || !(c.v instanceof Float32Array) || !(c.pos instanceof Int32Array)) {
      throw new InputError(tag, 'expected { k: Float32Array, v: Float32Array, pos: Int32Array }');
    }
    const rows = int(`${tag}.n`, c.n ?? c.pos.length, 0, Math.min(c.pos.length, INT32_MAX));
    atLeast(`${tag}.k`, c.k, rows * Hk * D, `[n = ${rows}, Hk = ${Hk}, D = ${D}]`);
    atLeast(`${tag}.v`, c.v, rows * Hk * D, `[n = ${rows}, Hk = ${Hk}, D = ${D}]`);
    if (segs !== (c.seg !== undefined)) throw new InputError(segs ? `${tag}.seg` : 'qSeg', 'segments must be given for the queries and every cache, or for none');
    if (c.seg) atLeast(`${tag}.seg`, c.seg, rows, `[n = ${rows}]`);
    n.push(rows);
  });
  const o = a.o ?? new Float32Array(B * Sq * H * D);
  const lse = a.lse ?? new Float32Array(B * Sq * H).fill(-Infinity);
  atLeast('o', o, B * Sq * H * D, `[B = ${B}, Sq = ${Sq}, H = ${H}, D = ${D}]`);
  atLeast('lse', lse, B * Sq * H, `[B = ${B}, Sq = ${Sq}, H = ${H}]`);
  return { B, Sq, n, window, sinks: window > 0 ? sinks : 0, scale, o, lse };
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
  const empty = new Float32Array(0);
  const emptyI = new Int32Array(0);
  // koffi passes the typed arrays of these lists as pointers to their memory, without copies.
  const ks = a.caches.map((x, i) => (c.n[i] > 0 ? x.k : empty));
  const vs = a.caches.map((x, i) => (c.n[i] > 0 ? x.v : empty));
  const ps = a.caches.map((x, i) => (c.n[i] > 0 ? x.pos : emptyI));
  const ss = a.qSeg ? a.caches.map((x, i) => (c.n[i] > 0 ? (x.seg as Int32Array) : emptyI)) : null;
  const rc = b.fn(
    a.q, a.qPos, a.qSeg ?? null, ks, vs, ps, ss, BigInt64Array.from(c.n, (x) => BigInt(x)), c.B, c.Sq, a.H, a.Hk, a.D,
    a.causal ? 1 : 0, c.window, c.sinks, c.scale, a.kvSorted === undefined ? -1 : a.kvSorted ? 1 : 0, a.chunk ?? 0,
    a.threads ?? 1, c.o, c.lse,
  );
  if (rc !== 0) throw new BackendError(`ra_decode returned ${rc} (${rc === 1 ? 'invalid arguments' : rc === 2 ? 'out of memory' : 'error'})`);
  return { o: c.o, lse: c.lse };
}

/** The fallback: per (sequence, query, head) a two-pass softmax in float64 over the visible rows. */
function decodeTs(a: DecodeArgs, c: Checked): void {
  const { H, Hk, D, causal } = a;
  const { Sq, window: w, sinks, scale } = c;
  const G = H / Hk;
  const acc = new Float64Array(D);
  for (let b = 0; b < c.B; b++) {
    const cache = a.caches[b];
    const n = c.n[b];
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
          if (s[j] > mx) mx = s[j];
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
