// Blockwise attention forward: queries of one shard against one KV block, merged into the
// running fp32 (O, LSE). Two paths:
//   attn_fwd_mma_{bf16,f16}_d{64,128}: FA2-style on mma.sync m16n8k16 (ldmatrix, cp.async
//     double-buffered K/V); a CTA of 4 warps owns 64 query rows of one head, each warp 16 rows,
//     so softmax statistics never leave a warp. Grid (ceil(Sq/64), H), 128 threads.
//   attn_fwd_generic_{f32,bf16,f16}: one warp per (query row, head), lanes split D (<= 256);
//     exact expf. Grid (ceil(Sq/4), H), 128 threads. The fp32 path and any other head dim.
// Both classify 64-key tiles on global positions: empty tiles are skipped, full tiles run
// without mask arithmetic. A row that sees no key keeps its (o, lse) untouched. Every forward
// reads a row's old o only where its old lse is finite, so a forward starts from lse = -inf
// alone and o may hold anything; attn_fwd_finish then zeroes the o of the rows whose lse is still
// -inf (a 4-byte read a row, instead of writing all of o before the first block).
#include "common.cuh"

// o[r, :] = 0 where lse[r] = -inf (no key seen), for rows r < rows; other rows untouched. A thread
// reads one row's lse; the warp then zeroes its empty rows one after another, all 32 lanes on each
// row (coalesced: one thread a row writing its own 512 bytes took 0.8 ms for 16k x 32 rows of 128
// on an H100, session 18). Grid ceil(rows/256), 256 threads.
extern "C" __global__ void attn_fwd_finish(float* o, const float* lse, int rows, int D) {
  const int r = blockIdx.x * blockDim.x + threadIdx.x, lane = threadIdx.x & 31;
  unsigned empty = __ballot_sync(0xffffffffu, r < rows && lse[r] == NEG_INF);
  const bool vec = (D & 3) == 0 && (reinterpret_cast<unsigned long long>(o) & 15) == 0;  // 16-byte rows
  while (empty) {
    float* row = o + (long long)(r - lane + __ffs(empty) - 1) * D;
    empty &= empty - 1;
    if (vec) {
      for (int d = 4 * lane; d < D; d += 128) *(float4*)(row + d) = make_float4(0.f, 0.f, 0.f, 0.f);
    } else {
      for (int d = lane; d < D; d += 32) row[d] = 0.f;
    }
  }
}

// Boxes of tiles of `tile` rows: out[t] = {min pos, max pos, min seg, max seg} over rows
// [t*tile, min(n, (t+1)*tile)). Grid ceil(ceil(n/tile)/128), 128 threads.
extern "C" __global__ void attn_tile_ranges(const int* pos, const int* seg, int n, int tile, int4* out) {
  const int t = blockIdx.x * blockDim.x + threadIdx.x;
  const int tiles = (n + tile - 1) / tile;
  if (t >= tiles) return;
  int lo = 0x7fffffff, hi = -0x7fffffff - 1, sLo = 0x7fffffff, sHi = -0x7fffffff - 1;
  const int end = min(n, (t + 1) * tile);
  for (int i = t * tile; i < end; i++) {
    lo = min(lo, pos[i]);
    hi = max(hi, pos[i]);
    if (seg) {
      sLo = min(sLo, seg[i]);
      sHi = max(sHi, seg[i]);
    }
  }
  out[t] = make_int4(lo, hi, sLo, sHi);
}

// For each query tile, the key tiles it sees anything of lie in [lo, hi): out[qt] = {lo, hi}, or
// {nkt, nkt} when it sees none (the Hopper forward's CTA then returns at once). lo is itself a
// tile the query tile sees.
// Each CTA of the forward used to find these itself, one box read from global memory per key
// tile, before its first tile and after its last: ~45 us a CTA for a query tile that sees nothing
// of a 32k block (kernels/NOTES.md run 24). Grid nqt CTAs of 128 threads, the key tiles shared out.
// out[nqt] (room for it in the host's workspace) is zeroed: the item counter of attn_fwd_h.cu's
// persistent ht.
extern "C" __global__ void __launch_bounds__(128) attn_tile_spans(const int4* qTiles, const int4* kTiles, int nkt, int causal, int window, int sinks, int hasSeg, int2* out) {
  __shared__ int sLo, sHi;
  if (threadIdx.x == 0) {
    sLo = nkt;
    sHi = -1;
  }
  __syncthreads();
  const Mask m = {causal, window, window > 0 ? sinks : 0, hasSeg};
  const int4 q = qTiles[blockIdx.x];
  int lo = nkt, hi = -1;
  for (int t = threadIdx.x; t < nkt; t += blockDim.x) {
    if (classifyTile(m, q, kTiles[t]) != TILE_EMPTY) {
      lo = min(lo, t);
      hi = max(hi, t);
    }
  }
  if (hi >= 0) {
    atomicMin(&sLo, lo);
    atomicMax(&sHi, hi);
  }
  __syncthreads();
  if (threadIdx.x == 0) out[blockIdx.x] = sHi >= 0 ? make_int2(sLo, sHi + 1) : make_int2(nkt, nkt);
  if (blockIdx.x == 0 && threadIdx.x == 0) out[gridDim.x] = make_int2(0, 0);  // ht's item counter (attn_fwd_h.cu)
}

