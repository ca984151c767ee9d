import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { InputError } from '../../src/core/errors.js';
import { cudaAvailable } from '../../src/cuda/check.js';
import { CudaContext } from '../../src/cuda/context.js';
import { roundTo, toBf16 } from '../../src/cuda/convert.js';
import { chooseTile, gemm, gemmHost, planGemm, tileRuns, type DeviceGemmArgs, type GemmDType, type GemmGpu, type GemmTile } from '../../src/cuda/gemm.js';
import { addHost, convertHost, embedHost, rmsNormHost, ropeHost, swigluHost, type OpDType } from '../../src/cuda/model-ops.js';
import { embed, rmsNorm, swiglu } from '../../src/model/layers.js';
import { applyRope, ropeInvFreq } from '../../src/model/rope.js';
import type { RopeConfig } from '../../src/model/config.js';
import { assertClose, freshSeed, randn, rng } from '../helpers/check.js';

// The GEMM (kernels/gemm.cu) and model kernels (kernels/model.cu) against references computed
// here: GEMMs against float64 products of the inputs as the GPU sees them (bf16-rounded for the
// bf16 kernels), the model kernels against src/model/layers.ts and rope.ts. Fresh random inputs
// each run (seed in every message; RINGATTN_SEED replays); device outputs are NaN-poisoned first.
// Skipped with the reason where there is no GPU; the argument checks run everywhere.

const avail = cudaAvailable();
const skip = avail.ok ? false : `${avail.reason} (GPU tests skipped: GEMM and model kernels need an NVIDIA GPU, sm_80 or newer)`;
let ctx: CudaContext | undefined;
const context = () => (ctx ??= CudaContext.open(0));
after(() => ctx?.dispose());

/**
 * ||a - b||_F / ||b||_F, every element of a finite. With `floor` (the squared norm that the
 * summed terms' magnitudes give, |op(A)|·|op(B)| + |C| + |bias| over K), a result that cancels far
 * below its terms (one output of a short dot product, say) is not held to a relative error that
 * no rounding order can meet: the denominator is at least floor.
 */
function normErr(a: ArrayLike<number>, b: ArrayLike<number>, what: string, floor = 0): number {
  assert.equal(a.length, b.length, `${what}: length`);
  let num = 0, den = 0;
  for (let i = 0; i < a.length; i++) {
    assert.ok(Number.isFinite(a[i]), `${what}: element ${i} is ${a[i]}, expected ${b[i]}`);
    num += (a[i] - b[i]) ** 2;
    den += b[i] ** 2;
  }
  den = Math.max(den, floor);
  return den === 0 ? Math.sqrt(num) : Math.sqrt(num / den);
}

/** Σ over outputs of (Σ_k |a_mk b_kn| + |C| + |bias|)² / K: the squared norm a random-sign sum of those terms would have. */
function termFloor(tA: boolean, tB: boolean, M: number, N: number, K: number, A: Float32Array, B: Float32Array, C0: Float32Array | undefined, bias: Float32Array | undefined): number {
  let f = 0;
  for (let m = 0; m < M; m++) {
    for (let n = 0; n < N; n++) {
      let s = (C0 ? Math.abs(C0[m * N + n]) : 0) + (bias ? Math.abs(bias[n]) : 0);
      for (let k = 0; k < K; k++) s += Math.abs((tA ? A[k * M + m] : A[m * K + k]) * (tB ? B[n * K + k] : B[k * N + n]));
      f += s * s;
    }
  }
  return f / Math.max(1, K + (C0 ? 1 : 0) + (bias ? 1 : 0));
}

/** float64 C = op(A)·op(B) + beta·C0 + bias. */
function refGemm(tA: boolean, tB: boolean, M: number, N: number, K: number, A: Float32Array, B: Float32Array, beta: number, C0: Float32Array | undefined, bias: Float32Array | undefined): Float64Array {
  const out = new Float64Array(M * N);
  const a = new Float64Array(M * K); // op(A) row-major [M, K]
  for (let m = 0; m < M; m++) for (let k = 0; k < K; k++) a[m * K + k] = tA ? A[k * M + m] : A[m * K + k];
  const bt = new Float64Array(N * K); // op(B)ᵀ row-major [N, K]
  for (let n = 0; n < N; n++) for (let k = 0; k < K; k++) bt[n * K + k] = tB ? B[n * K + k] : B[k * N + n];
  for (let m = 0; m < M; m++) {
    for (let n = 0; n < N; n++) {
      let s = 0;
      for (let k = 0; k < K; k++) s += a[m * K + k] * bt[n * K + k];
      if (beta !== 0) s += beta * C0![m * N + n];
      if (bias) s += bias[n];
      out[m * N + n] = s;
    }
  }
  return out;
}

