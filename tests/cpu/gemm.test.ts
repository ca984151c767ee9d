import assert from 'node:assert/strict';
import { test } from 'node:test';
import { InputError } from '../../src/core/errors.js';
import { tensor, type F32Tensor } from '../../src/core/tensor.js';
import { gemm, gemmKernelName, linear, linearBackward, type GemmKernelChoice } from '../../src/cpu/gemm.js';
import { assertClose, freshSeed, randn, relErr, rng } from '../helpers/check.js';

/**
 * The C GEMM and its TypeScript fallback against a float64 reference on fresh random inputs.
 *
 * Tolerance: max|got - ref| / max(max|ref|, norm) <= 1e-5, where norm is the largest element's
 * sqrt(sum_k (alpha a_k b_k)^2 + (beta c)^2): the size its terms give it before they cancel.
 * Both paths sum in fp32 (the C kernel in KC blocks, the fallback four terms at a time in
 * double, then rounded); for zero-mean inputs the rounding error of a K-term sum grows like
 * sqrt(K) * 2^-24 relative to that size, about 2e-6 for the largest K here (800), so a fixed
 * 1e-5 leaves a margin without a K term. Relative to |ref| alone one element that cancels is
 * ill-conditioned: M=N=1, K=63 summed to 1.1e-5 of itself under avx512 (seed 1326683264).
 */

const TOL = 1e-5;
const forcedTs = process.env.RINGATTN_KERNEL === 'ts';
const paths: { kernel: GemmKernelChoice; threads: number }[] = [
  ...(forcedTs ? [] : [{ kernel: 'c' as const, threads: 1 }, { kernel: 'c' as const, threads: 2 }]),
  { kernel: 'ts', threads: 1 },
];

interface Case {
  tA: boolean;
  tB: boolean;
  M: number;
  N: number;
  K: number;
  alpha: number;
  beta: number;
  /** extra row stride beyond the minimum */
  pad: [number, number, number];
}

/**
 * Reference of the logical M x N result in float64 (beta = 0 ignores C), and the largest
 * element's term norm sqrt(sum_k (alpha a_k b_k)^2 + (beta c)^2).
 */
function reference(c: Case, A: Float32Array, lda: number, B: Float32Array, ldb: number, C0: Float32Array, ldc: number): { out: Float64Array; norm: number } {
  const { tA, tB, M, N, K, alpha, beta } = c;
  const out = new Float64Array(M * N);
  let norm = 0;
  for (let i = 0; i < M; i++) {
    for (let j = 0; j < N; j++) {
      let s = 0, q = 0;
      for (let k = 0; k < K; k++) {
        const t = (tA ? A[k * lda + i] : A[i * lda + k]) * (tB ? B[j * ldb + k] : B[k * ldb + j]);
        s += t;
        q += t * t;
      }
      const bc = beta === 0 ? 0 : beta * C0[i * ldc + j];
      out[i * N + j] = alpha * s + bc;
      norm = Math.max(norm, Math.sqrt(alpha * alpha * q + bc * bc));
    }
  }
  return { out, norm };
}

function runCase(c: Case, seed: number): void {
  const r = rng(seed);
  const { tA, tB, M, N, K } = c;
  const lda = Math.max(1, tA ? M : K) + c.pad[0], ldb = Math.max(1, tB ? K : N) + c.pad[1], ldc = Math.max(1, N) + c.pad[2];
  const A = randn((tA ? K : M) * lda, r), B = randn((tB ? N : K) * ldb, r);
  const C0 = randn(M * ldc, r);
  if (c.beta === 0) C0.fill(NaN); // must be overwritten, never read
  const { out: ref, norm } = reference(c, A, lda, B, ldb, C0, ldc);
  const tag = `${tA ? 'T' : 'N'}${tB ? 'T' : 'N'} M=${M} N=${N} K=${K} alpha=${c.alpha} beta=${c.beta} pad=${c.pad} seed=${seed}`;
  let oneThread: Float32Array | undefined;
  for (const { kernel, threads } of paths) {
    const C = C0.slice();
    gemm({ transA: tA, transB: tB, M, N, K, alpha: c.alpha, A, lda, B, ldb, beta: c.beta, C, ldc, threads, kernel });
    // the C kernel sums each element in the same order whatever the thread count
    if (kernel === 'c' && threads === 1) oneThread = C;
    else if (kernel === 'c') assert.ok(C.every((v, i) => Object.is(v, oneThread![i])), `c/${threads} ${tag}: differs from c/1`);
    const got = new Float64Array(M * N);
    for (let i = 0; i < M; i++) {
      for (let j = 0; j < N; j++) got[i * N + j] = C[i * ldc + j];
      for (let j = N; j < ldc; j++) {
        assert.ok(Object.is(C[i * ldc + j], C0[i * ldc + j]), `${kernel}/${threads} ${tag}: padding of C row ${i} written`);
      }
    }
    assertGemmClose(got, { out: ref, norm }, `${kernel}/${threads} ${tag}`);
  }
}

