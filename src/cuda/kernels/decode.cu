// Split-KV ("flash-decoding") decode attention: Sq (1..16) new query tokens of each of B
// sequences against that sequence's KV cache, in one launch, plus the kernels that merge the
// partial results.
//
// Layout. Cache b: k, v [n_b, Hk, D] (T = bf16 / fp16 / fp32), pos [n_b] int32 (ascending when
// the sequence is flagged sorted), seg [n_b] or null. Queries q [B, Sq, H, D] (T), qPos [B, Sq],
// qSeg [B, Sq] or null. The running result o [B, Sq, H, D] and lse [B, Sq, H] (fp32, natural log)
// is merged in place; a row that sees no key keeps its (o, lse). Per-sequence pointers, lengths
// and chunk counts travel in the parameter block (DecodeParams, <= DEC_MAXB sequences a launch).
//
// Work split. The CTA (chunk c, KV head kh, row group z) reads chunk c's cache rows of head kh
// once, for all G = H / Hk query heads of that KV head and all Sq queries (R = Sq * G query rows;
// the tensor-core path takes up to 128 rows a pass, the generic path 8). Sequence b owns chunks
// chunk0[b] .. chunk0[b+1]-1, planned on the host in whole waves of CTAs (src/cuda/decode.ts).
// A CTA's rows are the visible ones: with ascending positions at most two index intervals (the
// sinks prefix and the window / causal range), found by a CTA-wide k-ary search of the positions,
// and only their union is ever read. Without a window the union starts at row 0, so the CTA
// issues its first loads before the search ends (which then only trims the end). It takes its
// share of whole 64-row tiles, streams them through a cp.async pipeline of 16-byte loads into
// shared memory (D=128: two stages, two CTAs an SM, up to 64 KB in flight an SM), and keeps an online
// softmax per query row. It ends with an fp32 partial per row (O normalised, LSE in log2 units of
// the scaled logits); decode_merge folds a sequence's partials into the running (o, lse).
//
// Measured on an H200 (bf16, H=32, Hk=8, D=128, one token, 1M cache): decode_ldg 4.48-4.59 TB/s,
// cuDNN SDPA 4.48-4.58 in the same runs; the mma path ~4.2-4.3, the ceiling of its cp.async loads
// (NOTES.md runs 42-43). The cp.async L2::256B prefetch hint cost ~6% of read bandwidth there and
// is not used, an L2 evict-first policy on the loads changed nothing; reading a head's 256-byte
// rows at a 2 KB stride costs ~1% against contiguous rows.
//
// Paths: decode_ldg_{bf16,f16}_d{64,128}: at most 8 query rows a KV head (one token of a GQA
// group up to 8:1), cache tiles through registers (see decl below; at D=64 on an H100 1.4-3.5%
// faster than the mma path, NOTES.md run 45). Else
// decode_mma_{bf16,f16}_d{64,128}_m{1,2,4,8}: mma.sync m16n8k16; M = query rows in m16
// tiles (m = tiles rounded up to a power of two), the warps beyond the tiles split each 64-key
// tile (4 warps, or 8 when m = 8). decode_generic_{f32,bf16,f16}: CUDA cores, exact exp2f, any
// D <= 256 with 16-byte rows; 8 query rows a pass (grid z over row groups).
#include "common.cuh"

#define DEC_MAXB 64

struct DecodeParams {
  const void* q;     // [B, Sq, H, D] T
  const int* qPos;   // [B, Sq]
  const int* qSeg;   // [B, Sq] or null
  float* o;          // [B, Sq, H, D] running output, merged in place
  float* lse;        // [B, Sq, H]    running LSE (natural log), -inf = nothing seen yet
  float* partO;      // [chunks, Hk, R, D] chunk partials, normalised
  float* partL;      // [chunks, Hk, R]    chunk LSE in log2 units of the scaled logits (-inf: empty)
  int* count;        // [B, Hk, gridDim.z] arrival counters, zero between launches; null: decode_merge merges
  const void* k[DEC_MAXB];
  const void* v[DEC_MAXB];
  const int* pos[DEC_MAXB];
  const int* seg[DEC_MAXB];  // null when qSeg is null
  int n[DEC_MAXB];           // cache rows of sequence b
  int chunk0[DEC_MAXB + 1];  // first chunk of sequence b; chunk0[B] = all chunks
  int flags[DEC_MAXB];       // bit 0: positions ascend (only visible rows are read)
  int B, Sq, H, Hk, D;
  int causal, window, sinks;  // window 0 = none; sinks only with a window
  int R;                      // Sq * H / Hk query rows per (sequence, KV head)
  float scaleLog2;            // softmax scale * log2(e)
};

namespace dec {

// Sequence b and its chunk s (of S) for global chunk c: the largest b with chunk0[b] <= c.
__device__ __forceinline__ void chunkOf(const DecodeParams& p, int c, int& b, int& s, int& S) {
  int lo = 0, hi = p.B - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) >> 1;
    if (p.chunk0[mid] <= c) lo = mid;
    else hi = mid - 1;
  }
  b = lo;
  s = c - p.chunk0[b];
  S = p.chunk0[b + 1] - p.chunk0[b];
}

// First index j in [0, n) with pos[j] >= x[k] (n when none), for up to three targets at once,
// by every thread of the CTA: each round probes T evenly spaced indices of the open interval
// (the last probe is its end, so "everything is smaller" resolves in one round) and narrows it
// T-fold; the three searches' loads are in flight together. Positions must ascend. Targets with
// act[k] false return 0. All threads must call it (it synchronises).
template <int T>
__device__ __forceinline__ void lowerBounds(const int* pos, int n, const i64 x[3], const bool act[3], int out[3]) {
  int lo[3], hi[3];
#pragma unroll
  for (int k = 0; k < 3; k++) {
    lo[k] = 0;
    hi[k] = n;
    if (!act[k] || x[k] <= -(i64)0x7fffffff - 1) hi[k] = 0;       // everything is >= x
    else if (x[k] > (i64)0x7fffffff) lo[k] = n;                   // nothing is >= x
  }
  for (;;) {
    if (lo[0] >= hi[0] && lo[1] >= hi[1] && lo[2] >= hi[2]) break;
    bool pr[3];
#pragma unroll
    for (int k = 0; k < 3; k++) {
      pr[k] = true;
      if (lo[k] < hi[k]) {
        const i64 len = hi[k] - lo[k];
        const int idx = lo[k] + (int)(((i64)(threadIdx.x + 1) * len) / T) - 1;
        pr[k] = idx < lo[k] || (i64)pos[idx] < x[k];
      }
    }
#pragma unroll
    for (int k = 0; k < 3; k++) {
      if (lo[k] >= hi[k]) continue;  // uniform over the CTA
      const int c = __syncthreads_count(pr[k]);
      const i64 len = hi[k] - lo[k];
      if (c == T) {
        lo[k] = hi[k];
      } else {
        const int pc = lo[k] + (int)(((i64)(c + 1) * len) / T) - 1;
        const int pm = c > 0 ? lo[k] + (int)(((i64)c * len) / T) - 1 : lo[k] - 1;
        hi[k] = pc;
        lo[k] = max(lo[k], pm + 1);
      }
    }
  }
#pragma unroll
  for (int k = 0; k < 3; k++) out[k] = lo[k];
}

// What a CTA needs to know about its sequence before it reads rows.
struct SeqView {
  int a1, b0;    // visible rows: [0, a1) then [b0, b0 + (V - a1)); u -> u < a1 ? u : u - a1 + b0
  int V;         // visible rows in all
  bool mask;     // rows of the union may still be invisible to some query: mask per element
};