const COMBOS: [boolean, boolean][] = [[false, false], [false, true], [true, false], [true, true]];
const tt = (tA: boolean, tB: boolean) => `${tA ? 't' : 'n'}${tB ? 't' : 'n'}`;

interface GemmCase {
  tA: boolean;
  tB: boolean;
  M: number;
  N: number;
  K: number;
  beta: 0 | 1;
  bias: boolean;
  dtype: GemmDType;
  out: GemmDType;
  tile?: GemmTile;
}

function runCase(c: GemmCase, seed: number, tol: number): number {
  const r = rng(seed);
  const A = randn(c.M * c.K, r), B = randn(c.K * c.N, r);
  const C0 = c.beta ? randn(c.M * c.N, r) : undefined;
  const bias = c.bias ? randn(c.N, r) : undefined;
  const got = gemmHost(context(), { transA: c.tA, transB: c.tB, M: c.M, N: c.N, K: c.K, A, B, C: C0?.slice(), bias, beta: c.beta, dtype: c.dtype, outDtype: c.out, tile: c.tile, poison: true });
  const ref = refGemm(c.tA, c.tB, c.M, c.N, c.K, roundTo(A, c.dtype), roundTo(B, c.dtype), c.beta, C0 && roundTo(C0, c.out), bias);
  const what = `${c.dtype}->${c.out} ${c.tile ?? 'auto'} ${tt(c.tA, c.tB)} M=${c.M} N=${c.N} K=${c.K} beta=${c.beta} bias=${c.bias} seed=${seed}`;
  const e = normErr(got, ref, what, c.M * c.N < 64 ? termFloor(c.tA, c.tB, c.M, c.N, c.K, A, B, C0, bias) : 0);
  assert.ok(e <= tol, `${what}: normwise relative error ${e.toExponential(3)} > ${tol}`);
  return e;
}

test('gemm fp32: every transA/transB, ragged M, N, K, beta 0/1, bias, both tile families vs float64 (<= 1e-5)', { skip }, () => {
  const seed = freshSeed();
  let n = 0, worst = 0;
  for (const [tA, tB] of COMBOS) {
    for (const M of [1, 3, 77, 130]) {
      for (const N of [1, 65, 200]) {
        for (const K of [1, 17, 64, 300]) {
          n++;
          const beta = (n % 2) as 0 | 1;
          const bias = n % 3 === 0;
          for (const tile of ['f32', 'f32-s'] as const) worst = Math.max(worst, runCase({ tA, tB, M, N, K, beta, bias, dtype: 'float32', out: 'float32', tile }, seed + n, 1e-5));
        }
      }
    }
  }
  // Several tiles each way and a long K; the family chosen by shape.
  for (const [tA, tB] of COMBOS) worst = Math.max(worst, runCase({ tA, tB, M: 301, N: 270, K: 1031, beta: 1, bias: true, dtype: 'float32', out: 'float32' }, seed + 7, 1e-5));
  console.log(`gemm fp32: worst normwise error ${worst.toExponential(2)} (seed ${seed})`);
});