function assertGemmClose(got: ArrayLike<number>, ref: { out: Float64Array; norm: number }, what: string): void {
  const e = relErr(got, ref.out, ref.norm);
  assert.ok(e <= TOL, `${what}: error ${e.toExponential(3)} (relative to max(max|ref|, term norm)) > ${TOL}`);
}

test('gemmKernelName names the C kernel or the fallback', () => {
  assert.equal(gemmKernelName('ts'), 'ts');
  const name = gemmKernelName();
  if (forcedTs) assert.equal(name, 'ts');
  else assert.match(gemmKernelName('c'), /^c\/(avx512|avx2|neon|scalar)$/);
  assert.match(name, /^(ts|c\/\w+)$/);
});

test('all four transposes over odd sizes, padded strides, alpha and beta', () => {
  const seed = freshSeed();
  const sizes = [1, 3, 17, 63, 65, 129, 257];
  const triples: [number, number, number][] = [
    [1, 257, 3], [3, 17, 63], [17, 63, 65], [63, 65, 129], [65, 129, 17], [129, 1, 257], [257, 3, 1], [129, 129, 129],
  ];
  const scalars: [number, number][] = [[1, 0], [0.5, 1], [-1.25, 0.75], [2, -1], [1, 0]];
  let n = 0;
  for (const tA of [false, true]) {
    for (const tB of [false, true]) {
      for (const [M, N, K] of triples) {
        const [alpha, beta] = scalars[n % scalars.length];
        const pad: [number, number, number] = n % 3 === 0 ? [0, 0, 0] : [1 + (n % 5), 3 + (n % 2), 2 + (n % 7)];
        runCase({ tA, tB, M, N, K, alpha, beta, pad }, seed + n++);
      }
    }
  }
  // one size against every other, shuffled per run
  const r = rng(seed);
  for (let t = 0; t < 6; t++) {
    const pick = () => sizes[Math.floor(r() * sizes.length)];
    runCase({ tA: t % 2 === 1, tB: t % 3 === 0, M: pick(), N: pick(), K: pick(), alpha: 1, beta: t % 2, pad: [t, 0, t] }, seed + n++);
  }
});

test('blocks, chunks and thread splits: K over KC with beta once, N over NC, M over MC, narrow N', () => {
  const seed = freshSeed();
  runCase({ tA: false, tB: true, M: 70, N: 300, K: 800, alpha: 0.75, beta: 0.5, pad: [0, 0, 0] }, seed);
  runCase({ tA: true, tB: false, M: 37, N: 600, K: 400, alpha: 1, beta: 1, pad: [2, 1, 5] }, seed + 1);
  runCase({ tA: false, tB: false, M: 2100, N: 19, K: 20, alpha: 1, beta: 0, pad: [0, 3, 0] }, seed + 2);
  runCase({ tA: true, tB: true, M: 300, N: 2, K: 33, alpha: -1, beta: 2, pad: [0, 0, 1] }, seed + 3);
});

test('M, N or K = 0, alpha = 0, and beta = 0 overwriting NaN', () => {
  const seed = freshSeed();
  for (const { kernel, threads } of paths) {
    const tag = `${kernel}/${threads} seed=${seed}`;
    const empty = new Float32Array(0);
    // M = 0 or N = 0: nothing to do, empty arrays accepted
    gemm({ M: 0, N: 5, K: 3, A: empty, B: new Float32Array(15), C: empty, kernel, threads });
    gemm({ M: 4, N: 0, K: 3, A: new Float32Array(12), B: empty, C: empty, kernel, threads });
    gemm({ M: 0, N: 0, K: 0, A: empty, B: empty, C: empty, kernel, threads });
    // K = 0: C = beta * C
    const r = rng(seed);
    const C = randn(12, r), C0 = C.slice();
    gemm({ M: 3, N: 4, K: 0, A: empty, B: empty, C, beta: 0.5, kernel, threads });
    assertClose(C, Array.from(C0, (x) => 0.5 * x), 0, `${tag}: K=0 beta=0.5`);
    C.fill(NaN);
    gemm({ M: 3, N: 4, K: 0, A: empty, B: empty, C, beta: 0, kernel, threads });
    assert.deepEqual(Array.from(C), new Array(12).fill(0), `${tag}: K=0 beta=0 must overwrite NaN`);
    // alpha = 0: A and B are not read (NaN there does not reach C)
    const nanA = new Float32Array(6).fill(NaN), B = randn(8, r);
    const C2 = randn(12, r), C20 = C2.slice();
    gemm({ M: 3, N: 4, K: 2, alpha: 0, A: nanA, B, C: C2, beta: -2, kernel, threads });
    assertClose(C2, Array.from(C20, (x) => -2 * x), 0, `${tag}: alpha=0`);
    // beta = 0 with NaN and Infinity in C
    const A3 = randn(6, r), C3 = new Float32Array(12).fill(NaN);
    C3[5] = Infinity;
    gemm({ M: 3, N: 4, K: 2, A: A3, B, C: C3, kernel, threads });
    assert.ok(C3.every(Number.isFinite), `${tag}: beta=0 left ${Array.from(C3)}`);
  }
});

