/*
 * ringattn native CPU attention: blockwise (FlashAttention-2 style) forward and backward in fp32.
 *
 * The semantics are those of the TypeScript kernel (src/cpu/kernels/attn.ts) and DESIGN.md:
 * visibility on global positions (and segment ids), tiles classified from the min/max box of
 * their positions exactly as classifyBlock in src/core/mask.ts (empty: skipped, full: no mask
 * arithmetic, partial: elementwise mask), rows that see no key keep (o, lse) untouched, the
 * block result is merged into the running (o, lse) with the log-sum-exp merge.
 *
 * Layout of the work:
 *  - Rows of a (query tile, KV head) item are the pairs (query i, head g of the KV group), i-major,
 *    so all query heads that share a KV head reuse the packed K/V tile (GQA without copies).
 *  - Every matrix product is one register-blocked micro-kernel C[x][:] (+)= sum_y A(x,y) B[y][:]
 *    with A read through strides (broadcast) and B a packed panel read as vectors:
 *      S  = Q Kt  (Kt packed transposed [D][Bk])     O  += P V   (V packed [Bk][D])
 *      dP = dO Vt                                    dQ += dS K
 *      dV += P^T dO (A read transposed)              dK += dS^T Q
 *  - Logits are stored pre-multiplied by scale*log2(e) so the softmax is exp2; the running max
 *    and LSE live in log2 units and the LSE is converted back to natural log at the end.
 *  - exp2 is a degree-6 polynomial on [-1/2, 1/2] plus exponent bits (relative error ~1e-7);
 *    inputs are clamped to [-127, 127] so -inf (a masked logit) gives exactly 0.
 * Memory per thread is O(rows * D + blockK * D) with rows = max(FWD_ROWS, blockQ * group) in the
 * forward and BWD_CHUNK in the backward, never O(S^2). The backward with more than one thread and
 * a KV head count that the threads do not divide keeps one private dQ [Sq, H, D] per extra thread
 * (otherwise each thread owns whole KV groups, and with them their dQ rows).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "simd.h"

/* ------------------------------------------------------------------------------------------ */
/* Vector layer (simd.h) and, here, integer lanes for exp2 and the MR x NVR register block     */
/* (MR rows, NVR vectors of VW columns).                                                        */

#if defined(RA_AVX512)
#define MR 6
#define NVR 4
typedef __m512i vi;
INLINE vi v_asi(vf a) { return _mm512_castps_si512(a); }
INLINE vf v_asf(vi a) { return _mm512_castsi512_ps(a); }
INLINE vi vi_sub(vi a, vi b) { return _mm512_sub_epi32(a, b); }
INLINE vi vi_add(vi a, vi b) { return _mm512_add_epi32(a, b); }
INLINE vi vi_set1(int x) { return _mm512_set1_epi32(x); }
INLINE vi vi_shl23(vi a) { return _mm512_slli_epi32(a, 23); }
#elif defined(RA_AVX2)
#define MR 6
#define NVR 2
typedef __m256i vi;
INLINE vi v_asi(vf a) { return _mm256_castps_si256(a); }
INLINE vf v_asf(vi a) { return _mm256_castsi256_ps(a); }
INLINE vi vi_sub(vi a, vi b) { return _mm256_sub_epi32(a, b); }
INLINE vi vi_add(vi a, vi b) { return _mm256_add_epi32(a, b); }
INLINE vi vi_set1(int x) { return _mm256_set1_epi32(x); }
INLINE vi vi_shl23(vi a) { return _mm256_slli_epi32(a, 23); }
#elif defined(RA_NEON)
#define MR 6
#define NVR 4
typedef int32x4_t vi;
INLINE vi v_asi(vf a) { return vreinterpretq_s32_f32(a); }
INLINE vf v_asf(vi a) { return vreinterpretq_f32_s32(a); }
INLINE vi vi_sub(vi a, vi b) { return vsubq_s32(a, b); }
INLINE vi vi_add(vi a, vi b) { return vaddq_s32(a, b); }
INLINE vi vi_set1(int x) { return vdupq_n_s32(x); }
INLINE vi vi_shl23(vi a) { return vshlq_n_s32(a, 23); }
#else
#define MR 4
#define NVR 4
typedef int32_t vi;
INLINE vi v_asi(vf a) { vi r; memcpy(&r, &a, 4); return r; }
INLINE vf v_asf(vi a) { vf r; memcpy(&r, &a, 4); return r; }
INLINE vi vi_sub(vi a, vi b) { return (vi)((uint32_t)a - (uint32_t)b); }
INLINE vi vi_add(vi a, vi b) { return (vi)((uint32_t)a + (uint32_t)b); }
INLINE vi vi_set1(int x) { return x; }
INLINE vi vi_shl23(vi a) { return (vi)((uint32_t)a << 23); }
#endif

/* 2^x, relative error about 1e-7; exactly 0 for x <= -127 (so -inf -> 0); NaN stays NaN (the
   clamp's operand order: see v_max). */
INLINE vf v_exp2(vf x) {
  const vf magic = v_set1(12582912.0f); /* 1.5 * 2^23: adding it rounds to an integer */
  x = v_min(v_set1(127.0f), v_max(v_set1(-127.0f), x));
  vf t = v_add(x, magic);
  vi n = vi_sub(v_asi(t), v_asi(magic));
  vf f = v_sub(x, v_sub(t, magic)); /* in [-1/2, 1/2] */
  vf p = v_exp2_frac(f);
  /* n = -127 gives exponent bits 0: the product is exactly +0. */
  return v_mul(p, v_asf(vi_shl23(vi_add(n, vi_set1(127)))));
}