// The union over the sequence's queries of their visible rows (DESIGN.md's mask on global
// positions). Sorted positions: the sinks prefix [0, lb(sinks)) and the window (or causal)
// range [lb(lo), lb(hi)). Otherwise every row. Must be called by all threads.
template <int T>
__device__ __forceinline__ SeqView seqView(const DecodeParams& p, int b, int* shInt) {
  const int n = p.n[b];
  const bool sorted = (p.flags[b] & 1) != 0;
  const bool hasSeg = p.qSeg != nullptr;
  if (threadIdx.x < 32) {
    const int lane = threadIdx.x;
    int mn = 0x7fffffff, mx = -0x7fffffff - 1;
    if (lane < p.Sq) mn = mx = p.qPos[(i64)b * p.Sq + lane];
    for (int o = 16; o > 0; o >>= 1) {
      mn = min(mn, __shfl_xor_sync(0xffffffffu, mn, o));
      mx = max(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    }
    if (lane == 0) {
      shInt[0] = mn;
      shInt[1] = mx;
    }
  }
  __syncthreads();
  const i64 minq = shInt[0], maxq = shInt[1];
  SeqView s;
  const bool allVisible = !p.causal && p.window <= 0 && !hasSeg;
  // One query position (Sq == 1): the union is exactly its visible set, no per-key mask.
  s.mask = !allVisible && !(sorted && !hasSeg && p.Sq == 1);
  if (!sorted || n == 0 || (!p.causal && p.window <= 0)) {
    s.a1 = n;
    s.b0 = n;
    s.V = n;
    return s;
  }
  i64 x[3];
  bool act[3];
  const i64 W = p.window;
  if (W <= 0) {  // causal, no window: keys up to the last query
    act[0] = act[1] = false;
    act[2] = true;
    x[0] = x[1] = 0;
    x[2] = maxq + 1;
  } else {
    act[0] = p.sinks > 0;
    x[0] = p.causal ? min((i64)p.sinks, maxq + 1) : (i64)p.sinks;
    act[1] = act[2] = true;
    x[1] = minq - W + 1;
    x[2] = p.causal ? maxq + 1 : maxq + W;
  }
  int r[3];
  lowerBounds<T>(p.pos[b], n, x, act, r);
  int a1 = r[0], b0 = r[1], b1 = max(r[1], r[2]);
  if (b0 <= a1) {  // the window reaches into the sinks: one interval
    a1 = max(a1, b1);
    b0 = a1;
    b1 = a1;
  }
  s.a1 = a1;
  s.b0 = b0;
  s.V = a1 + (b1 - b0);
  return s;
}

__device__ __forceinline__ i64 rowOf(const SeqView& s, int u) { return u < s.a1 ? (i64)u : (i64)u - s.a1 + s.b0; }

// Tiles [t0, t1) of `tiles` for chunk s of S.
__device__ __forceinline__ void split(int s, int S, int tiles, int& t0, int& t1) {
  t0 = (int)(((i64)s * tiles) / S);
  t1 = (int)(((i64)(s + 1) * tiles) / S);
}

// Without a window the visible rows of a sorted cache start at row 0 (and an unsorted cache is
// read whole), so the split can use the cache length before the search ends: the CTA issues its
// first loads at once, and the search only trims the end (queries behind the cache's end). With a
// window the rows start wherever the window does, found first.
template <int T>
__device__ __forceinline__ void locate(const DecodeParams& p, int b, int s, int S, int bk, int* shInt, SeqView& sv, int& t0, int& t1, bool early) {
  if (early) {
    const SeqView found = seqView<T>(p, b, shInt);
    sv = found;
    t1 = max(t0, min(t1, (found.V + bk - 1) / bk));
  } else {
    sv = seqView<T>(p, b, shInt);
    split(s, S, (sv.V + bk - 1) / bk, t0, t1);
  }
}

// Before the search (early: no window, so every row is a candidate): the sequence's rows as one
// slice with the identity row map, whether it needs masking at all, and this split's tiles; with
// a window the tiles come from dec::locate. Returns `early`.
__device__ __forceinline__ bool initView(const DecodeParams& p, const Mask& m, int b, int s, int S, int bk, SeqView& sv, int& t0, int& t1) {
  const bool early = p.window <= 0;
  sv.a1 = sv.b0 = sv.V = p.n[b];
  sv.mask = !(!p.causal && !m.hasSeg) && !((p.flags[b] & 1) && !m.hasSeg && p.Sq == 1);
  t0 = t1 = 0;
  if (early) split(s, S, (sv.V + bk - 1) / bk, t0, t1);
  return early;
}

// Positions (and segment ids) of tile `tile`'s rows into sp[0, bk) (and sp[bk, 2 bk)) when the
// slice is masked: one row per thread of the first bk.
__device__ __forceinline__ void loadTilePos(const SeqView& sv, bool hasSeg, const int* posB, const int* segB, int* sp, int tile, int bk) {
  if (!sv.mask || threadIdx.x >= bk) return;
  const int u = tile * bk + threadIdx.x;
  const bool ok = u < sv.V;
  const i64 j = ok ? rowOf(sv, u) : 0;
  cpAsync4(sp + threadIdx.x, posB + j, ok);
  if (hasSeg) cpAsync4(sp + bk + threadIdx.x, segB + j, ok);
}

// One more chunk partial, of LSE L, in a running log-sum-exp merge (m, l in log2 units): a is the
// factor for what was folded so far, w the new partial's weight (fold its O with foldAcc).
__device__ __forceinline__ void foldWeights(float L, float& m, float& l, float& a, float& w) {
  const float mNew = fmaxf(m, L);  // L = -inf: an empty chunk (its O is 0)
  const float mUse = mNew == NEG_INF ? 0.f : mNew;
  a = exp2f(m - mUse);
  w = exp2f(L - mUse);
  l = l * a + w;
  m = mNew;
}
__device__ __forceinline__ void foldAcc(float4& acc, float a, float w, float4 x) {
  acc.x = acc.x * a + w * x.x;
  acc.y = acc.y * a + w * x.y;
  acc.z = acc.z * a + w * x.z;
  acc.w = acc.w * a + w * x.w;
}

// Four columns of output row `orow`: the folded partials (max M and weight W in log2 units, sum
// the W-weighted normalised outputs) merged into the running (o, lse) read before (cur, lseOld).
// A row whose partials saw nothing (W = 0) keeps its (o, lse). A NaN partial (a chunk that saw a
// NaN key under allowNonfinite) leaves W NaN, with M possibly -inf (fmaxf passes NaN over): the
// row becomes NaN, never one that saw nothing. `lse` is written by writeLse.
__device__ __forceinline__ void mergeOut(const DecodeParams& p, i64 orow, int d, float M, float W, float4 sum, float lseOld, float4 cur, bool writeLse) {
  if (W == 0.f) return;
  const float lseB = (M + log2f(W)) * LN2;  // natural log
  float wOld, wB;
  const float lseNew = mergeWeights(lseOld, lseB, wOld, wB);
  const float inv = wB / W;
  float4 out;
  out.x = (wOld == 0.f ? 0.f : cur.x * wOld) + sum.x * inv;
  out.y = (wOld == 0.f ? 0.f : cur.y * wOld) + sum.y * inv;
  out.z = (wOld == 0.f ? 0.f : cur.z * wOld) + sum.z * inv;
  out.w = (wOld == 0.f ? 0.f : cur.w * wOld) + sum.w * inv;
  *(float4*)(p.o + orow * p.D + d) = out;
  if (writeLse) p.lse[orow] = lseNew;
}

// The fused merge (p.count set): the CTAs of (sequence b, KV head kh, row group z) count
// themselves in after writing their partials; the last of the S resets the counter for the next
// launch and folds all S partials of its Rz rows into the running (o, lse), a thread per (row,
// four columns), the loads of several chunks in flight. This saves decode_merge's launch, which
// costs a few microseconds a step (a short context's step is ~40-150 us). All threads must call it.
__device__ __forceinline__ void mergeIfLast(const DecodeParams& p, int b, int S, int kh, int r0, int Rz, int* shFlag) {
  if (p.count == nullptr) return;
  __threadfence();  // this thread's partials, before the count says they are there
  __syncthreads();
  if (threadIdx.x == 0) {
    int* ctr = p.count + ((i64)b * p.Hk + kh) * gridDim.z + blockIdx.z;
    const bool last = atomicAdd(ctr, 1) == S - 1;
    if (last) *ctr = 0;
    *shFlag = last;
  }
  __syncthreads();
  if (!*shFlag) return;
  __threadfence();
  const int D4 = p.D / 4, G = p.H / p.Hk;
  const int c0 = p.chunk0[b], c1 = p.chunk0[b + 1];
  const i64 stride = (i64)p.Hk * p.R;  // partial rows per chunk
  for (int e = threadIdx.x; e < Rz * D4; e += blockDim.x) {
    const int r = r0 + e / D4, d = (e % D4) * 4;
    const i64 orow = ((i64)b * p.Sq + r / G) * p.H + (i64)kh * G + r % G;
    const float lseOld = p.lse[orow];
    const float4 cur = *(const float4*)(p.o + orow * p.D + d);
    const i64 base = (i64)kh * p.R + r;
    float m = NEG_INF, l = 0.f;
    float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll 8
    for (int c = c0; c < c1; c++) {
      const i64 pr = c * stride + base;  // other CTAs wrote these: L2, not this SM's L1
      float a, w;
      foldWeights(__ldcg(p.partL + pr), m, l, a, w);
      foldAcc(acc, a, w, __ldcg((const float4*)(p.partO + pr * p.D + d)));
    }
    mergeOut(p, orow, d, m, l, acc, lseOld, cur, d == 0);
  }
}

}  // namespace dec