test('gemm bf16 (tensor cores): every transA/transB and tile family, ragged M, N, beta 0/1, bias, fp32 and bf16 out vs float64 of the bf16 inputs (<= 1e-2)', { skip }, () => {
  const seed = freshSeed();
  let n = 0;
  const worst = { float32: 0, bfloat16: 0 };
  for (const [tA, tB] of COMBOS) {
    for (const tile of (['bf16-h', 'bf16-l', 'bf16-m', 'bf16-s'] as const).filter((t) => tileRuns(t, context().arch))) {
      // The 16-byte kernels need the stored row lengths (K or M for A, N or K for B) to be multiples of 8.
      for (const [M, N, K] of [[1, 8, 8], [3, 200, 64], [77, 264, 72], [130, 64, 200], [136, 520, 136], [264, 136, 8]]) {
        if ((tA && M % 8) || (!tB && N % 8)) continue;
        for (const out of ['float32', 'bfloat16'] as const) {
          n++;
          const e = runCase({ tA, tB, M, N, K, beta: (n % 2) as 0 | 1, bias: n % 3 !== 1, dtype: 'bfloat16', out, tile }, seed + n, 1e-2);
          worst[out] = Math.max(worst[out], e);
        }
      }
    }
    // Any shape: the element-wise-loading kernel, chosen automatically.
    for (const [M, N, K] of [[1, 1, 1], [3, 65, 17], [77, 200, 300], [130, 1, 64], [77, 65, 1]]) {
      for (const out of ['float32', 'bfloat16'] as const) {
        n++;
        const c: GemmCase = { tA, tB, M, N, K, beta: (n % 2) as 0 | 1, bias: n % 3 !== 1, dtype: 'bfloat16', out };
        const aligned = (tA ? M : K) % 8 === 0 && (tB ? K : N) % 8 === 0;
        const auto = chooseTile({ transA: tA, transB: tB, M, N, K, a: 256, b: 512, c: 1024, dtype: 'bfloat16' }, context());
        assert.equal(auto === 'bf16-u', !aligned, `${tt(tA, tB)} M=${M} N=${N} K=${K}: chose ${auto}`);
        worst[out] = Math.max(worst[out], runCase(c, seed + n, 1e-2));
      }
    }
    // Many tiles and K steps (more than the pipeline's stages), every family.
    for (const tile of (['bf16-h', 'bf16-l', 'bf16-m', 'bf16-s', 'bf16-u'] as const).filter((t) => tileRuns(t, context().arch))) worst.float32 = Math.max(worst.float32, runCase({ tA, tB, M: 392, N: 520, K: 1032, beta: 1, bias: true, dtype: 'bfloat16', out: 'float32', tile }, seed + 99, 1e-2));
  }
  console.log(`gemm bf16: worst normwise error fp32 out ${worst.float32.toExponential(2)}, bf16 out ${worst.bfloat16.toExponential(2)} (seed ${seed})`);
  // fp32 accumulation of exact bf16 products: far inside the bound when the output is fp32.
  assert.ok(worst.float32 <= 1e-5, `bf16 in, fp32 out: ${worst.float32} (seed ${seed})`);
});

test('gemm at a model shape, y = x·Wᵀ + bias with M=8192, N=1024, K=2048: fp32 and the large bf16 families', { skip }, () => {
  const seed = freshSeed();
  const r = rng(seed);
  const M = 8192, N = 1024, K = 2048;
  const x = randn(M * K, r, 0.5), w = randn(N * K, r, 0.05), bias = randn(N, r);
  // Spot-check rows against float64 (the whole product in JS would take too long), across the
  // tile grid (64 x 4 tiles of 128 x 256).
  const rows = [0, 1, 777, 4096, 5000, M - 1];
  const runs: [GemmDType, GemmTile | undefined][] = [['float32', undefined], ['bfloat16', undefined]];
  for (const t of ['bf16-h', 'bf16-l', 'bf16-m'] as const) if (tileRuns(t, context().arch)) runs.push(['bfloat16', t]);
  for (const [dtype, tile] of runs) {
    const y = gemmHost(context(), { transA: false, transB: true, M, N, K, A: x, B: w, bias, dtype, tile, poison: true });
    const xr = roundTo(x, dtype), wr = roundTo(w, dtype);
    for (const m of rows) {
      const ref = new Float64Array(N);
      for (let n = 0; n < N; n++) {
        let s = bias[n];
        for (let k = 0; k < K; k++) s += xr[m * K + k] * wr[n * K + k];
        ref[n] = s;
      }
      const e = normErr(y.subarray(m * N, (m + 1) * N), ref, `${dtype} ${tile ?? 'auto'} row ${m} seed ${seed}`);
      assert.ok(e <= 1e-5, `${dtype} ${tile ?? 'auto'} row ${m}: ${e} (seed ${seed})`);
    }
    // Every row finite (poisoned before the call).
    for (let i = 0; i < y.length; i += 97) assert.ok(Number.isFinite(y[i]), `${dtype} ${tile ?? 'auto'}: element ${i} is ${y[i]} (seed ${seed})`);
  }
});

