/*
 * ringattn native fp32 GEMM for the linear layers of the model: C = alpha * op(A) * op(B) + beta * C,
 * row-major, op(X) = X or X^T (entry point and shapes: ra_gemm at the end of this file).
 *
 * Structure (the Goto/BLIS layering, written for row-major C with vectors along N):
 *  - The micro-kernel keeps an MR x NR tile of C in registers (MR rows broadcast from the packed
 *    A panel, NR = NV vectors of VW columns loaded from the packed B panel) and runs over kc.
 *    AVX-512: 12 x 32 (24 accumulators of the 32 zmm registers); AVX2: 6 x 16; NEON: 8 x 12.
 *  - A is packed in blocks of MC x KC (MR-row panels, k-major: ap[k * MR + r]) shared by all
 *    threads and read from L3; each A micro-panel (MR x KC, 18 KB) stays in L1 while it sweeps
 *    a chunk of B.
 *  - B is packed per thread in chunks of KC x NC (NR-column panels, bp[k * NR + c], 384 KB) that
 *    stay in that core's L2 while every MR panel of the A block runs over them.
 *  - Both packings of a transposed operand go through 16 x 16 in-register transposes on AVX-512.
 *  - Panels are zero-padded to MR / NR, so the micro-kernel always runs the full tile; edge tiles
 *    are written through a small buffer.
 *  - Threads: one parallel region for the whole call. Per (A block, K block) step the team packs
 *    the A block, meets at one barrier, then takes (N chunk, M slice) items dynamically; the A
 *    block alternates between two buffers so no barrier is needed at the end of a step.
 *  - beta is applied by the first K block only (later blocks add), beta = 0 never reads C (NaN
 *    in C is overwritten), and alpha = 0 or K = 0 reduces to C = beta * C without reading A or B.
 * Sums run in fp32 in K order within a K block, so results do not depend on the thread count.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "simd.h"

/* ------------------------------------------------------------------------------------------ */
/* Vector layer (simd.h) and the register block: GMR rows x GNV vectors of VW columns.          */

#if defined(RA_AVX512)
#ifndef GMR
#define GMR 12
#endif
#ifndef GNV
#define GNV 2
#endif
#elif defined(RA_AVX2)
#ifndef GMR
#define GMR 6
#endif
#ifndef GNV
#define GNV 2
#endif
#elif defined(RA_NEON)
#ifndef GMR
#define GMR 8
#endif
#ifndef GNV
#define GNV 3
#endif
#else
#ifndef GMR
#define GMR 4
#endif
#ifndef GNV
#define GNV 4
#endif
#endif

#define GNR (GNV * VW)

/* Cache blocking: KC x NC of B in L2 (KC * NC * 4 bytes), MC x KC of A in L3, MR x KC in L1. */
#ifndef GKC
#define GKC 384
#endif
#ifndef GNC
#define GNC 256
#endif
#ifndef GMC
#define GMC 2048
#endif

static inline long g_min(long a, long b) { return a < b ? a : b; }
static inline long g_cdiv(long a, long b) { return (a + b - 1) / b; }

static float* g_alloc(long n) {
  size_t bytes = ((size_t)(n > 0 ? n : 1) * sizeof(float) + 63) / 64 * 64;
  return (float*)aligned_alloc(64, bytes);
}

/* ------------------------------------------------------------------------------------------ */
/* Micro-kernel: tile[r][c] = sum_k ap[k * GMR + r] * bp[k * GNR + c], then                    */
/* C[r][c] = alpha * tile + beta * C for r < mr, c < nr (beta = 0: C is not read).             */