test('views into larger buffers (byteOffset) are read and written in place', () => {
  const seed = freshSeed();
  const r = rng(seed);
  const M = 9, N = 21, K = 13;
  const bufA = randn(M * K + 7, r), bufB = randn(K * N + 3, r), bufC = new Float32Array(M * N + 11).fill(-7);
  const A = bufA.subarray(7), B = bufB.subarray(3), C = bufC.subarray(5, 5 + M * N);
  const c: Case = { tA: false, tB: false, M, N, K, alpha: 1, beta: 0, pad: [0, 0, 0] };
  const ref = reference(c, A, K, B, N, C, N);
  for (const { kernel, threads } of paths) {
    C.fill(NaN);
    gemm({ M, N, K, A, B, C, kernel, threads });
    assertGemmClose(C, ref, `${kernel}/${threads} seed=${seed}`);
    assert.deepEqual([...bufC.subarray(0, 5), ...bufC.subarray(5 + M * N)], new Array(11).fill(-7), `${kernel}: outside the view`);
  }
});

test('bad arguments throw InputError naming the argument', () => {
  const a = new Float32Array(12);
  const bad = (arg: string, opts: Parameters<typeof gemm>[0]) =>
    assert.throws(() => gemm(opts), (e: unknown) => e instanceof InputError && e.arg === arg, arg);
  bad('M', { M: -1, N: 2, K: 2, A: a, B: a, C: a });
  bad('K', { M: 2, N: 2, K: 1.5, A: a, B: a, C: a });
  bad('A', { M: 4, N: 3, K: 4, A: a, B: a, C: a });
  bad('B', { M: 3, N: 4, K: 4, transB: true, A: a, B: a, C: a });
  bad('C', { M: 3, N: 5, K: 1, A: a, B: a, C: a });
  bad('lda', { M: 2, N: 2, K: 3, lda: 2, A: a, B: a, C: a });
  bad('ldc', { M: 2, N: 3, K: 2, ldc: 2, A: a, B: a, C: a });
  bad('threads', { M: 2, N: 2, K: 2, threads: 0, A: a, B: a, C: a });
  bad('beta', { M: 2, N: 2, K: 2, beta: NaN, A: a, B: a, C: a });
  bad('A', { M: 2, N: 2, K: 2, A: [1, 2, 3, 4] as unknown as Float32Array, B: a, C: a });
});

/** Float64 linear-layer reference: y = x w^T + b, dx = dy w, dw = dy^T x, db = colsum(dy). */
function refLinear(x: Float32Array, w: Float32Array, b: Float32Array, dy: Float32Array, rows: number, inF: number, outF: number) {
  const y = new Float64Array(rows * outF), dx = new Float64Array(rows * inF), dw = new Float64Array(outF * inF);
  const db = new Float64Array(outF);
  for (let r = 0; r < rows; r++) {
    for (let o = 0; o < outF; o++) {
      let s = b[o];
      for (let i = 0; i < inF; i++) {
        s += x[r * inF + i] * w[o * inF + i];
        dx[r * inF + i] += dy[r * outF + o] * w[o * inF + i];
        dw[o * inF + i] += dy[r * outF + o] * x[r * inF + i];
      }
      y[r * outF + o] = s;
      db[o] += dy[r * outF + o];
    }
  }
  return { y, dx, dw, db };
}

