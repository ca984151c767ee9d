/*
 * ringattn native CPU decode attention: a few query tokens per sequence (Sq = 1..8: one token, or
 * a speculative/batched draft) against a long fp32 KV cache, split-KV (flash-decoding) over
 * OpenMP threads. Decode reads every visible cache byte once and does little arithmetic per
 * byte, so the kernel is shaped to stream memory:
 *
 *  - Work items are chunks of cache rows of one sequence. A chunk covers all KV heads of its rows,
 *    so its K and V bytes are one contiguous stretch of memory ([rows, Hk, D]) read front to
 *    back: a tile of TK rows is copied once into packed per-head panels, and KV head kh's panel
 *    is reused from L1 by all G = H / Hk query heads of its group and all Sq query tokens (GQA
 *    read once per KV head), in register blocks of 4 rows x 4 keys (logits) and 4 rows x 4
 *    vectors (P V).
 *  - Each chunk keeps an online softmax per (query, head) row (max and sum in log2 units, O
 *    unnormalised in the chunk's partial buffer) and ends with a partial (O, LSE); the partials of
 *    a sequence are merged in fp32 with the log-sum-exp rule and then merged in place into the
 *    caller's running (o, lse), exactly like the block kernel's forward, so ranks holding cache
 *    shards merge their results with mergeRow.
 *  - Masks (causal, window, sinks, segments) are on global positions (DESIGN.md). With the
 *    precondition `sorted` (positions non-decreasing within each sequence's cache, which is how a
 *    cache that appends tokens in order looks on every layout) the visible keys of a query are at
 *    most two index intervals (the sinks prefix and the window) found by binary search, and only
 *    their union over the Sq queries is ever read: a window of w keys reads w rows of a 1M cache.
 *    Without it every row is read and masked one by one; sorted = -1 checks each sequence and
 *    picks.
 *
 *   int ra_decode(q [B,Sq,H,D], qpos [B,Sq], qseg [B,Sq] | NULL,
 *                 k[b], v[b] [len[b], Hk, D], kpos[b] [len[b]], kseg NULL | kseg[b] [len[b]],
 *                 len [B]   (one pointer per sequence: B caches of different lengths, anywhere),
 *                 B, Sq, H, Hk, D, causal, window (0 = none), sinks, scale,
 *                 sorted (1, 0 or -1 = check), chunk (rows per work item, 0 = auto), threads,
 *                 o [B,Sq,H,D], lse [B,Sq,H])   -> 0 ok, 1 invalid arguments, 2 out of memory
 *
 * A row that sees no key keeps its (o, lse) untouched (a fresh one is 0 and -inf). exp2 is a
 * degree-6 polynomial (relative error ~1e-7) clamped so that a masked logit (-inf) gives 0.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define RA_API __attribute__((visibility("default")))
#define DI static inline __attribute__((always_inline))

/* ------------------------------------------------------------------------------------------ */
/* Vectors: VW lanes. dk_sum8 turns 8 accumulators into the 8 dot products they hold.          */

