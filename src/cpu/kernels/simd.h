/*
 * The vector layer shared by the native CPU kernels (attn.c, gemm.c, decode.c): the ISA is picked
 * at compile time from the compiler's predefined macros (src/cpu/build.ts compiles with
 * -march=native), in this order:
 *
 *   RA_AVX512  AVX-512F                 16 fp32 lanes
 *   RA_AVX2    AVX2 with FMA            8 lanes
 *   RA_NEON    AArch64 NEON             4 lanes
 *   RA_SCALAR  anything else            1 lane (plain C)
 *
 * Exactly one of them is defined (to 1); RA_ISA names it. vf holds VW floats; the operations are
 * the ones every kernel uses. What only one kernel needs (attn.c's integer lanes, decode.c's
 * partial loads and bf16 / fp16 widening, the register-block sizes) stays in that kernel, under
 * the same RA_* macros. The build hashes this header with the kernels, so changing it rebuilds.
 */
#ifndef RA_SIMD_H
#define RA_SIMD_H

/*
 * NaN: v_max(a, b) and v_min(a, b) give b where either lane is NaN on x86 and in the scalar
 * build, and NaN on NEON; so v_max(constant, x) keeps a NaN x on every ISA, while a running max
 * v_max(m, x) may pass a NaN over (any_nan below finds it). With --allow-nonfinite a NaN input
 * must make its rows NaN, never read as a masked (-inf) score.
 */

#define RA_API __attribute__((visibility("default")))
#define INLINE static inline __attribute__((always_inline))

#if defined(__AVX512F__)
#define RA_AVX512 1
#define RA_ISA "avx512"
#include <immintrin.h>
#define VW 16
typedef __m512 vf;
INLINE vf v_load(const float* p) { return _mm512_loadu_ps(p); }
INLINE void v_store(float* p, vf a) { _mm512_storeu_ps(p, a); }
INLINE vf v_set1(float x) { return _mm512_set1_ps(x); }
INLINE vf v_zero(void) { return _mm512_setzero_ps(); }
INLINE vf v_fma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
INLINE vf v_mul(vf a, vf b) { return _mm512_mul_ps(a, b); }
INLINE vf v_add(vf a, vf b) { return _mm512_add_ps(a, b); }
INLINE vf v_sub(vf a, vf b) { return _mm512_sub_ps(a, b); }
INLINE vf v_max(vf a, vf b) { return _mm512_max_ps(a, b); }
INLINE vf v_min(vf a, vf b) { return _mm512_min_ps(a, b); }
INLINE float v_hmax(vf a) { return _mm512_reduce_max_ps(a); }
INLINE float v_hsum(vf a) { return _mm512_reduce_add_ps(a); }

#elif defined(__AVX2__) && defined(__FMA__)
#define RA_AVX2 1
#define RA_ISA "avx2"
#include <immintrin.h>
#define VW 8
typedef __m256 vf;
INLINE vf v_load(const float* p) { return _mm256_loadu_ps(p); }
INLINE void v_store(float* p, vf a) { _mm256_storeu_ps(p, a); }
INLINE vf v_set1(float x) { return _mm256_set1_ps(x); }
INLINE vf v_zero(void) { return _mm256_setzero_ps(); }
INLINE vf v_fma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
INLINE vf v_mul(vf a, vf b) { return _mm256_mul_ps(a, b); }
INLINE vf v_add(vf a, vf b) { return _mm256_add_ps(a, b); }
INLINE vf v_sub(vf a, vf b) { return _mm256_sub_ps(a, b); }
INLINE vf v_max(vf a, vf b) { return _mm256_max_ps(a, b); }
INLINE vf v_min(vf a, vf b) { return _mm256_min_ps(a, b); }
INLINE float v_hmax(vf a) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  return _mm_cvtss_f32(_mm_max_ss(m, _mm_shuffle_ps(m, m, 1)));
}
INLINE float v_hsum(vf a) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)));
}

#elif defined(__ARM_NEON) && defined(__aarch64__)
#define RA_NEON 1
#define RA_ISA "neon"
#include <arm_neon.h>
#define VW 4
typedef float32x4_t vf;
INLINE vf v_load(const float* p) { return vld1q_f32(p); }
INLINE void v_store(float* p, vf a) { vst1q_f32(p, a); }
INLINE vf v_set1(float x) { return vdupq_n_f32(x); }
INLINE vf v_zero(void) { return vdupq_n_f32(0.0f); }
INLINE vf v_fma(vf a, vf b, vf c) { return vfmaq_f32(c, a, b); }
INLINE vf v_mul(vf a, vf b) { return vmulq_f32(a, b); }
INLINE vf v_add(vf a, vf b) { return vaddq_f32(a, b); }
INLINE vf v_sub(vf a, vf b) { return vsubq_f32(a, b); }
INLINE vf v_max(vf a, vf b) { return vmaxq_f32(a, b); }
INLINE vf v_min(vf a, vf b) { return vminq_f32(a, b); }
INLINE float v_hmax(vf a) { return vmaxvq_f32(a); }
INLINE float v_hsum(vf a) { return vaddvq_f32(a); }

#else
#define RA_SCALAR 1
#define RA_ISA "scalar"
#define VW 1
typedef float vf;
INLINE vf v_load(const float* p) { return *p; }
INLINE void v_store(float* p, vf a) { *p = a; }
INLINE vf v_set1(float x) { return x; }
INLINE vf v_zero(void) { return 0.0f; }
INLINE vf v_fma(vf a, vf b, vf c) { return a * b + c; }
INLINE vf v_mul(vf a, vf b) { return a * b; }
INLINE vf v_add(vf a, vf b) { return a + b; }
INLINE vf v_sub(vf a, vf b) { return a - b; }
/* Like x86's max/min: b where either is NaN. */
INLINE vf v_max(vf a, vf b) { return a > b ? a : b; }
INLINE vf v_min(vf a, vf b) { return a < b ? a : b; }
INLINE float v_hmax(vf a) { return a; }
INLINE float v_hsum(vf a) { return a; }
#endif

/* 1 if any of s[0..n) is NaN. */
INLINE int any_nan(const float* s, int n) {
  for (int j = 0; j < n; j++)
    if (s[j] != s[j]) return 1;
  return 0;
}

/*
 * 2^f for f in [-1/2, 1/2]: the degree-6 polynomial of both kernels' exp2 (relative error about
 * 1e-7). attn.c and decode.c split x into round(x) and f each its own way (attn.c with integer
 * lanes, decode.c with a rounding instruction) and scale this by 2^round(x).
 */
INLINE vf v_exp2_frac(vf f) {
  vf p = v_set1(1.5345811e-4f);
  p = v_fma(p, f, v_set1(1.3399931e-3f));
  p = v_fma(p, f, v_set1(9.618489e-3f));
  p = v_fma(p, f, v_set1(5.5503286e-2f));
  p = v_fma(p, f, v_set1(2.4022646e-1f));
  p = v_fma(p, f, v_set1(6.931472e-1f));
  p = v_fma(p, f, v_set1(1.0f));
  return p;
}

#endif /* RA_SIMD_H */
