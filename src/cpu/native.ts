import { BackendError, InputError, throwReason } from '../core/errors.js';
import type { AttentionKernel, BackwardArgs, BlockArgs, ForwardArgs } from '../core/kernel.js';
import { loadNative } from './build.js';

/**
 * The C kernel (kernels/attn.c) through koffi. Typed arrays are passed as pointers to their
 * memory (no copies, SharedArrayBuffer views included); absent segments are NULL.
 */

type Fn = (...args: unknown[]) => number;

interface Bound {
  forward: Fn;
  backward: Fn;
  name: string;
}

let bound: Bound | undefined;

function bind(): Bound {
  if (bound) return bound;
  const n = loadNative();
  if ('error' in n) throw new BackendError(`C kernel unavailable: ${n.error}`);
  try {
    const forward = n.lib.func(
      'int ra_forward(const float* q, const float* k, const float* v, const int32_t* qpos, const int32_t* kpos, ' +
        'const int32_t* qseg, const int32_t* kseg, int Sq, int Sk, int H, int Hk, int D, int causal, int window, int sinks, ' +
        'float scale, int blockQ, int blockK, int threads, float* o, float* lse)',
    ) as Fn;
    const backward = n.lib.func(
      'int ra_backward(const float* q, const float* k, const float* v, const float* dO, const float* lse, const float* delta, ' +
        'const int32_t* qpos, const int32_t* kpos, const int32_t* qseg, const int32_t* kseg, int Sq, int Sk, int H, int Hk, ' +
        'int D, int causal, int window, int sinks, float scale, int blockQ, int blockK, int threads, ' +
        'float* dq, float* dk, float* dv)',
    ) as Fn;
    bound = { forward, backward, name: `c/${n.isa}` };
    return bound;
  } catch (e) {
    throw new BackendError(`binding the C kernel in ${n.path} failed: ${(e as Error).message}`);
  }
}

const INT32_MAX = 2 ** 31 - 1;

/** Why these arguments cannot run (null when they can): names the argument and the expected shape. */
export function checkArgs(a: BlockArgs): string | null {
  const { Sq, Sk, H, Hk, D } = a;
  for (const [name, x] of [['Sq', Sq], ['Sk', Sk], ['H', H], ['Hk', Hk], ['D', D]] as const) {
    if (!Number.isInteger(x) || x < 0 || x > INT32_MAX) return `${name}: expected a non-negative int32, got ${x}`;
  }
  if (H < 1 || Hk < 1 || D < 1) return `H, Hk, D: expected positive, got ${H}, ${Hk}, ${D}`;
  if (H % Hk !== 0) return `H: expected a multiple of Hk = ${Hk}, got ${H}`;
  if (!Number.isInteger(a.window) || a.window < 0 || a.window > INT32_MAX) return `window: expected an int32 >= 0, got ${a.window}`;
  if (!Number.isInteger(a.sinks) || a.sinks < 0 || a.sinks > INT32_MAX) return `sinks: expected an int32 >= 0, got ${a.sinks}`;
  if (!Number.isFinite(a.scale)) return `scale: expected a finite number, got ${a.scale}`;
  for (const [name, x] of [['blockQ', a.blockQ], ['blockK', a.blockK], ['threads', a.threads]] as const) {
    if (x !== undefined && (!Number.isInteger(x) || x < 1 || x > INT32_MAX)) return `${name}: expected a positive integer, got ${x}`;
  }
  const len = (name: string, arr: ArrayLike<number> | undefined, n: number): string | null =>
    !arr ? `${name}: missing` : arr.length < n ? `${name}: expected at least ${n} elements, got ${arr.length}` : null;
  const checks: [string, ArrayLike<number> | undefined, number][] = [
    ['q', a.q, Sq * H * D],
    ['k', a.k, Sk * Hk * D],
    ['v', a.v, Sk * Hk * D],
    ['qPos', a.qPos, Sq],
    ['kPos', a.kPos, Sk],
  ];
  if (a.qSeg || a.kSeg) {
    if (!a.qSeg || !a.kSeg) return `${a.qSeg ? 'kSeg' : 'qSeg'}: segments must be given for both queries and keys`;
    checks.push(['qSeg', a.qSeg, Sq], ['kSeg', a.kSeg, Sk]);
  }
  const fa = a as Partial<ForwardArgs & BackwardArgs>;
  if (fa.o) checks.push(['o', fa.o, Sq * H * D]);
  if (fa.dO) {
    checks.push(['dO', fa.dO, Sq * H * D], ['lse', fa.lse, Sq * H], ['delta', fa.delta, Sq * H]);
    checks.push(['dq', fa.dq, Sq * H * D], ['dk', fa.dk, Sk * Hk * D], ['dv', fa.dv, Sk * Hk * D]);
  } else if (fa.o) {
    checks.push(['lse', fa.lse, Sq * H]);
  }
  for (const [name, arr, n] of checks) {
    const r = len(name, arr, n);
    if (r) return r;
  }
  return null;
}

function validate(a: BlockArgs): void {
  throwReason(checkArgs(a));
}

function status(what: string, rc: number): void {
  if (rc === 0) return;
  throw new BackendError(`${what}: the C kernel returned ${rc} (${rc === 1 ? 'invalid arguments' : rc === 2 ? 'out of memory' : 'error'})`);
}

/** The C kernel, named `c/<isa>`; throws BackendError when the library cannot be built or loaded. */
export function cKernel(): AttentionKernel {
  const b = bind();
  return {
    name: b.name,
    forward(a: ForwardArgs): void {
      validate(a);
      const rc = b.forward(
        a.q, a.k, a.v, a.qPos, a.kPos, a.qSeg ?? null, a.kSeg ?? null,
        a.Sq, a.Sk, a.H, a.Hk, a.D, a.causal ? 1 : 0, a.window, a.sinks, a.scale,
        a.blockQ ?? 0, a.blockK ?? 0, a.threads ?? 1, a.o, a.lse,
      );
      status('ra_forward', rc);
    },
    backward(a: BackwardArgs): void {
      validate(a);
      const rc = b.backward(
        a.q, a.k, a.v, a.dO, a.lse, a.delta, a.qPos, a.kPos, a.qSeg ?? null, a.kSeg ?? null,
        a.Sq, a.Sk, a.H, a.Hk, a.D, a.causal ? 1 : 0, a.window, a.sinks, a.scale,
        a.blockQ ?? 0, a.blockK ?? 0, a.threads ?? 1, a.dq, a.dk, a.dv,
      );
      status('ra_backward', rc);
    },
  };
}
