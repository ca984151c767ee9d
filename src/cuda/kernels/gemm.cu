// Dense matrix products for the model on the GPU:  C[M,N] = op(A)[M,K] · op(B)[K,N] (+ beta·C) (+ bias[N]
// on every row), row-major. op(A) = A, or Aᵀ when A is stored [K,M] (transA); op(B) = B, or Bᵀ when B
// is stored [N,K] (transB; y = x·Wᵀ with W [out,in] is the common case). Entry suffix _<a><b>: n = as
// stored, t = transposed (so _nt is x·Wᵀ). Families (src/cuda/gemm.ts chooses):
//
//   gemm_f32[_s]_{nn,nt,tn,tt}: fp32 in, fp32 out, fp32 FMA on the CUDA cores (exact enough for
//     tests against a CPU fp32 model). Register-tiled SIMT: a CTA of 256 threads owns a 128x128
//     tile (8x8 outputs per thread; _s: 64x64, 4x4 per thread), K in steps of 8 (_s: 16) through
//     double-buffered shared memory filled by 4-byte cp.async (zero-fill outside the matrix), so
//     any shape, stride parity and alignment works. Static shared memory.
//
//   gemm_bf16_h_{nn,nt,tn,tt} (sm_90a only): bf16 A and B, fp32 accumulation with wgmma, a
//     warp-specialised 128x256 tile (below, namespace hw). The fastest on H100/H200.
//
//   gemm_bf16_{l,m,s}_{nn,nt,tn,tt} (sm_80+): bf16 A and B, fp32 accumulation on the tensor
//     cores (mma.sync m16n8k16, ldmatrix[.trans], cp.async into an XOR-swizzled multi-stage
//     ring, one __syncthreads per 64-wide K step, fragments double-buffered in registers).
//     Tiles: l 128x256 (8 warps of 64x64, 3 stages, 144 KB), m 128x128 (4 warps of 64x64,
//     3 stages, 96 KB: two CTAs an SM), s 64x64 (4 warps of 32x32, 4 stages, 64 KB). All four
//     transposes read their operand in the stored layout: the K-contiguous operands through
//     ldmatrix, the M/N-contiguous ones through ldmatrix.trans.
//   The h, l, m, s families need 16-byte rows: every stored row length (K for A/_n and B/_t, M
//   for A/_t, N for B/_n) a multiple of 8 and A, B 16-byte aligned; the host picks
//   gemm_bf16_u_{nn,nt,tn,tt} otherwise: the s tiles with element-wise predicated loads (slow,
//   but any shape).
//
// Every bf16 family writes fp32 or bf16 (params.outBf16). Ragged M, N, K: rows and columns
// outside the matrix load as zero and are never stored; beta = 0 never reads C (it may hold NaN).
// Dynamic shared memory: SMEM_* and hw::SMEM below (src/cuda/gemm.ts repeats them).
// Self-contained (no CUDA headers, no shared header: NVRTC needs no -I, and edits elsewhere
// cannot break these kernels).
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

__device__ __forceinline__ u32 smemAddr(const void* p) { return (u32)__cvta_generic_to_shared(p); }
__device__ __forceinline__ float bf16ToF32(u16 b) { return __uint_as_float((u32)b << 16); }
// Two fp32 -> bf16x2 (lo in bits 0..15), round to nearest even.
__device__ __forceinline__ u32 packBf16(float lo, float hi) {
  u32 r;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
}
// Four 8x8 b16 matrices from shared memory; lane l gives the row address of matrix l / 8.
__device__ __forceinline__ void ldsm4(u32 r[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];" : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smemAddr(p)));
}
__device__ __forceinline__ void ldsm4T(u32 r[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];" : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smemAddr(p)));
}
// c[16x8] += a[16x16] · b[16x8] (bf16 in, fp32 accumulate).
__device__ __forceinline__ void mmaBf16(float c[4], const u32 a[4], u32 b0, u32 b1) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
               : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