#define LOG2E 1.4426950408889634
#define LN2 0.6931471805599453

/* ------------------------------------------------------------------------------------------ */
/* The micro-kernel: C[x][v*VW..] (+)= sum_{y<ny} A[x*ax + y*ay] * B[y*ldb + v*VW..],           */
/* for x < R rows and v < NV vectors. mode 0: C = alpha * sum; mode 1: C += sum.               */

INLINE void mk_impl(const int R, const int NV, float* restrict C, long ldc, const float* restrict A, long ax, long ay,
                    const float* restrict B, long ldb, int ny, float alpha, int accumulate) {
  vf c[6][4];
#pragma GCC unroll 6
  for (int r = 0; r < R; r++)
#pragma GCC unroll 4
    for (int v = 0; v < NV; v++) c[r][v] = accumulate ? v_load(C + r * ldc + v * VW) : v_zero();
  const float* a = A;
  const float* b = B;
  for (int y = 0; y < ny; y++) {
    vf bv[4];
#pragma GCC unroll 4
    for (int v = 0; v < NV; v++) bv[v] = v_load(b + v * VW);
#pragma GCC unroll 6
    for (int r = 0; r < R; r++) {
      vf s = v_set1(a[r * ax]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; v++) c[r][v] = v_fma(s, bv[v], c[r][v]);
    }
    a += ay;
    b += ldb;
  }
  if (accumulate) {
#pragma GCC unroll 6
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
      for (int v = 0; v < NV; v++) v_store(C + r * ldc + v * VW, c[r][v]);
  } else {
    vf al = v_set1(alpha);
#pragma GCC unroll 6
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
      for (int v = 0; v < NV; v++) v_store(C + r * ldc + v * VW, v_mul(c[r][v], al));
  }
}

typedef void (*mk_fn)(float* restrict, long, const float* restrict, long, long, const float* restrict, long, int, float, int);

#define MK_DEF(R, NV)                                                                                          \
  static void mk_##R##_##NV(float* restrict C, long ldc, const float* restrict A, long ax, long ay,            \
                            const float* restrict B, long ldb, int ny, float alpha, int acc) {                 \
    mk_impl(R, NV, C, ldc, A, ax, ay, B, ldb, ny, alpha, acc);                                                 \
  }
#define MK_ROW(R) MK_DEF(R, 1) MK_DEF(R, 2) MK_DEF(R, 3) MK_DEF(R, 4)
MK_ROW(1)
MK_ROW(2)
MK_ROW(3)
MK_ROW(4)
MK_ROW(5)
MK_ROW(6)
#define MK_ENT(R) {mk_##R##_1, mk_##R##_2, mk_##R##_3, mk_##R##_4}
static const mk_fn MK[6][4] = {MK_ENT(1), MK_ENT(2), MK_ENT(3), MK_ENT(4), MK_ENT(5), MK_ENT(6)};

/* C [M rows][nv vectors] (+)= A(M x ny) * B(ny x nv*VW), in MR x NVR register blocks. */
static void gemm(int M, int nv, float* C, long ldc, const float* A, long ax, long ay, const float* B, long ldb, int ny,
                 float alpha, int accumulate) {
  for (int r0 = 0; r0 < M; r0 += MR) {
    int R = M - r0 < MR ? M - r0 : MR;
    for (int v0 = 0; v0 < nv; v0 += NVR) {
      int NV = nv - v0 < NVR ? nv - v0 : NVR;
      MK[R - 1][NV - 1](C + (long)r0 * ldc + (long)v0 * VW, ldc, A + (long)r0 * ax, ax, ay, B + (long)v0 * VW, ldb, ny,
                        alpha, accumulate);
    }
  }
}

/* ------------------------------------------------------------------------------------------ */
/* Masks and tile classification (mirrors src/core/mask.ts).                                 */

enum { T_EMPTY = 0, T_FULL = 1, T_PARTIAL = 2 };

typedef struct {
  int64_t lo, hi, slo, shi;
} Box;

typedef struct {
  const float *q, *k, *v, *dO, *lse, *delta;
  const int32_t *qpos, *kpos, *qseg, *kseg;
  int Sq, Sk, H, Hk, D, G, Dp;
  int causal, window, sinks;
  float scale;
  int bq, bk, nqt, nkt;
  int tq; /* query tiles per forward item */
  Box *qbox, *kbox;
  float *o, *lseo, *dq, *dk, *dv;
} Ctx;

#define BIG ((int64_t)1 << 40)

static int classify_diff(int64_t dLo, int64_t dHi, int64_t aLo, int64_t aHi) {
  if (dHi < aLo || dLo > aHi) return T_EMPTY;
  if (dLo >= aLo && dHi <= aHi) return T_FULL;
  return T_PARTIAL;
}

static int combine(int a, int b) {
  if (a < 0) return b;
  if (b < 0) return a;
  return a == b ? a : T_PARTIAL;
}