#if defined(__AVX512F__)
#include <immintrin.h>
#define VW 16
typedef __m512 vf;
DI vf v_ld(const float* p) { return _mm512_loadu_ps(p); }
DI vf v_ldn(const float* p, int n) { return _mm512_maskz_loadu_ps((__mmask16)((1u << n) - 1), p); }
DI void v_st(float* p, vf a) { _mm512_storeu_ps(p, a); }
DI vf v_set(float x) { return _mm512_set1_ps(x); }
DI vf v_zero(void) { return _mm512_setzero_ps(); }
DI vf v_fma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
DI vf v_mul(vf a, vf b) { return _mm512_mul_ps(a, b); }
DI vf v_add(vf a, vf b) { return _mm512_add_ps(a, b); }
DI vf v_sub(vf a, vf b) { return _mm512_sub_ps(a, b); }
DI vf v_max(vf a, vf b) { return _mm512_max_ps(a, b); }
DI vf v_min(vf a, vf b) { return _mm512_min_ps(a, b); }
DI vf v_round(vf a) { return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
DI vf v_pow2i(vf n) { /* 2^n for integral n in [-127, 127]; n = -127 gives +0 */
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23));
}
DI float v_hmax(vf a) { return _mm512_reduce_max_ps(a); }
DI float v_hsum(vf a) { return _mm512_reduce_add_ps(a); }
DI __m256 fold256(vf a) {
  return _mm256_add_ps(_mm512_castps512_ps256(a), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1)));
}
#define HAVE_M256 1
#define DK_ISA "avx512"
#elif defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define VW 8
typedef __m256 vf;
DI vf v_ld(const float* p) { return _mm256_loadu_ps(p); }
DI vf v_ldn(const float* p, int n) {
  const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_maskload_ps(p, _mm256_cmpgt_epi32(_mm256_set1_epi32(n), idx));
}
DI void v_st(float* p, vf a) { _mm256_storeu_ps(p, a); }
DI vf v_set(float x) { return _mm256_set1_ps(x); }
DI vf v_zero(void) { return _mm256_setzero_ps(); }
DI vf v_fma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
DI vf v_mul(vf a, vf b) { return _mm256_mul_ps(a, b); }
DI vf v_add(vf a, vf b) { return _mm256_add_ps(a, b); }
DI vf v_sub(vf a, vf b) { return _mm256_sub_ps(a, b); }
DI vf v_max(vf a, vf b) { return _mm256_max_ps(a, b); }
DI vf v_min(vf a, vf b) { return _mm256_min_ps(a, b); }
DI vf v_round(vf a) { return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
DI vf v_pow2i(vf n) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23));
}
DI float v_hmax(vf a) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  return _mm_cvtss_f32(_mm_max_ss(m, _mm_shuffle_ps(m, m, 1)));
}
DI float v_hsum(vf a) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)));
}
DI __m256 fold256(vf a) { return a; }
#define HAVE_M256 1
#define DK_ISA "avx2"
#elif defined(__ARM_NEON) && defined(__aarch64__)
#include <arm_neon.h>
#define VW 4
typedef float32x4_t vf;
DI vf v_ld(const float* p) { return vld1q_f32(p); }
DI vf v_ldn(const float* p, int n) {
  float t[4] = {0, 0, 0, 0};
  for (int i = 0; i < n; i++) t[i] = p[i];
  return vld1q_f32(t);
}
DI void v_st(float* p, vf a) { vst1q_f32(p, a); }
DI vf v_set(float x) { return vdupq_n_f32(x); }
DI vf v_zero(void) { return vdupq_n_f32(0.0f); }
DI vf v_fma(vf a, vf b, vf c) { return vfmaq_f32(c, a, b); }
DI vf v_mul(vf a, vf b) { return vmulq_f32(a, b); }
DI vf v_add(vf a, vf b) { return vaddq_f32(a, b); }
DI vf v_sub(vf a, vf b) { return vsubq_f32(a, b); }
DI vf v_max(vf a, vf b) { return vmaxq_f32(a, b); }
DI vf v_min(vf a, vf b) { return vminq_f32(a, b); }
DI vf v_round(vf a) { return vrndnq_f32(a); }
DI vf v_pow2i(vf n) { return vreinterpretq_f32_s32(vshlq_n_s32(vaddq_s32(vcvtnq_s32_f32(n), vdupq_n_s32(127)), 23)); }
DI float v_hmax(vf a) { return vmaxvq_f32(a); }
DI float v_hsum(vf a) { return vaddvq_f32(a); }
#define DK_ISA "neon"
#else
#define VW 1
typedef float vf;
DI vf v_ld(const float* p) { return *p; }
DI vf v_ldn(const float* p, int n) { return n > 0 ? *p : 0.0f; }
DI void v_st(float* p, vf a) { *p = a; }
DI vf v_set(float x) { return x; }
DI vf v_zero(void) { return 0.0f; }
DI vf v_fma(vf a, vf b, vf c) { return a * b + c; }
DI vf v_mul(vf a, vf b) { return a * b; }
DI vf v_add(vf a, vf b) { return a + b; }
DI vf v_sub(vf a, vf b) { return a - b; }
DI vf v_max(vf a, vf b) { return a > b ? a : b; }
DI vf v_min(vf a, vf b) { return a < b ? a : b; }
DI vf v_round(vf a) { return nearbyintf(a); }
DI vf v_pow2i(vf n) {
  int32_t e = ((int32_t)n + 127) << 23;
  float r;
  memcpy(&r, &e, 4);
  return r;
}
DI float v_hmax(vf a) { return a; }
DI float v_hsum(vf a) { return a; }
#define DK_ISA "scalar"
#endif

/* 2^x: exactly 0 for x <= -127 (so a masked logit, -inf, gives 0). */
DI vf v_exp2(vf x) {
  x = v_min(v_max(x, v_set(-127.0f)), v_set(127.0f));
  const vf n = v_round(x);
  const vf f = v_sub(x, n); /* [-1/2, 1/2] */
  vf p = v_set(1.5345811e-4f);
  p = v_fma(p, f, v_set(1.3399931e-3f));
  p = v_fma(p, f, v_set(9.618489e-3f));
  p = v_fma(p, f, v_set(5.5503286e-2f));
  p = v_fma(p, f, v_set(2.4022646e-1f));
  p = v_fma(p, f, v_set(6.931472e-1f));
  p = v_fma(p, f, v_set(1.0f));
  return v_mul(p, v_pow2i(n));
}