// Global -> shared copies (cp.async, sm_80+); `valid` false zero-fills and reads nothing.
__device__ __forceinline__ void cpAsync16(void* s, const void* g, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(smemAddr(s)), "l"(g), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cpAsync4(void* s, const void* g, bool valid) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;" ::"r"(smemAddr(s)), "l"(g), "r"(valid ? 4 : 0));
}
__device__ __forceinline__ void cpAsyncCommit() { asm volatile("cp.async.commit_group;"); }
template <int N> __device__ __forceinline__ void cpAsyncWait() { asm volatile("cp.async.wait_group %0;" ::"n"(N)); }

struct GemmParams {
  const void* a;       // op(A) source: [M,K] or [K,M]
  const void* b;       // op(B) source: [K,N] or [N,K]
  void* c;             // [M,N] fp32, or bf16 when outBf16
  const float* bias;   // [N] fp32 or null
  int M, N, K;
  float beta;          // 0: C is write-only
  int outBf16;         // bf16 families only
  int pad_;            // 0
};

// Tile order: groups of G tile-rows walk the tile-columns together, so the CTAs resident at
// one time share their B tiles (and a few A tiles) in L2.
__device__ __forceinline__ void tileOf(int tilesM, int tilesN, int& tm, int& tn) {
  constexpr int G = 8;
  const int bid = blockIdx.x, per = G * tilesN, first = (bid / per) * G;
  const int gsz = min(tilesM - first, G), in = bid % per;
  tm = first + in % gsz;
  tn = in / gsz;
}

// Adds bias and beta·C to (v0, v1) = C[row, col..col+1] and stores what exists (bf16 when BF16).
template <bool BF16>
__device__ __forceinline__ void storePair(const GemmParams& p, bool vec, int row, int col, float v0, float v1) {
  if (row >= p.M || col >= p.N) return;
  const bool two = col + 1 < p.N;
  if (p.bias) {
    v0 += p.bias[col];
    if (two) v1 += p.bias[col + 1];
  }
  const u64 i = (u64)row * p.N + col;
  if (BF16) {
    u16* c = (u16*)p.c;
    if (p.beta != 0.f) {
      v0 += p.beta * bf16ToF32(c[i]);
      if (two) v1 += p.beta * bf16ToF32(c[i + 1]);
    }
    const u32 w = packBf16(v0, v1);
    if (two && vec) {
      *(u32*)(c + i) = w;
    } else {
      c[i] = (u16)(w & 0xffff);
      if (two) c[i + 1] = (u16)(w >> 16);
    }
  } else {
    float* c = (float*)p.c;
    if (p.beta != 0.f) {
      v0 += p.beta * c[i];
      if (two) v1 += p.beta * c[i + 1];
    }
    if (two && vec) {
      *(float2*)(c + i) = make_float2(v0, v1);
    } else {
      c[i] = v0;
      if (two) c[i + 1] = v1;
    }
  }
}

// ---- fp32 SIMT -------------------------------------------------------------------------------