static int classify(const Ctx* c, const Box* qb, const Box* kb) {
  if (qb->lo > qb->hi || kb->lo > kb->hi) return T_EMPTY;
  const int64_t w = c->window;
  const int64_t sinks = w > 0 ? c->sinks : 0;
  /* Allowed i - j for ordinary keys (window and causality), and for sink keys (causality). */
  const int64_t aLo = c->causal ? 0 : (w <= 0 ? -BIG : -(w - 1));
  const int64_t aHi = w <= 0 ? BIG : w - 1;
  const int64_t sLo = c->causal ? 0 : -BIG;
  int sinkPart = -1, restPart = -1;
  if (kb->lo < sinks) {
    int64_t hi = kb->hi < sinks - 1 ? kb->hi : sinks - 1;
    sinkPart = classify_diff(qb->lo - hi, qb->hi - kb->lo, sLo, BIG);
  }
  if (kb->hi >= sinks) {
    int64_t lo = kb->lo > sinks ? kb->lo : sinks;
    restPart = classify_diff(qb->lo - kb->hi, qb->hi - lo, aLo, aHi);
  }
  int pos = combine(sinkPart, restPart);
  if (!c->qseg) return pos;
  if (qb->shi < kb->slo || kb->shi < qb->slo) return T_EMPTY;
  if (pos == T_EMPTY) return T_EMPTY;
  if (qb->slo == qb->shi && kb->slo == kb->shi && qb->slo == kb->slo) return pos;
  return T_PARTIAL;
}

static void box_of(const int32_t* pos, const int32_t* seg, int a, int b, Box* out) {
  Box x = {BIG, -BIG, BIG, -BIG};
  for (int t = a; t < b; t++) {
    if (pos[t] < x.lo) x.lo = pos[t];
    if (pos[t] > x.hi) x.hi = pos[t];
    if (seg) {
      if (seg[t] < x.slo) x.slo = seg[t];
      if (seg[t] > x.shi) x.shi = seg[t];
    }
  }
  *out = x;
}

/*
 * Logit row s[0..nkp) of query i against keys k0..k0+nk: -inf where masked or padding. Key j is
 * visible when its segment is the query's, !causal || kj <= qi, and with a window
 * (qi - kj < window && (causal || kj - qi < window)) || kj < sinks (DESIGN.md), written without
 * branches so that the compiler vectorizes it (one key at a time, with branches, a partial tile's
 * mask had cost ~10% of a causal forward at S = 1024, D = 64).
 */
static void mask_row(const Ctx* c, float* s, int i, int k0, int nk, int nkp, int partial) {
  if (partial) {
    const int64_t qi = c->qpos[i];
    const int32_t* kp = c->kpos + k0;
    const int causal = c->causal, nowin = c->window <= 0;
    const int64_t w = c->window, sinks = c->sinks;
#define RA_SEES(j) \
  ((!causal | (qi - kp[j] >= 0)) & (nowin | ((qi - kp[j] < w) & (causal | (kp[j] - qi < w))) | (kp[j] < sinks)))
    if (c->qseg) {
      const int32_t qs = c->qseg[i];
      const int32_t* ks = c->kseg + k0;
      for (int j = 0; j < nk; j++) s[j] = RA_SEES(j) & (ks[j] == qs) ? s[j] : -INFINITY;
    } else {
      for (int j = 0; j < nk; j++) s[j] = RA_SEES(j) ? s[j] : -INFINITY;
    }
#undef RA_SEES
  }
  for (int j = nk; j < nkp; j++) s[j] = -INFINITY;
}

/* ------------------------------------------------------------------------------------------ */
/* Buffers and packing.                                                                       */

static inline long rup(long n, long m) { return (n + m - 1) / m * m; }

static float* falloc(long n) {
  size_t bytes = (size_t)rup(n > 0 ? n : 1, 16) * sizeof(float);
  return (float*)aligned_alloc(64, (bytes + 63) / 64 * 64);
}

/* Kt[d][nkp] = K[k0 + j][kh][d], zero for j >= nk. */
static void pack_t(const float* k, int Hk, int D, int kh, int k0, int nk, int nkp, float* Kt) {
  for (int d = 0; d < D; d++) memset(Kt + (long)d * nkp + nk, 0, sizeof(float) * (nkp - nk));
  for (int j = 0; j < nk; j++) {
    const float* src = k + ((long)(k0 + j) * Hk + kh) * D;
    for (int d = 0; d < D; d++) Kt[(long)d * nkp + j] = src[d];
  }
}

/* Kn[j][Dp] = K[k0 + j][kh][d], zero for d >= D. */
static void pack_n(const float* k, int Hk, int D, int Dp, int kh, int k0, int nk, float* Kn) {
  for (int j = 0; j < nk; j++) {
    memcpy(Kn + (long)j * Dp, k + ((long)(k0 + j) * Hk + kh) * D, sizeof(float) * D);
    if (Dp > D) memset(Kn + (long)j * Dp + D, 0, sizeof(float) * (Dp - D));
  }
}

/* x[0..n) += y[0..n) */
static void add_to(float* x, const float* y, int n) {
  int d = 0;
  for (; d + VW <= n; d += VW) v_store(x + d, v_add(v_load(x + d), v_load(y + d)));
  for (; d < n; d++) x[d] += y[d];
}

/* ------------------------------------------------------------------------------------------ */
/* Forward: one item = (a run of whole query tiles, KV head), all G query heads of the group   */
/* together. Every key tile is packed once per item and used by all its query tiles.           */

