/*
 * ringattn native CPU decode attention: a few query tokens per sequence (Sq = 1..64: one token, or
 * a speculative/batched draft) against a long KV cache (fp32, or bf16 / fp16 bits widened to fp32
 * on load), split-KV (flash-decoding) over OpenMP threads. Decode reads every visible cache byte
 * once and does little arithmetic per byte (G = H / Hk FMAs per K element and as many per V
 * element), so the kernel is shaped to keep memory streaming while it computes:
 *
 *  - Work items are chunks of cache rows of one sequence. A chunk covers all KV heads of its rows,
 *    so its K and V bytes are one contiguous stretch of memory ([rows, Hk, D]). It is processed in
 *    tiles of tk rows (up to 256), each in three passes (chunk_t): all logits of the tile (K read in place,
 *    row after row, each K vector loaded once for the 4 query rows of its register block: GQA
 *    reads each KV head once for all G heads of its group and all Sq tokens), one max / exp pass
 *    per query row over the tile's logits (the online-softmax rescale of O once per tile, only
 *    when the max grows, instead of once per cache row), and O += P V (V read in place, row after
 *    row). Nothing is copied: every cache byte is loaded into a register exactly once.
 *  - Why the previous version was slow (36-50% of copy): each 16-row tile was first copied into
 *    packed per-head panels (a load and a store per element, 30% of the time), and on AVX2 its
 *    4 x 4 logits block spilled accumulators and reloaded each K vector for every FMA; it was
 *    compute-bound in cache, and its page-by-page stalls on memory added to that instead of
 *    overlapping. See pf_pages / pf_seg for the memory side, BENCHMARKS.md for measurements.
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
 *                 B, Sq, H, Hk, D, dtype (of every k[b] and v[b]: 0 fp32, 1 bf16, 2 fp16),
 *                 causal, window (0 = none), sinks, scale,
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

#include "simd.h"

/* ------------------------------------------------------------------------------------------ */
/* Vectors (simd.h) and, here: partial loads, round / 2^n for exp2, bf16 / fp16 widening loads. */
/* dk_sum8 turns 8 accumulators into the 8 dot products they hold.                            */

#if defined(RA_AVX512)
INLINE vf v_ldn(const float* p, int n) { return _mm512_maskz_loadu_ps((__mmask16)((1u << n) - 1), p); }
INLINE vf v_round(vf a) { return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
INLINE vf v_pow2i(vf n) { /* 2^n for integral n in [-127, 127]; n = -127 gives +0 */
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23));
}
INLINE __m256 fold256(vf a) {
  return _mm256_add_ps(_mm512_castps512_ps256(a), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1)));
}
INLINE vf v_ld_bf16(const uint16_t* p) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p)), 16));
}
INLINE vf v_ld_f16(const uint16_t* p) { return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)p)); }
#define HAVE_M256 1
#elif defined(RA_AVX2)
INLINE vf v_ldn(const float* p, int n) {
  const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_maskload_ps(p, _mm256_cmpgt_epi32(_mm256_set1_epi32(n), idx));
}
INLINE vf v_round(vf a) { return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
INLINE vf v_pow2i(vf n) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23));
}
INLINE __m256 fold256(vf a) { return a; }
INLINE vf v_ld_bf16(const uint16_t* p) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)p)), 16));
}
#if defined(__F16C__)
INLINE vf v_ld_f16(const uint16_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)p)); }
#else
#define NEED_F16_LOOP 1
#endif
#define HAVE_M256 1
#elif defined(RA_NEON)
INLINE vf v_ldn(const float* p, int n) {
  float t[4] = {0, 0, 0, 0};
  for (int i = 0; i < n; i++) t[i] = p[i];
  return vld1q_f32(t);
}
INLINE vf v_round(vf a) { return vrndnq_f32(a); }
INLINE vf v_pow2i(vf n) {
  return vreinterpretq_f32_s32(vshlq_n_s32(vaddq_s32(vcvtnq_s32_f32(n), vdupq_n_s32(127)), 23));
}
INLINE vf v_ld_bf16(const uint16_t* p) { return vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(p), 16)); }
INLINE vf v_ld_f16(const uint16_t* p) { return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p))); }
#else
INLINE vf v_ldn(const float* p, int n) { return n > 0 ? *p : 0.0f; }
INLINE vf v_round(vf a) { return nearbyintf(a); }
INLINE vf v_pow2i(vf n) {
  /* (n is NaN where a NaN input reached the logits: converted as 0, the caller's product is NaN) */
  const uint32_t e = (uint32_t)((n == n ? (int32_t)n : 0) + 127) << 23;
  float r;
  memcpy(&r, &e, 4);
  return r;
}
INLINE vf v_ld_bf16(const uint16_t* p) {
  const uint32_t u = (uint32_t)*p << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}
#define NEED_F16_LOOP 1
#endif

/* IEEE half bits -> float, exact (subnormals, infinities and NaN included). */
static inline float h2f(uint16_t h) {
  const uint32_t s = (uint32_t)(h & 0x8000) << 16, e = (h >> 10) & 0x1f, m = h & 0x3ff;
  if (e == 0) {
    const float f = (float)m * 5.9604644775390625e-8f; /* m * 2^-24 */
    return s ? -f : f;
  }
  const uint32_t u = s | (e == 31 ? 0x7f800000u | (m << 13) : ((e + 112) << 23) | (m << 13));
  float f;
  memcpy(&f, &u, 4);
  return f;
}
#if defined(NEED_F16_LOOP)
INLINE vf v_ld_f16(const uint16_t* p) {
  float t[VW];
  for (int i = 0; i < VW; i++) t[i] = h2f(p[i]);
  return v_load(t);
}
#endif