namespace sg {
// n consecutive floats from shared memory as one vector load (n = 2 or 4, aligned by the layout).
template <int n> __device__ __forceinline__ void ldsVec(float* d, const float* s) {
  if (n == 4) {
    const float4 v = *(const float4*)s;
    d[0] = v.x, d[1] = v.y, d[2] = v.z, d[3] = v.w;
  } else {
    const float2 v = *(const float2*)s;
    d[0] = v.x, d[1] = v.y;
  }
}

template <bool TA, bool TB, int BM, int BN, int TM, int TN, int BK>
__device__ __forceinline__ void run(const GemmParams& p) {
  constexpr int TX = BN / TN, TY = BM / TM, THREADS = TX * TY;
  constexpr int LDA = BM + 4, LDB = BN + 4;  // +4 floats: the transposing stores hit 32 banks
  constexpr int EA = BM * BK / THREADS, EB = BN * BK / THREADS;
  constexpr int HM = TM / 2, HN = TN / 2;  // each thread: two HM-row and two HN-column strips
  static_assert(THREADS == 256 && EA * THREADS == BM * BK && EB * THREADS == BN * BK, "tile");
  __shared__ __align__(16) float As[2][BK][LDA];
  __shared__ __align__(16) float Bs[2][BK][LDB];

  const int M = p.M, N = p.N, K = p.K;
  int tm, tn;
  tileOf((M + BM - 1) / BM, (N + BN - 1) / BN, tm, tn);
  const int m0 = tm * BM, n0 = tn * BN;
  const int tid = threadIdx.x, tx = tid % TX, ty = tid / TX;
  const float* A = (const float*)p.a;
  const float* B = (const float*)p.b;

  // A tile as stored has an inner (contiguous) extent X and an outer one; thread t takes inner
  // index t % X and outer indices t / X + j·(THREADS / X), so a warp reads consecutive addresses.
  constexpr int XA = TA ? BM : BK, XB = TB ? BK : BN, SA = THREADS / XA, SB = THREADS / XB;
  static_assert(THREADS % XA == 0 && THREADS % XB == 0, "layout");
  const int ia = tid % XA, oa = tid / XA, ib = tid % XB, ob = tid / XB;
  // Global -> shared with 4-byte cp.async (zero-fill outside the matrix), no register staging;
  // shared tiles are [k][m] and [k][n] whatever the stored layout.
  auto load = [&](int buf, int k0) {
    if (TA) {  // A [K][M]: inner m, outer k
      const int gm = m0 + ia;
#pragma unroll
      for (int j = 0; j < EA; j++) {
        const int gk = k0 + oa + j * SA;
        const bool ok = gm < M && gk < K;
        cpAsync4(&As[buf][oa + j * SA][ia], ok ? A + (u64)gk * M + gm : A, ok);
      }
    } else {  // A [M][K]: inner k, outer m
      const int gk = k0 + ia;
#pragma unroll
      for (int j = 0; j < EA; j++) {
        const int gm = m0 + oa + j * SA;
        const bool ok = gm < M && gk < K;
        cpAsync4(&As[buf][ia][oa + j * SA], ok ? A + (u64)gm * K + gk : A, ok);
      }
    }
    if (TB) {  // B [N][K]: inner k, outer n
      const int gk = k0 + ib;
#pragma unroll
      for (int j = 0; j < EB; j++) {
        const int gn = n0 + ob + j * SB;
        const bool ok = gn < N && gk < K;
        cpAsync4(&Bs[buf][ib][ob + j * SB], ok ? B + (u64)gn * K + gk : B, ok);
      }
    } else {  // B [K][N]: inner n, outer k
      const int gn = n0 + ib;
#pragma unroll
      for (int j = 0; j < EB; j++) {
        const int gk = k0 + ob + j * SB;
        const bool ok = gn < N && gk < K;
        cpAsync4(&Bs[buf][ob + j * SB][ib], ok ? B + (u64)gk * N + gn : B, ok);
      }
    }
    cpAsyncCommit();
  };

  float acc[TM][TN];
#pragma unroll
  for (int i = 0; i < TM; i++)
#pragma unroll
    for (int j = 0; j < TN; j++) acc[i][j] = 0.f;

  const int nk = (K + BK - 1) / BK;
  load(0, 0);
  for (int kt = 0; kt < nk; kt++) {
    const int buf = kt & 1;
    if (kt + 1 < nk) {
      load(buf ^ 1, (kt + 1) * BK);  // buf ^ 1 was last read before the barrier that ended kt - 1
      cpAsyncWait<1>();
    } else {
      cpAsyncWait<0>();
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < BK; k++) {
      float a[TM], b[TN];
#pragma unroll
      for (int h = 0; h < 2; h++) {
        ldsVec<HM>(a + h * HM, &As[buf][k][h * (BM / 2) + ty * HM]);
        ldsVec<HN>(b + h * HN, &Bs[buf][k][h * (BN / 2) + tx * HN]);
      }
#pragma unroll
      for (int i = 0; i < TM; i++)
#pragma unroll
        for (int j = 0; j < TN; j++) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
    }
    __syncthreads();
  }

  const bool vec = (N & 1) == 0 && ((u64)p.c & 7) == 0;
#pragma unroll
  for (int i = 0; i < TM; i++) {
    const int row = m0 + (i / HM) * (BM / 2) + ty * HM + i % HM;
#pragma unroll
    for (int j = 0; j < TN; j += 2) {
      const int col = n0 + (j / HN) * (BN / 2) + tx * HN + j % HN;
      storePair<false>(p, vec, row, col, acc[i][j], acc[i][j + 1]);
    }
  }
}
}  // namespace sg