#define FWD_ROWS 512 /* target query rows (i, g) per forward item */

typedef struct {
  float *qp, *acc, *m, *l, *s, *kt, *vn;
} FwdBuf;

static int fwd_alloc(const Ctx* c, FwdBuf* b) {
  const long M = (long)c->tq * c->bq * c->G, nkp = rup(c->bk, VW);
  b->qp = falloc(M * c->D);
  b->acc = falloc(M * c->Dp);
  b->m = falloc(M);
  b->l = falloc(M);
  b->s = falloc((long)MR * nkp);
  b->kt = falloc((long)c->D * nkp);
  b->vn = falloc(nkp * c->Dp);
  return b->qp && b->acc && b->m && b->l && b->s && b->kt && b->vn;
}

static void fwd_free(FwdBuf* b) {
  free(b->qp), free(b->acc), free(b->m), free(b->l), free(b->s), free(b->kt), free(b->vn);
}

/*
 * Rows x0..x0+R of the item (x = (i - qa) * G + g) against the first nk keys k0..k0+nk of the
 * packed key tile (row stride ld of Kt and S): S = Q Kt scaled to log2 units, mask, online
 * softmax, O += P V.
 */
static void fwd_rows(const Ctx* c, FwdBuf* b, int qa, int x0, int R, int k0, int nk, int ld, int partial, float cs) {
  const int G = c->G, D = c->D, Dp = c->Dp, nkp = (int)rup(nk, VW);
  float* S = b->s;
  gemm(R, nkp / VW, S, ld, b->qp + (long)x0 * D, D, 1, b->kt, ld, D, cs, 0);
  for (int r = 0; r < R; r++) {
    const int x = x0 + r;
    float* s = S + (long)r * ld;
    if (partial || nk < nkp) mask_row(c, s, qa + x / G, k0, nk, nkp, partial);
    vf mx = v_set1(-INFINITY);
    for (int j = 0; j < nkp; j += VW) mx = v_max(mx, v_load(s + j));
    float tmax = v_hmax(mx);
    if (tmax == -INFINITY) {
      /* the max passes NaN over; a row whose visible scores are all NaN is NaN, not empty */
      if (!any_nan(s, nkp)) {
        memset(s, 0, sizeof(float) * nkp);
        continue;
      }
      tmax = NAN;
    }
    const float mold = b->m[x];
    const float mnew = mold > tmax ? mold : tmax;
    const vf mn = v_set1(mnew);
    vf sum = v_zero();
    for (int j = 0; j < nkp; j += VW) {
      vf p = v_exp2(v_sub(v_load(s + j), mn));
      v_store(s + j, p);
      sum = v_add(sum, p);
    }
    const float corr = exp2f(mold - mnew);
    b->l[x] = b->l[x] * corr + v_hsum(sum);
    b->m[x] = mnew;
    if (corr != 1.0f) {
      float* a = b->acc + (long)x * Dp;
      const vf cv = v_set1(corr);
      for (int d = 0; d < Dp; d += VW) v_store(a + d, v_mul(v_load(a + d), cv));
    }
  }
  gemm(R, Dp / VW, b->acc + (long)x0 * Dp, Dp, S, ld, 1, b->vn, Dp, nk, 1.0f, 1);
}

/* Query tiles t0..t1 (exclusive) against every key tile, for KV head kh. */
static void fwd_item(const Ctx* c, int t0, int t1, int kh, FwdBuf* b) {
  const int G = c->G, D = c->D, Dp = c->Dp, H = c->H;
  const int qa = t0 * c->bq, qb = t1 * c->bq < c->Sq ? t1 * c->bq : c->Sq;
  const int M = (qb - qa) * G;
  const float cs = (float)(c->scale * LOG2E);
  int loaded = 0;

  for (int kt = 0; kt < c->nkt; kt++) {
    int any = 0;
    for (int t = t0; t < t1 && !any; t++) any = classify(c, &c->qbox[t], &c->kbox[kt]) != T_EMPTY;
    if (!any) continue;
    if (!loaded) {
      for (int i = qa; i < qb; i++)
        memcpy(b->qp + (long)(i - qa) * G * D, c->q + ((long)i * H + (long)kh * G) * D, sizeof(float) * G * D);
      memset(b->acc, 0, sizeof(float) * M * Dp);
      for (int x = 0; x < M; x++) b->m[x] = -INFINITY, b->l[x] = 0.0f;
      loaded = 1;
    }
    const int k0 = kt * c->bk, nk = c->Sk - k0 < c->bk ? c->Sk - k0 : c->bk;
    const int nkp = (int)rup(nk, VW);
    pack_t(c->k, c->Hk, D, kh, k0, nk, nkp, b->kt);
    pack_n(c->v, c->Hk, D, Dp, kh, k0, nk, b->vn);
    for (int t = t0; t < t1; t++) {
      const int cls = classify(c, &c->qbox[t], &c->kbox[kt]);
      if (cls == T_EMPTY) continue;
      const int i0 = t * c->bq, i1 = i0 + c->bq < c->Sq ? i0 + c->bq : c->Sq;
      for (int x0 = (i0 - qa) * G, xe = (i1 - qa) * G; x0 < xe; x0 += MR) {
        const int R = xe - x0 < MR ? xe - x0 : MR;
        int sub = cls, nkr = nk;
        if (cls == T_PARTIAL) {
          /* a register block of a partial tile may itself be empty or full */
          Box rb;
          box_of(c->qpos, c->qseg, qa + x0 / G, qa + (x0 + R - 1) / G + 1, &rb);
          sub = classify(c, &rb, &c->kbox[kt]);
          if (sub == T_EMPTY) continue;
          /* causal: keys past the last one at or before the block's latest query are masked for
             every row of it, so the products stop there (about half of a diagonal tile) */
          if (sub == T_PARTIAL && c->causal)
            while (nkr > 0 && c->kpos[k0 + nkr - 1] > rb.hi) nkr--;
        }
        fwd_rows(c, b, qa, x0, R, k0, nkr, nkp, sub == T_PARTIAL, cs);
      }
    }
  }
  if (!loaded) return;

  for (int x = 0; x < M; x++) {
    const double l = b->l[x];
    if (l == 0.0) continue;
    const int i = qa + x / G, g = x % G;
    const long orow = (long)i * H + (long)kh * G + g;
    float* o = c->o + orow * D;
    const float* a = b->acc + (long)x * Dp;
    const double inv = 1.0 / l;
    const double blse = ((double)b->m[x] + log2(l)) * LN2;
    const double old = c->lseo[orow];
    if (old == -INFINITY) {
      for (int d = 0; d < D; d++) o[d] = (float)(a[d] * inv);
      c->lseo[orow] = (float)blse;
    } else {
      const double mm = old > blse ? old : blse;
      const double ea = exp(old - mm), eb = exp(blse - mm), s = ea + eb;
      const double wa = ea / s, wb = eb / s;
      for (int d = 0; d < D; d++) o[d] = (float)(wa * o[d] + wb * (float)(a[d] * inv));
      c->lseo[orow] = (float)(mm + log(s));
    }
  }
}