/* out[t] = sum over lanes of a[t], t < 8. */
DI void dk_sum8(const vf a[8], float* out) {
#if defined(HAVE_M256)
  __m256 b[8];
  for (int t = 0; t < 8; t++) b[t] = fold256(a[t]);
  const __m256 h01 = _mm256_hadd_ps(b[0], b[1]), h23 = _mm256_hadd_ps(b[2], b[3]);
  const __m256 h45 = _mm256_hadd_ps(b[4], b[5]), h67 = _mm256_hadd_ps(b[6], b[7]);
  const __m256 x = _mm256_hadd_ps(h01, h23), y = _mm256_hadd_ps(h45, h67);
  /* x = [s0..s3 of lanes 0-3 | s0..s3 of lanes 4-7], y likewise for s4..s7 */
  _mm256_storeu_ps(out, _mm256_add_ps(_mm256_permute2f128_ps(x, y, 0x20), _mm256_permute2f128_ps(x, y, 0x31)));
#elif VW == 4
  vst1q_f32(out, vpaddq_f32(vpaddq_f32(a[0], a[1]), vpaddq_f32(a[2], a[3])));
  vst1q_f32(out + 4, vpaddq_f32(vpaddq_f32(a[4], a[5]), vpaddq_f32(a[6], a[7])));
#else
  for (int t = 0; t < 8; t++) out[t] = v_hsum(a[t]);
#endif
}

/* ------------------------------------------------------------------------------------------ */
/* Problem, visible ranges, chunks.                                                           */

#ifndef TK
#define TK 16          /* cache rows per tile (a multiple of 8 and of VW) */
#endif
#define MAX_SQ 64      /* query tokens per sequence the kernel accepts */
#define BIGPOS ((int64_t)1 << 40)

typedef struct {
  const float* q;
  const float* const* k;
  const float* const* v;
  const int32_t *qpos, *qseg;
  const int32_t* const* kpos;
  const int32_t* const* kseg;
  const int64_t* len;
  int B, Sq, H, Hk, D, G, Dp, nfull, tail;
  int causal, window, sinks;
  float cs; /* scale * log2(e) */
  float* qs; /* [B, Sq, H, Dp] queries pre-scaled by cs, zero-padded */
} Dec;

typedef struct {
  int b;
  int64_t r0, r1; /* cache rows of sequence b */
} Chunk;

/* Visible index intervals of one query in a sorted cache: [a, e) and the sinks prefix [0, s). */
typedef struct {
  int64_t a, e, s;
} Vis;