// ---- tensor-core path (bf16 / fp16, D = 64 or 128) --------------------------------------------

namespace decm {
constexpr int BK = 64;       // cache rows per pipeline stage
constexpr int MAXR = 128;    // query rows per CTA pass

template <int D> struct Cfg {
  static constexpr int LD = D + 8;                                // smem row stride (elements): ldmatrix without conflicts
  // D=128: two stages (one tile loading while one is computed): 0.5-2.5% faster than three, most
  // at batch 8, at the same two CTAs an SM (registers, ~220 a thread, allow two; forcing three
  // with 168 spilled and was 1-3% slower); four stages (one CTA an SM) slower (NOTES.md runs 27-28,
  // 34); single K and V buffers loaded alternately no faster (run 41).
  static constexpr int STAGES = D == 64 ? 4 : 2;
  static constexpr int STAGE_BYTES = 2 * BK * LD * 2 + 2 * BK * 4;  // K, V tiles + positions, segment ids
  static constexpr int PIPE_BYTES = STAGES * STAGE_BYTES;
};

template <int D, int WARPS> struct Smem {
  static constexpr int ALD = D + 4;  // fp32 row stride of the epilogue's accumulators
  static constexpr int EPI_BYTES = WARPS * 16 * ALD * 4 + 2 * WARPS * 16 * 4 + MAXR * 4 * 4;
  static constexpr int BYTES = Cfg<D>::PIPE_BYTES > EPI_BYTES ? Cfg<D>::PIPE_BYTES : EPI_BYTES;
};

// MT: m16 tiles of query rows (1, 2, 4, 8); WARPS = max(4, MT); warp w takes tile w % MT and
// keys [slice * KW, slice * KW + KW) of every 64-key tile, slice = w / MT.
template <typename T, int D, int MT>
__device__ __forceinline__ void run(const DecodeParams& p) {
  constexpr int WARPS = MT < 4 ? 4 : MT;
  constexpr int THREADS = WARPS * 32;
  constexpr int SLICES = WARPS / MT;
  constexpr int LD = Cfg<D>::LD, STAGES = Cfg<D>::STAGES;
  constexpr int KW = BK / SLICES;  // keys per warp per stage: 16, 32 or 64
  constexpr int NT = KW / 8;
  constexpr int ND = D / 8;
  constexpr int CH = D / 8;  // 16-byte chunks per row
  extern __shared__ __align__(16) unsigned char smem[];
  __shared__ int shInt[4];

  const int c = blockIdx.x, kh = blockIdx.y, z = blockIdx.z;
  int b, s, S;
  dec::chunkOf(p, c, b, s, S);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int mt = warp % MT, slice = warp / MT;
  const int G = p.H / p.Hk, R = p.R, r0 = z * MAXR, Rz = min(MAXR, R - r0);
  const Mask m = {p.causal, p.window, p.window > 0 ? p.sinks : 0, p.qSeg != nullptr};
  dec::SeqView sv;
  int t0, t1;
  const bool early = dec::initView(p, m, b, s, S, BK, sv, t0, t1);

  const T* kBase = (const T*)p.k[b] + (i64)kh * D;
  const T* vBase = (const T*)p.v[b] + (i64)kh * D;
  const int* posB = p.pos[b];
  const int* segB = p.seg[b];
  const i64 rowStride = (i64)p.Hk * D;

  auto stageK = [&](int st) { return (u16*)(smem + st * Cfg<D>::STAGE_BYTES); };
  auto stageV = [&](int st) { return stageK(st) + BK * LD; };
  auto stagePos = [&](int st) { return (int*)(stageV(st) + BK * LD); };
  auto load = [&](int st, int tile) {
    u16* sK = stageK(st);
    u16* sV = stageV(st);
    i64 off[BK * CH / THREADS];
    bool ok[BK * CH / THREADS];
#pragma unroll
    for (int i = 0; i < BK * CH / THREADS; i++) {
      const int cidx = threadIdx.x + i * THREADS;
      const int r = cidx / CH, cc = (cidx % CH) * 8;
      const int u = tile * BK + r;
      ok[i] = u < sv.V;
      off[i] = (ok[i] ? dec::rowOf(sv, u) : 0) * rowStride + cc;
      cpAsync16(sK + r * LD + cc, kBase + off[i], ok[i]);
    }
#pragma unroll
    for (int i = 0; i < BK * CH / THREADS; i++) {
      const int cidx = threadIdx.x + i * THREADS;
      const int r = cidx / CH, cc = (cidx % CH) * 8;
      cpAsync16(sV + r * LD + cc, vBase + off[i], ok[i]);
    }
    dec::loadTilePos(sv, m.hasSeg, posB, segB, stagePos(st), tile, BK);
  };
  // Start the pipeline before the search (early) or right after it, and before the query
  // fragments: their loads overlap the first tiles'.
  if (!early) dec::locate<THREADS>(p, b, s, S, BK, shInt, sv, t0, t1, false);
#pragma unroll
  for (int st = 0; st < STAGES - 1; st++) {
    if (t0 + st < t1) load(st, t0 + st);
    cpAsyncCommit();
  }
  if (early) dec::locate<THREADS>(p, b, s, S, BK, shInt, sv, t0, t1, true);

  // This thread's two query rows of its m16 tile: lane / 4 and lane / 4 + 8.
  const T* q = (const T*)p.q;
  u32 qf[D / 16][4];
  int qp[2], qs[2];
#pragma unroll
  for (int h = 0; h < 2; h++) {
    const int r = r0 + mt * 16 + (lane >> 2) + 8 * h;
    const bool ok = r < R;
    const int i = ok ? r / G : 0, g = ok ? r % G : 0;
    const i64 qi = (i64)b * p.Sq + i;
    qp[h] = ok ? p.qPos[qi] : 0;
    qs[h] = ok && m.hasSeg ? p.qSeg[qi] : 0;
    const u32* qrow = (const u32*)(q + (qi * p.H + (i64)kh * G + g) * D);
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++) {
      const int col = kk * 16 + 2 * (lane & 3);
      qf[kk][h] = ok ? qrow[col / 2] : 0u;
      qf[kk][h + 2] = ok ? qrow[col / 2 + 4] : 0u;
    }
  }

  float acc[ND][4];
#pragma unroll
  for (int n = 0; n < ND; n++) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.f;
  float rowMax[2] = {NEG_INF, NEG_INF}, rowSum[2] = {0.f, 0.f};  // log2 units
  const float scaleLog2 = p.scaleLog2;