/*
 * Cache element types: 0 fp32, 1 bf16, 2 fp16 (16-bit ones widened to fp32 on load; all
 * arithmetic is fp32). E is a compile-time constant wherever these are inlined.
 *
 * E = 3 is bf16 read in pairs (AVX-512 builds, D a multiple of 32, RA_BF16_EO): a 64-byte load of
 * 32 bf16 gives the even elements as the 32-bit lanes shifted left by 16 and the odd ones as the
 * lanes with their low half cleared, two single-uop operations for 32 elements where the widening
 * load takes a shuffle and a shift for 16. The query rows and the O accumulators are kept in the
 * matching order within each 32 elements (the 16 even ones, then the 16 odd ones: eo_index), and
 * the final merge puts O back in order.
 */
#if defined(RA_AVX512) && !defined(RA_BF16_EO)
#define RA_BF16_EO 1
#endif
#if defined(RA_BF16_EO) && RA_BF16_EO && defined(RA_AVX512)
#define HAVE_EO 1
INLINE void ld_eo(const void* p, long i, vf* even, vf* odd) {
  const __m512i x = _mm512_loadu_si512((const void*)((const uint16_t*)p + i));
  *even = _mm512_castsi512_ps(_mm512_slli_epi32(x, 16));
  *odd = _mm512_castsi512_ps(_mm512_and_si512(x, _mm512_set1_epi32((int)0xffff0000u)));
}
#else
#define HAVE_EO 0
INLINE void ld_eo(const void* p, long i, vf* even, vf* odd) { (void)p, (void)i, *even = *odd = v_zero(); }
#endif
/* Where element x of a D-vector sits in the even/odd order of E = 3. */
static inline int eo_index(int x) { return (x & ~31) | ((x & 1) << 4) | ((x & 31) >> 1); }
INLINE vf ld_e(const int E, const void* p, long i) {
  if (E == 0) return v_load((const float*)p + i);
  if (E == 1) return v_ld_bf16((const uint16_t*)p + i);
  return v_ld_f16((const uint16_t*)p + i);
}
/* The first n (< VW) elements from p + i, the rest zero. */
INLINE vf ldn_e(const int E, const void* p, long i, int n) {
  if (E == 0) return v_ldn((const float*)p + i, n);
  uint16_t t[VW];
  memset(t, 0, sizeof t);
  memcpy(t, (const uint16_t*)p + i, sizeof(uint16_t) * (size_t)n);
  return E == 1 ? v_ld_bf16(t) : v_ld_f16(t);
}

/* 2^x, relative error about 1e-7: 2^round(x) * 2^frac; exactly 0 for x <= -127 (so a masked
   logit, -inf, gives 0); NaN stays NaN (the clamp's operand order: simd.h). */
INLINE vf v_exp2(vf x) {
  x = v_min(v_set1(127.0f), v_max(v_set1(-127.0f), x));
  const vf n = v_round(x);
  const vf f = v_sub(x, n); /* [-1/2, 1/2] */
  const vf p = v_exp2_frac(f);
  return v_mul(p, v_pow2i(n));
}

