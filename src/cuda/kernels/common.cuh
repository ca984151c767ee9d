// Shared helpers for the attention kernels: storage types, the mask contract on global positions,
// tile classification, and thin wrappers over the PTX the FA2-style kernels use (mma.sync
// m16n8k16, ldmatrix, cp.async). Self-contained: no CUDA headers, so NVRTC needs no -I.
//
// Tensors are row-major:  q, o, dO, dq : [Sq, H, D]   k, v, dk, dv : [Sk, Hk, D]   lse, delta : [Sq, H]
// Query head h reads KV head h / (H / Hk). Partial results, O, LSE and gradients are fp32.
#pragma once

typedef unsigned short u16;
typedef unsigned int u32;
typedef long long i64;
typedef unsigned long long u64;

#define LOG2E 1.4426950408889634f
#define LN2 0.6931471805599453f
#define NEG_INF __int_as_float(0xff800000)
#define POS_INF __int_as_float(0x7f800000)

// Storage tags for 16-bit inputs (bit patterns; compute is fp32 or the tensor cores').
struct Bf16 { u16 bits; };
struct F16 { u16 bits; };

__device__ __forceinline__ float toF32(float x) { return x; }
__device__ __forceinline__ float toF32(Bf16 x) { return __uint_as_float((u32)x.bits << 16); }
__device__ __forceinline__ float toF32(F16 x) {
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(x.bits));
  return f;
}

// Two fp32 values -> one register of two 16-bit values (lo in bits 0..15), round to nearest even.
template <typename T> __device__ __forceinline__ u32 pack2(float lo, float hi);
template <> __device__ __forceinline__ u32 pack2<Bf16>(float lo, float hi) {
  u32 r;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
}
template <> __device__ __forceinline__ u32 pack2<F16>(float lo, float hi) {
  u32 r;
  asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
}