/* First index in pos[0..n) whose value is >= x (pos non-decreasing). */
static int64_t lower_bound(const int32_t* pos, int64_t n, int64_t x) {
  int64_t lo = 0, hi = n;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if ((int64_t)pos[mid] < x) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

static Vis vis_sorted(const Dec* d, const int32_t* pos, int64_t n, int64_t p) {
  Vis r = {0, n, 0};
  const int64_t w = d->window;
  if (d->causal) r.e = lower_bound(pos, n, p + 1);
  if (w > 0) {
    r.a = lower_bound(pos, n, p - w + 1);
    if (!d->causal) r.e = lower_bound(pos, n, p + w);
    if (d->sinks > 0) {
      int64_t lim = d->sinks;
      if (d->causal && p + 1 < lim) lim = p + 1;
      r.s = lower_bound(pos, n, lim);
    }
  }
  if (r.e < r.a) r.e = r.a;
  return r;
}

DI int visible_pos(const Dec* d, int64_t qi, int64_t kj) {
  if (d->causal && kj > qi) return 0;
  if (d->window <= 0) return 1;
  if (qi - kj < d->window && (d->causal || kj - qi < d->window)) return 1;
  return kj < d->sinks;
}

static int is_sorted(const int32_t* pos, int64_t n) {
  int bad = 0;
  for (int64_t j = 1; j < n; j++) bad |= pos[j] < pos[j - 1];
  return !bad;
}

/* ------------------------------------------------------------------------------------------ */
/* One chunk: rows [r0, r1) of sequence b, all KV heads, all Sq x H query rows.                */

typedef struct {
  float* acc; /* [Sq*H, Dp] unnormalised O */
  float* m;   /* [Sq*H] running max (log2 units) */
  float* l;   /* [Sq*H] running sum */
} Part;

/*
 * Register blocks. Logits: R (<= 4) query rows x 4 packed key rows, 16 accumulators; each K
 * vector loaded once serves R rows and each Q vector 4 keys. P V: R rows x NV (<= 4) vectors of
 * the output, each V vector loaded once serves R rows. Several independent accumulator chains
 * keep both FMA pipes busy despite the FMA latency.
 */
DI void qk_impl(const int R, int Dp, const float* const* qr, const float* kp, float* const* out) {
  vf a[4][4];
  for (int r = 0; r < R; r++)
    for (int k = 0; k < 4; k++) a[r][k] = v_zero();
  for (int x = 0; x < Dp; x += VW) {
    vf kv[4];
#pragma GCC unroll 4
    for (int k = 0; k < 4; k++) kv[k] = v_ld(kp + (long)k * Dp + x);
#pragma GCC unroll 4
    for (int r = 0; r < R; r++) {
      const vf qv = v_ld(qr[r] + x);
#pragma GCC unroll 4
      for (int k = 0; k < 4; k++) a[r][k] = v_fma(qv, kv[k], a[r][k]);
    }
  }
  float tmp[8];
  for (int r = 0; r < R; r += 2) {
    vf s8[8];
    for (int k = 0; k < 4; k++) s8[k] = a[r][k], s8[4 + k] = r + 1 < R ? a[r + 1][k] : v_zero();
    dk_sum8(s8, tmp);
    memcpy(out[r], tmp, 4 * sizeof(float));
    if (r + 1 < R) memcpy(out[r + 1], tmp + 4, 4 * sizeof(float));
  }
}

typedef void (*qk_fn)(int, const float* const*, const float*, float* const*);
#define QK_DEF(R) \
  static void qk_##R(int Dp, const float* const* qr, const float* kp, float* const* out) { qk_impl(R, Dp, qr, kp, out); }
QK_DEF(1)
QK_DEF(2)
QK_DEF(3)
QK_DEF(4)
static const qk_fn QK[4] = {qk_1, qk_2, qk_3, qk_4};

/* acc[r][off..] = acc * alpha[r] + sum_{t<nt} p[r][t] * vp[t][off..], NV vectors from off. */
DI void pv_impl(const int R, const int NV, float* const* acc, const float* alpha, const float* const* p, int nt,
                const float* vp, int Dp, int off) {
  vf o[4][4];
  for (int r = 0; r < R; r++) {
    const vf al = v_set(alpha[r]);
    for (int w = 0; w < NV; w++) o[r][w] = v_mul(v_ld(acc[r] + off + w * VW), al);
  }
  const float* v = vp + off;
  for (int t = 0; t < nt; t++, v += Dp) {
    vf vv[4];
#pragma GCC unroll 4
    for (int w = 0; w < NV; w++) vv[w] = v_ld(v + w * VW);
#pragma GCC unroll 4
    for (int r = 0; r < R; r++) {
      const vf pb = v_set(p[r][t]);
#pragma GCC unroll 4
      for (int w = 0; w < NV; w++) o[r][w] = v_fma(pb, vv[w], o[r][w]);
    }
  }
  for (int r = 0; r < R; r++)
    for (int w = 0; w < NV; w++) v_st(acc[r] + off + w * VW, o[r][w]);
}

typedef void (*pv_fn)(float* const*, const float*, const float* const*, int, const float*, int, int);
#define PV_DEF(R, NV)                                                                                            \
  static void pv_##R##_##NV(float* const* acc, const float* alpha, const float* const* p, int nt, const float* vp, \
                            int Dp, int off) {                                                                   \
    pv_impl(R, NV, acc, alpha, p, nt, vp, Dp, off);                                                              \
  }
#define PV_ROW(R) PV_DEF(R, 1) PV_DEF(R, 2) PV_DEF(R, 3) PV_DEF(R, 4)
PV_ROW(1)
PV_ROW(2)
PV_ROW(3)
PV_ROW(4)
#define PV_ENT(R) {pv_##R##_1, pv_##R##_2, pv_##R##_3, pv_##R##_4}
static const pv_fn PV[4][4] = {PV_ENT(1), PV_ENT(2), PV_ENT(3), PV_ENT(4)};

/*
 * Copies the nt cache rows [nt, Hk, D] of a tile into packed [Hk][TK][Dp] (tail and missing
 * rows zero). Reading the tile front to back keeps the loads sequential, so the hardware
 * prefetchers stream it; the packed rows of one head are contiguous, where in place they sit
 * Hk * D floats apart (4 KiB for Hk = 8, D = 128), fall into the same L1 sets and evict each
 * other while the G query heads of the group reuse them.
 */