// ---- tensor-core path ----------------------------------------------------------------------

namespace fwd {
constexpr int BQ = 64;  // query rows per CTA (16 per warp)
constexpr int BK = 64;  // keys per tile
constexpr int THREADS = 128;

template <int D> struct Smem {
  static constexpr int LD = D + 8;  // row stride in elements: +16 B keeps ldmatrix conflict-free
  static constexpr int BYTES = (BQ * LD + 4 * BK * LD) * 2 + 4 * BK * 4;
};

template <typename T, int D>
__device__ __forceinline__ void loadKV(const FwdParams& p, u16* sK, u16* sV, int* sKPos, int* sKSeg, int t, int kh) {
  constexpr int LD = Smem<D>::LD, CH = D / 8;  // 16-byte chunks per row
  const T* k = (const T*)p.k;
  const T* v = (const T*)p.v;
  for (int c = threadIdx.x; c < BK * CH; c += THREADS) {
    const int r = c / CH, cc = (c % CH) * 8, j = t * BK + r;
    const bool ok = j < p.Sk;
    const u64 off = ((u64)(ok ? j : 0) * p.Hk + kh) * D + cc;
    cpAsync16(sK + r * LD + cc, k + off, ok);
    cpAsync16(sV + r * LD + cc, v + off, ok);
  }
  if (threadIdx.x < BK) {
    const int j = t * BK + threadIdx.x;
    sKPos[threadIdx.x] = j < p.Sk ? p.kPos[j] : 0;
    sKSeg[threadIdx.x] = (j < p.Sk && p.kSeg) ? p.kSeg[j] : 0;
  }
}

template <typename T, int D>
__device__ __forceinline__ void run(const FwdParams& p) {
  constexpr int LD = Smem<D>::LD, NT = BK / 8, ND = D / 8;
  extern __shared__ __align__(16) unsigned char smem[];
  u16* sQ = (u16*)smem;           // [BQ][LD]
  u16* sK = sQ + BQ * LD;         // [2][BK][LD]
  u16* sV = sK + 2 * BK * LD;     // [2][BK][LD]
  int* sKPos = (int*)(sV + 2 * BK * LD);  // [2][BK]
  int* sKSeg = sKPos + 2 * BK;            // [2][BK]

  const Mask m = maskOf(p);
  const int2 lt = launchTile(p.headGroup);
  // the heavier end's query tiles first (common.cuh): the last under a causal mask
  const int qt = lastQueriesHeavier(m, p.qSpans, gridDim.x) ? gridDim.x - 1 - lt.x : lt.x, h = lt.y, kh = h / (p.H / p.Hk);
  const int q0 = qt * BQ, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int nkt = (p.Sk + BK - 1) / BK;
  const int4 qBox = p.qTiles[qt];
  // A ragged last tile is never 'full': its missing keys must read as -inf.
  auto tileClass = [&](int t) {
    int c = classifyTile(m, qBox, p.kTiles[t]);
    return (c == TILE_FULL && (t + 1) * BK > p.Sk) ? TILE_PARTIAL : c;
  };
  // Key tiles outside this query tile's span (attn_tile_spans, when the host sends spans) are
  // empty: the scans start at its first and stop at its end instead of reading every box.
  const int2 span = p.qSpans ? p.qSpans[qt] : make_int2(0, nkt);
  const int kEnd = span.y;
  int t = span.x;
  while (t < kEnd && tileClass(t) == TILE_EMPTY) t++;
  if (t >= kEnd) return;  // this query tile sees nothing in this block

  const T* q = (const T*)p.q;
  for (int c = threadIdx.x; c < BQ * (D / 8); c += THREADS) {
    const int r = c / (D / 8), cc = (c % (D / 8)) * 8, i = q0 + r;
    const bool ok = i < p.Sq;
    cpAsync16(sQ + r * LD + cc, q + ((u64)(ok ? i : 0) * p.H + h) * D + cc, ok);
  }
  loadKV<T, D>(p, sK, sV, sKPos, sKSeg, t, kh);
  cpAsyncCommit();

  // This thread's two rows (of the warp's 16): r = lane/4 and lane/4 + 8.
  int qPos[2], qSeg[2];
  for (int r = 0; r < 2; r++) {
    const int i = q0 + warp * 16 + (lane >> 2) + 8 * r;
    qPos[r] = i < p.Sq ? p.qPos[i] : 0;
    qSeg[r] = (i < p.Sq && m.hasSeg) ? p.qSeg[i] : 0;
  }
  const float scaleLog2 = p.scale * LOG2E;
  u32 qf[D / 16][4];
  float acc[ND][4];
  for (int n = 0; n < ND; n++) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.f;
  float rowMax[2] = {NEG_INF, NEG_INF}, rowSum[2] = {0.f, 0.f};  // max in log2 units

  int buf = 0;
  bool first = true;
  while (t < kEnd) {
    const int cls = tileClass(t);
    int next = t + 1;
    while (next < kEnd && tileClass(next) == TILE_EMPTY) next++;
    if (next < kEnd) loadKV<T, D>(p, sK + (buf ^ 1) * BK * LD, sV + (buf ^ 1) * BK * LD, sKPos + (buf ^ 1) * BK, sKSeg + (buf ^ 1) * BK, next, kh);
    cpAsyncCommit();
    cpAsyncWait<1>();
    __syncthreads();
    if (first) {
      for (int kk = 0; kk < D / 16; kk++) ldsm4(qf[kk], sQ + (warp * 16 + (lane & 15)) * LD + kk * 16 + (lane >> 4) * 8);
      first = false;
    }
    const u16* Kb = sK + buf * BK * LD;
    const u16* Vb = sV + buf * BK * LD;

    // S = Q K^T (16 x 64 per warp), in log2 units after scaling.
    float s[NT][4];
    for (int n = 0; n < NT; n++) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++) {
#pragma unroll
      for (int nb = 0; nb < BK / 16; nb++) {
        u32 b[4];
        ldsm4(b, Kb + (nb * 16 + (lane & 7) + ((lane >> 4) << 3)) * LD + kk * 16 + ((lane >> 3) & 1) * 8);
        mma16816<T>(s[2 * nb], qf[kk], b[0], b[1]);
        mma16816<T>(s[2 * nb + 1], qf[kk], b[2], b[3]);
      }
    }
#pragma unroll
    for (int n = 0; n < NT; n++)
#pragma unroll
      for (int e = 0; e < 4; e++) s[n][e] *= scaleLog2;
    if (cls == TILE_PARTIAL) {
      const int* kp = sKPos + buf * BK;
      const int* ks = sKSeg + buf * BK;
#pragma unroll
      for (int n = 0; n < NT; n++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
          const int col = n * 8 + 2 * (lane & 3) + (e & 1), r = e >> 1;
          if (t * BK + col >= p.Sk || !visible(m, qPos[r], kp[col], qSeg[r], ks[col])) s[n][e] = NEG_INF;
        }
    }
    // Online softmax: rows are shared by the 4 lanes of a quad.
#pragma unroll
    for (int r = 0; r < 2; r++) {
      float mx = NEG_INF;
      for (int n = 0; n < NT; n++) mx = fmaxf(mx, fmaxf(s[n][2 * r], s[n][2 * r + 1]));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float mNew = fmaxf(rowMax[r], mx);
      const float mUse = mNew == NEG_INF ? 0.f : mNew;  // a row with nothing visible yet: exponents of -inf give 0
      const float corr = exp2Fast(rowMax[r] - mUse);
      rowMax[r] = mNew;
      float sum = 0.f;
      for (int n = 0; n < NT; n++) {
        s[n][2 * r] = exp2Fast(s[n][2 * r] - mUse);
        s[n][2 * r + 1] = exp2Fast(s[n][2 * r + 1] - mUse);
        sum += s[n][2 * r] + s[n][2 * r + 1];
      }
      rowSum[r] = rowSum[r] * corr + sum;
      for (int n = 0; n < ND; n++) {
        acc[n][2 * r] *= corr;
        acc[n][2 * r + 1] *= corr;
      }
    }
    // O += P V: the S accumulator layout is the A-fragment layout of the next mma.
#pragma unroll
    for (int kk = 0; kk < BK / 16; kk++) {
      u32 a[4];
      a[0] = pack2<T>(s[2 * kk][0], s[2 * kk][1]);
      a[1] = pack2<T>(s[2 * kk][2], s[2 * kk][3]);
      a[2] = pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]);
      a[3] = pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
      for (int nd = 0; nd < D / 16; nd++) {
        u32 b[4];
        ldsm4T(b, Vb + (kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + nd * 16 + (lane >> 4) * 8);
        mma16816<T>(acc[2 * nd], a, b[0], b[1]);
        mma16816<T>(acc[2 * nd + 1], a, b[2], b[3]);
      }
    }
    __syncthreads();  // everyone is done with `buf` before the next prefetch overwrites it
    buf ^= 1;
    t = next;
  }

  // Epilogue: block (o, lse) per row, merged into the running accumulators in fp32.