#define SG_ENTRY(name, ta, tb, BM, BN, TM, TN, BK) \
  extern "C" __global__ void __launch_bounds__(256, 2) name(const GemmParams p) { sg::run<ta, tb, BM, BN, TM, TN, BK>(p); }
SG_ENTRY(gemm_f32_nn, false, false, 128, 128, 8, 8, 8)
SG_ENTRY(gemm_f32_nt, false, true, 128, 128, 8, 8, 8)
SG_ENTRY(gemm_f32_tn, true, false, 128, 128, 8, 8, 8)
SG_ENTRY(gemm_f32_tt, true, true, 128, 128, 8, 8, 8)
SG_ENTRY(gemm_f32_s_nn, false, false, 64, 64, 4, 4, 16)
SG_ENTRY(gemm_f32_s_nt, false, true, 64, 64, 4, 4, 16)
SG_ENTRY(gemm_f32_s_tn, true, false, 64, 64, 4, 4, 16)
SG_ENTRY(gemm_f32_s_tt, true, true, 64, 64, 4, 4, 16)

// ---- bf16 tensor cores (mma.sync) --------------------------------------------------------------

namespace hg {
constexpr int BK = 64;

// Shared-memory tiles are rows of CPR 16-byte chunks; chunk c of row r lives at c ^ (r & 7), so
// eight rows read at one logical chunk (ldmatrix) or one row written whole (cp.async) touch
// all 32 banks. CPR is a multiple of 8.
template <int CPR> __device__ __forceinline__ int swz(int row, int chunk) { return row * (CPR * 8) + ((chunk ^ (row & 7)) << 3); }

// Copies an R x (8·CPR) tile of a row-major bf16 matrix (ld elements a row) whose element
// (0, 0) is at `g` into swizzled shared memory; tile rows >= rowAvail or columns >= colAvail
// read as zero. ALIGNED: 16-byte cp.async (the host guarantees 16-byte rows and base), chunks
// wholly in or out since colAvail is then a multiple of 8. Otherwise: predicated 2-byte loads.
template <int R, int CPR, int THREADS, bool ALIGNED>
__device__ __forceinline__ void loadTile(u16* s, const u16* g, const u16* base, u64 ld, int rowAvail, int colAvail) {
  constexpr int PER = R * CPR / THREADS, RSTEP = THREADS / CPR;
  static_assert(PER * THREADS == R * CPR && RSTEP * CPR == THREADS, "tile / threads");
  const int r0 = threadIdx.x / CPR, c = threadIdx.x % CPR, cc = c * 8;
  const u16* src = g + (u64)r0 * ld + cc;
#pragma unroll
  for (int i = 0; i < PER; i++) {
    const int r = r0 + i * RSTEP;
    u16* dst = s + swz<CPR>(r, c);
    const u16* q = src + (u64)(i * RSTEP) * ld;
    if (ALIGNED) {
      const bool ok = r < rowAvail && cc < colAvail;
      cpAsync16(dst, ok ? q : base, ok);
    } else {
      u32 w[4];
#pragma unroll
      for (int e = 0; e < 4; e++) {
        u32 lo = 0, hi = 0;
        if (r < rowAvail) {
          if (cc + 2 * e < colAvail) lo = q[2 * e];
          if (cc + 2 * e + 1 < colAvail) hi = q[2 * e + 1];
        }
        w[e] = lo | (hi << 16);
      }
      *(uint4*)dst = make_uint4(w[0], w[1], w[2], w[3]);
    }
  }
}

// The warp's accumulators (m16n8 fragments: rows lane/4 and +8, columns 2·(lane%4) and +1).
template <bool BF16, int MI, int NI>
__device__ __forceinline__ void storeAcc(const GemmParams& p, bool vec, int row0, int col0, const float (&acc)[MI][NI][4]) {
#pragma unroll
  for (int mi = 0; mi < MI; mi++)
#pragma unroll
    for (int ni = 0; ni < NI; ni++)
#pragma unroll
      for (int h = 0; h < 2; h++) storePair<BF16>(p, vec, row0 + mi * 16 + h * 8, col0 + ni * 8, acc[mi][ni][2 * h], acc[mi][ni][2 * h + 1]);
}

template <int BM, int BN, int STAGES> struct Smem {
  static constexpr int A = BM * BK, B = BN * BK;  // elements per stage
  static constexpr int BYTES = STAGES * (A + B) * 2;
};

template <bool TA, bool TB, int BM, int BN, int WM, int WN, int STAGES, bool ALIGNED>
__device__ __forceinline__ void run(const GemmParams& p) {
  constexpr int WARPS_N = BN / WN, THREADS = (BM / WM) * WARPS_N * 32;
  constexpr int MI = WM / 16, NI = WN / 8;
  constexpr int CA = TA ? BM / 8 : BK / 8;  // chunks per smem row of A: [BK][BM] or [BM][BK]
  constexpr int CB = TB ? BK / 8 : BN / 8;  // B: [BN][BK] or [BK][BN]
  using S = Smem<BM, BN, STAGES>;
  extern __shared__ __align__(128) unsigned char smem[];
  u16* sA = (u16*)smem;
  u16* sB = sA + STAGES * S::A;

  const int M = p.M, N = p.N, K = p.K;
  int tm, tn;
  tileOf((M + BM - 1) / BM, (N + BN - 1) / BN, tm, tn);
  const int m0 = tm * BM, n0 = tn * BN;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int wm = (warp / WARPS_N) * WM, wn = (warp % WARPS_N) * WN;
  const u16* A = (const u16*)p.a;
  const u16* B = (const u16*)p.b;

  auto load = [&](int stage, int kt) {
    const int k0 = kt * BK;
    u16* a = sA + stage * S::A;
    u16* b = sB + stage * S::B;
    if (TA) loadTile<BK, CA, THREADS, ALIGNED>(a, A + (u64)k0 * M + m0, A, M, K - k0, M - m0);
    else loadTile<BM, CA, THREADS, ALIGNED>(a, A + (u64)m0 * K + k0, A, K, M - m0, K - k0);
    if (TB) loadTile<BN, CB, THREADS, ALIGNED>(b, B + (u64)n0 * K + k0, B, K, N - n0, K - k0);
    else loadTile<BK, CB, THREADS, ALIGNED>(b, B + (u64)k0 * N + n0, B, N, K - k0, N - n0);
  };

  // Fragments of one 16-wide K slice (see the m16n8k16 operand layouts): lane l addresses row
  // l & 7 of 8x8 matrix l >> 3.
  u32 af[2][MI][4], bfr[2][NI][2];
  const int mat = lane >> 3, r8 = lane & 7;
  auto frags = [&](int f, const u16* a, const u16* b, int kk) {
#pragma unroll
    for (int mi = 0; mi < MI; mi++) {
      if (TA) ldsm4T(af[f][mi], a + swz<CA>(kk * 16 + (mat >> 1) * 8 + r8, (wm + mi * 16 + (mat & 1) * 8) >> 3));
      else ldsm4(af[f][mi], a + swz<CA>(wm + mi * 16 + (lane & 15), kk * 2 + (lane >> 4)));
    }
#pragma unroll
    for (int nj = 0; nj < NI / 2; nj++) {
      u32 r[4];
      if (TB) ldsm4(r, b + swz<CB>(wn + nj * 16 + (mat >> 1) * 8 + r8, kk * 2 + (mat & 1)));
      else ldsm4T(r, b + swz<CB>(kk * 16 + (mat & 1) * 8 + r8, (wn + nj * 16 + (mat >> 1) * 8) >> 3));
      bfr[f][2 * nj][0] = r[0];
      bfr[f][2 * nj][1] = r[1];
      bfr[f][2 * nj + 1][0] = r[2];
      bfr[f][2 * nj + 1][1] = r[3];
    }
  };

  float acc[MI][NI][4];
#pragma unroll
  for (int i = 0; i < MI; i++)
#pragma unroll
    for (int j = 0; j < NI; j++) acc[i][j][0] = acc[i][j][1] = acc[i][j][2] = acc[i][j][3] = 0.f;

  const int nk = (K + BK - 1) / BK;
#pragma unroll
  for (int s = 0; s < STAGES - 1; s++) {
    if (s < nk) load(s, s);
    cpAsyncCommit();
  }
  for (int kt = 0; kt < nk; kt++) {
    cpAsyncWait<STAGES - 2>();
    __syncthreads();  // stage kt landed for everyone; stage kt-1 is free for the next load
    if (kt + STAGES - 1 < nk) load((kt + STAGES - 1) % STAGES, kt + STAGES - 1);
    cpAsyncCommit();
    const int st = kt % STAGES;
    const u16* a = sA + st * S::A;
    const u16* b = sB + st * S::B;
    frags(0, a, b, 0);
#pragma unroll
    for (int kk = 0; kk < BK / 16; kk++) {
      if (kk + 1 < BK / 16) frags((kk + 1) & 1, a, b, kk + 1);
#pragma unroll
      for (int mi = 0; mi < MI; mi++)
#pragma unroll
        for (int ni = 0; ni < NI; ni++) {
          const int n = (mi & 1) ? NI - 1 - ni : ni;  // serpentine: reuse the last B fragment
          mmaBf16(acc[mi][n], af[kk & 1][mi], bfr[kk & 1][n][0], bfr[kk & 1][n][1]);
        }
    }
  }
  cpAsyncWait<0>();

  const bool vec = (N & 1) == 0 && ((u64)p.c & (p.outBf16 ? 3 : 7)) == 0;
  const int row0 = m0 + wm + (lane >> 2), col0 = n0 + wn + (lane & 3) * 2;
  if (p.outBf16) storeAcc<true, MI, NI>(p, vec, row0, col0, acc);
  else storeAcc<false, MI, NI>(p, vec, row0, col0, acc);
}
}  // namespace hg