static void pack_tile(const Dec* d, const float* src, int nt, float* dst) {
  const int D = d->D, Dp = d->Dp, Hk = d->Hk, nf = d->nfull;
  for (int t = 0; t < nt; t++) {
    for (int kh = 0; kh < Hk; kh++) {
      const float* s = src + ((long)t * Hk + kh) * D;
      float* o = dst + ((long)kh * TK + t) * Dp;
      for (int u = 0; u < nf; u++) v_st(o + u * VW, v_ld(s + u * VW));
      if (d->tail) v_st(o + nf * VW, v_ldn(s + nf * VW, d->tail));
    }
  }
  if (nt < TK)
    for (int kh = 0; kh < Hk; kh++) memset(dst + ((long)kh * TK + nt) * Dp, 0, sizeof(float) * (size_t)(TK - nt) * Dp);
}

/* Mask state of query i for a tile: 0 nothing visible, 1 all visible, 2 mixed. */
static int tile_class(const Vis* vi, int64_t t0, int64_t t1, int sorted, int segs) {
  if (!sorted || segs) return 2;
  const int inMain = t0 >= vi->a && t1 <= vi->e, inSink = t1 <= vi->s;
  if (inMain || inSink) return 1;
  const int hitMain = t0 < vi->e && t1 > vi->a, hitSink = t0 < vi->s;
  return hitMain || hitSink ? 2 : 0;
}

/* Scalar 2^x by the same polynomial (x <= 0 here: the running-max correction). */
static inline float s_exp2(float x) {
  if (x < -127.0f) return 0.0f;
  const float n = nearbyintf(x), f = x - n;
  float p = 1.5345811e-4f;
  p = p * f + 1.3399931e-3f;
  p = p * f + 9.618489e-3f;
  p = p * f + 5.5503286e-2f;
  p = p * f + 2.4022646e-1f;
  p = p * f + 6.931472e-1f;
  p = p * f + 1.0f;
  int32_t e = ((int32_t)n + 127) << 23;
  float sc;
  memcpy(&sc, &e, 4);
  return p * sc;
}

/*
 * Per tile (TK rows, all KV heads packed once) and KV head, three passes over the group's rows
 * (query token i, head g): scores, softmax statistics, P V. Separate passes put independent rows
 * side by side, so the out-of-order core overlaps one row's reductions and exponentials with the
 * next row's dot products instead of waiting on each row's dependency chain.
 */
