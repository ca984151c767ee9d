// Elementwise and row kernels of the Llama-style decoder on the GPU (src/cuda/model-ops.ts
// launches them; src/model/layers.ts and rope.ts are the CPU definitions they match):
//   cvt_f32_bf16, cvt_bf16_f32      y = x in the other precision (bf16: round to nearest even)
//   swiglu_<in>_<out>               y = silu(g)·u, in/out f32 or bf16, fp32 math with the accurate expf
//   rmsnorm_f32_<out>               y = x / sqrt(mean(x²) + eps) · w per row; float64 sum of squares
//                                   and product as layers.ts; optional invRms [rows] (fp32)
//   add_f32_<y>                     h += y (h fp32, y fp32 or bf16)
//   rope_f32                        rotate-half RoPE in place on x [rows, heads, D] (rope.ts:
//                                   angle p·invFreq, cos/sin and products in float64, unfused)
//   embed_f32                       out[t] = table[ids[t]]; an id outside [0, vocab) writes a NaN row
//                                   and records min(t) in *bad (if given)
// Flat kernels take `n` <= 2^31 - 1 elements (the host splits larger ones) and a `vec` flag
// (every pointer 16-byte aligned, n a multiple of 4) for 4-wide accesses. Float64 scalars come
// as two int32 halves (lo, hi) so that they arrive exactly.
// Self-contained: no CUDA headers (NVRTC needs no -I) and no shared header.
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

// Two fp32 -> bf16x2 (lo in bits 0..15), round to nearest even (NaN stays NaN).
__device__ __forceinline__ u32 packBf16(float lo, float hi) {
  u32 r;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
}
__device__ __forceinline__ u16 bf16Bits(float x) { return (u16)(packBf16(x, 0.f) & 0xffff); }
__device__ __forceinline__ float bf16Float(u16 b) { return __uint_as_float((u32)b << 16); }
__device__ __forceinline__ double f64Of(int lo, int hi) { return __hiloint2double(hi, lo); }

// Storage helpers: load/store one element as float.
template <typename T> struct Io;
template <> struct Io<float> {
  static __device__ __forceinline__ float ld(const float* p, u64 i) { return p[i]; }
  static __device__ __forceinline__ void st(float* p, u64 i, float v) { p[i] = v; }
  static __device__ __forceinline__ void ld4(const float* p, u64 i, float v[4]) {
    const float4 q = *(const float4*)(p + i);
    v[0] = q.x, v[1] = q.y, v[2] = q.z, v[3] = q.w;
  }
  static __device__ __forceinline__ void st4(float* p, u64 i, const float v[4]) { *(float4*)(p + i) = make_float4(v[0], v[1], v[2], v[3]); }
};
template <> struct Io<u16> {
  static __device__ __forceinline__ float ld(const u16* p, u64 i) { return bf16Float(p[i]); }
  static __device__ __forceinline__ void st(u16* p, u64 i, float v) { p[i] = bf16Bits(v); }
  static __device__ __forceinline__ void ld4(const u16* p, u64 i, float v[4]) {
    const uint2 q = *(const uint2*)(p + i);
    v[0] = __uint_as_float(q.x << 16), v[1] = __uint_as_float(q.x & 0xffff0000u);
    v[2] = __uint_as_float(q.y << 16), v[3] = __uint_as_float(q.y & 0xffff0000u);
  }
  static __device__ __forceinline__ void st4(u16* p, u64 i, const float v[4]) {
    *(uint2*)(p + i) = make_uint2(packBf16(v[0], v[1]), packBf16(v[2], v[3]));
  }
};

// Grid-stride over the elements: body4(i) handles i..i+3 (vec), body1(i) one element.
template <typename F4, typename F1> __device__ __forceinline__ void forEach(int n, int vec, F4 body4, F1 body1) {
  const u64 stride = (u64)gridDim.x * blockDim.x, first = (u64)blockIdx.x * blockDim.x + threadIdx.x;
  if (vec) {
    for (u64 q = first; q < (u64)n / 4; q += stride) body4(q * 4);
  } else {
    for (u64 i = first; i < (u64)n; i += stride) body1(i);
  }
}