/* ------------------------------------------------------------------------------------------ */
/* Backward: one item = (key tile, KV head); dK/dV of the tile are owned by the item.          */

#define BWD_CHUNK (MR * 16) /* query rows (i, g) per pass: bounds the P/dS buffers */

typedef struct {
  float *kt, *kn, *vt, *dka, *dva, *qp, *dop, *p, *ds, *dqa, *lse2, *dlt;
  float *dkt, *dvt, *dkc, *dvc; /* one query tile's dK/dV, and the running sums' compensations */
} BwdBuf;

static int bwd_alloc(const Ctx* c, BwdBuf* b) {
  const long nkp = rup(c->bk, VW), Dp = c->Dp, CH = BWD_CHUNK;
  b->kt = falloc(c->D * nkp);
  b->vt = falloc(c->D * nkp);
  b->kn = falloc(nkp * Dp);
  b->dka = falloc(nkp * Dp);
  b->dva = falloc(nkp * Dp);
  b->qp = falloc(CH * Dp);
  b->dop = falloc(CH * Dp);
  b->p = falloc(CH * nkp);
  b->ds = falloc(CH * nkp);
  b->dqa = falloc(CH * Dp);
  b->lse2 = falloc(CH);
  b->dlt = falloc(CH);
  b->dkt = falloc(nkp * Dp);
  b->dvt = falloc(nkp * Dp);
  b->dkc = falloc(nkp * Dp);
  b->dvc = falloc(nkp * Dp);
  return b->kt && b->vt && b->kn && b->dka && b->dva && b->qp && b->dop && b->p && b->ds && b->dqa && b->lse2 && b->dlt &&
         b->dkt && b->dvt && b->dkc && b->dvc;
}

static void bwd_free(BwdBuf* b) {
  free(b->kt), free(b->vt), free(b->kn), free(b->dka), free(b->dva), free(b->qp);
  free(b->dop), free(b->p), free(b->ds), free(b->dqa), free(b->lse2), free(b->dlt);
  free(b->dkt), free(b->dvt), free(b->dkc), free(b->dvc);
}

/*
 * dK and dV sum over every query tile of the block, and a plain fp32 running sum's error grew with
 * their count (at 4096 tokens 2.1e-6 of the norm from float64; a ring of 4, splitting the sum,
 * half that). So the GEMMs sum KAHAN_TILES query tiles into dkt/dvt, and each group is added to
 * dka/dva with Kahan's compensation (dkc/dvc): 5.7e-7 at 4096 tokens, and no longer growing with
 * S. After every tile it was 3.6e-7 but ~10% slower at 64-query tiles (the compensated add moves
 * five buffers of the tile's size, the GEMMs' own traffic again); every 4 tiles measured within
 * the noise (BENCHMARKS.md, session 20). Built without -ffast-math, so the compiler keeps the
 * order of the compensation's operations.
 */
#define KAHAN_TILES 4

/* sum += x, with Kahan's compensation kept in comp. */
static void kahan_add(float* sum, float* comp, const float* x, long n) {
  long i = 0;
  for (; i + VW <= n; i += VW) {
    const vf y = v_sub(v_load(x + i), v_load(comp + i));
    const vf s = v_load(sum + i), t = v_add(s, y);
    v_store(comp + i, v_sub(v_sub(t, s), y));
    v_store(sum + i, t);
  }
  for (; i < n; i++) {
    const float y = x[i] - comp[i];
    const float t = sum[i] + y;
    comp[i] = (t - sum[i]) - y;
    sum[i] = t;
  }
}