static void run_chunk(const Dec* d, const Chunk* c, int sorted, const Vis* vis, Part* pt, float* kp, float* vp, float* S) {
  const int b = c->b, Sq = d->Sq, H = d->H, Hk = d->Hk, D = d->D, G = d->G, Dp = d->Dp;
  const long rs = (long)Hk * D; /* stride between cache rows */
  const int32_t* kpos = d->kpos[b];
  const int32_t* kseg = d->kseg ? d->kseg[b] : NULL;
  const float* qs = d->qs + (long)b * Sq * H * Dp;
  const int nrow = Sq * H;
  memset(pt->acc, 0, sizeof(float) * (size_t)nrow * Dp);
  for (int r = 0; r < nrow; r++) pt->m[r] = -INFINITY, pt->l[r] = 0.0f;
  int cls[MAX_SQ];
  float* alph = S + (size_t)Sq * G * TK; /* per group row x = i * G + g: correction, or -1 = skip */
  int* xs = (int*)(alph + (size_t)Sq * G); /* the group rows a pass works on */

  for (int64_t t0 = c->r0; t0 < c->r1; t0 += TK) {
    const int nt = (int)(c->r1 - t0 < TK ? c->r1 - t0 : TK);
    int any = 0;
    for (int i = 0; i < Sq; i++) {
      cls[i] = tile_class(&vis[i], t0, t0 + nt, sorted, kseg != NULL);
      any |= cls[i];
    }
    if (!any) continue;
    const float* kt = d->k[b] + t0 * rs;
    const float* vt = d->v[b] + t0 * rs;
    /* No software prefetch: the packing reads each tile front to back, which the hardware
       prefetchers stream; prefetching the next tile (whole or in per-head slices, into L1 or
       L2) measured slower on Zen 5. */
    pack_tile(d, kt, nt, kp);
    pack_tile(d, vt, nt, vp);
    for (int kh = 0; kh < Hk; kh++) {
      const float* kh_k = kp + (long)kh * TK * Dp;
      const float* kh_v = vp + (long)kh * TK * Dp;
      /* pass 1: scaled logits (log2 units), -inf where masked or past nt */
      int nx = 0;
      for (int i = 0; i < Sq; i++)
        if (cls[i])
          for (int g = 0; g < G; g++) xs[nx++] = i * G + g;
      for (int x0 = 0; x0 < nx; x0 += 4) {
        const int R = nx - x0 < 4 ? nx - x0 : 4;
        const float* qr[4];
        float* out[4];
        for (int r = 0; r < R; r++) {
          const int x = xs[x0 + r], i = x / G, g = x % G;
          qr[r] = qs + (long)(i * H + kh * G + g) * Dp;
          out[r] = S + (long)x * TK;
        }
        for (int t = 0; t < nt; t += 4) {
          QK[R - 1](Dp, qr, kh_k + (long)t * Dp, out);
          for (int r = 0; r < R; r++) out[r] += 4;
        }
        for (int r = 0; r < R; r++)
          for (int t = nt; t < TK; t++) S[(long)xs[x0 + r] * TK + t] = -INFINITY;
      }
      for (int i = 0; i < Sq; i++) {
        if (!cls[i]) continue;
        if (cls[i] == 2) {
          const int64_t qp = d->qpos[(long)b * Sq + i];
          const int32_t qg = d->qseg ? d->qseg[(long)b * Sq + i] : 0;
          for (int t = 0; t < nt; t++) {
            const int64_t j = t0 + t;
            int ok = sorted ? (j >= vis[i].a && j < vis[i].e) || j < vis[i].s : visible_pos(d, qp, kpos[j]);
            if (kseg && kseg[j] != qg) ok = 0;
            if (!ok)
              for (int g = 0; g < G; g++) S[(long)(i * G + g) * TK + t] = -INFINITY;
          }
        }
      }
      /* pass 2: online softmax statistics; S becomes P */
      for (int i = 0; i < Sq; i++) {
        for (int g = 0; g < G; g++) {
          const int x = i * G + g, row = i * H + kh * G + g;
          alph[x] = -1.0f;
          if (!cls[i]) continue;
          float* s = S + (long)x * TK;
          vf mx = v_ld(s);
          for (int t = VW; t < TK; t += VW) mx = v_max(mx, v_ld(s + t));
          const float tmax = v_hmax(mx);
          if (tmax == -INFINITY) continue;
          const float mold = pt->m[row];
          const float mnew = mold > tmax ? mold : tmax;
          const vf mn = v_set(mnew);
          vf sum = v_zero();
          for (int t = 0; t < TK; t += VW) {
            const vf e = v_exp2(v_sub(v_ld(s + t), mn));
            v_st(s + t, e);
            sum = v_add(sum, e);
          }
          const float a = mold == -INFINITY ? 0.0f : s_exp2(mold - mnew);
          pt->l[row] = pt->l[row] * a + v_hsum(sum);
          pt->m[row] = mnew;
          alph[x] = a;
        }
      }
      /* pass 3: O = O * alpha + P V */
      nx = 0;
      for (int x = 0; x < Sq * G; x++)
        if (alph[x] >= 0.0f) xs[nx++] = x;
      const int nv = Dp / VW;
      for (int x0 = 0; x0 < nx; x0 += 4) {
        const int R = nx - x0 < 4 ? nx - x0 : 4;
        float* acc[4];
        const float* pr[4];
        float al[4];
        for (int r = 0; r < R; r++) {
          const int x = xs[x0 + r], i = x / G, g = x % G;
          acc[r] = pt->acc + (long)(i * H + kh * G + g) * Dp;
          pr[r] = S + (long)x * TK;
          al[r] = alph[x];
        }
        for (int u = 0; u < nv; u += 4) {
          const int NV = nv - u < 4 ? nv - u : 4;
          PV[R - 1][NV - 1](acc, al, pr, nt, kh_v, Dp, u * VW);
        }
      }
    }
  }
}

/* ------------------------------------------------------------------------------------------ */
/* Entry point.                                                                               */