static void ukernel(long kc, const float* restrict ap, const float* restrict bp, float* restrict c, long ldc, int mr,
                    int nr, float alpha, float beta) {
  vf acc[GMR][GNV];
#pragma GCC unroll 16
  for (int r = 0; r < GMR; r++)
#pragma GCC unroll 4
    for (int v = 0; v < GNV; v++) acc[r][v] = v_zero();
  /* the C tile is needed only at the end: start fetching it now */
  for (int r = 0; r < mr; r++) {
    __builtin_prefetch(c + r * ldc, 1, 3);
    __builtin_prefetch(c + r * ldc + GNR - 1, 1, 3);
  }
  for (long k = 0; k < kc; k++) {
    vf b[GNV];
#pragma GCC unroll 4
    for (int v = 0; v < GNV; v++) b[v] = v_load(bp + v * VW);
#pragma GCC unroll 16
    for (int r = 0; r < GMR; r++) {
      vf a = v_set1(ap[r]);
#pragma GCC unroll 4
      for (int v = 0; v < GNV; v++) acc[r][v] = v_fma(a, b[v], acc[r][v]);
    }
    ap += GMR;
    bp += GNR;
  }
  const vf va = v_set1(alpha);
  if (mr == GMR && nr == GNR) {
    if (beta == 0.0f) {
#pragma GCC unroll 16
      for (int r = 0; r < GMR; r++)
#pragma GCC unroll 4
        for (int v = 0; v < GNV; v++) v_store(c + r * ldc + v * VW, v_mul(acc[r][v], va));
    } else if (beta == 1.0f) {
#pragma GCC unroll 16
      for (int r = 0; r < GMR; r++)
#pragma GCC unroll 4
        for (int v = 0; v < GNV; v++) v_store(c + r * ldc + v * VW, v_fma(acc[r][v], va, v_load(c + r * ldc + v * VW)));
    } else {
      const vf vb = v_set1(beta);
#pragma GCC unroll 16
      for (int r = 0; r < GMR; r++)
#pragma GCC unroll 4
        for (int v = 0; v < GNV; v++)
          v_store(c + r * ldc + v * VW, v_fma(acc[r][v], va, v_mul(v_load(c + r * ldc + v * VW), vb)));
    }
    return;
  }
  float tile[GMR * GNR] __attribute__((aligned(64)));
#pragma GCC unroll 16
  for (int r = 0; r < GMR; r++)
#pragma GCC unroll 4
    for (int v = 0; v < GNV; v++) v_store(tile + r * GNR + v * VW, v_mul(acc[r][v], va));
  for (int r = 0; r < mr; r++) {
    float* cr = c + r * ldc;
    const float* tr = tile + r * GNR;
    if (beta == 0.0f)
      for (int j = 0; j < nr; j++) cr[j] = tr[j];
    else
      for (int j = 0; j < nr; j++) cr[j] = tr[j] + beta * cr[j];
  }
}

/* ------------------------------------------------------------------------------------------ */
/* Packing.                                                                                   */

#if defined(__AVX512F__) && VW == 16 && GMR <= 16 && GNR % 16 == 0
#define G_TR16 1
/* In-register 16 x 16 transpose: r[i] holds row i on entry, column i on return. */
INLINE void tr16(__m512 r[16]) {
  __m512 t[16];
#pragma GCC unroll 8
  for (int i = 0; i < 8; i++) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  /* r[4g + j], 128-bit lane L: rows 4g..4g+3 of column 4L + j */
#pragma GCC unroll 4
  for (int g = 0; g < 4; g++) {
    r[4 * g] = _mm512_shuffle_ps(t[4 * g], t[4 * g + 2], 0x44);
    r[4 * g + 1] = _mm512_shuffle_ps(t[4 * g], t[4 * g + 2], 0xEE);
    r[4 * g + 2] = _mm512_shuffle_ps(t[4 * g + 1], t[4 * g + 3], 0x44);
    r[4 * g + 3] = _mm512_shuffle_ps(t[4 * g + 1], t[4 * g + 3], 0xEE);
  }
  /* then a 4 x 4 transpose of 128-bit lanes across the four row groups */
#pragma GCC unroll 4
  for (int j = 0; j < 4; j++) {
    const __m512 y0 = _mm512_shuffle_f32x4(r[j], r[4 + j], 0x44), y1 = _mm512_shuffle_f32x4(r[j], r[4 + j], 0xEE);
    const __m512 y2 = _mm512_shuffle_f32x4(r[8 + j], r[12 + j], 0x44), y3 = _mm512_shuffle_f32x4(r[8 + j], r[12 + j], 0xEE);
    t[j] = _mm512_shuffle_f32x4(y0, y2, 0x88);
    t[4 + j] = _mm512_shuffle_f32x4(y0, y2, 0xDD);
    t[8 + j] = _mm512_shuffle_f32x4(y1, y3, 0x88);
    t[12 + j] = _mm512_shuffle_f32x4(y1, y3, 0xDD);
  }
#pragma GCC unroll 16
  for (int i = 0; i < 16; i++) r[i] = t[i];
}
#endif