// Shared memory (bytes) of each bf16 family: STAGES * (BM + BN) * 64 * 2.
#define SMEM_L (3 * (128 + 256) * 64 * 2)
#define SMEM_M (3 * (128 + 128) * 64 * 2)
#define SMEM_S (4 * (64 + 64) * 64 * 2)

#define HG_ENTRY(name, ta, tb, BM, BN, WM, WN, ST, AL)                                          \
  extern "C" __global__ void __launch_bounds__((BM / WM) * (BN / WN) * 32, 1) name(const GemmParams p) { \
    hg::run<ta, tb, BM, BN, WM, WN, ST, AL>(p);                                                 \
  }
// One line per entry: the host compiles a kernel alone by blanking the other entry lines
// (src/cuda/compile.ts entrySource).
HG_ENTRY(gemm_bf16_l_nn, false, false, 128, 256, 64, 64, 3, true)
HG_ENTRY(gemm_bf16_l_nt, false, true, 128, 256, 64, 64, 3, true)
HG_ENTRY(gemm_bf16_l_tn, true, false, 128, 256, 64, 64, 3, true)
HG_ENTRY(gemm_bf16_l_tt, true, true, 128, 256, 64, 64, 3, true)
HG_ENTRY(gemm_bf16_m_nn, false, false, 128, 128, 64, 64, 3, true)
HG_ENTRY(gemm_bf16_m_nt, false, true, 128, 128, 64, 64, 3, true)
HG_ENTRY(gemm_bf16_m_tn, true, false, 128, 128, 64, 64, 3, true)
HG_ENTRY(gemm_bf16_m_tt, true, true, 128, 128, 64, 64, 3, true)
HG_ENTRY(gemm_bf16_s_nn, false, false, 64, 64, 32, 32, 4, true)
HG_ENTRY(gemm_bf16_s_nt, false, true, 64, 64, 32, 32, 4, true)
HG_ENTRY(gemm_bf16_s_tn, true, false, 64, 64, 32, 32, 4, true)
HG_ENTRY(gemm_bf16_s_tt, true, true, 64, 64, 32, 32, 4, true)
HG_ENTRY(gemm_bf16_u_nn, false, false, 64, 64, 32, 32, 4, false)
HG_ENTRY(gemm_bf16_u_nt, false, true, 64, 64, 32, 32, 4, false)
HG_ENTRY(gemm_bf16_u_tn, true, false, 64, 64, 32, 32, 4, false)
HG_ENTRY(gemm_bf16_u_tt, true, true, 64, 64, 32, 32, 4, false)

