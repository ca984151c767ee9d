import { BackendError, InputError, throwReason } from '../core/errors.js';
import { checkBlockArgs, type AttentionKernel, type BackwardArgs, type BlockArgs, type ForwardArgs } from '../core/kernel.js';
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

function validate(a: BlockArgs): void {
  throwReason(checkBlockArgs(a));
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