/* MR-row panel p of the A block: ap[k * GMR + r] = op(A)[i0 + r][k0 + k], zero for r >= mr. */
static void pack_a_panel(int transA, const float* A, long lda, long i0, int mr, long k0, long kc, float* restrict ap) {
  if (transA) {
    /* op(A)[i][k] = A[k][i]: rows of the panel are contiguous in memory */
#ifdef G_TR16
    const __mmask16 have = (__mmask16)((1u << mr) - 1), keep = (__mmask16)((1u << GMR) - 1);
    for (long k = 0; k < kc; k++)
      _mm512_mask_storeu_ps(ap + k * GMR, keep, _mm512_maskz_loadu_ps(have, A + (k0 + k) * lda + i0));
#else
    for (long k = 0; k < kc; k++) {
      const float* src = A + (k0 + k) * lda + i0;
      float* dst = ap + k * GMR;
      int r = 0;
      for (; r < mr; r++) dst[r] = src[r];
      for (; r < GMR; r++) dst[r] = 0.0f;
    }
#endif
  } else {
    if (mr < GMR)
      for (long k = 0; k < kc; k++)
        for (int r = mr; r < GMR; r++) ap[k * GMR + r] = 0.0f;
    long k = 0;
#ifdef G_TR16
    /* 16 k at a time: GMR rows (zero rows above) transposed, the first GMR lanes of each stored */
    const __mmask16 keep = (__mmask16)((1u << GMR) - 1);
    for (; mr == GMR && k + 16 <= kc; k += 16) {
      __m512 v[16];
#pragma GCC unroll 16
      for (int r = 0; r < 16; r++) v[r] = r < GMR ? _mm512_loadu_ps(A + (i0 + r) * lda + k0 + k) : _mm512_setzero_ps();
      tr16(v);
#pragma GCC unroll 16
      for (int t = 0; t < 16; t++) _mm512_mask_storeu_ps(ap + (k + t) * GMR, keep, v[t]);
    }
#endif
    for (int r = 0; r < mr; r++) {
      const float* src = A + (i0 + r) * lda + k0;
      for (long kk = k; kk < kc; kk++) ap[kk * GMR + r] = src[kk];
    }
  }
}

/* NR-column panel of the B block: bp[k * GNR + c] = op(B)[k0 + k][j0 + c], zero for c >= nr. */
static void pack_b_panel(int transB, const float* B, long ldb, long k0, long kc, long j0, int nr, float* restrict bp) {
  if (!transB) {
    for (long k = 0; k < kc; k++) {
      const float* src = B + (k0 + k) * ldb + j0;
      float* dst = bp + k * GNR;
      if (nr == GNR) {
        memcpy(dst, src, sizeof(float) * GNR);
      } else {
        int c = 0;
        for (; c < nr; c++) dst[c] = src[c];
        for (; c < GNR; c++) dst[c] = 0.0f;
      }
    }
  } else {
    /* op(B)[k][j] = B[j][k] */
    if (nr < GNR)
      for (long k = 0; k < kc; k++)
        for (int c = nr; c < GNR; c++) bp[k * GNR + c] = 0.0f;
    long k0v = 0;
#ifdef G_TR16
    /* 16 x 16 tiles: 16 columns of op(B) (rows of B) by 16 k, transposed in registers */
    for (; nr == GNR && k0v + 16 <= kc; k0v += 16) {
#pragma GCC unroll 4
      for (int h = 0; h < GNR / 16; h++) {
        __m512 v[16];
#pragma GCC unroll 16
        for (int c = 0; c < 16; c++) v[c] = _mm512_loadu_ps(B + (j0 + h * 16 + c) * ldb + k0 + k0v);
        tr16(v);
#pragma GCC unroll 16
        for (int t = 0; t < 16; t++) _mm512_storeu_ps(bp + (k0v + t) * GNR + h * 16, v[t]);
      }
    }
#endif
    /* the rest in strips of k, so the strided writes stay in L1 */
    for (long kb = k0v; kb < kc; kb += 64) {
      const long ke = g_min(kc, kb + 64);
      for (int c = 0; c < nr; c++) {
        const float* src = B + (j0 + c) * ldb + k0;
        for (long k = kb; k < ke; k++) bp[k * GNR + c] = src[k];
      }
    }
  }
}