template <typename TI, typename TO> __device__ __forceinline__ void convert(const TI* x, TO* y, int n, int vec) {
  forEach(
      n, vec,
      [&](u64 i) {
        float v[4];
        Io<TI>::ld4(x, i, v);
        Io<TO>::st4(y, i, v);
      },
      [&](u64 i) { Io<TO>::st(y, i, Io<TI>::ld(x, i)); });
}
extern "C" __global__ void cvt_f32_bf16(const float* x, u16* y, int n, int vec) { convert(x, y, n, vec); }
extern "C" __global__ void cvt_bf16_f32(const u16* x, float* y, int n, int vec) { convert(x, y, n, vec); }

// silu(g)·u as layers.ts: g / (1 + exp(-g)) · u (fp32 here, expf accurate to 2 ulp).
__device__ __forceinline__ float swiglu1(float g, float u) { return g / (1.f + expf(-g)) * u; }

template <typename TI, typename TO> __device__ __forceinline__ void swiglu(const TI* g, const TI* u, TO* y, int n, int vec) {
  forEach(
      n, vec,
      [&](u64 i) {
        float a[4], b[4];
        Io<TI>::ld4(g, i, a);
        Io<TI>::ld4(u, i, b);
        for (int e = 0; e < 4; e++) a[e] = swiglu1(a[e], b[e]);
        Io<TO>::st4(y, i, a);
      },
      [&](u64 i) { Io<TO>::st(y, i, swiglu1(Io<TI>::ld(g, i), Io<TI>::ld(u, i))); });
}
extern "C" __global__ void swiglu_f32_f32(const float* g, const float* u, float* y, int n, int vec) { swiglu(g, u, y, n, vec); }
extern "C" __global__ void swiglu_f32_bf16(const float* g, const float* u, u16* y, int n, int vec) { swiglu(g, u, y, n, vec); }
extern "C" __global__ void swiglu_bf16_f32(const u16* g, const u16* u, float* y, int n, int vec) { swiglu(g, u, y, n, vec); }
extern "C" __global__ void swiglu_bf16_bf16(const u16* g, const u16* u, u16* y, int n, int vec) { swiglu(g, u, y, n, vec); }

template <typename TY> __device__ __forceinline__ void addInto(float* h, const TY* y, int n, int vec) {
  forEach(
      n, vec,
      [&](u64 i) {
        float a[4], b[4];
        Io<float>::ld4(h, i, a);
        Io<TY>::ld4(y, i, b);
        for (int e = 0; e < 4; e++) a[e] += b[e];
        Io<float>::st4(h, i, a);
      },
      [&](u64 i) { h[i] += Io<TY>::ld(y, i); });
}
extern "C" __global__ void add_f32_f32(float* h, const float* y, int n, int vec) { addInto(h, y, n, vec); }
extern "C" __global__ void add_f32_bf16(float* h, const u16* y, int n, int vec) { addInto(h, y, n, vec); }

// ---- RMSNorm: one CTA of 256 threads per row ------------------------------------------------

__device__ __forceinline__ double blockSum256(double v, double* red) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (lane == 0) red[warp] = v;
  __syncthreads();
  double t = 0.0;
  if (threadIdx.x < 32) {
    t = lane < 8 ? red[lane] : 0.0;
    for (int o = 4; o > 0; o >>= 1) t += __shfl_xor_sync(0xffffffffu, t, o);
    if (lane == 0) red[8] = t;
  }
  __syncthreads();
  return red[8];
}