test('gemm argument checks (no GPU needed): InputError naming the argument', () => {
  const base: DeviceGemmArgs = { transA: false, transB: true, M: 4, N: 8, K: 16, a: 256, b: 512, c: 1024, dtype: 'bfloat16' };
  const h100: GemmGpu = { smCount: 132, arch: 'sm_90a' };
  const a100: GemmGpu = { smCount: 108, arch: 'sm_80' };
  const bad = (over: Partial<DeviceGemmArgs>, arg: string, gpu = h100) =>
    assert.throws(() => planGemm({ ...base, ...over } as DeviceGemmArgs, gpu), (e: unknown) => e instanceof InputError && e.arg === arg, `expected InputError on ${arg}`);
  bad({ M: -1 }, 'M');
  bad({ N: 1.5 }, 'N');
  bad({ K: 2 ** 31 }, 'K');
  bad({ dtype: 'float16' as GemmDType }, 'dtype');
  bad({ dtype: 'float32', outDtype: 'bfloat16' }, 'outDtype');
  bad({ beta: NaN }, 'beta');
  bad({ a: 0 }, 'a');
  bad({ c: 0 }, 'c');
  bad({ c: 1025, outDtype: 'float32' }, 'c');
  bad({ tile: 'f32' }, 'tile');
  bad({ tile: 'bf16-l', K: 17 }, 'tile');
  bad({ tile: 'nope' as GemmTile }, 'tile');
  bad({ transA: 1 as unknown as boolean }, 'transA');
  bad({ tile: 'bf16-h' }, 'tile', a100);
  // Shapes that fit: names, the Hopper kernel only on sm_90a, and the unaligned fallback.
  assert.equal(planGemm({ ...base, M: 16384, N: 2048, K: 2048 }, h100).name, 'gemm_bf16_h_nt');
  assert.equal(planGemm({ ...base, M: 16384, N: 2048, K: 2048 }, a100).name, 'gemm_bf16_l_nt');
  assert.equal(planGemm({ ...base, K: 17 }, h100).name, 'gemm_bf16_u_nt');
  assert.equal(planGemm({ ...base, transA: true, transB: false, dtype: 'float32', M: 2048, N: 2048 }, h100).name, 'gemm_f32_tn');
  assert.equal(planGemm({ ...base, dtype: 'float32', M: 3, N: 5 }, h100).name, 'gemm_f32_s_nt');
  // Empty products are fine and need no pointers when nothing is read or written.
  assert.doesNotThrow(() => planGemm({ ...base, M: 0, a: 0, b: 0, c: 0 }, h100));
});

test('gemm with K = 0: C = beta·C + bias; M or N = 0 launches nothing', { skip }, () => {
  const c = context();
  const got = gemmHost(c, { transA: false, transB: false, M: 3, N: 5, K: 0, A: new Float32Array(0), B: new Float32Array(0), C: Float32Array.from({ length: 15 }, (_, i) => i), beta: 1, bias: Float32Array.of(1, 2, 3, 4, 5) });
  assert.deepEqual(Array.from(got), Array.from({ length: 15 }, (_, i) => i + 1 + (i % 5)));
  for (const dtype of ['float32', 'bfloat16'] as const) {
    const z = gemmHost(c, { transA: true, transB: true, M: 2, N: 3, K: 0, A: new Float32Array(0), B: new Float32Array(0), dtype, poison: true });
    assert.deepEqual(Array.from(z), [0, 0, 0, 0, 0, 0]);
  }
  gemm(c, { transA: false, transB: false, M: 0, N: 5, K: 3, a: 0, b: 0, c: 0, dtype: 'float32' });
});

// ---- model kernels -------------------------------------------------------------------------------

const rb = (x: Float32Array) => roundTo(x, 'bfloat16');

test('convert fp32 <-> bf16: bit-exact with the host rounding (vector and scalar paths)', { skip }, () => {
  const seed = freshSeed();
  const r = rng(seed);
  for (const n of [1, 7, 1024, 4099]) {
    const x = randn(n, r, 3);
    x[0] = 1 + 2 ** -8; // a tie: rounds to even (1.0)
    const bits = toBf16(x);
    const got = convertHost(context(), x, 'float32', 'bfloat16');
    assert.deepEqual(Array.from(toBf16(got)), Array.from(bits), `fp32->bf16 n=${n} seed=${seed}`);
    const back = convertHost(context(), bits, 'bfloat16', 'float32');
    assert.deepEqual(Array.from(back), Array.from(rb(x)), `bf16->fp32 n=${n} seed=${seed}`);
  }
});

test('swiglu: fp32/bf16 in and out vs layers.ts', { skip }, () => {
  const seed = freshSeed();
  const r = rng(seed);
  for (const n of [5, 4096, 10001]) {
    const g = randn(n, r, 4), u = randn(n, r);
    g[0] = -100; // exp overflow: silu -> -0
    g[1] = 90;
    for (const dtype of ['float32', 'bfloat16'] as OpDType[]) {
      const gi = roundTo(g, dtype), ui = roundTo(u, dtype);
      const ref = new Float32Array(n);
      swiglu(gi, ui, ref);
      for (const out of ['float32', 'bfloat16'] as OpDType[]) {
        const got = swigluHost(context(), g, u, dtype, out);
        const what = `swiglu ${dtype}->${out} n=${n} seed=${seed}`;
        if (out === 'float32') assertClose(got, ref, 1e-6, what);
        else assertClose(got, rb(ref), 8e-3, what);
      }
    }
  }
});