  for (int tile = t0; tile < t1; tile++) {
    const int it = tile - t0;
    cpAsyncWait<STAGES - 2>();
    __syncthreads();
    if (tile + STAGES - 1 < t1) load((it + STAGES - 1) % STAGES, tile + STAGES - 1);
    cpAsyncCommit();
    const int st = it % STAGES;
    const u16* Kb = stageK(st) + slice * KW * LD;
    const u16* Vb = stageV(st) + slice * KW * LD;

    float sc[NT][4];
#pragma unroll
    for (int n = 0; n < NT; n++) sc[n][0] = sc[n][1] = sc[n][2] = sc[n][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++) {
#pragma unroll
      for (int nb = 0; nb < KW / 16; nb++) {
        u32 bf[4];
        ldsm4(bf, Kb + (nb * 16 + (lane & 7) + ((lane >> 4) << 3)) * LD + kk * 16 + ((lane >> 3) & 1) * 8);
        mma16816<T>(sc[2 * nb], qf[kk], bf[0], bf[1]);
        mma16816<T>(sc[2 * nb + 1], qf[kk], bf[2], bf[3]);
      }
    }
#pragma unroll
    for (int n = 0; n < NT; n++)
#pragma unroll
      for (int e = 0; e < 4; e++) sc[n][e] *= scaleLog2;
    const int uWarp = tile * BK + slice * KW;  // u of this warp's first key in the tile
    if (sv.mask || uWarp + KW > sv.V) {
      const int* kp = stagePos(st) + slice * KW;
      const int* ks = kp + BK;
#pragma unroll
      for (int n = 0; n < NT; n++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
          const int col = n * 8 + 2 * (lane & 3) + (e & 1), h = e >> 1;
          bool ok = uWarp + col < sv.V;
          if (ok && sv.mask) ok = visible(m, qp[h], kp[col], qs[h], m.hasSeg ? ks[col] : 0);
          if (!ok) sc[n][e] = NEG_INF;
        }
    }
    // Online softmax; a row is shared by the 4 lanes of a quad.
#pragma unroll
    for (int h = 0; h < 2; h++) {
      float mx = NEG_INF;
#pragma unroll
      for (int n = 0; n < NT; n++) mx = fmaxf(mx, fmaxf(sc[n][2 * h], sc[n][2 * h + 1]));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float mNew = fmaxf(rowMax[h], mx);
      const float mUse = mNew == NEG_INF ? 0.f : mNew;  // nothing visible yet: exp2(-inf) = 0
      const float corr = exp2Fast(rowMax[h] - mUse);
      rowMax[h] = mNew;
      float sum = 0.f;
#pragma unroll
      for (int n = 0; n < NT; n++) {
        sc[n][2 * h] = exp2Fast(sc[n][2 * h] - mUse);
        sc[n][2 * h + 1] = exp2Fast(sc[n][2 * h + 1] - mUse);
        sum += sc[n][2 * h] + sc[n][2 * h + 1];
      }
      rowSum[h] = rowSum[h] * corr + sum;
#pragma unroll
      for (int n = 0; n < ND; n++) {
        acc[n][2 * h] *= corr;
        acc[n][2 * h + 1] *= corr;
      }
    }
    // O += P V: the S accumulators are already in the A-fragment layout.
#pragma unroll
    for (int kk = 0; kk < KW / 16; kk++) {
      u32 a[4];
      a[0] = pack2<T>(sc[2 * kk][0], sc[2 * kk][1]);
      a[1] = pack2<T>(sc[2 * kk][2], sc[2 * kk][3]);
      a[2] = pack2<T>(sc[2 * kk + 1][0], sc[2 * kk + 1][1]);
      a[3] = pack2<T>(sc[2 * kk + 1][2], sc[2 * kk + 1][3]);
#pragma unroll
      for (int nd = 0; nd < D / 16; nd++) {
        u32 bf[4];
        ldsm4T(bf, Vb + (kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + nd * 16 + (lane >> 4) * 8);
        mma16816<T>(acc[2 * nd], a, bf[0], bf[1]);
        mma16816<T>(acc[2 * nd + 1], a, bf[2], bf[3]);
      }
    }
  }
  cpAsyncWait<0>();
  __syncthreads();  // the pipeline's shared memory becomes the epilogue's

  // Epilogue: the slices of each m16 tile merge through shared memory; one partial per row.
  constexpr int ALD = Smem<D, WARPS>::ALD;
  float* sAcc = (float*)smem;                 // [WARPS * 16][ALD]
  float* sM = sAcc + WARPS * 16 * ALD;        // [WARPS * 16]
  float* sL = sM + WARPS * 16;                // [WARPS * 16]
  float* sW = sL + WARPS * 16;                // [MAXR][4]: weight of each slice / total
#pragma unroll
  for (int h = 0; h < 2; h++) {
    float l = rowSum[h];
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    const int lr = warp * 16 + (lane >> 2) + 8 * h;
#pragma unroll
    for (int n = 0; n < ND; n++) *(float2*)(sAcc + lr * ALD + n * 8 + 2 * (lane & 3)) = make_float2(acc[n][2 * h], acc[n][2 * h + 1]);
    if ((lane & 3) == 0) {
      sM[lr] = rowMax[h];
      sL[lr] = l;
    }
  }
  __syncthreads();
  const i64 part = ((i64)c * p.Hk + kh) * R + r0;
  for (int rr = threadIdx.x; rr < Rz; rr += THREADS) {
    const int t = rr / 16, lr = rr % 16;
    float M = NEG_INF;
#pragma unroll
    for (int sl = 0; sl < SLICES; sl++) M = fmaxf(M, sM[(t + sl * MT) * 16 + lr]);
    float w[SLICES], L = 0.f;
#pragma unroll
    for (int sl = 0; sl < SLICES; sl++) {
      const int wr = (t + sl * MT) * 16 + lr;
      w[sl] = M == NEG_INF ? 0.f : exp2f(sM[wr] - M);
      L += w[sl] * sL[wr];
    }
#pragma unroll
    for (int sl = 0; sl < SLICES; sl++) sW[rr * 4 + sl] = rowLive(L) ? w[sl] / L : 0.f;  // L NaN: a NaN key seen
    p.partL[part + rr] = rowLive(L) ? M + log2f(L) : NEG_INF;
  }
  __syncthreads();
  for (int e = threadIdx.x; e < Rz * (D / 4); e += THREADS) {
    const int rr = e / (D / 4), d = (e % (D / 4)) * 4;
    const int t = rr / 16, lr = rr % 16;
    float4 out = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
    for (int sl = 0; sl < SLICES; sl++) {
      const float wt = sW[rr * 4 + sl];
      const float4 a = *(const float4*)(sAcc + ((t + sl * MT) * 16 + lr) * ALD + d);
      out.x += wt * a.x;
      out.y += wt * a.y;
      out.z += wt * a.z;
      out.w += wt * a.w;
    }
    *(float4*)(p.partO + (part + rr) * D + d) = out;
  }
  dec::mergeIfLast(p, b, S, kh, r0, Rz, &shInt[3]);
}
}  // namespace decm