// 2^x on the special-function unit (ex2.approx: rel. error ~2^-22); ex2(-inf) = +0, which the
// online softmax relies on for masked logits. Used only in the 16-bit (tensor-core) kernels; the
// fp32 path uses the accurate expf. We do not compile with --use_fast_math, so -inf, NaN and
// the accurate expf/logf used in the merges keep their IEEE meaning everywhere else.
__device__ __forceinline__ float exp2Fast(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// ---- the mask contract (DESIGN.md), on global positions -------------------------------------

struct Mask {
  int causal;  // 0 / 1
  int window;  // 0 = no window
  int sinks;   // only with a window (the host passes 0 otherwise)
  int hasSeg;  // segment ids present for queries and keys
};

// Key at global position kj (segment ks) visible to query qi (segment qs)?
__host__ __device__ __forceinline__ bool visible(const Mask& m, int qi, int kj, int qs, int ks) {
  if (m.hasSeg && qs != ks) return false;
  if (m.causal && kj > qi) return false;
  if (m.window <= 0) return true;
  if (qi - kj < m.window && (m.causal || kj - qi < m.window)) return true;
  return kj < m.sinks;
}

// The key positions visible to a query at position qi, segments aside: [lo, hi], and the sinks
// below sinkEnd. visible(m, qi, kj, s, s) == keyRange(m, qi).has(kj) for every kj >= 0 (compared
// on the host by tests/cuda/key-range.test.ts). For loops over many keys whose positions are already
// in registers: two or three compares a key, no branch, where visible()'s early returns become
// branches around each key (kernels/NOTES.md, session 20).
struct KeyRange {
  int lo, hi, sinkEnd;
  __host__ __device__ __forceinline__ bool has(int kj) const { return (kj >= lo) & (kj <= hi) | (kj < sinkEnd); }
};
__host__ __device__ __forceinline__ KeyRange keyRange(const Mask& m, int qi) {
  const long long BIG = 0x7fffffff, w = m.window;
  long long lo = -BIG - 1, hi = m.causal ? qi : BIG;
  if (w > 0) {
    lo = (long long)qi - w + 1;
    if (!m.causal) hi = (long long)qi + w - 1;
  }
  KeyRange r;
  r.lo = (int)(lo < -BIG - 1 ? -BIG - 1 : lo);
  r.hi = (int)(hi > BIG ? BIG : hi);
  r.sinkEnd = w > 0 ? (m.causal ? (m.sinks <= qi ? m.sinks : qi + 1) : m.sinks) : 0;  // (qi + 1 only below INT_MAX)
  return r;
}

// The dual, for kernels that hold a key and test many queries (the backward's S^T): the query
// positions that see key kj, segments aside: [lo, hi] (a sink is seen by every query from kj on,
// or by all of them without a causal mask). visible(m, qi, kj, s, s) == queryRange(m, kj).has(qi)
// for every qi >= 0 (tests/cuda/key-range.test.ts). noQueries() is the empty range of a missing key.
struct QueryRange {
  int lo, hi;
  __host__ __device__ __forceinline__ bool has(int qi) const { return (qi >= lo) & (qi <= hi); }
};
__host__ __device__ __forceinline__ QueryRange queryRange(const Mask& m, int kj) {
  const long long BIG = 0x7fffffff, w = m.window;
  long long lo = m.causal ? kj : -BIG - 1, hi = BIG;
  if (w > 0 && kj >= m.sinks) {
    hi = (long long)kj + w - 1;
    if (!m.causal) lo = (long long)kj - w + 1;
  }
  QueryRange r;
  r.lo = (int)(lo < -BIG - 1 ? -BIG - 1 : lo);
  r.hi = (int)(hi > BIG ? BIG : hi);
  return r;
}
__host__ __device__ __forceinline__ QueryRange noQueries() { return QueryRange{1, 0}; }

enum { TILE_EMPTY = 0, TILE_PARTIAL = 1, TILE_FULL = 2 };

// Classify the differences d = i - j in [dLo, dHi] against the allowed interval [aLo, aHi].
__device__ __forceinline__ int classifyDiff(i64 dLo, i64 dHi, i64 aLo, i64 aHi) {
  if (dHi < aLo || dLo > aHi) return TILE_EMPTY;
  if (dLo >= aLo && dHi <= aHi) return TILE_FULL;
  return TILE_PARTIAL;
}

// A tile as the box of its positions and segment ids: {posLo, posHi, segLo, segHi}; an empty
// tile has posLo > posHi. Mirrors classifyBlock in src/core/mask.ts (sound for any subset of
// the box, exact for contiguous positions).
__device__ __forceinline__ int classifyTile(const Mask& m, int4 q, int4 k) {
  if (q.x > q.y || k.x > k.y) return TILE_EMPTY;
  const i64 BIG = (i64)1 << 40;
  const i64 w = m.window;
  const i64 sinks = w > 0 ? m.sinks : 0;
  const i64 aLo = m.causal ? 0 : (w <= 0 ? -BIG : -(w - 1));
  const i64 aHi = w <= 0 ? BIG : w - 1;
  const i64 sLo = m.causal ? 0 : -BIG;
  int sinkPart = -1, restPart = -1;
  if (k.x < sinks) {
    const i64 hi = k.y < sinks - 1 ? k.y : sinks - 1;
    sinkPart = classifyDiff((i64)q.x - hi, (i64)q.y - k.x, sLo, BIG);
  }
  if (k.y >= sinks) {
    const i64 lo = k.x > sinks ? k.x : sinks;
    restPart = classifyDiff((i64)q.x - k.y, (i64)q.y - lo, aLo, aHi);
  }
  int pos = sinkPart < 0 ? restPart : restPart < 0 ? sinkPart : sinkPart == restPart ? sinkPart : TILE_PARTIAL;
  if (!m.hasSeg) return pos;
  if (q.w < k.z || k.w < q.z) return TILE_EMPTY;
  if (pos == TILE_EMPTY) return TILE_EMPTY;
  if (q.z == q.w && k.z == k.w && q.z == k.z) return pos;
  return TILE_PARTIAL;
}

// ---- kernel parameter blocks (packed by src/cuda/attention.ts: pointers first, then 4-byte fields)

struct FwdParams {
  const void* q;       // [Sq, H, D]  T
  const void* k;       // [Sk, Hk, D] T
  const void* v;       // [Sk, Hk, D] T
  const int* qPos;     // [Sq] global positions
  const int* kPos;     // [Sk]
  const int* qSeg;     // [Sq] segment ids, or null
  const int* kSeg;     // [Sk] or null
  const int4* qTiles;  // [ceil(Sq / blockQ)] boxes of query tiles
  const int4* kTiles;  // [ceil(Sk / blockK)] boxes of key tiles
  float* o;            // [Sq, H, D] running output (fp32), merged in place
  float* lse;          // [Sq, H]    running LSE (natural log), -inf = nothing seen yet
  int Sq, Sk, H, Hk, D;
  int causal, window, sinks;
  float scale;
  int headGroup;       // launch order (launchTile): heads interleaved in groups of this many; 0 or 1: one head at a time
  const int2* qSpans;  // [ceil(Sq / blockQ)] {first, one past the last} key tile a query tile sees
                       // anything of (attn_tile_spans; the tensor-core forwards); null for the generic one.
                       // One int2 more after them: the persistent ht's item counter (zeroed by attn_tile_spans)
  u64* trace;          // [CTAs][8] per-CTA timestamps (hop::Trace), written only by a Hopper
                       // forward built with -DFWD_TRACE (bench/gpu-trace.ts); null otherwise
};

struct BwdParams {
  const void* q;       // [Sq, H, D]  T
  const void* k;       // [Sk, Hk, D] T
  const void* v;       // [Sk, Hk, D] T
  const void* dO;      // [Sq, H, D]  T
  const float* lse;    // [Sq, H] final (global) LSE
  const float* delta;  // [Sq, H] rowsum(dO * O)
  const int* qPos;
  const int* kPos;
  const int* qSeg;
  const int* kSeg;
  const int4* qTiles;
  const int4* kTiles;
  float* dq;           // [Sq, H, D]  fp32, added into
  float* dk;           // [Sk, Hk, D] fp32, added into
  float* dv;           // [Sk, Hk, D] fp32, added into
  int Sq, Sk, H, Hk, D;
  int causal, window, sinks;
  float scale;
  int split;           // tensor-core path: CTAs sharing one key tile's query heads (0 or 1: one)
  int headGroup;       // launch order (launchTile), as in FwdParams
  u64* trace;          // [CTAs][8] per-CTA timestamps (hop::Trace), written only by the Hopper
                       // backward built with -DBWD_TRACE (bench/gpu-trace.ts); null otherwise
};

// A CTA's (tile, head) = (x, y) of a 2-D grid whose x tiles run in decreasing order of work under
// a causal mask (the caller maps x to its heaviest tile first). CTAs start in the order of their
// linear index; taking blockIdx as (x, y) starts every head's heaviest tile before its lightest,
// but the heavy tiles of the last heads still start last and run on alone while the other SMs
// idle. Interleaving the heads in groups of g (linear index -> x major, head minor within a
// group) starts the g heads' tiles heaviest first together: the tail is then the light tiles of
// the last group (kernels/NOTES.md run 51). The host keeps g at 4 or less (headGroup in
// src/cuda/attention.ts): larger groups measured slower.
// orderTile: the (tile, head) of linear index L of nx tiles and ny heads in that order; also the
// item order of the Hopper forward's persistent grid (attn_fwd_h.cu).
__device__ __forceinline__ int2 orderTile(int L, int g, int nx, int ny) {
  if (g <= 1) return make_int2(L % nx, L / nx);
  const int y0 = L / (g * nx) * g, gs = min(g, ny - y0);  // this group's first head and size
  const int r = L - y0 * nx;
  return make_int2(r / gs, y0 + r % gs);
}
__device__ __forceinline__ int2 launchTile(int g) {
  if (g <= 1) return make_int2(blockIdx.x, blockIdx.y);
  return orderTile(blockIdx.y * gridDim.x + blockIdx.x, g, gridDim.x, gridDim.y);
}

// Which end of a block is the heavier, so that the kernels take it first (the tail is then the
// light tiles: kernels/NOTES.md session 31). Under a causal mask the last query tiles see the
// most key tiles and the first key tiles are seen by the most query tiles; at a window's edge
// (keys a block behind the queries) it is the other way round, and taking the light end first
// left the heaviest items to run on alone at the end (6.6% of the SMs' time idle, run 105's
// trace). The forwards judge by the spans of the two end query tiles (attn_tile_spans), the
// backwards by which of the end query tiles see the two end key tiles; exact for the monotone
// masks (causal, window, sinks). Unmasked blocks and ties keep the causal order. Every CTA
// reads the same values, so all take the same order. firstKeysHeavier is not inlined: its four
// classifyTile calls, inlined at the top of attn_bwd_h's D=64 kernels (255 registers), made ptxas
// spill 60-80 bytes there; called, they cost a 16-byte stack frame and no spill.
__device__ __forceinline__ bool anyMask(const Mask& m) { return m.causal || m.window > 0 || m.hasSeg; }
__device__ __forceinline__ bool lastQueriesHeavier(const Mask& m, const int2* qSpans, int nqt) {
  if (!qSpans || !anyMask(m)) return true;
  const int2 a = qSpans[0], b = qSpans[nqt - 1];
  return b.y - b.x >= a.y - a.x;
}
__device__ __noinline__ bool firstKeysHeavier(const Mask& m, const int4* qTiles, int nqt, const int4* kTiles, int nkt) {
  if (!anyMask(m)) return true;
  const int4 qa = qTiles[0], qb = qTiles[nqt - 1], ka = kTiles[0], kb = kTiles[nkt - 1];
  const int first = (classifyTile(m, qa, ka) != TILE_EMPTY) + (classifyTile(m, qb, ka) != TILE_EMPTY);
  const int last = (classifyTile(m, qa, kb) != TILE_EMPTY) + (classifyTile(m, qb, kb) != TILE_EMPTY);
  return first >= last;
}

template <typename P> __device__ __forceinline__ Mask maskOf(const P& p) {
  Mask m;
  m.causal = p.causal;
  m.window = p.window;
  m.sinks = p.window > 0 ? p.sinks : 0;
  m.hasSeg = p.qSeg != 0 && p.kSeg != 0;
  return m;
}

// ---- warp-level tensor-core helpers (sm_80+) ----------------------------------------------

__device__ __forceinline__ u32 smemAddr(const void* p) { return (u32)__cvta_generic_to_shared(p); }

// Four 8x8 b16 matrices; lane l supplies the row address of matrix l / 8 (a shared-memory
// address, or a generic pointer into shared memory).
__device__ __forceinline__ void ldsm4(u32 r[4], u32 addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}
__device__ __forceinline__ void ldsm4(u32 r[4], const void* p) { ldsm4(r, smemAddr(p)); }
__device__ __forceinline__ void ldsm4T(u32 r[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smemAddr(p)));
}