/* ------------------------------------------------------------------------------------------ */
/* Driver.                                                                                    */

typedef struct {
  int transA, transB;
  long M, N, K, lda, ldb, ldc;
  float alpha, beta;
  const float *A, *B;
  float* C;
  long mcb, kcb;         /* A block rows (multiple of GMR), K block depth */
  long npan;             /* NR panels across N */
  long nchunks, mslices; /* work items of one step: N chunks x M slices */
  float* ap[2];          /* packed A blocks (mcb x kcb), alternating between steps */
} Plan;

/* C = beta * C over the whole matrix (beta = 0 writes zeros without reading C). */
static void scale_c(const Plan* p) {
  for (long i = 0; i < p->M; i++) {
    float* row = p->C + i * p->ldc;
    if (p->beta == 0.0f)
      memset(row, 0, sizeof(float) * (size_t)p->N);
    else if (p->beta != 1.0f)
      for (long j = 0; j < p->N; j++) row[j] *= p->beta;
  }
}

/* One work item: N chunk `chunk` (whole NR panels) times M slice `slice` of the A block. */
static void run_item(const Plan* p, const float* apk, long ic, long mc, long pc, long kc, long item, float* bp) {
  const long chunk = item / p->mslices, slice = item % p->mslices;
  const long pan0 = chunk * p->npan / p->nchunks, pan1 = (chunk + 1) * p->npan / p->nchunks;
  const long mpan = g_cdiv(mc, GMR);
  const long m0 = slice * mpan / p->mslices, m1 = (slice + 1) * mpan / p->mslices;
  if (pan0 >= pan1 || m0 >= m1) return;
  const float beta = pc == 0 ? p->beta : 1.0f;
  /* B chunk in sub-blocks of at most GNC columns: each stays in L2 while the slice sweeps it */
  const long span = GNC / GNR;
  for (long b0 = pan0; b0 < pan1; b0 += span) {
    const long b1 = g_min(pan1, b0 + span);
    for (long q = b0; q < b1; q++) {
      const long j0 = q * GNR;
      pack_b_panel(p->transB, p->B, p->ldb, pc, kc, j0, (int)g_min(GNR, p->N - j0), bp + (q - b0) * GNR * kc);
    }
    for (long mq = m0; mq < m1; mq++) {
      const long i0 = ic + mq * GMR;
      const int mr = (int)g_min(GMR, ic + mc - i0);
      const float* ap = apk + mq * GMR * kc;
      for (long q = b0; q < b1; q++) {
        const long j0 = q * GNR;
        ukernel(kc, ap, bp + (q - b0) * GNR * kc, p->C + i0 * p->ldc + j0, p->ldc, mr, (int)g_min(GNR, p->N - j0),
                p->alpha, beta);
      }
    }
  }
}

/*
 * The whole product, run by every thread of the team (or by the caller alone, where the
 * worksharing loops below are plain loops). A step is one (A block, K block): the team packs
 * the A block, waits (the loop's barrier), then takes items dynamically, so a thread that the
 * OS preempts does less. No barrier ends a step: the next step packs into the other A buffer,
 * and its barrier is only passed once every thread has finished the step before, which also
 * orders the updates of the same C tiles by consecutive K blocks.
 */
static void run_steps(const Plan* p, float* bp) {
  const long items = p->nchunks * p->mslices;
  long step = 0;
  for (long ic = 0; ic < p->M; ic += p->mcb) {
    const long mc = g_min(p->mcb, p->M - ic), mpan = g_cdiv(mc, GMR);
    for (long pc = 0; pc < p->K; pc += p->kcb, step++) {
      const long kc = g_min(p->kcb, p->K - pc);
      float* apk = p->ap[step & 1] ? p->ap[step & 1] : p->ap[0];
#pragma omp for schedule(dynamic, 4)
      for (long q = 0; q < mpan; q++) {
        const long i0 = ic + q * GMR;
        pack_a_panel(p->transA, p->A, p->lda, i0, (int)g_min(GMR, ic + mc - i0), pc, kc, apk + q * GMR * kc);
      }
#pragma omp for schedule(dynamic, 1) nowait
      for (long it = 0; it < items; it++) run_item(p, apk, ic, mc, pc, kc, it, bp);
    }
  }
}