// ---- register-staged path (bf16 / fp16, D = 64 or 128, at most 8 query rows a KV head) ----------
//
// Why (NOTES.md run 42): on an H200 a cp.async read of the cache into shared memory stops at
// ~4.3 TB/s whatever its stages, tile sizes or bytes in flight, while plain 16-byte loads into
// registers reach ~4.6 with >= 64 KB in flight an SM spread over >= 512 threads. So: 8 warps a
// CTA, two CTAs an SM (<= 128 registers a thread); each warp streams its own tiles (warp w
// takes tiles t0 + w, t0 + w + 8, ...) with no CTA barrier until the epilogue. A tile's K and V
// arrive in registers (8 x 16 bytes a thread each), are stored to the warp's shared tile and read
// back by ldmatrix; one is in flight while the other is computed:
//   st.shared K(j); load V(j); S^T = K Q^T, softmax; st.shared V(j); load K(next); O^T += V^T P^T.
// The products are transposed (keys and head dims are the mma's M, query rows its N = 8): the
// accumulator holds only the <= 8 query rows there are (32 registers where the mma path keeps a
// 16-row tile in 64), P^T's B fragment comes from the scores' C fragment by two movmatrix.trans,
// and a thread's two query columns are the same in S^T and O^T (the rescale needs no shuffles).
// A warp tile is 4 KB of K (and as much of V) at either head dim: 16 rows at D = 128, 32 rows at
// D = 64 (two m16 key tiles in S^T, two k16 steps in O^T), so a thread keeps 8 x 16 bytes in
// flight at both and an SM the ~64 KB that run 42 found necessary.
namespace decl {
constexpr int WARPS = 8, THREADS = WARPS * 32;
template <int D> struct Cfg {
  static constexpr int BK = 2048 / D;           // cache rows a warp tile (4 KB of 16-bit elements)
  static constexpr int KT = BK / 16;            // m16 key tiles of S^T = k16 steps of O^T
  static constexpr int LSH = D == 128 ? 4 : 3;  // log2(lanes a row): 16 bytes a lane
  static constexpr int RPL = 32 >> LSH;         // rows one warp-wide 16-byte load covers
  static constexpr int LOADS = BK / RPL;        // 16-byte loads a thread a tile
  static constexpr int LD = D + 8;              // shared row stride (elements): no bank conflicts
  static constexpr int TILE = BK * LD;          // elements of one K or V tile
  static constexpr int PIPE_BYTES = WARPS * 2 * TILE * 2;
  static constexpr int EPI_BYTES = WARPS * 8 * D * 4 + 2 * WARPS * 8 * 4;
  static constexpr int BYTES = PIPE_BYTES > EPI_BYTES ? PIPE_BYTES : EPI_BYTES;  // host mirror: ldgSmem in decode.ts
  static_assert(D == 64 || D == 128, "D = 64 or 128");
  static_assert(D / 8 == 1 << LSH && LOADS == 8, "a lane loads 16 bytes of a row, 8 times a tile");
  static_assert(BYTES == PIPE_BYTES, "the epilogue fits in the tiles' shared memory");
};

__device__ __forceinline__ u32 movT(u32 x) {
  u32 y;
  asm volatile("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;" : "=r"(y) : "r"(x));
  return y;
}
__device__ __forceinline__ uint4 ldgNc(const void* g) {
  uint4 v;
  asm volatile("ld.global.nc.v4.u32 {%0,%1,%2,%3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(g));
  return v;
}

template <typename T, int D>
__device__ __forceinline__ void run(const DecodeParams& p) {
  using C = Cfg<D>;
  constexpr int BK = C::BK, KT = C::KT, LSH = C::LSH, RPL = C::RPL, LD = C::LD, TILE = C::TILE;
  extern __shared__ __align__(16) unsigned char smem[];
  __shared__ int shInt[4];
  __shared__ int sQpos[2][8];  // query rows' positions and segment ids (the mask reads them; registers are short)
  const int c = blockIdx.x, kh = blockIdx.y;
  int b, s, S;
  dec::chunkOf(p, c, b, s, S);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int g8 = lane >> 2, q0 = 2 * (lane & 3);  // C fragments: rows g8, g8 + 8; columns q0, q0 + 1
  const int G = p.H / p.Hk, R = p.R;
  const Mask m = {p.causal, p.window, p.window > 0 ? p.sinks : 0, p.qSeg != nullptr};
  dec::SeqView sv;
  int t0, t1;
  const bool early = dec::initView(p, m, b, s, S, BK, sv, t0, t1);
  if (!early) dec::locate<THREADS>(p, b, s, S, BK, shInt, sv, t0, t1, false);

  const i64 rowStride = (i64)p.Hk * D;
  const int col = (lane & ((1 << LSH) - 1)) * 8, rowIn = lane >> LSH;  // this lane's column and row of a load
  const T* kBase = (const T*)p.k[b] + (i64)kh * D + col;
  const T* vBase = (const T*)p.v[b] + (i64)kh * D + col;
  const int* posB = p.pos[b];
  const int* segB = p.seg[b];
  u16* sK = (u16*)smem + warp * 2 * TILE;
  u16* sV = sK + TILE;
  u16* sMine = sK + rowIn * LD + col;  // this lane's first piece of a tile (+ TILE: of V's)

  // Rows i * RPL + rowIn (i < 8) of tile `tile`, 16 bytes at column `col`; rows past
  // the visible ones read as zeros (their scores are masked, and 0 * V must not be NaN). A whole
  // tile inside one interval of visible rows (all but at most two a sequence) is one pointer and
  // a stride.
  uint4 stg[8];
  auto load = [&](const T* base, int tile) {
    const int u0 = tile * BK;
    if (u0 + BK <= sv.V && (u0 + BK <= sv.a1 || u0 >= sv.a1)) {
      const T* g = base + (dec::rowOf(sv, u0) + rowIn) * rowStride;
#pragma unroll
      for (int i = 0; i < 8; i++) stg[i] = ldgNc(g + i * RPL * rowStride);
    } else {
#pragma unroll
      for (int i = 0; i < 8; i++) {
        const int u = u0 + i * RPL + rowIn;
        stg[i] = u < sv.V ? ldgNc(base + dec::rowOf(sv, u) * rowStride) : make_uint4(0u, 0u, 0u, 0u);
      }
    }
  };
  auto store = [&](int off) {
#pragma unroll
    for (int i = 0; i < 8; i++) *(uint4*)(sMine + off + i * RPL * LD) = stg[i];
  };
  // Positions (and segment ids) of this thread's keys, rows kt * 16 + g8 (+ 8) of the tile.
  int kp[KT][2] = {}, ks[KT][2] = {};
  auto loadPos = [&](int tile) {
    if (!sv.mask) return;
#pragma unroll
    for (int kt = 0; kt < KT; kt++)
#pragma unroll
      for (int h = 0; h < 2; h++) {
        const int u = tile * BK + kt * 16 + g8 + 8 * h;
        const i64 j = u < sv.V ? dec::rowOf(sv, u) : 0;
        kp[kt][h] = posB[j];
        if (m.hasSeg) ks[kt][h] = segB[j];
      }
  };

  int tile = t0 + warp;
  if (tile < t1) load(kBase, tile);  // in flight during the search (early) and the query loads
  if (early) dec::locate<THREADS>(p, b, s, S, BK, shInt, sv, t0, t1, true);
  if (tile < t1) loadPos(tile);

  // Q^T as the B operand: column n = g8 is query row g8 (zero past R); k = head dims.
  u32 qf[D / 16][2];
  {
    const T* q = (const T*)p.q;
    const bool ok = g8 < R;
    const int i = ok ? g8 / G : 0, g = ok ? g8 % G : 0;
    const u32* qrow = (const u32*)(q + (((i64)b * p.Sq + i) * p.H + (i64)kh * G + g) * D);
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++) {
      qf[kk][0] = ok ? qrow[(kk * 16 + q0) / 2] : 0u;
      qf[kk][1] = ok ? qrow[(kk * 16 + 8 + q0) / 2] : 0u;
    }
    if (threadIdx.x < 8) {
      const int r = threadIdx.x;
      const i64 qi = (i64)b * p.Sq + (r < R ? r / G : 0);
      sQpos[0][r] = r < R ? p.qPos[qi] : 0;
      sQpos[1][r] = r < R && m.hasSeg ? p.qSeg[qi] : 0;
    }
  }
  __syncthreads();

  float acc[D / 16][4];  // O^T: rows md * 16 + g8 (+ 8), columns q0, q0 + 1
#pragma unroll
  for (int md = 0; md < D / 16; md++) acc[md][0] = acc[md][1] = acc[md][2] = acc[md][3] = 0.f;
  float rowMax[2] = {NEG_INF, NEG_INF}, rowSum[2] = {0.f, 0.f};  // columns q0, q0 + 1; log2 units
  const float scaleLog2 = p.scaleLog2;

  for (; tile < t1; tile += WARPS) {
    __syncwarp();
    store(0);  // K(tile)
    __syncwarp();
    load(vBase, tile);  // V(tile) in flight during S^T and the softmax

    float sc[KT][4] = {};  // S^T, key tile kt: rows (keys) kt * 16 + g8 (+ 8), columns q0, q0 + 1
#pragma unroll
    for (int kt = 0; kt < KT; kt++)
#pragma unroll
      for (int kk = 0; kk < D / 16; kk++) {
        u32 a[4];
        ldsm4(a, sK + (kt * 16 + (lane & 15)) * LD + kk * 16 + (lane >> 4) * 8);
        mma16816<T>(sc[kt], a, qf[kk][0], qf[kk][1]);
      }
#pragma unroll
    for (int kt = 0; kt < KT; kt++)
#pragma unroll
      for (int e = 0; e < 4; e++) sc[kt][e] *= scaleLog2;
    const int u0 = tile * BK;
    if (sv.mask || u0 + BK > sv.V) {
#pragma unroll
      for (int kt = 0; kt < KT; kt++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
          const int key = e >> 1, h = e & 1;
          bool ok = u0 + kt * 16 + g8 + 8 * key < sv.V;
          if (ok && sv.mask) ok = visible(m, sQpos[0][q0 + h], kp[kt][key], sQpos[1][q0 + h], ks[kt][key]);  // kp: loaded with K(tile)
          if (!ok) sc[kt][e] = NEG_INF;
        }
    }
    // Online softmax per query column; a column's BK keys are spread over the 8 lanes of equal lane % 4.
#pragma unroll
    for (int h = 0; h < 2; h++) {
      float mx = fmaxf(sc[0][h], sc[0][2 + h]);
#pragma unroll
      for (int kt = 1; kt < KT; kt++) mx = fmaxf(mx, fmaxf(sc[kt][h], sc[kt][2 + h]));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 4));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 8));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 16));
      const float mNew = fmaxf(rowMax[h], mx);
      const float mUse = mNew == NEG_INF ? 0.f : mNew;
      const float corr = exp2Fast(rowMax[h] - mUse);
      rowMax[h] = mNew;
      float sum = rowSum[h] * corr;