test('linear and linearBackward against the float64 reference, accumulation, finite differences', () => {
  const seed = freshSeed();
  const r = rng(seed);
  const lead = [3, 11], rows = 33, inF = 65, outF = 17;
  const x = tensor([...lead, inF], randn(rows * inF, r)), w = tensor([outF, inF], randn(outF * inF, r, 0.2));
  const b = tensor([outF], randn(outF, r)), dy = tensor([...lead, outF], randn(rows * outF, r));
  const ref = refLinear(x.data, w.data, b.data, dy.data, rows, inF, outF);
  for (const { kernel, threads } of paths) {
    const tag = `${kernel}/${threads} seed=${seed}`;
    const y = tensor([...lead, outF], new Float32Array(rows * outF).fill(NaN));
    linear(x, w, b, y, threads, kernel);
    assertClose(y.data, ref.y, TOL, `${tag}: y`);
    const y0 = tensor([...lead, outF]);
    linear(x, w, undefined, y0, threads, kernel);
    assertClose(y0.data, Array.from(ref.y, (v, i) => v - b.data[i % outF]), TOL, `${tag}: y without bias`);

    const dx = tensor(x.shape, new Float32Array(rows * inF).fill(NaN));
    const dw = tensor([outF, inF]), db = tensor([outF]);
    linearBackward(x, w, dy, { dx, dw, db }, threads, kernel);
    assertClose(dx.data, ref.dx, TOL, `${tag}: dx`);
    assertClose(dw.data, ref.dw, TOL, `${tag}: dw`);
    assertClose(db.data, ref.db, TOL, `${tag}: db`);
    // a second call: dx overwritten, dw and db accumulate; then accumulateDx, and overwriting params
    linearBackward(x, w, dy, { dx, dw, db }, threads, kernel);
    assertClose(dx.data, ref.dx, TOL, `${tag}: dx overwritten`);
    assertClose(dw.data, Array.from(ref.dw, (v) => 2 * v), TOL, `${tag}: dw accumulated`);
    assertClose(db.data, Array.from(ref.db, (v) => 2 * v), TOL, `${tag}: db accumulated`);
    linearBackward(x, w, dy, { dx, accumulateDx: true, dw, db, accumulateParams: false }, threads, kernel);
    assertClose(dx.data, Array.from(ref.dx, (v) => 2 * v), TOL, `${tag}: dx accumulated`);
    assertClose(dw.data, ref.dw, TOL, `${tag}: dw overwritten`);
    assertClose(db.data, ref.db, TOL, `${tag}: db overwritten`);
  }
  // Finite differences of L = sum(dy * linear(x, w, b)) at a few coordinates (L is linear in each,
  // so a large step only costs fp32 rounding of L).
  const loss = (): number => {
    const y = tensor([...lead, outF]);
    linear(x, w, b, y);
    let s = 0;
    for (let i = 0; i < y.data.length; i++) s += y.data[i] * dy.data[i];
    return s;
  };
  const fd = (t: F32Tensor, i: number): number => {
    const h = 0.5, v = t.data[i];
    t.data[i] = v + h;
    const up = loss();
    t.data[i] = v - h;
    const down = loss();
    t.data[i] = v;
    return (up - down) / (2 * h);
  };
  for (let t = 0; t < 4; t++) {
    const ix = Math.floor(r() * rows * inF), iw = Math.floor(r() * outF * inF), ib = Math.floor(r() * outF);
    for (const [name, got, want] of [['x', fd(x, ix), ref.dx[ix]], ['w', fd(w, iw), ref.dw[iw]], ['b', fd(b, ib), ref.db[ib]]] as const) {
      assert.ok(Math.abs(got - want) <= 2e-3 * (1 + Math.abs(want)), `d${name}: finite difference ${got} vs ${want} seed=${seed}`);
    }
  }
});

test('linear validates shapes', () => {
  const x = tensor([4, 6]), w = tensor([5, 6]), y = tensor([4, 5]);
  const arg = (f: () => void) => {
    try {
      f();
    } catch (e) {
      return e instanceof InputError ? e.arg : `not an InputError: ${String(e)}`;
    }
    return 'no error';
  };
  assert.equal(arg(() => linear(tensor([4, 7]), w, undefined, y)), 'x');
  assert.equal(arg(() => linear(x, tensor([5, 6, 1]), undefined, y)), 'w');
  assert.equal(arg(() => linear(x, w, tensor([4]), y)), 'bias');
  assert.equal(arg(() => linear(x, w, undefined, tensor([4, 6]))), 'y');
  assert.equal(arg(() => linearBackward(x, w, tensor([4, 6]), {})), 'dy');
  assert.equal(arg(() => linearBackward(x, w, y, { dw: tensor([6, 5]) })), 'dw');
  assert.equal(arg(() => linearBackward(x, w, y, { dx: tensor([4, 5]) })), 'dx');
});
