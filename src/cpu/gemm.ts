import { BackendError, InputError, INT32_MAX } from '../core/errors.js';
import { shapeStr, type F32Tensor } from '../core/tensor.js';
import { loadNative } from './build.js';

/**
 * fp32 GEMM for the model's linear layers: C = alpha * op(A) * op(B) + beta * C, row-major.
 * The C kernel (kernels/gemm.c) runs through koffi on the arrays' own memory; without a
 * compiler a blocked TypeScript loop computes the same thing. No notice is printed here: the
 * attention kernel (getKernel) already tells the user once that the C kernels are unavailable.
 */

export type GemmKernelChoice = 'auto' | 'c' | 'ts';

export interface GemmOptions {
  /** A is stored K x M (op(A) = A^T). */
  transA?: boolean;
  /** B is stored N x K (op(B) = B^T). */
  transB?: boolean;
  M: number;
  N: number;
  K: number;
  alpha?: number;
  A: Float32Array;
  /** Row stride of A as stored (default: its column count, K or M with transA). */
  lda?: number;
  B: Float32Array;
  /** Row stride of B as stored (default: N, or K with transB). */
  ldb?: number;
  /** 0 (the default) overwrites C without reading it (NaN there is fine). */
  beta?: number;
  C: Float32Array;
  /** Row stride of C (default N). */
  ldc?: number;
  /** OpenMP threads of the C kernel (default 1); the TypeScript path runs on the caller's thread. */
  threads?: number;
  /** 'auto' (default): C when it builds, else TypeScript; 'c' throws BackendError when unavailable. */
  kernel?: GemmKernelChoice;
}

type GemmFn = (
  transA: number, transB: number, M: number, N: number, K: number, alpha: number,
  A: Float32Array, lda: number, B: Float32Array, ldb: number, beta: number, C: Float32Array, ldc: number, threads: number,
) => number;

interface Bound {
  fn: GemmFn;
  name: string;
}

/** Per thread (module state is per worker): the bound function, or why there is none. */
let bound: Bound | { error: string } | undefined;

function bindC(): Bound | { error: string } {
  const n = loadNative(); // cached by build.ts; asked each time so that RINGATTN_KERNEL=ts always wins
  if ('error' in n) return n;
  if (bound) return bound;
  try {
    const fn = n.lib.func(
      'int ra_gemm(int transA, int transB, int M, int N, int K, float alpha, const float* A, int lda, ' +
        'const float* B, int ldb, float beta, float* C, int ldc, int threads)',
    ) as GemmFn;
    bound = { fn, name: `c/${n.isa}` };
  } catch (e) {
    bound = { error: `binding ra_gemm in ${n.path} failed: ${(e as Error).message}` };
  }
  return bound;
}

function resolve(choice: GemmKernelChoice): Bound | null {
  if (choice === 'ts') return null;
  const b = bindC();
  if ('error' in b) {
    if (choice === 'c') throw new BackendError(`C GEMM unavailable: ${b.error}`);
    return null;
  }
  return b;
}

/** 'c/<isa>' when gemm() runs the C kernel for this choice, else 'ts'. */
export function gemmKernelName(kernel: GemmKernelChoice = 'auto'): string {
  return resolve(kernel)?.name ?? 'ts';
}

function checkInt(name: string, x: unknown, min: number): number {
  if (typeof x !== 'number' || !Number.isInteger(x) || x < min || x > INT32_MAX) {
    throw new InputError(name, `expected an integer in [${min}, ${INT32_MAX}], got ${String(x)}`);
  }
  return x;
}

/** A row stride: at least the stored row length (and 1), default exactly that. */
function checkStride(name: string, ld: unknown, cols: number, rule: string): number {
  const min = Math.max(1, cols);
  if (ld === undefined) return min;
  if (typeof ld !== 'number' || !Number.isInteger(ld) || ld < min || ld > INT32_MAX) {
    throw new InputError(name, `expected an integer >= ${min} (${rule}), got ${String(ld)}`);
  }
  return ld;
}

function checkMatrix(name: string, arr: unknown, rows: number, cols: number, ld: number, what: string): void {
  if (!(arr instanceof Float32Array)) throw new InputError(name, `expected a Float32Array (${what}), got ${typeof arr}`);
  const need = rows > 0 && cols > 0 ? (rows - 1) * ld + cols : 0;
  if (arr.length < need) {
    throw new InputError(name, `expected at least ${need} elements for ${what} [${rows}, ${cols}] with row stride ${ld}, got ${arr.length}`);
  }
}

interface Resolved {
  tA: boolean;
  tB: boolean;
  M: number;
  N: number;
  K: number;
  alpha: number;
  beta: number;
  lda: number;
  ldb: number;
  ldc: number;
  threads: number;
}