#pragma unroll
      for (int kt = 0; kt < KT; kt++) {
        sc[kt][h] = exp2Fast(sc[kt][h] - mUse);
        sc[kt][2 + h] = exp2Fast(sc[kt][2 + h] - mUse);
        sum = sum + sc[kt][h] + sc[kt][2 + h];
      }
      rowSum[h] = sum;
#pragma unroll
      for (int md = 0; md < D / 16; md++) {
        acc[md][h] *= corr;
        acc[md][2 + h] *= corr;
      }
    }
    u32 pb[KT][2];  // P^T as the B operand of k16 step kt: keys kt * 16 + 0-7 / 8-15
#pragma unroll
    for (int kt = 0; kt < KT; kt++) {
      pb[kt][0] = movT(pack2<T>(sc[kt][0], sc[kt][1]));
      pb[kt][1] = movT(pack2<T>(sc[kt][2], sc[kt][3]));
    }

    __syncwarp();
    store(TILE);  // V(tile)
    __syncwarp();
    if (tile + WARPS < t1) {
      load(kBase, tile + WARPS);  // K(next) in flight during O^T += V^T P^T
      loadPos(tile + WARPS);
    }
#pragma unroll
    for (int md = 0; md < D / 16; md++)
#pragma unroll
      for (int kt = 0; kt < KT; kt++) {
        u32 a[4];
        const int j = lane >> 3;
        ldsm4T(a, sV + (kt * 16 + (j >> 1) * 8 + (lane & 7)) * LD + md * 16 + (j & 1) * 8);
        mma16816<T>(acc[md], a, pb[kt][0], pb[kt][1]);
      }
  }

  // Epilogue: the warps' (O^T, max, sum) meet in shared memory; one partial per query row.
#pragma unroll
  for (int h = 0; h < 2; h++) {
    rowSum[h] += __shfl_xor_sync(0xffffffffu, rowSum[h], 4);
    rowSum[h] += __shfl_xor_sync(0xffffffffu, rowSum[h], 8);
    rowSum[h] += __shfl_xor_sync(0xffffffffu, rowSum[h], 16);
  }
  __syncthreads();  // every warp is done with its tiles: the shared memory becomes the epilogue's
  float* sAcc = (float*)smem;             // [WARPS][8][D]
  float* sM = sAcc + WARPS * 8 * D;       // [WARPS][8]
  float* sL = sM + WARPS * 8;             // [WARPS][8]
#pragma unroll
  for (int md = 0; md < D / 16; md++)
#pragma unroll
    for (int e = 0; e < 4; e++) sAcc[(warp * 8 + q0 + (e & 1)) * D + md * 16 + g8 + 8 * (e >> 1)] = acc[md][e];
  if (g8 == 0) {
#pragma unroll
    for (int h = 0; h < 2; h++) {
      sM[warp * 8 + q0 + h] = rowMax[h];
      sL[warp * 8 + q0 + h] = rowSum[h];
    }
  }
  __syncthreads();
  const i64 part = ((i64)c * p.Hk + kh) * R;
  for (int e = threadIdx.x; e < R * D; e += THREADS) {
    const int r = e / D, d = e % D;
    float M = NEG_INF;
#pragma unroll
    for (int w = 0; w < WARPS; w++) M = fmaxf(M, sM[w * 8 + r]);
    float L = 0.f, o = 0.f;
#pragma unroll
    for (int w = 0; w < WARPS; w++) {
      const float wt = M == NEG_INF ? 0.f : exp2f(sM[w * 8 + r] - M);
      L += wt * sL[w * 8 + r];
      o += wt * sAcc[(w * 8 + r) * D + d];
    }
    p.partO[(part + r) * D + d] = rowLive(L) ? o / L : 0.f;  // L NaN: a NaN key seen
    if (d == 0) p.partL[part + r] = rowLive(L) ? M + log2f(L) : NEG_INF;
  }
  dec::mergeIfLast(p, b, S, kh, 0, R, &shInt[3]);
}
}  // namespace decl

// ---- generic path (CUDA cores; fp32, bf16, fp16; D <= 256 with 16-byte rows) -------------------