// c[16x8] += a[16x16] * b[16x8], fp32 accumulate.
template <typename T> __device__ __forceinline__ void mma16816(float c[4], const u32 a[4], u32 b0, u32 b1);
template <> __device__ __forceinline__ void mma16816<Bf16>(float c[4], const u32 a[4], u32 b0, u32 b1) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
               : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <> __device__ __forceinline__ void mma16816<F16>(float c[4], const u32 a[4], u32 b0, u32 b1) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
               : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// 16-byte global -> shared copy; `valid` false zero-fills (src-size 0 reads nothing).
__device__ __forceinline__ void cpAsync16(void* s, const void* g, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(smemAddr(s)), "l"(g), "r"(valid ? 16 : 0));
}
// 4-byte global -> shared copy (positions, segment ids, row statistics) to a shared-memory address
// or pointer; `valid` false zero-fills (g must still be a valid address).
__device__ __forceinline__ void cpAsync4(u32 s, const void* g, bool valid) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;" ::"r"(s), "l"(g), "r"(valid ? 4 : 0) : "memory");
}
__device__ __forceinline__ void cpAsync4(void* s, const void* g, bool valid) { cpAsync4(smemAddr(s), g, valid); }
__device__ __forceinline__ void cpAsyncCommit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N> __device__ __forceinline__ void cpAsyncWait() { asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory"); }

__device__ __forceinline__ float warpSum(float x) {
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}
// The sum over the quad of lanes (lane / 4 alike) that share an accumulator row.
__device__ __forceinline__ float quadSum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

// Merge a block result (oB, lseB) into the running (o, lse) of one row, fp32. Returns the new
// LSE and writes the weights for o: o = o * wOld + oB * wB. lseB must be finite.
__device__ __forceinline__ float mergeWeights(float lseOld, float lseB, float& wOld, float& wB) {
  if (lseOld == NEG_INF) {
    wOld = 0.f;
    wB = 1.f;
    return lseB;
  }
  const float mx = fmaxf(lseOld, lseB);
  const float eo = expf(lseOld - mx), eb = expf(lseB - mx);
  const float sum = eo + eb;
  wOld = eo / sum;
  wB = eb / sum;
  return mx + logf(sum);
}

// The forward kernels' epilogue for one of a thread's two rows: query row i of head h, whose
// columns 8n + 2·(lane%4) (+1) this thread holds in acc[4n + 2r] (+1) for n < D/8 (the m16n8 /
// wgmma accumulator layout), with its block statistics (rowMax in log2 units; rowSum partial
// over the quad of lanes sharing the row). The block's (o, lse) merge into the running
// accumulators in fp32; a row past Sq or that saw no key (l = 0) leaves them untouched. A row
// whose sum is NaN (it saw a NaN score, under allowNonfinite) is live: it stores NaN (o and lse),
// never reads as a row that saw nothing. The row max (fmaxf) passes NaN scores over, but their
// exponentials are NaN and so is the sum.
__device__ __forceinline__ bool rowLive(float l) { return !(l <= 0.f); }
template <int D>
__device__ __forceinline__ void mergeRowOut(const FwdParams& p, int i, int h, int lane, int r, float rowMax, float rowSum, const float* acc) {
  const float l = quadSum(rowSum);
  const bool live = i < p.Sq && rowLive(l);
  const u64 row = (u64)i * p.H + h;
  const float lseOld = live ? p.lse[row] : 0.f;
  __syncwarp();  // all four lanes read lse before lane 0 of the quad writes it
  if (!live) return;
  const float lseB = (rowMax + log2f(l)) * LN2;
  float wOld, wB;
  const float lseNew = mergeWeights(lseOld, lseB, wOld, wB);
  const float inv = wB / l;
  float* out = p.o + row * D;
  // The row's old o read in one batch before any store. A load and store a piece (a branch, a
  // load, its store, 16 times) compiled to 16 trips to DRAM a row in a merging step (every ring
  // step after the first): a merging step's forward ran 5% (none) to 12% (a window's edge)
  // slower than a first one. Batched: 0.83 -> 0.90 of none at the edge (kernels/NOTES.md
  // session 34, run 121).
  float2 cur[D / 8];
#pragma unroll
  for (int n = 0; n < D / 8; n++) cur[n] = make_float2(0.f, 0.f);
  if (wOld != 0.f) {
#pragma unroll
    for (int n = 0; n < D / 8; n++) cur[n] = *(const float2*)(out + n * 8 + 2 * (lane & 3));
  }
#pragma unroll
  for (int n = 0; n < D / 8; n++) {
    cur[n].x = cur[n].x * wOld + acc[4 * n + 2 * r] * inv;
    cur[n].y = cur[n].y * wOld + acc[4 * n + 2 * r + 1] * inv;
    *(float2*)(out + n * 8 + 2 * (lane & 3)) = cur[n];
  }
  if ((lane & 3) == 0) p.lse[row] = lseNew;
}