/* out[t] = sum over lanes of a[t], t < 8. */
INLINE void dk_sum8(const vf a[8], float* out) {
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

/*
 * Cache rows per tile (d->tk, chosen per call): 256, or fewer where the tile's logits of all query
 * rows (Sq x H x tk floats, per thread) would pass 1 MiB: at Sq x H = 32 going from 32 to 256 rows
 * made two threads read 30-50% faster on a 2-core Zen 5 (the K and V streams switch 8x less
 * often) and one thread 3-8%; at Sq x H = 2048 a 2 MiB tile was 6-9% slower than 32 rows. The
 * logits' row stride is tk + 4 (pass 1 writes NK keys at a time). TK fixes it (experiments).
 */
#define TK_MAX 256
#define TK_MIN 32       /* (a multiple of 4 and of VW) */
#define TK_BYTES (1 << 20)
#if defined(TK) && (TK < 16 || TK % 16 != 0)
#error "TK (cache rows per tile) must be a multiple of 16"
#endif
/* Cache rows per logits register block (4 x NK accumulators): 3 (12 of AVX2's 16 registers); 4 on
   AVX-512 for 16-bit caches (+11% on bf16, Zen 5; fp32 lost 4% with 4). */
#ifndef NK32
#define NK32 3
#endif
#ifndef NK16
#if defined(RA_AVX512)
#define NK16 4
#else
#define NK16 3
#endif
#endif
#define NKMAX (NK16 > NK32 ? NK16 : NK32)
#if defined(NK) || NK16 < 1 || NK16 > 4 || NK32 < 1 || NK32 > 4
#error "NK16 and NK32 (keys per logits block) must be 1..4 (NK is no longer read)"
#endif
#ifndef PF_BYTES
#define PF_BYTES 65536     /* page-start prefetch distance (bytes of cache rows ahead) */
#endif
#ifndef PF_SEG_ROWS
#if defined(RA_AVX512)
#define PF_SEG_ROWS 4      /* paced segment prefetch distance: at least this many cache rows ahead */
#else
#define PF_SEG_ROWS 1      /* (AVX2 keeps its Zen 3 tuning: 8 KiB ahead, at least 1 row) */
#endif
#endif
#ifndef PF_SEG_FP32
#if defined(RA_AVX512)
#define PF_SEG_FP32 1      /* fp32 caches too: +25-55% on a 2-core Zen 5 (AVX-512) */
#else
#define PF_SEG_FP32 0      /* 16-bit caches only: on fp32 it cost 5-10% on a 2-core Zen 3 (AVX2) */
#endif
#endif
#define MAX_SQ 64      /* query tokens per sequence the kernel accepts */
#define BIGPOS ((int64_t)1 << 40)

typedef struct {
  const float* q;
  const void* const* k; /* element type E: 0 fp32, 1 bf16, 2 fp16 */
  const void* const* v;
  const int32_t *qpos, *qseg;
  const int32_t* const* kpos;
  const int32_t* const* kseg;
  const int64_t* len;
  int B, Sq, H, Hk, D, G, Dp, nfull, tail, E;
  int causal, window, sinks;
  float cs; /* scale * log2(e) */
  float* qs; /* [B, Sq, H, Dp] queries pre-scaled by cs, zero-padded */
  int tk, tks; /* cache rows per tile, stride of a row of a tile's logits */
  int pft1;    /* the segment prefetch's hint: 1 T1 (Intel), 0 non-temporal */
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

INLINE int visible_pos(const Dec* d, int64_t qi, int64_t kj) {
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

/* Per-thread scratch of chunk_t. */
typedef struct {
  float* S;   /* [Sq*H][tks] logits of a tile, then its probabilities */
  float* ok;  /* [tk] 0 or -inf: visibility of the tile's rows for one query (mixed tiles) */
  int* qrows; /* [Sq*G] rows i*H + g (KV head 0) of the tile's live queries */
  int* prow;  /* [Hk][Sq*G] per KV head, the rows i*H + h that see a key of the tile */
  int* np;    /* [Hk] */
} Scratch;

/* Keeps a loaded vector in a register: stops the compiler from folding the load into each FMA
   that uses it (which would load it again, and widen it again, for every query row). */
#if defined(__GNUC__) && defined(__AVX512F__)
#define V_REG(x) __asm__("" : "+v"(x))
#elif defined(__GNUC__) && defined(__AVX2__)
#define V_REG(x) __asm__("" : "+x"(x))
#elif defined(__GNUC__) && defined(__aarch64__)
#define V_REG(x) __asm__("" : "+w"(x))
#else
#define V_REG(x) (void)0
#endif

/*
 * Software prefetch. Decode reads each cache page slowly (compute between the loads), and the
 * hardware prefetchers stop at 4 KiB page boundaries and need a few misses on a new page before
 * they run ahead again, so without help every page start exposes a full memory latency. Two kinds,
 * chosen by measurement (Zen 3, 2 cores: against none, other distances, and prefetching whole rows
 * ahead, which ties up the L1 miss buffers the hardware streams need and was slower):
 *  - pf_pages: the first line of every 4 KiB page of a row PF_BYTES ahead (starts the page's
 *    translation and stream early), for every cache;
 *  - pf_seg: the lines of the KV-head segment that will be used 8 KiB later (at least PF_SEG_ROWS
 *    cache rows, at most 8), paced one segment per compute step, non-temporal (used once, soon). On Zen 3
 *    it gained 15-25% on 16-bit caches and cost 5-10% on fp32 ones (the hardware streams kept up
 *    there); on a Zen 5 with AVX-512 it gained 25-55% on fp32 as well (4 rows ahead: 2 rows lost
 *    20%, 6 rows 5-10%; the non-temporal hint at least as fast as T0-T2), so AVX-512 builds use it
 *    for every cache (PF_SEG_FP32).
 * The segment prefetch's hint depends on the vendor. On Intel Xeons `prefetchnta` fills only the
 * L1 (not the L2, nor the non-inclusive L3), so a segment evicted before its loads comes from
 * DRAM twice: on a 16-core Xeon (the H100 host) the non-temporal hint read 5.6 GB/s on one thread
 * and 57 on 16, the T1 hint 15.8 and 121 (fp32, 128k cache; bf16 alike). So Intel CPUs get T1
 * (found by cpuid at run time) and the others keep the non-temporal hint; -DPF_SEG_HINT=n forces
 * one hint everywhere (experiments).
 */
#ifndef PF_PAGES
#define PF_PAGES 1     /* 0: no page-start prefetch (experiments: RINGATTN_CPU_DEFINES) */
#endif
/* Is this an Intel CPU (cpuid vendor "GenuineIntel")? Asked once; 0 off x86. */
#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
static int cpu_is_intel(void) {
  static volatile int known = -1; /* (a benign race: every thread writes the same value) */
  if (known < 0) {
    unsigned a = 0, b = 0, c = 0, d = 0;
    known = __get_cpuid(0, &a, &b, &c, &d) && b == 0x756e6547u && d == 0x49656e69u && c == 0x6c65746eu;
  }
  return known;
}
#else
static int cpu_is_intel(void) { return 0; }
#endif
INLINE void pf_pages(const char* p, long n) {
  if (!PF_PAGES) return;
  __builtin_prefetch(p, 0, 3);
  const uintptr_t a = (uintptr_t)p, e = a + (uintptr_t)n;
  for (uintptr_t x = (a + 4095) & ~(uintptr_t)4095; x < e; x += 4096) __builtin_prefetch((const void*)x, 0, 3);
}

/* t1: the T1 hint (Intel), else non-temporal; PF_SEG_HINT (0 non-temporal, 1-3 T2..T0) forces one. */
INLINE void pf_seg(const char* p, long n, int t1) {
#ifdef PF_SEG_HINT
  (void)t1;
  for (long x = 0; x < n; x += 64) __builtin_prefetch(p + x, 0, PF_SEG_HINT);
#else
  if (t1)
    for (long x = 0; x < n; x += 64) __builtin_prefetch(p + x, 0, 2);
  else
    for (long x = 0; x < n; x += 64) __builtin_prefetch(p + x, 0, 0);
#endif
}

/*
 * Logits of NQ (<= 4) query rows against NK cache rows of one KV head, read in place (D elements
 * each; the last partial vector is a masked load). Each K vector loaded (and widened) serves NQ
 * rows and each Q vector NK keys: NQ * NK independent FMA chains, enough to hide the FMA latency
 * at NQ = 4. The query rows are pre-scaled and zero-padded to Dp. out[r][k] = logit (row r, key k).
 */
INLINE void qk_core(const int E, const int NQ, const int NK, const int TAIL, int nf, int tail, const float* const* qr,
                    const void* const* kr, float* const* out) {
  vf a[4][NKMAX];
#pragma GCC unroll 4
  for (int r = 0; r < NQ; r++)
#pragma GCC unroll 4
    for (int k = 0; k < NK; k++) a[r][k] = v_zero();
  if (E == 3) { /* bf16 pairs: nf even, no tail */
    for (int u = 0; u < nf; u += 2) {
      vf ke[NKMAX], ko[NKMAX];
#pragma GCC unroll 4
      for (int k = 0; k < NK; k++) {
        ld_eo(kr[k], (long)u * VW, &ke[k], &ko[k]);
        V_REG(ke[k]);
        V_REG(ko[k]);
      }
#pragma GCC unroll 4
      for (int r = 0; r < NQ; r++) {
        vf qe = v_load(qr[r] + u * VW), qo = v_load(qr[r] + u * VW + VW);
        V_REG(qe);
        V_REG(qo);
#pragma GCC unroll 4
        for (int k = 0; k < NK; k++) a[r][k] = v_fma(qo, ko[k], v_fma(qe, ke[k], a[r][k]));
      }
    }
  }
  for (int u = 0; E != 3 && u < nf + TAIL; u++) {
    vf kv[NKMAX];
#pragma GCC unroll 4
    for (int k = 0; k < NK; k++) {
      kv[k] = TAIL && u == nf ? ldn_e(E, kr[k], (long)u * VW, tail) : ld_e(E, kr[k], (long)u * VW);
      V_REG(kv[k]);
    }
#pragma GCC unroll 4
    for (int r = 0; r < NQ; r++) {
      vf qv = v_load(qr[r] + u * VW);
      if (NK > 2) V_REG(qv); /* (with 12 accumulators GCC would reload q for every key) */
#pragma GCC unroll 4
      for (int k = 0; k < NK; k++) a[r][k] = v_fma(qv, kv[k], a[r][k]);
    }
  }
  float tmp[8];
#pragma GCC unroll 2
  for (int j0 = 0; j0 < NQ * NK; j0 += 8) {
    vf s8[8];
#pragma GCC unroll 8
    for (int j = 0; j < 8; j++) s8[j] = j0 + j < NQ * NK ? a[(j0 + j) / NK][(j0 + j) % NK] : v_zero();
    dk_sum8(s8, tmp);
    for (int j = 0; j < 8 && j0 + j < NQ * NK; j++) out[(j0 + j) / NK][(j0 + j) % NK] = tmp[j];
  }
}

/*
 * acc[q] += sum_{r < 4} p[q][r] * V row r, for NQ (<= PV_NQ) query rows and 4 cache rows of one KV
 * head read in place: each V vector loaded (and widened) serves NQ rows, each accumulator vector
 * is loaded and stored once per 4 cache rows, in two short FMA chains.
 */
/* Query rows per V block. AVX-512 builds take 4 for 16-bit caches (4 x 4 broadcast p fit its 32
   registers, and each V vector is widened once for 4 rows instead of twice: +13% on bf16, Zen 5);
   fp32 caches keep 2 (4 cost 3-15% there), as do AVX2 (16 registers) and NEON builds. */
#ifndef PV_NQ16
#if defined(RA_AVX512)
#define PV_NQ16 4
#else
#define PV_NQ16 2
#endif
#endif
#ifndef PV_NQ32
#define PV_NQ32 2
#endif
#if defined(PV_NQ) || PV_NQ16 < 1 || PV_NQ16 > 4 || PV_NQ32 < 1 || PV_NQ32 > 4
#error "PV_NQ16 and PV_NQ32 (query rows per V block) must be 1..4 (PV_NQ is no longer read)"
#endif
#define PV_NQ (PV_NQ16 > PV_NQ32 ? PV_NQ16 : PV_NQ32)
/* a[0..VW) += sum_{r < 4} p[r] * w[r], in two short FMA chains. */
INLINE void pv_acc4(float* a, const vf p[4], const vf w[4]) {
  const vf c1 = v_fma(p[1], w[1], v_fma(p[0], w[0], v_load(a)));
  const vf c2 = v_fma(p[3], w[3], v_mul(p[2], w[2]));
  v_store(a, v_add(c1, c2));
}
INLINE void pv_core(const int E, const int NQ, const int TAIL, int nf, int tail, float* const* accp,
                    const float* const* p, const void* const* vrp) {
  vf pb[PV_NQ][4];
  float* acc[PV_NQ];
  const void* vr[4];
#pragma GCC unroll 4
  for (int q = 0; q < NQ; q++) {
    acc[q] = accp[q];
#pragma GCC unroll 4
    for (int r = 0; r < 4; r++) pb[q][r] = v_set1(p[q][r]);
  }
#pragma GCC unroll 4
  for (int r = 0; r < 4; r++) vr[r] = vrp[r];
  if (E == 3) { /* bf16 pairs: nf even, no tail; acc in even/odd order */
    for (int u = 0; u < nf; u += 2) {
      vf ve[4], vo[4];
#pragma GCC unroll 4
      for (int r = 0; r < 4; r++) {
        ld_eo(vr[r], (long)u * VW, &ve[r], &vo[r]);
        V_REG(ve[r]);
        V_REG(vo[r]);
      }
#pragma GCC unroll 4
      for (int q = 0; q < NQ; q++)
#pragma GCC unroll 2
        for (int h = 0; h < 2; h++) pv_acc4(acc[q] + u * VW + h * VW, pb[q], h ? vo : ve);
    }
  }
  for (int u = 0; E != 3 && u < nf + TAIL; u++) {
    vf vv[4];
#pragma GCC unroll 4
    for (int r = 0; r < 4; r++) {
      vv[r] = TAIL && u == nf ? ldn_e(E, vr[r], (long)u * VW, tail) : ld_e(E, vr[r], (long)u * VW);
      if (NQ > 1 || E != 0) V_REG(vv[r]);
    }
#pragma GCC unroll 4
    for (int q = 0; q < NQ; q++) pv_acc4(acc[q] + u * VW, pb[q], vv);
  }
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
 * A tile of tk cache rows in three passes. Passes 1 and 3 read the cache in memory order (row
 * after row, every KV head of a row before the next row: NK rows side by side in pass 1, 4 in
 * pass 3), which keeps the hardware prefetchers streaming, helped by pf_pages PF_BYTES ahead and
 * pf_seg PF_SEG_ROWS ahead (what the next passes read: pass 1 ends prefetching the tile's first V
 * rows, pass 3 the next tile's first K rows):
 *  (1) the logits of all the tile's rows for every live query row, in register blocks of 4 query
 *      rows of one KV group x NK keys: each K byte is read from memory once for all G heads of its
 *      group and all Sq tokens;
 *  (2) per query row, the mask and one max / exp pass over the tile's tk logits: the online-softmax
 *      correction of O happens once per tile (and only when the max grows), not once per row;
 *  (3) O += P V in blocks of PV_NQ query rows x 4 cache rows, each V byte read from memory once.
 * Nothing is copied: K and V are read in place, so every byte is loaded into a register once.
 * The micro-kernels are inlined (E: cache type, T: a partial last vector of D, both compile-time
 * via CHUNK_DEF): an indirect call per register block made the loads and prefetches issue less
 * evenly, and DRAM-bound decode ran 10-15% slower with it (BENCHMARKS.md, session 9).
 */
INLINE void chunk_t(const int E, const int T, const Dec* d, const Chunk* c, int sorted, const Vis* vis, Part* pt,
                    const Scratch* sc) {
  const int b = c->b, Sq = d->Sq, H = d->H, Hk = d->Hk, D = d->D, G = d->G, Dp = d->Dp, nf = d->nfull;
  const int tail = T ? d->tail : 0, esz = E ? 2 : 4, NK = E ? NK16 : NK32;
  const long rs = (long)Hk * D;          /* elements between cache rows */
  const long rb = rs * esz;              /* bytes between cache rows */
  const long hb = (long)D * esz;         /* bytes between KV heads of a row */
  const int32_t* kpos = d->kpos[b];
  const int32_t* kseg = d->kseg ? d->kseg[b] : NULL;
  const float* qs = d->qs + (long)b * Sq * H * Dp;
  const char* K = (const char*)d->k[b];
  const char* V = (const char*)d->v[b];
  const int nrow = Sq * H, tk = d->tk, tks = d->tks;
  long pfr = PF_BYTES / rb, psr = 8192 / rb; /* prefetch distances in rows (psr 0: off) */
  pfr = pfr < 1 ? 1 : pfr > 64 ? 64 : pfr;
  psr = esz == 4 && !PF_SEG_FP32 ? 0 : psr < PF_SEG_ROWS ? PF_SEG_ROWS : psr;
  psr = psr > 8 ? 8 : psr; /* 8 KiB ahead (at least PF_SEG_ROWS rows), at most 8 rows */
  const int pft1 = d->pft1;
  float* S = sc->S;
  memset(pt->acc, 0, sizeof(float) * (size_t)nrow * Dp);
  for (int r = 0; r < nrow; r++) pt->m[r] = -INFINITY, pt->l[r] = 0.0f;
  int cls[MAX_SQ];

  for (int64_t t0 = c->r0; t0 < c->r1; t0 += tk) {
    const int nt = (int)(c->r1 - t0 < tk ? c->r1 - t0 : tk);
    int any = 0, nq = 0;
    for (int i = 0; i < Sq; i++) {
      cls[i] = tile_class(&vis[i], t0, t0 + nt, sorted, kseg != NULL);
      any |= cls[i];
      if (cls[i])
        for (int g = 0; g < G; g++) sc->qrows[nq++] = i * H + g;
    }
    if (!any) continue;
    const char* kt = K + t0 * rb;
    const char* vt = V + t0 * rb;

    /* pass 1: scaled logits (log2 units) of the live query rows */
    for (int t = 0; t < nt; t += NK) {
      const char* k0[NKMAX];
      for (int k = 0; k < NK; k++) k0[k] = kt + (t + k < nt ? t + k : t) * rb;
      for (int k = 0; k < NK; k++)
        if (t0 + t + k + pfr < c->r1) pf_pages(K + (t0 + t + k + pfr) * rb, rb);
      for (int kh = 0; kh < Hk; kh++) {
        const void* kr[NKMAX];
        for (int k = 0; k < NK; k++) kr[k] = k0[k] + kh * hb;
        for (int k = 0; k < NK && psr; k++) { /* K rows of this tile, then its first V rows (pass 3 is next) */
          const long j = t + k + psr;
          if (j < nt) pf_seg(kt + j * rb + kh * hb, hb, pft1);
          else if (j - nt < nt) pf_seg(vt + (j - nt) * rb + kh * hb, hb, pft1);
        }
        const int hoff = kh * G;
        for (int x0 = 0; x0 < nq; x0 += 4) {
          const int R = nq - x0 < 4 ? nq - x0 : 4;
          const float* qr[4];
          float* out[4];
          for (int r = 0; r < R; r++) {
            const int row = sc->qrows[x0 + r] + hoff;
            qr[r] = qs + (long)row * Dp;
            out[r] = S + (long)row * tks + t;
          }
          switch (R) { /* (R is 4 except for the last block of a row list) */
          case 4: qk_core(E, 4, NK, T, nf, tail, qr, kr, out); break;
          case 3: qk_core(E, 3, NK, T, nf, tail, qr, kr, out); break;
          case 2: qk_core(E, 2, NK, T, nf, tail, qr, kr, out); break;
          default: qk_core(E, 1, NK, T, nf, tail, qr, kr, out);
          }
        }
      }
    }

    /* pass 2: mask, online-softmax statistics per tile; S becomes P */
    for (int kh = 0; kh < Hk; kh++) sc->np[kh] = 0;
    for (int i = 0; i < Sq; i++) {
      if (!cls[i]) continue;
      if (cls[i] == 2) {
        const int64_t qp = d->qpos[(long)b * Sq + i];
        const int32_t qg = d->qseg ? d->qseg[(long)b * Sq + i] : 0;
        for (int t = 0; t < nt; t++) {
          const int64_t j = t0 + t;
          int ok = sorted ? (j >= vis[i].a && j < vis[i].e) || j < vis[i].s : visible_pos(d, qp, kpos[j]);
          if (kseg && kseg[j] != qg) ok = 0;
          sc->ok[t] = ok ? 0.0f : -INFINITY;
        }
      }
      for (int h = 0; h < H; h++) {
        const int row = i * H + h;
        float* s = S + (long)row * tks;
        for (int t = nt; t < tk; t++) s[t] = -INFINITY;
        if (cls[i] == 2) /* a select, not s + ok: a NaN score (a NaN key) the row does not see stays out */
          for (int t = 0; t < nt; t++) s[t] = sc->ok[t] == 0.0f ? s[t] : -INFINITY;
        vf mx = v_load(s);
        for (int t = VW; t < tk; t += VW) mx = v_max(mx, v_load(s + t));
        float tmax = v_hmax(mx);
        if (tmax == -INFINITY) {
          if (!any_nan(s, tk)) continue; /* no key of this tile is visible to the row */
          tmax = NAN; /* its visible scores are all NaN (the max passes NaN over): NaN, not empty */
        }
        const float mold = pt->m[row];
        const float mnew = mold > tmax ? mold : tmax;
        const vf mn = v_set1(mnew);
        vf sum = v_zero();
        for (int t = 0; t < tk; t += VW) {
          const vf e = v_exp2(v_sub(v_load(s + t), mn));
          v_store(s + t, e);
          sum = v_add(sum, e);
        }
        if (mold != -INFINITY && mnew > mold) { /* (with mold = -inf, O and l are still 0) */
          const float a = s_exp2(mold - mnew);
          const vf av = v_set1(a);
          float* acc = pt->acc + (long)row * Dp;
          for (int x = 0; x < Dp; x += VW) v_store(acc + x, v_mul(v_load(acc + x), av));
          pt->l[row] *= a;
        }
        pt->l[row] += v_hsum(sum);
        pt->m[row] = mnew;
        const int kh = h / G;
        sc->prow[kh * Sq * G + sc->np[kh]++] = row;
      }
    }

    /* pass 3: O += P V (rows past nt have p = 0 and read row t0 instead) */
    for (int t = 0; t < nt; t += 4) {
      const char* v0[4];
      for (int r = 0; r < 4; r++) v0[r] = vt + (t + r < nt ? t + r : t) * rb;
      for (int r = 0; r < 4; r++)
        if (t0 + t + r + pfr < c->r1) pf_pages(V + (t0 + t + r + pfr) * rb, rb);
      for (int kh = 0; kh < Hk; kh++) {
        for (int r = 0; r < 4 && psr; r++) { /* V rows of this tile, then the next tile's first K rows */
          const long j = t + r + psr;
          if (j < nt) pf_seg(vt + j * rb + kh * hb, hb, pft1);
          else if (t0 + j < c->r1) pf_seg(kt + j * rb + kh * hb, hb, pft1);
        }
        const int n = sc->np[kh];
        const int* rows = sc->prow + kh * Sq * G;
        const void* vr[4];
        for (int r = 0; r < 4; r++) vr[r] = v0[r] + kh * hb;
        const int pvq = E ? PV_NQ16 : PV_NQ32;
        for (int x0 = 0; x0 < n; x0 += pvq) {
          const int R = n - x0 < pvq ? n - x0 : pvq;
          float* acc[PV_NQ];
          const float* p[PV_NQ];
          for (int q = 0; q < R; q++) {
            acc[q] = pt->acc + (long)rows[x0 + q] * Dp;
            p[q] = S + (long)rows[x0 + q] * tks + t;
          }
          switch (R) {
#if PV_NQ > 3
          case 4: pv_core(E, 4, T, nf, tail, acc, p, vr); break;
#endif
#if PV_NQ > 2
          case 3: /* (as 2 + 1: one more inlined copy of the kernel doubled the build time) */
            pv_core(E, 2, T, nf, tail, acc, p, vr);
            pv_core(E, 1, T, nf, tail, acc + 2, p + 2, vr);
            break;
#endif
          case 2: pv_core(E, 2, T, nf, tail, acc, p, vr); break;
          default: pv_core(E, 1, T, nf, tail, acc, p, vr);
          }
        }
      }
    }
  }
}

/* chunk_t for each cache type E and with or without a partial last vector of D (T). */
typedef void (*chunk_fn)(const Dec*, const Chunk*, int, const Vis*, Part*, const Scratch*);
#define CHUNK_DEF(E, T)                                                                                       \
  static void chunk_##E##_##T(const Dec* d, const Chunk* c, int sorted, const Vis* vis, Part* pt, const Scratch* sc) { \
    chunk_t(E, T, d, c, sorted, vis, pt, sc);                                                                 \
  }
CHUNK_DEF(0, 0)
CHUNK_DEF(0, 1)
CHUNK_DEF(1, 0)
CHUNK_DEF(1, 1)
CHUNK_DEF(2, 0)
CHUNK_DEF(2, 1)
#if HAVE_EO
CHUNK_DEF(3, 0)
#endif
static const chunk_fn CHUNKS[3][2] = {{chunk_0_0, chunk_0_1}, {chunk_1_0, chunk_1_1}, {chunk_2_0, chunk_2_1}};

/* ------------------------------------------------------------------------------------------ */
/* Entry point.                                                                               */

RA_API int ra_decode(const float* q, const int32_t* qpos, const int32_t* qseg, const void* const* k,
                     const void* const* v, const int32_t* const* kpos, const int32_t* const* kseg, const int64_t* len, int B,
                     int Sq, int H, int Hk, int D, int dtype, int causal, int window, int sinks, float scale, int sorted,
                     int chunk, int threads, float* o, float* lse) {
  if (B < 0 || Sq < 1 || Sq > MAX_SQ || H < 1 || Hk < 1 || D < 1 || H % Hk != 0 || window < 0 || sinks < 0) return 1;
  if (dtype < 0 || dtype > 2) return 1;
  if (chunk < 0 || threads < 0) return 1;
  if (B == 0) return 0;
  if (!q || !qpos || !o || !lse || !len || !k || !v || !kpos || (!qseg != !kseg)) return 1;
  for (int b = 0; b < B; b++)
    if (len[b] < 0 || (len[b] > 0 && (!k[b] || !v[b] || !kpos[b] || (kseg && !kseg[b])))) return 1;
  if (threads < 1) threads = 1;

  Dec d = {q, k, v, qpos, qseg, kpos, kseg, len, B, Sq, H, Hk, D, H / Hk, 0, D / VW, D % VW, dtype,
           causal, window, window > 0 ? sinks : 0, (float)(scale * 1.4426950408889634), NULL, 0, 0};
  d.Dp = (D + VW - 1) / VW * VW;
  d.pft1 = cpu_is_intel();
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

  /* Tile rows: the largest power of two in [TK_MIN, TK_MAX] whose logits fit TK_BYTES (and no
     larger than a chunk the caller sets, down to 16). */
#ifdef TK
  d.tk = TK;
#else
  d.tk = TK_MAX;
  while (d.tk > TK_MIN && (size_t)nrow * (d.tk + 4) * sizeof(float) > TK_BYTES) d.tk /= 2;
  while (chunk > 0 && d.tk > 16 && d.tk > chunk) d.tk /= 2; /* a chunk asked for holds whole tiles */
#endif
  d.tks = d.tk + 4;

  /* Split-KV: cut the ranges into chunks of about `chunk` rows (a multiple of tk). */
  int64_t cs = chunk;
  if (cs <= 0) {
    cs = (total + threads * 8 - 1) / (threads * 8);
    if (cs < 256) cs = 256;
    if (cs > 8192) cs = 8192;
  }
  cs = (cs + d.tk - 1) / d.tk * d.tk;
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
  const int eo = HAVE_EO && dtype == 1 && D % 32 == 0; /* bf16 read in pairs (E = 3) */
  for (long r = 0; r < (long)B * nrow; r++) {
    float* dst = d.qs + r * d.Dp;
    for (int x = 0; x < D; x++) dst[eo ? eo_index(x) : x] = q[r * D + x] * d.cs;
    for (int x = D; x < d.Dp; x++) dst[x] = 0.0f;
  }

  /* per thread: a tile's logits [Sq * H][tks], its mask [tk], row lists [Sq * G], [Hk][Sq * G], [Hk],
   * and the merge's accumulator row [Dp] (on the heap: a stack array of D floats crashed the
   * process at D = 524,288) */
  const size_t sFloats = ((size_t)nrow * d.tks + d.tk + 15) / 16 * 16;
  const size_t sInts = ((size_t)Sq * d.G * (Hk + 1) + Hk + 15) / 16 * 16;
  const size_t scrFloats = sFloats + sInts + ((size_t)d.Dp + 15) / 16 * 16;
  float* scrMem = (float*)aligned_alloc(64, (scrFloats * threads * sizeof(float) + 63) / 64 * 64);
  if (!scrMem) {
    free(srt), free(vis), free(rng), free(ch), free(first), free(parts), free(d.qs);
    return 2;
  }
#if HAVE_EO
  const chunk_fn run = eo ? chunk_3_0 : CHUNKS[d.E][d.tail != 0];
#else
  const chunk_fn run = CHUNKS[d.E][d.tail != 0];
#endif
#pragma omp parallel num_threads(threads)
  {
#ifdef _OPENMP
    float* mem = scrMem + scrFloats * (size_t)omp_get_thread_num();
#else
    float* mem = scrMem;
#endif
    int* im = (int*)(mem + sFloats);
    const Scratch sc = {mem, mem + (size_t)nrow * d.tks, im, im + Sq * d.G, im + Sq * d.G * (Hk + 1)};
    float* const acc = mem + sFloats + sInts;
#pragma omp for schedule(dynamic, 1)
    for (int64_t c = 0; c < nchunk; c++) {
      float* base = parts + (size_t)c * partFloats;
      Part pt = {base, base + (size_t)nrow * d.Dp, base + (size_t)nrow * d.Dp + nrow};
      run(&d, &ch[c], srt[ch[c].b], vis + (long)ch[c].b * Sq, &pt, &sc);
    }
    /* Merge the chunks of each (sequence, query, head) row, then into the running (o, lse). */
#pragma omp for schedule(static)
    for (long br = 0; br < (long)B * nrow; br++) {
      const int b = (int)(br / nrow), row = (int)(br % nrow);
      float M = -INFINITY;
      for (int64_t c = first[b]; c < first[b + 1]; c++) {
        const float* base = parts + (size_t)c * partFloats + (size_t)nrow * d.Dp;
        const float lc = base[nrow + row], mc = base[row];
        if (lc != lc) { /* a NaN input reached this chunk's sum: the row is NaN */
          M = NAN;
          break;
        }
        if (lc > 0.0f && mc > M) M = mc;
      }
      if (M == -INFINITY) continue; /* this row saw no key */
      float L = 0.0f;
      memset(acc, 0, sizeof(float) * d.Dp);
      for (int64_t c = first[b]; c < first[b + 1]; c++) {
        const float* base = parts + (size_t)c * partFloats;
        const float lc = base[(size_t)nrow * d.Dp + nrow + row];
        if (!(lc > 0.0f) && lc == lc) continue;
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
        for (int x = 0; x < D; x++) od[x] = acc[eo ? eo_index(x) : x] * inv; /* (E = 3: back to element order) */
        lse[br] = blse;
      } else {
        const float mm = old > blse ? old : blse;
        const float ea = expf(old - mm), eb = expf(blse - mm), s = ea + eb;
        const float wa = ea / s, wb = eb / s * inv;
        for (int x = 0; x < D; x++) od[x] = wa * od[x] + wb * acc[eo ? eo_index(x) : x];
        lse[br] = mm + logf(s);
      }
    }
  }
  free(srt), free(vis), free(rng), free(ch), free(first), free(parts), free(d.qs), free(scrMem);
  return 0;
}

/* The instruction set this part of the library was compiled for. */
RA_API const char* ra_decode_isa(void) { return RA_ISA; }

/*
 * Memory bandwidth probes for the decode benchmark (STREAM-like, same compiler and flags as the
 * kernels): copy dst <- src and a read-only sum over n floats, split over `threads` OpenMP
 * threads in contiguous slices. Returns the sum (so the read is not optimised away).
 */
/* p's offset past a multiple of m (a power of two): the bench places caches with it. */
RA_API int64_t ra_addr_mod(const void* p, int64_t m) { return (int64_t)((uintptr_t)p & (uintptr_t)(m - 1)); }

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
      a0 = v_add(a0, v_load(src + i));
      a1 = v_add(a1, v_load(src + i + VW));
      a2 = v_add(a2, v_load(src + i + 2 * VW));
      a3 = v_add(a3, v_load(src + i + 3 * VW));
    }
    double s = v_hsum(v_add(v_add(a0, a1), v_add(a2, a3)));
    for (; i < hi; i++) s += src[i];
    total += s;
  }
  return total;
}