test('rmsNorm: fp32 and bf16 out, invRms vs layers.ts', { skip }, () => {
  const seed = freshSeed();
  const r = rng(seed);
  for (const [rows, dim, eps] of [[1, 1, 1e-6], [7, 2048, 1e-5], [33, 333, 1e-6], [5, 8192, 1e-6]] as const) {
    const x = randn(rows * dim, r, 2), w = randn(dim, r);
    const ref = new Float32Array(rows * dim), inv = new Float32Array(rows);
    rmsNorm(x, rows, dim, w, eps, ref, inv);
    for (const out of ['float32', 'bfloat16'] as OpDType[]) {
      const got = rmsNormHost(context(), x, rows, dim, w, eps, out);
      const what = `rmsNorm ${out} rows=${rows} dim=${dim} seed=${seed}`;
      assertClose(got.invRms, inv, 1e-7, `${what} invRms`);
      if (out === 'float32') assertClose(got.out, ref, 1e-6, what);
      else assertClose(got.out, rb(ref), 1e-6, what);
    }
  }
});

test('residual add: h += y (fp32 and bf16 y) exactly', { skip }, () => {
  const seed = freshSeed();
  const r = rng(seed);
  for (const n of [3, 4096, 5003]) {
    const h = randn(n, r), y = randn(n, r);
    for (const dtype of ['float32', 'bfloat16'] as OpDType[]) {
      const yr = roundTo(y, dtype);
      const ref = h.map((v, i) => v + yr[i]);
      assert.deepEqual(Array.from(addHost(context(), h, y, dtype)), Array.from(ref), `add ${dtype} n=${n} seed=${seed}`);
    }
  }
});

test('rope: rotate-half in place vs rope.ts applyRope (default, llama3, yarn scaling; forward and inverse)', { skip }, () => {
  const seed = freshSeed();
  const r = rng(seed);
  const ropes: [string, RopeConfig][] = [
    ['default', { theta: 10000, type: 'default' }],
    ['llama3', { theta: 500000, type: 'llama3', factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 8192 }],
    ['yarn', { theta: 10000, type: 'yarn', factor: 4, originalMaxPositionEmbeddings: 4096 }],
  ];
  for (const [name, cfg] of ropes) {
    for (const [rows, heads, D] of [[1, 1, 2], [37, 4, 64], [9, 3, 128], [5, 2, 256]]) {
      const rope = ropeInvFreq({ headDim: D, rope: cfg, maxPositionEmbeddings: 131072 });
      // Global positions as a ring shard sees them: large and not contiguous.
      const pos = Int32Array.from({ length: rows }, () => Math.floor(r() * 200000));
      const x = randn(rows * heads * D, r);
      for (const inverse of [false, true]) {
        const ref = x.slice();
        applyRope(ref, rows, heads, D, pos, rope, inverse);
        const got = ropeHost(context(), x, rows, heads, D, pos, rope, inverse);
        const what = `rope ${name} rows=${rows} heads=${heads} D=${D} inverse=${inverse} seed=${seed}`;
        // Same float64 arithmetic; only cos/sin implementations may differ in the last double bits.
        assertClose(got, ref, 1e-6, what);
        let same = 0;
        for (let i = 0; i < ref.length; i++) if (got[i] === ref[i]) same++;
        assert.ok(same >= 0.99 * ref.length, `${what}: only ${same}/${ref.length} bit-identical`);
      }
    }
  }
});

test('embed: gathered rows vs layers.ts; an id out of range throws InputError naming it', { skip }, () => {
  const seed = freshSeed();
  const r = rng(seed);
  for (const [vocab, hidden, n] of [[50, 8, 13], [1000, 2048, 64], [7, 3, 5]]) {
    const table = randn(vocab * hidden, r);
    const ids = Int32Array.from({ length: n }, () => Math.floor(r() * vocab));
    const ref = new Float32Array(n * hidden);
    embed(ids, table, hidden, ref);
    assert.deepEqual(Array.from(embedHost(context(), ids, table, hidden)), Array.from(ref), `embed vocab=${vocab} hidden=${hidden} seed=${seed}`);
  }
  const table = randn(10 * 4, r);
  assert.throws(() => embedHost(context(), Int32Array.of(1, 2, 10, -1), table, 4), (e: unknown) => e instanceof InputError && e.arg === 'ids[2]');
});