#pragma unroll
  for (int r = 0; r < 2; r++) mergeRowOut<D>(p, q0 + warp * 16 + (lane >> 2) + 8 * r, h, lane, r, rowMax[r], rowSum[r], &acc[0][0]);
}
}  // namespace fwd

// ---- generic path (fp32, any D <= 256) -----------------------------------------------------

namespace fwdg {
constexpr int ROWS = 4;  // warps per CTA, one query row each
constexpr int MAXC = 8;  // D <= 32 * MAXC
constexpr int BK = 64;   // key tile of the kTiles boxes

template <typename T>
__device__ __forceinline__ void run(const FwdParams& p) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int i = blockIdx.x * ROWS + warp, h = blockIdx.y, kh = h / (p.H / p.Hk), D = p.D;
  if (i >= p.Sq) return;
  const Mask m = maskOf(p);
  const int qp = p.qPos[i], qs = m.hasSeg ? p.qSeg[i] : 0;
  const int4 qBox = make_int4(qp, qp, qs, qs);
  const T* q = (const T*)p.q + ((u64)i * p.H + h) * D;
  const T* k = (const T*)p.k;
  const T* v = (const T*)p.v;
  float qv[MAXC], acc[MAXC];
  for (int c = 0; c < MAXC; c++) {
    const int d = lane + 32 * c;
    qv[c] = d < D ? toF32(q[d]) * p.scale : 0.f;
    acc[c] = 0.f;
  }
  float mx = NEG_INF, l = 0.f;
  const int nkt = (p.Sk + BK - 1) / BK;
  for (int t = 0; t < nkt; t++) {
    const int cls = classifyTile(m, qBox, p.kTiles[t]);
    if (cls == TILE_EMPTY) continue;
    const int end = min(p.Sk, (t + 1) * BK);
    for (int j = t * BK; j < end; j++) {
      if (cls == TILE_PARTIAL && !visible(m, qp, p.kPos[j], qs, m.hasSeg ? p.kSeg[j] : 0)) continue;
      const T* kr = k + ((u64)j * p.Hk + kh) * D;
      float dot = 0.f;
      for (int c = 0; c < MAXC; c++) {
        const int d = lane + 32 * c;
        if (d < D) dot += qv[c] * toF32(kr[d]);
      }
      const float s = warpSum(dot);
      if (s > mx) {
        const float corr = expf(mx - s);  // mx = -inf: 0, and acc, l are 0 anyway
        l *= corr;
        for (int c = 0; c < MAXC; c++) acc[c] *= corr;
        mx = s;
      }
      const float pj = expf(s - mx);
      l += pj;
      const T* vr = v + ((u64)j * p.Hk + kh) * D;
      for (int c = 0; c < MAXC; c++) {
        const int d = lane + 32 * c;
        if (d < D) acc[c] += pj * toF32(vr[d]);
      }
    }
  }
  if (l == 0.f) return;
  const u64 row = (u64)i * p.H + h;
  const float lseOld = p.lse[row];
  __syncwarp();
  float wOld, wB;
  const float lseNew = mergeWeights(lseOld, mx + logf(l), wOld, wB);
  float* o = p.o + row * D;
  for (int c = 0; c < MAXC; c++) {
    const int d = lane + 32 * c;
    if (d < D) o[d] = (wOld == 0.f ? 0.f : o[d] * wOld) + acc[c] * (wB / l);
  }
  if (lane == 0) p.lse[row] = lseNew;
}
}  // namespace fwdg

// Entries. Shapes: see FwdParams in common.cuh. Dynamic shared memory (mma): fwd::Smem<D>::BYTES.
extern "C" __global__ void __launch_bounds__(128) attn_fwd_mma_bf16_d64(const FwdParams p) { fwd::run<Bf16, 64>(p); }
extern "C" __global__ void __launch_bounds__(128) attn_fwd_mma_bf16_d128(const FwdParams p) { fwd::run<Bf16, 128>(p); }
extern "C" __global__ void __launch_bounds__(128) attn_fwd_mma_f16_d64(const FwdParams p) { fwd::run<F16, 64>(p); }
extern "C" __global__ void __launch_bounds__(128) attn_fwd_mma_f16_d128(const FwdParams p) { fwd::run<F16, 128>(p); }
extern "C" __global__ void __launch_bounds__(128) attn_fwd_generic_f32(const FwdParams p) { fwdg::run<float>(p); }
extern "C" __global__ void __launch_bounds__(128) attn_fwd_generic_bf16(const FwdParams p) { fwdg::run<Bf16>(p); }
extern "C" __global__ void __launch_bounds__(128) attn_fwd_generic_f16(const FwdParams p) { fwdg::run<F16>(p); }