// ---- bf16 on Hopper (sm_90a): wgmma, warp-specialised ---------------------------------------
//
// gemm_bf16_h_{nn,nt,tn,tt}: a CTA of 3 warpgroups owns a 128x256 tile of C. Warpgroup 0 is the
// producer: it copies 64-wide K slices of A and B into a 4-stage ring of shared memory with
// 16-byte cp.async (zero-filling outside the matrix) laid out in the 128-byte-swizzled
// canonical layouts that wgmma reads (K-major for A/_n and B/_t, MN-major in 64-element panels
// for A/_t and B/_n), and signals each stage's `full` mbarrier with cp.async.mbarrier.arrive.
// Warpgroups 1 and 2 each own 64 rows: per stage they wait on `full`, issue four
// wgmma.m64n256k16 (fp32 accumulators, 128 registers a thread), keep one stage of wgmma in
// flight, and release the previous stage through its `empty` mbarrier. No setmaxnreg: the
// consumers fit in the 168 registers a thread that 384 threads leave. Needs 16-byte rows as
// the _l/_m/_s families.
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#include "hopper.cuh"
namespace hw {
constexpr int BM = 128, BN = 256, BK = 64, STAGES = 4;
constexpr int A_BYTES = BM * BK * 2, B_BYTES = BN * BK * 2, STAGE_BYTES = A_BYTES + B_BYTES;
constexpr int SMEM = STAGES * STAGE_BYTES + 1024 /* alignment slack */ + 2 * STAGES * 8;  // 197696: src/cuda/gemm.ts
static_assert(SMEM <= 227 * 1024, "shared memory");

using namespace hop;  // mbarriers, descriptors, wgmma (hopper.cuh)

// Producer: one stage. K-major tile (rows x 64 k): row r, chunk c at r*128 + ((c ^ r%8) * 16).
// MN-major tile (64 k x cols, cols/64 panels of 8 KB): row k, chunk c at (c/8)*8192 + k*128 +
// (((c%8) ^ k%8) * 16). `g` is element (row 0, col 0) of the tile in a row-major matrix of `ld`.
template <int ROWS, int CPR, bool MN>
__device__ __forceinline__ void loadStage(u32 s, const u16* g, const u16* base, u64 ld, int rowAvail, int colAvail, int t) {
  constexpr int PER = ROWS * CPR / 128;
#pragma unroll 4
  for (int i = 0; i < PER; i++) {
    const int idx = t + i * 128, r = idx / CPR, c = idx % CPR;
    const bool ok = r < rowAvail && c * 8 < colAvail;
    const u32 off = MN ? (c >> 3) * 8192 + r * 128 + (((c & 7) ^ (r & 7)) << 4) : r * 128 + ((c ^ (r & 7)) << 4);
    const u16* src = ok ? g + (u64)r * ld + c * 8 : base;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(s + off), "l"(src), "r"(ok ? 16 : 0));
  }
}