/* A group of query tiles' dK and dV (n = rows x Dp) into the compensated sums. */
static void add_group(BwdBuf* b, long n) {
  kahan_add(b->dva, b->dvc, b->dvt, n);
  kahan_add(b->dka, b->dkc, b->dkt, n);
}

static void bwd_item(const Ctx* c, int kt, int kh, BwdBuf* b, float* dq) {
  const int G = c->G, D = c->D, Dp = c->Dp, H = c->H;
  const int k0 = kt * c->bk, nk = c->Sk - k0 < c->bk ? c->Sk - k0 : c->bk;
  const int nkp = (int)rup(nk, VW);
  const float cs = (float)(c->scale * LOG2E);
  const vf scv = v_set1(c->scale);
  int packed = 0, pending = 0; /* query tiles summed in dkt/dvt, not yet added to dka/dva */

  for (int qt = 0; qt < c->nqt; qt++) {
    const int cls = classify(c, &c->qbox[qt], &c->kbox[kt]);
    if (cls == T_EMPTY) continue;
    if (!packed) {
      pack_t(c->k, c->Hk, D, kh, k0, nk, nkp, b->kt);
      pack_t(c->v, c->Hk, D, kh, k0, nk, nkp, b->vt);
      pack_n(c->k, c->Hk, D, Dp, kh, k0, nk, b->kn);
      memset(b->dka, 0, sizeof(float) * nkp * Dp);
      memset(b->dva, 0, sizeof(float) * nkp * Dp);
      memset(b->dkc, 0, sizeof(float) * nkp * Dp);
      memset(b->dvc, 0, sizeof(float) * nkp * Dp);
      packed = 1;
    }
    const int q0 = qt * c->bq, nq = c->Sq - q0 < c->bq ? c->Sq - q0 : c->bq;
    const int M = nq * G;
    for (int c0 = 0; c0 < M; c0 += BWD_CHUNK) {
      const int n = M - c0 < BWD_CHUNK ? M - c0 : BWD_CHUNK;
      for (int r = 0; r < n; r++) {
        const int row = c0 + r, i = q0 + row / G, g = row % G;
        const long x = (long)i * H + (long)kh * G + g;
        memcpy(b->qp + (long)r * Dp, c->q + x * D, sizeof(float) * D);
        memcpy(b->dop + (long)r * Dp, c->dO + x * D, sizeof(float) * D);
        if (Dp > D) {
          memset(b->qp + (long)r * Dp + D, 0, sizeof(float) * (Dp - D));
          memset(b->dop + (long)r * Dp + D, 0, sizeof(float) * (Dp - D));
        }
        const float L = c->lse[x];
        /* A row that saw no key has lse -inf: +inf here makes every p exactly 0. */
        b->lse2[r] = L == -INFINITY ? INFINITY : (float)(L * LOG2E);
        b->dlt[r] = c->delta[x];
      }
      /* P = exp2(S * scale * log2e - lse * log2e) */
      gemm(n, nkp / VW, b->p, nkp, b->qp, Dp, 1, b->kt, nkp, D, cs, 0);
      for (int r = 0; r < n; r++) {
        float* s = b->p + (long)r * nkp;
        if (cls == T_PARTIAL || nk < nkp) mask_row(c, s, q0 + (c0 + r) / G, k0, nk, nkp, cls == T_PARTIAL);
        if (b->lse2[r] != b->lse2[r]) {
          /* a NaN row (a NaN input reached its scores): NaN on the keys it sees, 0 on the others
             (exp2(-inf - NaN) would spread it to keys the row does not see) */
          for (int j = 0; j < nkp; j++) s[j] = s[j] == -INFINITY ? 0.0f : NAN;
          continue;
        }
        const vf L = v_set1(b->lse2[r]);
        for (int j = 0; j < nkp; j += VW) v_store(s + j, v_exp2(v_sub(v_load(s + j), L)));
      }
      /* dS = P * (dO V^T - delta) * scale */
      gemm(n, nkp / VW, b->ds, nkp, b->dop, Dp, 1, b->vt, nkp, D, 1.0f, 0);
      for (int r = 0; r < n; r++) {
        float* ds = b->ds + (long)r * nkp;
        const float* p = b->p + (long)r * nkp;
        if (b->lse2[r] != b->lse2[r] || b->dlt[r] != b->dlt[r]) {
          /* a NaN row (its LSE, or its delta through a NaN in o): where P is 0, so is dS */
          for (int j = 0; j < nkp; j++) ds[j] = p[j] == 0.0f ? 0.0f : NAN;
          continue;
        }
        const vf dl = v_set1(b->dlt[r]);
        for (int j = 0; j < nkp; j += VW) v_store(ds + j, v_mul(v_mul(v_load(p + j), v_sub(v_load(ds + j), dl)), scv));
      }
      /* dQ rows += dS K */
      gemm(n, Dp / VW, b->dqa, Dp, b->ds, nkp, 1, b->kn, Dp, nk, 1.0f, 0);
      for (int r = 0; r < n; r++) {
        const int row = c0 + r, i = q0 + row / G, g = row % G;
        add_to(dq + ((long)i * H + (long)kh * G + g) * D, b->dqa + (long)r * Dp, D);
      }
      /* dV (+)= P^T dO, dK (+)= dS^T Q, into the group's sums */
      gemm(nk, Dp / VW, b->dvt, Dp, b->p, 1, nkp, b->dop, Dp, n, 1.0f, pending > 0 || c0 > 0);
      gemm(nk, Dp / VW, b->dkt, Dp, b->ds, 1, nkp, b->qp, Dp, n, 1.0f, pending > 0 || c0 > 0);
    }
    if (++pending == KAHAN_TILES) add_group(b, (long)nk * Dp), pending = 0;
  }
  if (!packed) return;
  if (pending > 0) add_group(b, (long)nk * Dp);
  for (int j = 0; j < nk; j++) {
    const long x = ((long)(k0 + j) * c->Hk + kh) * D;
    add_to(c->dk + x, b->dka + (long)j * Dp, D);
    add_to(c->dv + x, b->dva + (long)j * Dp, D);
  }
}