template <typename TO>
__device__ __forceinline__ void rmsnorm(const float* x, const float* w, TO* y, float* invRms, int dim, double eps) {
  __shared__ double red[9];
  const u64 o = (u64)blockIdx.x * dim;
  double ss = 0.0;
  for (int i = threadIdx.x; i < dim; i += 256) {
    const double v = x[o + i];
    ss = __fma_rn(v, v, ss);  // v·v is exact in float64, so the fma rounds like the CPU's sum
  }
  ss = blockSum256(ss, red);
  const double inv = __ddiv_rn(1.0, __dsqrt_rn(__dadd_rn(__ddiv_rn(ss, (double)dim), eps)));
  if (invRms && threadIdx.x == 0) invRms[blockIdx.x] = (float)inv;
  for (int i = threadIdx.x; i < dim; i += 256) Io<TO>::st(y, o + i, __double2float_rn(__dmul_rn(__dmul_rn((double)x[o + i], inv), (double)w[i])));
}
// Grid rows, 256 threads. x [rows, dim] fp32, w [dim] fp32, y [rows, dim], invRms [rows] or null.
extern "C" __global__ void __launch_bounds__(256) rmsnorm_f32_f32(const float* x, const float* w, float* y, float* invRms, int dim, int epsLo, int epsHi) {
  rmsnorm(x, w, y, invRms, dim, f64Of(epsLo, epsHi));
}
extern "C" __global__ void __launch_bounds__(256) rmsnorm_f32_bf16(const float* x, const float* w, u16* y, float* invRms, int dim, int epsLo, int epsHi) {
  rmsnorm(x, w, y, invRms, dim, f64Of(epsLo, epsHi));
}

// ---- RoPE (rotate-half), in place -------------------------------------------------------------

// Grid rows, 128 threads. x [rows, heads, D] fp32 (D even, <= 1024), pos [rows] int32,
// invFreq [D/2] float64. With s the attention scaling and sg = -1 for the inverse (transposed)
// map, else 1: c_i = cos(p·f_i)·s, s_i = sg·sin(p·f_i)·s, and
//   x[i] <- x[i]·c_i - x[i + D/2]·s_i,   x[i + D/2] <- x[i + D/2]·c_i + x[i]·s_i
// in float64 without fused multiply-adds, rounded once to fp32 (rope.ts's applyRope).
extern "C" __global__ void __launch_bounds__(128) rope_f32(float* x, const int* pos, const double* invFreq, int heads, int D, int scaleLo, int scaleHi, int inverse) {
  __shared__ double cs[512], sn[512];
  const int half = D / 2;
  const double s = f64Of(scaleLo, scaleHi);
  const double p = (double)pos[blockIdx.x];
  for (int i = threadIdx.x; i < half; i += 128) {
    const double a = __dmul_rn(p, invFreq[i]);
    double si, co;
    sincos(a, &si, &co);
    cs[i] = __dmul_rn(co, s);
    sn[i] = __dmul_rn(inverse ? -si : si, s);
  }
  __syncthreads();
  float* row = x + (u64)blockIdx.x * heads * D;
  for (int e = threadIdx.x; e < heads * half; e += 128) {
    const int h = e / half, i = e % half;
    float* b = row + (u64)h * D;
    const double x1 = b[i], x2 = b[i + half];
    b[i] = __double2float_rn(__dsub_rn(__dmul_rn(x1, cs[i]), __dmul_rn(x2, sn[i])));
    b[i + half] = __double2float_rn(__dadd_rn(__dmul_rn(x2, cs[i]), __dmul_rn(x1, sn[i])));
  }
}

// ---- embedding gather -------------------------------------------------------------------------

// Grid n (tokens), 128 threads. table [vocab, hidden] fp32, out [n, hidden] fp32. vec: hidden % 4
// == 0 and table, out 16-byte aligned.
extern "C" __global__ void __launch_bounds__(128) embed_f32(const int* ids, const float* table, float* out, int hidden, int vocab, int* bad, int vec) {
  const int t = blockIdx.x, id = ids[t];
  float* o = out + (u64)t * hidden;
  if (id < 0 || id >= vocab) {
    if (bad && threadIdx.x == 0) atomicMin(bad, t);
    for (int i = threadIdx.x; i < hidden; i += 128) o[i] = __int_as_float(0x7fc00000);
    return;
  }
  const float* src = table + (u64)id * hidden;
  if (vec) {
    for (int i = threadIdx.x; i < hidden / 4; i += 128) ((float4*)o)[i] = ((const float4*)src)[i];
  } else {
    for (int i = threadIdx.x; i < hidden; i += 128) o[i] = src[i];
  }
}