namespace decg {
constexpr int THREADS = 128;
constexpr int BK = 32;      // cache rows per stage (one per lane in the logits phase)
constexpr int RG = 8;       // query rows per CTA pass (two per warp)
constexpr int STAGES = 3;

// Shared memory for head dim D and element size `bytes` (host mirror: genericSmem in decode.ts).
__host__ __device__ constexpr int rowBytes(int D, int bytes) { return D * bytes + 16; }
__host__ __device__ constexpr int stageBytes(int D, int bytes) { return 2 * BK * rowBytes(D, bytes) + 2 * BK * 4; }

template <typename T>
__device__ __forceinline__ void run(const DecodeParams& p) {
  constexpr int E = sizeof(T);  // bytes per element
  constexpr int PER16 = 16 / E; // elements per 16-byte chunk
  extern __shared__ __align__(16) unsigned char smem[];
  __shared__ int shInt[4];
  __shared__ float sP[RG][BK];
  __shared__ float sCorr[RG];
  __shared__ float sStat[RG][2];

  const int D = p.D, LB = rowBytes(D, E), SB = stageBytes(D, E);
  float* sQ = (float*)(smem + STAGES * SB);  // [RG][D] fp32, pre-scaled by scaleLog2
  const int c = blockIdx.x, kh = blockIdx.y, z = blockIdx.z;
  int b, s, S;
  dec::chunkOf(p, c, b, s, S);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int G = p.H / p.Hk, R = p.R, r0 = z * RG, Rz = min(RG, R - r0);
  const Mask m = {p.causal, p.window, p.window > 0 ? p.sinks : 0, p.qSeg != nullptr};
  dec::SeqView sv;
  int t0, t1;
  const bool early = dec::initView(p, m, b, s, S, BK, sv, t0, t1);
  if (!early) dec::locate<THREADS>(p, b, s, S, BK, shInt, sv, t0, t1, false);

  const char* kBase = (const char*)p.k[b] + (i64)kh * D * E;
  const char* vBase = (const char*)p.v[b] + (i64)kh * D * E;
  const int* posB = p.pos[b];
  const int* segB = p.seg[b];
  const i64 rowStride = (i64)p.Hk * D * E;
  const int CH = D / PER16;  // 16-byte chunks per row

  auto stageK = [&](int st) { return smem + st * SB; };
  auto stageV = [&](int st) { return smem + st * SB + BK * LB; };
  auto stagePos = [&](int st) { return (int*)(smem + st * SB + 2 * BK * LB); };
  auto load = [&](int st, int tile) {
    unsigned char* sK = stageK(st);
    unsigned char* sV = stageV(st);
    for (int cidx = threadIdx.x; cidx < BK * CH; cidx += THREADS) {
      const int r = cidx / CH, cc = (cidx % CH) * 16;
      const int u = tile * BK + r;
      const bool ok = u < sv.V;
      const i64 off = (ok ? dec::rowOf(sv, u) : 0) * rowStride + cc;
      cpAsync16(sK + r * LB + cc, kBase + off, ok);
      cpAsync16(sV + r * LB + cc, vBase + off, ok);
    }
    dec::loadTilePos(sv, m.hasSeg, posB, segB, stagePos(st), tile, BK);
  };
#pragma unroll
  for (int st = 0; st < STAGES - 1; st++) {
    if (t0 + st < t1) load(st, t0 + st);
    cpAsyncCommit();
  }
  if (early) dec::locate<THREADS>(p, b, s, S, BK, shInt, sv, t0, t1, true);

  // Queries of this pass in fp32, pre-scaled into log2 units; rows past R are zero.
  const T* q = (const T*)p.q;
  for (int e = threadIdx.x; e < RG * D; e += THREADS) {
    const int rr = e / D, d = e % D, r = r0 + rr;
    float x = 0.f;
    if (rr < Rz) {
      const i64 qi = (i64)b * p.Sq + r / G;
      x = toF32(q[(qi * p.H + (i64)kh * G + r % G) * D + d]) * p.scaleLog2;
    }
    sQ[rr * D + d] = x;
  }
  // Warp w owns rows w and w + 4 of the pass in the logits phase.
  int qp[2], qs[2];
#pragma unroll
  for (int h = 0; h < 2; h++) {
    const int rr = warp + 4 * h, r = r0 + rr;
    const bool ok = rr < Rz;
    const i64 qi = (i64)b * p.Sq + (ok ? r / G : 0);
    qp[h] = ok ? p.qPos[qi] : 0;
    qs[h] = ok && m.hasSeg ? p.qSeg[qi] : 0;
  }
  float rowMax[2] = {NEG_INF, NEG_INF}, rowSum[2] = {0.f, 0.f};
  // PV phase: thread t owns dims t and t + 128 of all RG rows.
  float acc[RG][2];
#pragma unroll
  for (int rr = 0; rr < RG; rr++) acc[rr][0] = acc[rr][1] = 0.f;

  for (int tile = t0; tile < t1; tile++) {
    const int it = tile - t0;
    cpAsyncWait<STAGES - 2>();
    __syncthreads();
    if (tile + STAGES - 1 < t1) load((it + STAGES - 1) % STAGES, tile + STAGES - 1);
    cpAsyncCommit();
    const int st = it % STAGES;
    const unsigned char* kr = stageK(st) + lane * LB;
    // Logits: lane = key, two rows per warp.
    float dot[2] = {0.f, 0.f};
    for (int ch = 0; ch < CH; ch++) {
      const uint4 raw = *(const uint4*)(kr + ch * 16);
      float kv[PER16];
      if constexpr (E == 4) {
        kv[0] = __uint_as_float(raw.x);
        kv[1] = __uint_as_float(raw.y);
        kv[2] = __uint_as_float(raw.z);
        kv[3] = __uint_as_float(raw.w);
      } else {
        const u32 w4[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
        for (int x = 0; x < 4; x++) {
          T lo, hi;
          lo.bits = (u16)(w4[x] & 0xffffu);
          hi.bits = (u16)(w4[x] >> 16);
          kv[2 * x] = toF32(lo);
          kv[2 * x + 1] = toF32(hi);
        }
      }
#pragma unroll
      for (int h = 0; h < 2; h++) {
        const float* qr = sQ + (warp + 4 * h) * D + ch * PER16;
#pragma unroll
        for (int x = 0; x < PER16; x += 4) {
          const float4 qv = *(const float4*)(qr + x);
          dot[h] += qv.x * kv[x] + qv.y * kv[x + 1] + qv.z * kv[x + 2] + qv.w * kv[x + 3];
        }
      }
    }
    const int u = tile * BK + lane;
    const int* kp = stagePos(st);
#pragma unroll
    for (int h = 0; h < 2; h++) {
      bool ok = u < sv.V;
      if (ok && sv.mask) ok = visible(m, qp[h], kp[lane], qs[h], m.hasSeg ? kp[BK + lane] : 0);
      const float sc = ok ? dot[h] : NEG_INF;
      float mx = sc;
      for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
      const float mNew = fmaxf(rowMax[h], mx);
      const float mUse = mNew == NEG_INF ? 0.f : mNew;
      const float corr = exp2f(rowMax[h] - mUse);
      const float pj = exp2f(sc - mUse);
      rowMax[h] = mNew;
      rowSum[h] = rowSum[h] * corr + warpSum(pj);
      sP[warp + 4 * h][lane] = pj;
      if (lane == 0) sCorr[warp + 4 * h] = corr;
    }
    __syncthreads();
    const unsigned char* vt = stageV(st);
#pragma unroll
    for (int x = 0; x < 2; x++) {
      const int d = threadIdx.x + x * THREADS;
      if (d >= D) continue;
#pragma unroll
      for (int rr = 0; rr < RG; rr++) acc[rr][x] *= sCorr[rr];
      for (int k = 0; k < BK; k++) {
        const float vv = toF32(*(const T*)(vt + k * LB + d * E));
#pragma unroll
        for (int rr = 0; rr < RG; rr++) acc[rr][x] += sP[rr][k] * vv;
      }
    }
  }
  cpAsyncWait<0>();
  if (lane == 0) {
#pragma unroll
    for (int h = 0; h < 2; h++) {
      sStat[warp + 4 * h][0] = rowMax[h];
      sStat[warp + 4 * h][1] = rowSum[h];
    }
  }
  __syncthreads();
  const i64 part = ((i64)c * p.Hk + kh) * R + r0;
  if (threadIdx.x < Rz) {
    const float l = sStat[threadIdx.x][1];
    p.partL[part + threadIdx.x] = rowLive(l) ? sStat[threadIdx.x][0] + log2f(l) : NEG_INF;  // l NaN: a NaN key seen
  }
#pragma unroll
  for (int x = 0; x < 2; x++) {
    const int d = threadIdx.x + x * THREADS;
    if (d >= D) continue;
#pragma unroll
    for (int rr = 0; rr < RG; rr++) {
      if (rr >= Rz) break;
      const float l = sStat[rr][1];
      p.partO[(part + rr) * D + d] = rowLive(l) ? acc[rr][x] / l : 0.f;
    }
  }
  dec::mergeIfLast(p, b, S, kh, r0, Rz, &shInt[3]);
}
}  // namespace decg

// ---- merges ---------------------------------------------------------------------------------

using dec::foldAcc;
using dec::foldWeights;
using dec::mergeOut;

// Fold sequence b's chunk partials of one output row (b, i, h) into the running (o, lse): one
// CTA of 8 warps per row. Warp w keeps an online log-sum-exp merge of chunks w, w + 8, ... (lanes
// over D in float4s: D % 4 == 0, D <= 256), the loads of several chunks in flight at once; the
// warps meet once in shared memory; warp 0 has the running (o, lse) fetched from the start.
// Grid B * Sq * H, 256 threads.
extern "C" __global__ void __launch_bounds__(256, 1) decode_merge(const __grid_constant__ DecodeParams p) {
  constexpr int WARPS = 8;
  __shared__ float sM[WARPS], sL[WARPS];
  __shared__ float4 sAcc[WARPS][64];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int row = blockIdx.x;
  const int h = row % p.H, bi = row / p.H, i = bi % p.Sq, b = bi / p.Sq;
  const int G = p.H / p.Hk, kh = h / G, r = i * G + h % G, D = p.D;
  const int c0 = p.chunk0[b], c1 = p.chunk0[b + 1];
  const i64 stride = (i64)p.Hk * p.R;  // partial rows per chunk
  const i64 base = (i64)kh * p.R + r;
  const int d0 = lane * 4, d1 = 128 + lane * 4;
  const i64 orow = (i64)bi * p.H + h;
  const float* o = p.o + orow * D;
  float lseOld = 0.f;
  float4 old[2] = {make_float4(0.f, 0.f, 0.f, 0.f), make_float4(0.f, 0.f, 0.f, 0.f)};
  if (warp == 0) {  // in flight while the partials load
    lseOld = p.lse[orow];
    if (d0 < D) old[0] = *(const float4*)(o + d0);
    if (d1 < D) old[1] = *(const float4*)(o + d1);
  }
  float m = NEG_INF, l = 0.f;
  float4 acc[2] = {make_float4(0.f, 0.f, 0.f, 0.f), make_float4(0.f, 0.f, 0.f, 0.f)};
#pragma unroll 4
  for (int c = c0 + warp; c < c1; c += WARPS) {
    const i64 pr = c * stride + base;
    const float* po = p.partO + pr * D;
    float a, w;
    foldWeights(p.partL[pr], m, l, a, w);
    if (d0 < D) foldAcc(acc[0], a, w, *(const float4*)(po + d0));
    if (d1 < D) foldAcc(acc[1], a, w, *(const float4*)(po + d1));
  }
  sAcc[warp][lane] = acc[0];
  sAcc[warp][32 + lane] = acc[1];
  if (lane == 0) {
    sM[warp] = m;
    sL[warp] = l;
  }
  __syncthreads();
  if (warp != 0) return;
  float M = NEG_INF;
#pragma unroll
  for (int w = 0; w < WARPS; w++) M = fmaxf(M, sM[w]);
  float wt[WARPS], W = 0.f;
#pragma unroll
  for (int w = 0; w < WARPS; w++) {
    wt[w] = M == NEG_INF ? 0.f : exp2f(sM[w] - M);  // a warp that saw nothing: exp2(-inf) = 0
    W += wt[w] * sL[w];
  }
#pragma unroll
  for (int x = 0; x < 2; x++) {
    const int d = x == 0 ? d0 : d1;
    if (d >= D) continue;
    float4 sum = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
    for (int w = 0; w < WARPS; w++) {
      const float4 a = sAcc[w][x * 32 + lane];
      sum.x += wt[w] * a.x; sum.y += wt[w] * a.y; sum.z += wt[w] * a.z; sum.w += wt[w] * a.w;
    }
    mergeOut(p, orow, d, M, W, sum, lseOld, old[x], x == 0 && lane == 0);
  }
}

// The multi-rank combine: `gathered` holds P ranks' [rows * D outputs | rows LSEs] (fp32, natural
// log, an all-gather's layout). Every rank computes the same merge, in rank order, into (o, lse);
// a row no rank saw keeps its (o, lse), and one whose LSE is NaN on some rank (it saw a NaN key
// there) becomes NaN. One warp per row, lanes over D. Grid ceil(rows / 4), 128.
extern "C" __global__ void __launch_bounds__(128) decode_merge_ranks(const float* gathered, int P, int rows, int D, float* o, float* lse) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int row = blockIdx.x * 4 + warp;
  if (row >= rows) return;
  const i64 per = (i64)rows * (D + 1);
  float M = NEG_INF;
  bool nan = false;
  for (int r = 0; r < P; r++) {
    const float l = gathered[r * per + (i64)rows * D + row];
    M = fmaxf(M, l);  // passes a NaN over: kept aside
    nan |= l != l;
  }
  if (nan) M = __int_as_float(0x7fc00000);  // every weight expf(l - M) NaN: o and lse NaN
  else if (M == NEG_INF) return;
  float W = 0.f;
  for (int r = 0; r < P; r++) W += expf(gathered[r * per + (i64)rows * D + row] - M);
  for (int d = lane; d < D; d += 32) {
    float x = 0.f;
    for (int r = 0; r < P; r++) {
      const float l = gathered[r * per + (i64)rows * D + row];
      if (l != NEG_INF) x += expf(l - M) * gathered[r * per + (i64)row * D + d];
    }
    o[(i64)row * D + d] = x / W;
  }
  if (lane == 0) lse[row] = M + logf(W);
}