template <bool TA, bool TB>
__device__ __forceinline__ void run(const GemmParams& p) {
  extern __shared__ __align__(1024) unsigned char smemRaw[];
  const u32 raw = smemAddr(smemRaw);
  const u32 sbase = (raw + 1023) & ~1023u;  // swizzle atoms must be 1024-byte aligned
  const u32 bars = sbase + STAGES * STAGE_BYTES;
  auto full = [&](int s) { return bars + s * 8; };
  auto empty = [&](int s) { return bars + (STAGES + s) * 8; };
  auto stA = [&](int s) { return sbase + s * STAGE_BYTES; };
  auto stB = [&](int s) { return sbase + s * STAGE_BYTES + A_BYTES; };

  const int M = p.M, N = p.N, K = p.K;
  int tm, tn;
  tileOf((M + BM - 1) / BM, (N + BN - 1) / BN, tm, tn);
  const int m0 = tm * BM, n0 = tn * BN;
  const int wgi = threadIdx.x >> 7, t = threadIdx.x & 127;
  const int nk = (K + BK - 1) / BK;
  if (threadIdx.x == 0) {
    for (int s = 0; s < STAGES; s++) {
      mbarInit(full(s), 128);  // one cp.async arrival per producer thread
      mbarInit(empty(s), 256); // every consumer thread
    }
  }
  __syncthreads();

  if (wgi == 0) {
    const u16* A = (const u16*)p.a;
    const u16* B = (const u16*)p.b;
    for (int kt = 0; kt < nk; kt++) {
      const int s = kt % STAGES, k0 = kt * BK;
      mbarWait(empty(s), ((kt / STAGES) & 1) ^ 1);  // the first pass finds every stage free
      if (TA) loadStage<BK, BM / 8, true>(stA(s), A + (u64)k0 * M + m0, A, M, K - k0, M - m0, t);
      else loadStage<BM, BK / 8, false>(stA(s), A + (u64)m0 * K + k0, A, K, M - m0, K - k0, t);
      if (TB) loadStage<BN, BK / 8, false>(stB(s), B + (u64)n0 * K + k0, B, K, N - n0, K - k0, t);
      else loadStage<BK, BN / 8, true>(stB(s), B + (u64)k0 * N + n0, B, N, K - k0, N - n0, t);
      cpAsyncArrive(full(s));
    }
    asm volatile("cp.async.wait_all;" ::: "memory");
    return;
  }

  const int c = wgi - 1;  // this warpgroup's 64 rows of the tile
  float d[128];
#pragma unroll
  for (int i = 0; i < 128; i++) d[i] = 0.f;
  // Per k16 step j: K-major operands advance 32 bytes inside the swizzled row; MN-major ones 16
  // rows (2048 bytes), their 64-element panels LBO = 8192 bytes apart, 8-row groups SBO = 1024.
  for (int kt = 0; kt < nk; kt++) {
    const int s = kt % STAGES;
    mbarWait(full(s), (kt / STAGES) & 1);
    fenceAsyncShared();
    wgmmaFence();
#pragma unroll
    for (int j = 0; j < BK / 16; j++) {
      const u64 da = TA ? desc(stA(s) + c * 8192 + j * 2048, 8192, 1024) : desc(stA(s) + c * 64 * 128 + j * 32, 16, 1024);
      const u64 db = TB ? desc(stB(s) + j * 32, 16, 1024) : desc(stB(s) + j * 2048, 8192, 1024);
      ssBf16N256<TA ? 1 : 0, TB ? 0 : 1>(d, da, db);
    }
    wgmmaCommit();
    wgmmaWait<1>();  // the previous stage's products are done: release it
    if (kt > 0) mbarArrive(empty((kt - 1) % STAGES));
  }
  wgmmaWait<0>();

  // Accumulator layout (m64nN): warp w of the group holds rows 16w + lane/4 (+8); register
  // 4q + e holds column 8q + 2·(lane%4) + (e & 1), row + 8·(e >> 1).
  const int warp = t >> 5, lane = t & 31;
  const int row0 = m0 + c * 64 + warp * 16 + (lane >> 2), col0 = n0 + (lane & 3) * 2;
  const bool vec = (N & 1) == 0 && ((u64)p.c & (p.outBf16 ? 3 : 7)) == 0;
  if (p.outBf16) {
#pragma unroll
    for (int q = 0; q < 32; q++)
#pragma unroll
      for (int h = 0; h < 2; h++) storePair<true>(p, vec, row0 + h * 8, col0 + q * 8, d[4 * q + 2 * h], d[4 * q + 2 * h + 1]);
  } else {
#pragma unroll
    for (int q = 0; q < 32; q++)
#pragma unroll
      for (int h = 0; h < 2; h++) storePair<false>(p, vec, row0 + h * 8, col0 + q * 8, d[4 * q + 2 * h], d[4 * q + 2 * h + 1]);
  }
}
}  // namespace hw

#define HW_ENTRY(name, ta, tb) \
  extern "C" __global__ void __launch_bounds__(384, 1) name(const GemmParams p) { hw::run<ta, tb>(p); }
HW_ENTRY(gemm_bf16_h_nn, false, false)
HW_ENTRY(gemm_bf16_h_nt, false, true)
HW_ENTRY(gemm_bf16_h_tn, true, false)
HW_ENTRY(gemm_bf16_h_tt, true, true)
#endif  // sm_90a