/* ------------------------------------------------------------------------------------------ */
/* Entry points.                                                                              */

static int setup(Ctx* c, int Sq, int Sk, int H, int Hk, int D, int causal, int window, int sinks, float scale, int blockQ,
                 int blockK, int defaultK) {
  if (Sq < 0 || Sk < 0 || H <= 0 || Hk <= 0 || D <= 0 || H % Hk != 0 || window < 0 || sinks < 0) return 1;
  if (Sq > 0 && Sk > 0 && (c->qseg == NULL) != (c->kseg == NULL)) return 1;
  if (!isfinite(scale)) return 1;
  c->Sq = Sq, c->Sk = Sk, c->H = H, c->Hk = Hk, c->D = D, c->G = H / Hk, c->Dp = (int)rup(D, VW);
  c->causal = causal != 0, c->window = window, c->sinks = sinks, c->scale = scale;
  /* Defaults when the caller leaves the tiles to us; large tiles are capped (memory per thread). */
  c->bq = blockQ > 0 ? (blockQ < 1024 ? blockQ : 1024) : 64;
  c->bk = blockK > 0 ? (blockK < 512 ? blockK : 512) : defaultK;
  c->nqt = Sq > 0 ? (Sq + c->bq - 1) / c->bq : 0;
  c->nkt = Sk > 0 ? (Sk + c->bk - 1) / c->bk : 0;
  c->qbox = (Box*)malloc(sizeof(Box) * (c->nqt + 1));
  c->kbox = (Box*)malloc(sizeof(Box) * (c->nkt + 1));
  if (!c->qbox || !c->kbox) return 2;
  for (int t = 0; t < c->nqt; t++) {
    int a = t * c->bq, e = a + c->bq < Sq ? a + c->bq : Sq;
    box_of(c->qpos, c->qseg, a, e, &c->qbox[t]);
  }
  for (int t = 0; t < c->nkt; t++) {
    int a = t * c->bk, e = a + c->bk < Sk ? a + c->bk : Sk;
    box_of(c->kpos, c->kseg, a, e, &c->kbox[t]);
  }
  return 0;
}

static void teardown(Ctx* c) {
  free(c->qbox);
  free(c->kbox);
}

/*
 * Forward of one KV block, merged into the running (o, lse):
 *   q, o [Sq, H, D]; k, v [Sk, Hk, D]; lse [Sq, H] (natural log, -inf = no key seen yet);
 *   qpos, qseg [Sq]; kpos, kseg [Sk] (segments both or neither: NULL).
 * Returns 0, 1 for invalid arguments, 2 when memory runs out.
 */
RA_API int ra_forward(const float* q, const float* k, const float* v, const int32_t* qpos, const int32_t* kpos,
                      const int32_t* qseg, const int32_t* kseg, int Sq, int Sk, int H, int Hk, int D, int causal,
                      int window, int sinks, float scale, int blockQ, int blockK, int threads, float* o, float* lse) {
  /* An empty side may come as NULL (an empty typed array through koffi): there is nothing to do. */
  if ((Sq > 0 && (!q || !qpos || !o || !lse)) || (Sk > 0 && (!k || !v || !kpos))) return 1;
  Ctx c;
  memset(&c, 0, sizeof c);
  c.q = q, c.k = k, c.v = v, c.qpos = qpos, c.kpos = kpos, c.qseg = qseg, c.kseg = kseg, c.o = o, c.lseo = lse;
  int rc = setup(&c, Sq, Sk, H, Hk, D, causal, window, sinks, scale, blockQ, blockK, 64);
  if (rc || c.nqt == 0 || c.nkt == 0) {
    teardown(&c);
    return rc;
  }
  /* Enough rows per item to amortise packing each key tile, enough items to share out. */
  const int nthr = threads > 1 ? threads : 1;
  c.tq = FWD_ROWS / (c.bq * c.G);
  if (c.tq < 1) c.tq = 1;
  while (c.tq > 1 && ((c.nqt + c.tq - 1) / c.tq) * Hk < 4 * nthr) c.tq /= 2;
  const int nrun = (c.nqt + c.tq - 1) / c.tq, items = nrun * Hk;
  int failed = 0;
#ifdef _OPENMP
  if (threads > 1 && items > 1) {
#pragma omp parallel num_threads(threads) reduction(| : failed)
    {
      FwdBuf b;
      int ok = fwd_alloc(&c, &b);
      if (!ok) failed = 1;
      /* Last runs first (under a causal mask the last query tiles see the most keys). */
#pragma omp for schedule(dynamic, 1)
      for (int it = 0; it < items; it++) {
        const int run = nrun - 1 - it / Hk, t0 = run * c.tq, t1 = t0 + c.tq < c.nqt ? t0 + c.tq : c.nqt;
        if (ok) fwd_item(&c, t0, t1, it % Hk, &b);
      }
      fwd_free(&b);
    }
    teardown(&c);
    return failed ? 2 : 0;
  }
#endif
  FwdBuf b;
  if (!fwd_alloc(&c, &b)) failed = 1;
  else
    for (int it = 0; it < items; it++) {
      const int t0 = (it / Hk) * c.tq, t1 = t0 + c.tq < c.nqt ? t0 + c.tq : c.nqt;
      fwd_item(&c, t0, t1, it % Hk, &b);
    }
  fwd_free(&b);
  teardown(&c);
  return failed ? 2 : 0;
}