// Read bandwidth probe for the benchmark: every 16-byte vector of `src` once, 8 loads in flight
// per thread; `sink` is written only if the impossible happens, so the loads stay.
extern "C" __global__ void __launch_bounds__(256) decode_read_bw(const uint4* src, i64 n, u32* sink) {
  const i64 stride = (i64)gridDim.x * blockDim.x;
  u32 x = 0;
  for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += 8 * stride) {
    uint4 v[8];
#pragma unroll
    for (int j = 0; j < 8; j++) {
      const i64 k = i + j * stride;
      v[j] = make_uint4(0, 0, 0, 0);
      if (k < n) asm("ld.global.cs.v4.u32 {%0,%1,%2,%3}, [%4];" : "=r"(v[j].x), "=r"(v[j].y), "=r"(v[j].z), "=r"(v[j].w) : "l"(src + k));
    }
#pragma unroll
    for (int j = 0; j < 8; j++) x ^= v[j].x ^ v[j].y ^ v[j].z ^ v[j].w;
  }
  if (x == 0x9e3779b9u && sink) sink[0] = x;
}

// ---- entries ----------------------------------------------------------------------------------
// Dynamic shared memory: decm::Smem<D, max(4, M)>::BYTES (mma), decg STAGES * stageBytes +
// RG * D * 4 (generic); the host mirrors both (src/cuda/decode.ts).
#define DEC_MMA(TY, SUF, D, M)                                                                                   \
  extern "C" __global__ void __launch_bounds__((M < 4 ? 4 : M) * 32, 1) decode_mma_##SUF##_d##D##_m##M(const __grid_constant__ DecodeParams p) { \
    decm::run<TY, D, M>(p);                                                                                    \
  }
DEC_MMA(Bf16, bf16, 64, 1)
DEC_MMA(Bf16, bf16, 64, 2)
DEC_MMA(Bf16, bf16, 64, 4)
DEC_MMA(Bf16, bf16, 64, 8)
DEC_MMA(Bf16, bf16, 128, 1)
DEC_MMA(Bf16, bf16, 128, 2)
DEC_MMA(Bf16, bf16, 128, 4)
DEC_MMA(Bf16, bf16, 128, 8)
DEC_MMA(F16, f16, 64, 1)
DEC_MMA(F16, f16, 64, 2)
DEC_MMA(F16, f16, 64, 4)
DEC_MMA(F16, f16, 64, 8)
DEC_MMA(F16, f16, 128, 1)
DEC_MMA(F16, f16, 128, 2)
DEC_MMA(F16, f16, 128, 4)
DEC_MMA(F16, f16, 128, 8)
extern "C" __global__ void __launch_bounds__(decl::THREADS, 2) decode_ldg_bf16_d128(const __grid_constant__ DecodeParams p) { decl::run<Bf16, 128>(p); }
extern "C" __global__ void __launch_bounds__(decl::THREADS, 2) decode_ldg_f16_d128(const __grid_constant__ DecodeParams p) { decl::run<F16, 128>(p); }
extern "C" __global__ void __launch_bounds__(decl::THREADS, 2) decode_ldg_bf16_d64(const __grid_constant__ DecodeParams p) { decl::run<Bf16, 64>(p); }
extern "C" __global__ void __launch_bounds__(decl::THREADS, 2) decode_ldg_f16_d64(const __grid_constant__ DecodeParams p) { decl::run<F16, 64>(p); }
extern "C" __global__ void __launch_bounds__(128) decode_generic_f32(const __grid_constant__ DecodeParams p) { decg::run<float>(p); }
extern "C" __global__ void __launch_bounds__(128) decode_generic_bf16(const __grid_constant__ DecodeParams p) { decg::run<Bf16>(p); }
extern "C" __global__ void __launch_bounds__(128) decode_generic_f16(const __grid_constant__ DecodeParams p) { decg::run<F16>(p); }