RA_API int ra_decode(const float* q, const int32_t* qpos, const int32_t* qseg, const float* const* k,
                     const float* const* v, const int32_t* const* kpos, const int32_t* const* kseg, const int64_t* len, int B, int Sq,
                     int H, int Hk, int D, int causal, int window, int sinks, float scale, int sorted, int chunk,
                     int threads, float* o, float* lse) {
  if (B < 0 || Sq < 1 || Sq > MAX_SQ || H < 1 || Hk < 1 || D < 1 || H % Hk != 0 || window < 0 || sinks < 0) return 1;
  if (chunk < 0 || threads < 0) return 1;
  if (B == 0) return 0;
  if (!q || !qpos || !o || !lse || !len || !k || !v || !kpos || (!qseg != !kseg)) return 1;
  for (int b = 0; b < B; b++)
    if (len[b] < 0 || (len[b] > 0 && (!k[b] || !v[b] || !kpos[b] || (kseg && !kseg[b])))) return 1;
  if (threads < 1) threads = 1;

  Dec d = {q, k, v, qpos, qseg, kpos, kseg, len, B, Sq, H, Hk, D, H / Hk, 0, D / VW, D % VW,
           causal, window, window > 0 ? sinks : 0, (float)(scale * 1.4426950408889634), NULL};
  d.Dp = (D + VW - 1) / VW * VW;
  const int nrow = Sq * H;

  /* Per sequence: sortedness, visible intervals of each query, the (at most two) row ranges read. */
  int* srt = (int*)malloc(sizeof(int) * B);
  Vis* vis = (Vis*)malloc(sizeof(Vis) * (size_t)B * Sq);
  int64_t* rng = (int64_t*)malloc(sizeof(int64_t) * 4 * B);
  if (!srt || !vis || !rng) {
    free(srt), free(vis), free(rng);
    return 2;
  }
  int64_t total = 0;
  for (int b = 0; b < B; b++) {
    const int64_t n = len[b];
    const int32_t* pos = kpos[b];
    srt[b] = n == 0 ? 1 : sorted == 1 ? 1 : sorted == 0 ? 0 : is_sorted(pos, n);
    int64_t* r = rng + 4 * b;
    r[0] = r[1] = r[2] = r[3] = 0;
    if (n == 0) continue;
    if (!srt[b]) {
      r[1] = n;
    } else {
      int64_t a = BIGPOS, e = -1, s = 0;
      for (int i = 0; i < Sq; i++) {
        Vis x = vis_sorted(&d, pos, n, qpos[(long)b * Sq + i]);
        vis[(long)b * Sq + i] = x;
        if (x.e > x.a) a = x.a < a ? x.a : a, e = x.e > e ? x.e : e;
        if (x.s > s) s = x.s;
      }
      if (e < 0) a = e = 0;
      if (s >= a && e > 0) { /* sinks touch the window: one range */
        r[1] = e > s ? e : s;
      } else {
        r[1] = s;
        r[2] = a, r[3] = e;
      }
    }
    total += (r[1] - r[0]) + (r[3] - r[2]);
  }

  /* Split-KV: cut the ranges into chunks of about `chunk` rows (a multiple of TK). */
  int64_t cs = chunk;
  if (cs <= 0) {
    cs = (total + threads * 8 - 1) / (threads * 8);
    if (cs < 256) cs = 256;
    if (cs > 8192) cs = 8192;
  }
  cs = (cs + TK - 1) / TK * TK;
  int64_t nchunk = 0;
  for (int b = 0; b < B; b++)
    for (int w = 0; w < 2; w++) {
      const int64_t n = rng[4 * b + 2 * w + 1] - rng[4 * b + 2 * w];
      nchunk += (n + cs - 1) / cs;
    }
  Chunk* ch = (Chunk*)malloc(sizeof(Chunk) * (size_t)(nchunk > 0 ? nchunk : 1));
  int64_t* first = (int64_t*)malloc(sizeof(int64_t) * (size_t)(B + 1)); /* chunks of b: first[b]..first[b+1] */
  const size_t partFloats = (size_t)nrow * d.Dp + 2 * (size_t)nrow;
  float* parts = (float*)aligned_alloc(64, ((size_t)(nchunk > 0 ? nchunk : 1) * partFloats * sizeof(float) + 63) / 64 * 64);
  d.qs = (float*)aligned_alloc(64, ((size_t)B * nrow * d.Dp * sizeof(float) + 63) / 64 * 64);
  if (!ch || !first || !parts || !d.qs) {
    free(srt), free(vis), free(rng), free(ch), free(first), free(parts), free(d.qs);
    return 2;
  }
  nchunk = 0;
  for (int b = 0; b < B; b++) {
    first[b] = nchunk;
    for (int w = 0; w < 2; w++) {
      const int64_t lo = rng[4 * b + 2 * w], hi = rng[4 * b + 2 * w + 1];
      for (int64_t r0 = lo; r0 < hi; r0 += cs) ch[nchunk++] = (Chunk){b, r0, r0 + cs < hi ? r0 + cs : hi};
    }
  }
  first[B] = nchunk;
  for (long r = 0; r < (long)B * nrow; r++) {
    float* dst = d.qs + r * d.Dp;
    for (int x = 0; x < D; x++) dst[x] = q[r * D + x] * d.cs;
    for (int x = D; x < d.Dp; x++) dst[x] = 0.0f;
  }

  /* per thread: packed K and V tiles, the group's logits [Sq * G][TK], corrections and row list [Sq * G] */
  const size_t tileFloats = 2 * TK * (size_t)Hk * d.Dp + (size_t)Sq * d.G * (TK + 2) + 16;
  float* tileMem = (float*)aligned_alloc(64, (tileFloats * threads * sizeof(float) + 63) / 64 * 64);
  if (!tileMem) {
    free(srt), free(vis), free(rng), free(ch), free(first), free(parts), free(d.qs);
    return 2;
  }
#pragma omp parallel num_threads(threads)
  {
#ifdef _OPENMP
    float* tiles = tileMem + tileFloats * (size_t)omp_get_thread_num();
#else
    float* tiles = tileMem;
#endif
#pragma omp for schedule(dynamic, 1)
    for (int64_t c = 0; c < nchunk; c++) {
      float* base = parts + (size_t)c * partFloats;
      Part pt = {base, base + (size_t)nrow * d.Dp, base + (size_t)nrow * d.Dp + nrow};
      run_chunk(&d, &ch[c], srt[ch[c].b], vis + (long)ch[c].b * Sq, &pt, tiles, tiles + TK * (size_t)Hk * d.Dp,
                tiles + 2 * TK * (size_t)Hk * d.Dp);
    }
    /* Merge the chunks of each (sequence, query, head) row, then into the running (o, lse). */
#pragma omp for schedule(static)
    for (long br = 0; br < (long)B * nrow; br++) {
      const int b = (int)(br / nrow), row = (int)(br % nrow);
      float M = -INFINITY;
      for (int64_t c = first[b]; c < first[b + 1]; c++) {
        const float* base = parts + (size_t)c * partFloats + (size_t)nrow * d.Dp;
        if (base[nrow + row] > 0.0f) {
          const float mc = base[row];
          if (mc > M) M = mc;
        }
      }
      if (M == -INFINITY) continue; /* this row saw no key */
      float L = 0.0f;
      float acc[d.Dp];
      memset(acc, 0, sizeof(float) * d.Dp);
      for (int64_t c = first[b]; c < first[b + 1]; c++) {
        const float* base = parts + (size_t)c * partFloats;
        const float lc = base[(size_t)nrow * d.Dp + nrow + row];
        if (!(lc > 0.0f)) continue;
        const float wgt = exp2f(base[(size_t)nrow * d.Dp + row] - M);
        L += lc * wgt;
        const float* a = base + (size_t)row * d.Dp;
        for (int x = 0; x < d.Dp; x++) acc[x] += wgt * a[x];
      }
      const float blse = (float)((M + log2f(L)) * 0.6931471805599453);
      const float inv = 1.0f / L;
      float* od = o + br * D;
      const float old = lse[br];
      if (old == -INFINITY) {
        for (int x = 0; x < D; x++) od[x] = acc[x] * inv;
        lse[br] = blse;
      } else {
        const float mm = old > blse ? old : blse;
        const float ea = expf(old - mm), eb = expf(blse - mm), s = ea + eb;
        const float wa = ea / s, wb = eb / s * inv;
        for (int x = 0; x < D; x++) od[x] = wa * od[x] + wb * acc[x];
        lse[br] = mm + logf(s);
      }
    }
  }
  free(srt), free(vis), free(rng), free(ch), free(first), free(parts), free(d.qs), free(tileMem);
  return 0;
}