/*
 * Backward of one KV block, adding into dq, dk, dv:
 *   q, dO, dq [Sq, H, D]; k, v, dk, dv [Sk, Hk, D]; lse, delta [Sq, H] (lse: the final natural-log
 *   LSE of each row, -inf for rows that saw no key; delta = rowsum(dO * O));
 *   qpos, qseg [Sq]; kpos, kseg [Sk] (segments both or neither: NULL).
 * Returns 0, 1 for invalid arguments, 2 when memory runs out.
 */
RA_API int ra_backward(const float* q, const float* k, const float* v, const float* dO, const float* lse,
                       const float* delta, const int32_t* qpos, const int32_t* kpos, const int32_t* qseg,
                       const int32_t* kseg, int Sq, int Sk, int H, int Hk, int D, int causal, int window, int sinks,
                       float scale, int blockQ, int blockK, int threads, float* dq, float* dk, float* dv) {
  if ((Sq > 0 && (!q || !dO || !lse || !delta || !qpos || !dq)) || (Sk > 0 && (!k || !v || !kpos || !dk || !dv))) return 1;
  Ctx c;
  memset(&c, 0, sizeof c);
  c.q = q, c.k = k, c.v = v, c.dO = dO, c.lse = lse, c.delta = delta, c.qpos = qpos, c.kpos = kpos, c.qseg = qseg,
  c.kseg = kseg, c.dq = dq, c.dk = dk, c.dv = dv;
  int rc = setup(&c, Sq, Sk, H, Hk, D, causal, window, sinks, scale, blockQ, blockK, 128);
  if (rc || c.nqt == 0 || c.nkt == 0) {
    teardown(&c);
    return rc;
  }
  int failed = 0;
#ifdef _OPENMP
  if (threads > 1 && c.nkt * Hk > 1) {
    if (Hk % threads == 0) {
      /* dQ rows of a KV group are touched only by that group's items: one thread per KV head. */
#pragma omp parallel num_threads(threads) reduction(| : failed)
      {
        BwdBuf b;
        int ok = bwd_alloc(&c, &b);
        if (!ok) failed = 1;
#pragma omp for schedule(dynamic, 1)
        for (int kh = 0; kh < Hk; kh++)
          if (ok)
            for (int kt = 0; kt < c.nkt; kt++) bwd_item(&c, kt, kh, &b, dq);
        bwd_free(&b);
      }
    } else {
      /* Thread 0 adds into dq, every other thread into its own zeroed copy, summed at the end. */
      const long n = (long)Sq * H * D;
      float** priv = (float**)calloc((size_t)threads, sizeof(float*));
      if (!priv) {
        teardown(&c);
        return 2;
      }
      const int items = c.nkt * Hk;
      int nthreads = 1;
#pragma omp parallel num_threads(threads) reduction(| : failed)
      {
        const int t = omp_get_thread_num();
#pragma omp single
        nthreads = omp_get_num_threads();
        BwdBuf b;
        int ok = bwd_alloc(&c, &b);
        float* mine = dq;
        if (t > 0) {
          mine = priv[t] = (float*)calloc((size_t)n, sizeof(float));
          ok = ok && mine != NULL;
        }
        if (!ok) failed = 1;
#pragma omp for schedule(dynamic, 1)
        for (int it = 0; it < items; it++)
          if (ok) bwd_item(&c, it / Hk, it % Hk, &b, mine);
        bwd_free(&b);
        /* the implicit barrier of the loop above orders every write before the sum */
#pragma omp for schedule(static)
        for (long x0 = 0; x0 < n; x0 += 4096) {
          long len = n - x0 < 4096 ? n - x0 : 4096;
          for (int u = 1; u < nthreads; u++)
            if (priv[u]) add_to(dq + x0, priv[u] + x0, (int)len);
        }
      }
      for (int u = 0; u < threads; u++) free(priv[u]);
      free(priv);
    }
    teardown(&c);
    return failed ? 2 : 0;
  }
#endif
  (void)threads;
  BwdBuf b;
  if (!bwd_alloc(&c, &b)) failed = 1;
  else
    for (int it = 0; it < c.nkt * Hk; it++) bwd_item(&c, it / Hk, it % Hk, &b, dq);
  bwd_free(&b);
  teardown(&c);
  return failed ? 2 : 0;
}

/* The instruction set this library was compiled for. */
RA_API const char* ra_isa(void) { return RA_ISA; }