function validate(o: GemmOptions): Resolved {
  if (typeof o !== 'object' || o === null) throw new InputError('opts', 'expected an options object');
  const tA = !!o.transA, tB = !!o.transB;
  const M = checkInt('M', o.M, 0), N = checkInt('N', o.N, 0), K = checkInt('K', o.K, 0);
  const alpha = o.alpha ?? 1, beta = o.beta ?? 0;
  if (typeof alpha !== 'number' || !Number.isFinite(alpha)) throw new InputError('alpha', `expected a finite number, got ${String(alpha)}`);
  if (typeof beta !== 'number' || !Number.isFinite(beta)) throw new InputError('beta', `expected a finite number, got ${String(beta)}`);
  const [rA, cA] = tA ? [K, M] : [M, K];
  const [rB, cB] = tB ? [N, K] : [K, N];
  const lda = checkStride('lda', o.lda, cA, tA ? 'A stored K x M: lda >= M' : 'A stored M x K: lda >= K');
  const ldb = checkStride('ldb', o.ldb, cB, tB ? 'B stored N x K: ldb >= K' : 'B stored K x N: ldb >= N');
  const ldc = checkStride('ldc', o.ldc, N, 'C stored M x N: ldc >= N');
  const threads = checkInt('threads', o.threads ?? 1, 1);
  checkMatrix('A', o.A, rA, cA, lda, tA ? 'A stored K x M' : 'A, M x K');
  checkMatrix('B', o.B, rB, cB, ldb, tB ? 'B stored N x K' : 'B, K x N');
  checkMatrix('C', o.C, M, N, ldc, 'C, M x N');
  return { tA, tB, M, N, K, alpha, beta, lda, ldb, ldc, threads };
}

/**
 * C = alpha * op(A) * op(B) + beta * C with op(A) M x K and op(B) K x N, row-major with row
 * strides lda/ldb/ldc (defaults: dense). Throws InputError naming the argument when a size,
 * stride or array length does not fit.
 */
export function gemm(opts: GemmOptions): void {
  const r = validate(opts);
  const k = resolve(opts.kernel ?? 'auto');
  if (r.M === 0 || r.N === 0) return;
  if (k) {
    const rc = k.fn(
      r.tA ? 1 : 0, r.tB ? 1 : 0, r.M, r.N, r.K, r.alpha, opts.A, r.lda, opts.B, r.ldb, r.beta, opts.C, r.ldc, r.threads,
    );
    if (rc !== 0) throw new BackendError(`ra_gemm returned ${rc} (${rc === 1 ? 'invalid arguments' : rc === 2 ? 'out of memory' : 'error'})`);
    return;
  }
  gemmTs(r, opts.A, opts.B, opts.C);
}

/* ------------------------------------------------------------------------------------------ */
/* TypeScript fallback: op(B) packed in KB x NB blocks, rows of C updated four k at a time.    */

const KB = 128;
const NB = 512;
let scratch = new Float32Array(0);

function gemmTs(r: Resolved, A: Float32Array, B: Float32Array, C: Float32Array): void {
  const { tA, tB, M, N, K, alpha, beta, lda, ldb, ldc } = r;
  for (let i = 0; i < M; i++) {
    const c0 = i * ldc;
    if (beta === 0) C.fill(0, c0, c0 + N);
    else if (beta !== 1) for (let j = c0; j < c0 + N; j++) C[j] *= beta;
  }
  if (K === 0 || alpha === 0) return;
  if (scratch.length < KB * NB) scratch = new Float32Array(KB * NB);
  const bp = scratch;
  // op(A)[i][k] = A[i * sai + k * sak]
  const sai = tA ? 1 : lda, sak = tA ? lda : 1;
  for (let j0 = 0; j0 < N; j0 += NB) {
    const nc = Math.min(NB, N - j0);
    for (let k0 = 0; k0 < K; k0 += KB) {
      const kc = Math.min(KB, K - k0);
      for (let kk = 0; kk < kc; kk++) {
        const d = kk * nc;
        if (tB) for (let jj = 0; jj < nc; jj++) bp[d + jj] = B[(j0 + jj) * ldb + k0 + kk];
        else {
          const s = (k0 + kk) * ldb + j0;
          for (let jj = 0; jj < nc; jj++) bp[d + jj] = B[s + jj];
        }
      }
      for (let i = 0; i < M; i++) {
        const c = i * ldc + j0;
        const a = i * sai + k0 * sak;
        let kk = 0;
        for (; kk + 4 <= kc; kk += 4) {
          const x = a + kk * sak;
          const a0 = alpha * A[x], a1 = alpha * A[x + sak], a2 = alpha * A[x + 2 * sak], a3 = alpha * A[x + 3 * sak];
          const o0 = kk * nc, o1 = o0 + nc, o2 = o1 + nc, o3 = o2 + nc;
          for (let jj = 0; jj < nc; jj++) {
            C[c + jj] += a0 * bp[o0 + jj] + a1 * bp[o1 + jj] + a2 * bp[o2 + jj] + a3 * bp[o3 + jj];
          }
        }
        for (; kk < kc; kk++) {
          const a0 = alpha * A[a + kk * sak], o0 = kk * nc;
          for (let jj = 0; jj < nc; jj++) C[c + jj] += a0 * bp[o0 + jj];
        }
      }
    }
  }
}