/*
 * C [M x N] = alpha * op(A) [M x K] * op(B) [K x N] + beta * C, all row-major:
 *   A is stored M x K (lda >= K), or K x M when transA (lda >= M);
 *   B is stored K x N (ldb >= N), or N x K when transB (ldb >= K);
 *   C is stored M x N (ldc >= N). Any M, N, K >= 0; K = 0 or alpha = 0 gives C = beta * C
 *   (A and B unread); beta = 0 overwrites C without reading it.
 * threads <= 1 runs on the calling thread only.
 * Returns 0, 1 for invalid arguments, 2 when memory runs out.
 */
RA_API int ra_gemm(int transA, int transB, int M, int N, int K, float alpha, const float* A, int lda,
                     const float* B, int ldb, float beta, float* C, int ldc, int threads) {
  if (M < 0 || N < 0 || K < 0) return 1;
  const long rowsA = transA ? K : M, colsA = transA ? M : K;
  const long rowsB = transB ? N : K, colsB = transB ? K : N;
  if (lda < (colsA > 1 ? colsA : 1) || ldb < (colsB > 1 ? colsB : 1) || ldc < (N > 1 ? N : 1)) return 1;
  if (M == 0 || N == 0) return 0;
  if (!C) return 1;
  Plan p;
  memset(&p, 0, sizeof p);
  p.transA = transA != 0, p.transB = transB != 0;
  p.M = M, p.N = N, p.K = K, p.lda = lda, p.ldb = ldb, p.ldc = ldc;
  p.alpha = alpha, p.beta = beta, p.A = A, p.B = B, p.C = C;
  if (K == 0 || alpha == 0.0f) {
    scale_c(&p);
    return 0;
  }
  if ((rowsA > 0 && !A) || (rowsB > 0 && !B)) return 1;

  /* Blocks of equal size rather than full blocks and a sliver. */
  p.kcb = g_cdiv(K, g_cdiv(K, GKC));
  const long mpanels = g_cdiv(M, GMR), mblocks = g_cdiv(mpanels, GMC / GMR);
  p.mcb = g_cdiv(mpanels, mblocks) * GMR;
  p.npan = g_cdiv(N, GNR);

  int nthr = threads > 1 ? threads : 1;
#ifndef _OPENMP
  nthr = 1;
#endif
  /* Items of one step: N chunks of at most GNC columns, at least two items per thread so the
   * dynamic schedule can even out a preempted thread; where N is too narrow for that, the A
   * block's rows are split as well (each slice packs its own copy of the chunk of B). */
  const long span = GNC / GNR;
  p.nchunks = g_cdiv(p.npan, span);
  p.mslices = 1;
  if (nthr > 1) {
    const long want = 2L * nthr;
    if (p.nchunks < want) p.nchunks = g_min(p.npan, want);
    const long mpan = g_cdiv(p.mcb, GMR);
    if (p.nchunks < want) p.mslices = g_min(g_cdiv(want, p.nchunks), g_cdiv(mpan, 4));
    if (p.mslices < 1) p.mslices = 1;
    if (p.nchunks * p.mslices < 2) nthr = 1;
    if (nthr > p.nchunks * p.mslices) nthr = (int)(p.nchunks * p.mslices);
  }

  p.ap[0] = g_alloc(p.mcb * p.kcb);
  if (nthr > 1) p.ap[1] = g_alloc(p.mcb * p.kcb); /* one thread needs no second buffer */
  if (!p.ap[0] || (nthr > 1 && !p.ap[1])) {
    free(p.ap[0]), free(p.ap[1]);
    return 2;
  }
  const long bsize = g_min(span, p.npan) * GNR * p.kcb;
  int failed = 0;
#ifdef _OPENMP
  if (nthr > 1) {
#pragma omp parallel num_threads(nthr) shared(failed)
    {
      float* bp = g_alloc(bsize);
      /* every thread must meet the barriers of run_steps, so a failed allocation is agreed on first */
      if (!bp) {
#pragma omp atomic write
        failed = 1;
      }
#pragma omp barrier
      int stop;
#pragma omp atomic read
      stop = failed;
      if (!stop) run_steps(&p, bp);
      free(bp);
    }
  } else
#endif
  {
    float* bp = g_alloc(bsize);
    if (bp)
      run_steps(&p, bp);
    else
      failed = 1;
    free(bp);
  }
  free(p.ap[0]), free(p.ap[1]);
  return failed ? 2 : 0;
}