/* The instruction set this part of the library was compiled for. */
RA_API const char* ra_decode_isa(void) { return DK_ISA; }

/*
 * Memory bandwidth probes for the decode benchmark (STREAM-like, same compiler and flags as the
 * kernels): copy dst <- src and a read-only sum over n floats, split over `threads` OpenMP
 * threads in contiguous slices. Returns the sum (so the read is not optimised away).
 */
RA_API double ra_stream_copy(float* dst, const float* src, int64_t n, int threads) {
#pragma omp parallel for num_threads(threads < 1 ? 1 : threads) schedule(static)
  for (int64_t i = 0; i < n; i++) dst[i] = src[i];
  return dst[n > 0 ? n - 1 : 0];
}

RA_API double ra_stream_sum(const float* src, int64_t n, int threads) {
  double total = 0.0;
#pragma omp parallel num_threads(threads < 1 ? 1 : threads) reduction(+ : total)
  {
    vf a0 = v_zero(), a1 = v_zero(), a2 = v_zero(), a3 = v_zero();
    int64_t lo = 0, hi = n;
#ifdef _OPENMP
    const int nt = omp_get_num_threads(), t = omp_get_thread_num();
    const int64_t per = (n / nt + 4 * VW - 1) / (4 * VW) * (4 * VW);
    lo = per * t < n ? per * t : n;
    hi = lo + per < n ? lo + per : n;
#endif
    int64_t i = lo;
    for (; i + 4 * VW <= hi; i += 4 * VW) {
      a0 = v_add(a0, v_ld(src + i));
      a1 = v_add(a1, v_ld(src + i + VW));
      a2 = v_add(a2, v_ld(src + i + 2 * VW));
      a3 = v_add(a3, v_ld(src + i + 3 * VW));
    }
    double s = v_hsum(v_add(v_add(a0, a1), v_add(a2, a3)));
    for (; i < hi; i++) s += src[i];
    total += s;
  }
  return total;
}