/* ------------------------------------------------------------------------------------------ */
/* Linear layers over a shard of tokens: x [..., in], w [out, in] (PyTorch layout), y [..., out]. */

function checkTensor(name: string, t: unknown, expect?: number[]): F32Tensor {
  const x = t as F32Tensor;
  if (typeof t !== 'object' || t === null || !(x.data instanceof Float32Array) || !Array.isArray(x.shape)) {
    throw new InputError(name, 'expected a float32 tensor { dtype, shape, data: Float32Array }');
  }
  let n = 1;
  for (const s of x.shape) {
    if (!Number.isInteger(s) || s < 0) throw new InputError(name, `bad shape ${shapeStr(x.shape)}`);
    n *= s;
  }
  if (x.data.length !== n) throw new InputError(name, `shape ${shapeStr(x.shape)} needs ${n} elements, data holds ${x.data.length}`);
  if (expect && (expect.length !== x.shape.length || expect.some((s, i) => s !== x.shape[i]))) {
    throw new InputError(name, `expected shape ${shapeStr(expect)}, got ${shapeStr(x.shape)}`);
  }
  return x;
}

/** x [..., in] and w [out, in] -> rows (tokens), in, out and the leading shape. */
function dims(x: F32Tensor, w: F32Tensor): { rows: number; inF: number; outF: number; lead: number[] } {
  checkTensor('x', x);
  checkTensor('w', w);
  if (x.shape.length < 1) throw new InputError('x', `expected shape [..., in], got ${shapeStr(x.shape)}`);
  if (w.shape.length !== 2) throw new InputError('w', `expected shape [out, in], got ${shapeStr(w.shape)}`);
  const [outF, inF] = w.shape as [number, number];
  const lead = x.shape.slice(0, -1);
  if (x.shape[x.shape.length - 1] !== inF) {
    throw new InputError('x', `expected shape [..., ${inF}] (in features of w ${shapeStr(w.shape)}), got ${shapeStr(x.shape)}`);
  }
  return { rows: lead.reduce((a, b) => a * b, 1), inF, outF, lead };
}

/** y = x * w^T + bias: x [..., in], w [out, in], bias [out], y [..., out] (overwritten). */
export function linear(
  x: F32Tensor, w: F32Tensor, bias: F32Tensor | undefined, y: F32Tensor, threads = 1, kernel: GemmKernelChoice = 'auto',
): void {
  const { rows, inF, outF, lead } = dims(x, w);
  checkTensor('y', y, [...lead, outF]);
  if (bias !== undefined) {
    checkTensor('bias', bias, [outF]);
    for (let r = 0; r < rows; r++) y.data.set(bias.data, r * outF);
  }
  gemm({
    transB: true, M: rows, N: outF, K: inF, A: x.data, B: w.data, C: y.data, beta: bias ? 1 : 0, threads, kernel,
  });
}

export interface LinearGrads {
  /** dL/dx [..., in]: overwritten unless accumulateDx. */
  dx?: F32Tensor;
  accumulateDx?: boolean;
  /** dL/dw [out, in] and dL/dbias [out]: accumulated (+=) unless accumulateParams is false. */
  dw?: F32Tensor;
  db?: F32Tensor;
  accumulateParams?: boolean;
}

let ones = new Float32Array(0);

/**
 * Backward of linear for the gradients asked for, given dy [..., out]:
 *   dx = dy * w, dw += dy^T * x, db += sum of dy over rows.
 */
export function linearBackward(
  x: F32Tensor, w: F32Tensor, dy: F32Tensor, grads: LinearGrads, threads = 1, kernel: GemmKernelChoice = 'auto',
): void {
  const { rows, inF, outF, lead } = dims(x, w);
  checkTensor('dy', dy, [...lead, outF]);
  if (typeof grads !== 'object' || grads === null) throw new InputError('grads', 'expected { dx?, dw?, db? }');
  const { dx, dw, db } = grads;
  if (dx) checkTensor('dx', dx, x.shape);
  if (dw) checkTensor('dw', dw, [outF, inF]);
  if (db) checkTensor('db', db, [outF]);
  const pBeta = grads.accumulateParams === false ? 0 : 1;
  if (dx) {
    gemm({ M: rows, N: inF, K: outF, A: dy.data, B: w.data, C: dx.data, beta: grads.accumulateDx ? 1 : 0, threads, kernel });
  }
  if (dw) {
    gemm({ transA: true, M: outF, N: inF, K: rows, A: dy.data, B: x.data, C: dw.data, beta: pBeta, threads, kernel });
  }
  if (db) {
    if (ones.length < rows) ones = new Float32Array(rows).fill(1);
    gemm({ M: 1, N: outF, K: rows, A: ones, B: dy.data, C: db.data, beta: pBeta, threads, kernel });
  }
}
