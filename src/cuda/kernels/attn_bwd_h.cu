// Blockwise attention backward on Hopper (sm_90a only): attn_bwd_h_{bf16,f16}_d{64,128}.
//
// The contract of attn_bwd.cu's tensor-core kernel (one KV block, the final LSE and delta =
// rowsum(dO * O), adds into fp32 dq, dk, dv; tiles classified on global positions; p.split
// shares a key tile's GQA group over CTAs whose dK/dV then meet by atomics), on warpgroup MMA:
//   - a CTA owns 128 keys of one KV head (grid (ceil(Sk / 128), Hk * split), 256 threads): two
//     warpgroups of 64 keys each, holding dK and dV (m64 x D fp32) in registers for the whole
//     loop over the group's query heads and 64-query tiles;
//   - K and V are loaded once; every query tile's class against this key tile is kept as two
//     bits in shared memory, so the loop finds the next visible (head, query tile) there; Q and dO
//     tiles (with LSE, delta, positions) go through three stages by cp.async from all threads, the
//     tiles in the 128-byte swizzle ([D/64 panels][rows][128 B]);
//   - per query tile each warpgroup issues S^T = K Q^T and dP^T = V dO^T (m64n64k16, both
//     operands in shared memory), forms P^T = exp2(S^T·scale·log2e − LSE·log2e) and
//     dS^T = P^T (dP^T − delta) in registers (masked on partial tiles), issues dV += P^T dO and
//     dK += dS^T Q with the 16-bit P^T / dS^T as register A operands and dO / Q read MN-major,
//     and writes dS^T to shared memory; after a barrier the two warpgroups compute dQ = dS K
//     (A = dS^T read transposed, B = K read MN-major): at D=128 warpgroup w takes columns
//     64w..64w+63 over all 128 keys, at D=64 its own 64 keys over all columns; each warp stages
//     its 16 dQ rows (scaled, fp32) in shared memory and adds them to global dq with one bulk
//     reduce (cp.reduce.async.bulk .add.f32) a row, 32 atomics a thread before (NOTES.md run 14).
// attn_bwd_ht_* load the Q/dO tiles by TMA onto a per-stage mbarrier instead (5-9% faster, run 19),
// and their warpgroups take turns at the tensor cores in place of the two barriers a tile (session
// 35, described at PP below): the default backward on sm_90a (src/cuda/attention.ts;
// RINGATTN_WGMMA_BWD=1 selects attn_bwd_h_*, =0 the mma.sync kernel of attn_bwd.cu).
#include "common.cuh"
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#include "hopper.cuh"

// -DBWD_TRACE (bench/gpu-trace.ts): thread 0 of each CTA writes its hop::Trace record (head field:
// KV head x split + the CTA's part of the group): mark 1 when the first (head, query tile)'s
// operands have landed (K and V with them), 2 when that pair's products are issued and its dQ
// reduce sent, 3 after the last pair's, and stops once every thread has issued its dK/dV
// reductions (issued, not landed: the epilogue's time is the issue's).
// Off, BTRACE(x) is nothing.
#ifdef BWD_TRACE
#define BTRACE(x) x
#else
#define BTRACE(x)
#endif

namespace bwdh {
using namespace hop;
// attn_bwd_ht_* (PP below): the two warpgroups take turns at the tensor cores instead of
// meeting at two CTA barriers a query tile. Each warpgroup issues its products in three groups, S^T
// and dP^T (A), dV and dK (B), dQ (C), and the turns go A0 A1 B0 B1 C0 C1 (named barriers 1 and 2,
// as the forward's ping-pong): warpgroup 0's exponentials and dS^T run under warpgroup 1's A,
// warpgroup 1's under warpgroup 0's B. Warpgroup 1's C turn comes after warpgroup 0 wrote dS^T and
// passed its B turn, and warpgroup 0's C after warpgroup 1's B, so the turns also order dS^T's
// stores before both dQ products. Stages: warpgroup 1 loads them (thread 128 the TMA boxes, its 128
// threads the rows with cp.async that arrive on the stage's mbarrier), once all eight warps have
// released the stage (an `empty` mbarrier a stage); warpgroup 0 writes the next dS^T only
// after warpgroup 1's dQ has read the last (named barrier 3). +6-14% at D=64 and +1-2% at D=128
// over the two barriers, which attn_bwd_h_* keep (kernels/NOTES.md, session 35).
// The ping-pong's turns: warpgroup wg waits for its turn on barrier 1 + wg and passes the turn to
// the other on 1 + (1 - wg); every bar.sync of one warpgroup meets one bar.arrive of the other.
__device__ __forceinline__ void ppWait(int wg) {
  if (wg == 0) asm volatile("bar.sync 1, 256;" ::: "memory");
  else asm volatile("bar.sync 2, 256;" ::: "memory");
}
__device__ __forceinline__ void ppPass(int wg) {
  if (wg == 0) asm volatile("bar.arrive 2, 256;" ::: "memory");
  else asm volatile("bar.arrive 1, 256;" ::: "memory");
}

constexpr int BK = 128, THREADS = 256, STAGES = 3;  // Q/dO stages: loads run two tiles ahead
constexpr int MAX_QTILES = 16384;        // query tiles a call may have (1M queries at D=128); the host checks
constexpr int STG_WARP = 2 * 16 * 128;   // a warp's dQ staging: 16 rows x 64 fp32 as two TMA boxes of 32 columns
// TMA maps built per call on the host (src/cuda/attention.ts bwdTensorMaps): dq ([Sq, H, D] fp32,
// box 32 x 1 x 16, 128-byte swizzle) for the reduce-adds; q and dO ([Sq, H, D] 16-bit, box 64 x 1
// x 64) for the loads of the TMA variant (attn_bwd_ht_*).
struct BwdMaps {
  alignas(64) unsigned char dq[128];
  alignas(64) unsigned char q[128];
  alignas(64) unsigned char dO[128];
};

// Query tiles: 64 rows at D=128; 128 at D=64, where a 64-query step's products were too short
// to cover the loop's fixed costs (two barriers, the waits, the dQ reduces): kernels/NOTES.md run 29.
template <int D> struct Cfg {
  static constexpr int BQ = D == 64 ? 128 : 64;
  static constexpr int KV_BYTES = BK * D * 2;  // K or V
  static constexpr int Q_BYTES = BQ * D * 2;   // Q or dO of one stage
  static constexpr int DS_BYTES = BK * BQ * 2;  // dS^T [128 keys][BQ queries], 16-bit, in 64-query panels
  static constexpr int ROW_BYTES = 4 * BQ * 4;  // LSE, delta, qPos, qSeg of one stage
  static constexpr int STG_BYTES = 8 * STG_WARP;  // dQ staging, a region per warp
  static constexpr int BITS_BYTES = 2 * MAX_QTILES / 8;  // visible / partial bit per query tile
  static constexpr int SMEM = 1024 + 2 * KV_BYTES + STAGES * 2 * Q_BYTES + DS_BYTES + STAGES * ROW_BYTES + 2 * BK * 4 + STG_BYTES + BITS_BYTES + 2 * STAGES * 8;
  static_assert(SMEM <= 227 * 1024, "shared memory");
};

// TMA: Q and dO tiles come by TMA from one thread, completing the stage's mbarrier (attn_bwd_ht_*,
// the default); otherwise by 16-byte cp.async from every thread (attn_bwd_h_*).
template <typename T, int D, bool TMA>
__device__ __forceinline__ void run(const BwdParams& p, const BwdMaps& maps) {
  using C = Cfg<D>;
  using M = Wg<T>;
  constexpr int BQ = C::BQ, NQ = BQ / 8;  // NQ: S^T accumulator column groups a thread holds
  constexpr bool PP = TMA;                // ht: the warpgroups' turns (above); warpgroup 1 loads the stages
  constexpr int LOADERS = PP ? 128 : THREADS;
  extern __shared__ __align__(1024) unsigned char smemRaw[];
  const u32 base = (smemAddr(smemRaw) + 1023) & ~1023u;
  unsigned char* const gbase = smemRaw + (base - smemAddr(smemRaw));
  const u32 sK = base, sV = sK + C::KV_BYTES;
  auto sQ = [&](int st) { return sV + C::KV_BYTES + st * 2 * C::Q_BYTES; };
  auto sdO = [&](int st) { return sQ(st) + C::Q_BYTES; };
  const u32 sdS = sV + C::KV_BYTES + STAGES * 2 * C::Q_BYTES;
  const u32 sRows = sdS + C::DS_BYTES;  // per stage: LSE, delta, qPos, qSeg (64 each)
  float* const rowsBase = (float*)(gbase + (sRows - base));
  auto sLse = [&](int st) { return rowsBase + st * 4 * BQ; };
  auto sDelta = [&](int st) { return sLse(st) + BQ; };
  auto sQPos = [&](int st) { return (int*)(sLse(st) + 2 * BQ); };
  auto sQSeg = [&](int st) { return (int*)(sLse(st) + 3 * BQ); };
  // (2 * BK * 4 bytes after the rows held the key tile's positions and segments until the masks
  // took each thread's two keys' query ranges from global memory: kept, so sStg stays aligned)
  const u32 sStg = sRows + STAGES * C::ROW_BYTES + 2 * BK * 4;  // 1024-aligned (TMA boxes)
  u32* const sVis = (u32*)(gbase + (sStg - base) + C::STG_BYTES);
  u32* const sPart = sVis + MAX_QTILES / 32;
  const u32 sBar = sStg + C::STG_BYTES + C::BITS_BYTES;  // ht: STAGES mbarriers (a stage landed), then STAGES more
  auto bar = [&](int st) { return sBar + st * 8; };
  auto emptyBar = [&](int st) { return sBar + (STAGES + st) * 8; };  // PP: every warp is done with the stage
  u16* const dsPtr = (u16*)(gbase + (sdS - base));

  BTRACE(Trace trace; trace.start());
  const int split = p.split > 1 ? p.split : 1;
  const Mask m = maskOf(p);
  const int nqt = (p.Sq + BQ - 1) / BQ, nw = (nqt + 31) >> 5;
  const int2 lt = launchTile(p.headGroup);
  // the heavier end's key tiles first (common.cuh): the first under a causal mask
  const int kt = firstKeysHeavier(m, p.qTiles, nqt, p.kTiles, gridDim.x) ? lt.x : gridDim.x - 1 - lt.x;
  const int kh = lt.y / split, group = p.H / p.Hk, k0 = kt * BK;
  const int hLo = kh * group + (lt.y % split) * (group / split), nh = group / split;
  const int wg = threadIdx.x >> 7, warp = (threadIdx.x >> 5) & 3, lane = threadIdx.x & 31, warpId = threadIdx.x >> 5;
  const bool kRagged = k0 + BK > p.Sk;
  if (nqt > MAX_QTILES) __trap();  // the host sends longer query blocks to attn_bwd.cu
  const float scaleLog2 = p.scale * LOG2E;

  // K and V, once.
  loadSwizzled<BK, D, THREADS>(sK, (const u16*)p.k, k0, p.Sk - k0, p.Hk, kh, threadIdx.x);
  loadSwizzled<BK, D, THREADS>(sV, (const u16*)p.v, k0, p.Sk - k0, p.Hk, kh, threadIdx.x);
  cpAsyncCommit();
  if (TMA && threadIdx.x == 0) {  // the stages' barriers, ready after the __syncthreads below
    for (int st = 0; st < STAGES; st++) {
      mbarInit(bar(st), 1 + LOADERS);  // the TMA thread's expect_tx and each loader's cp.async arrival
      mbarInit(emptyBar(st), 8);       // one arrival a warp
    }
    fenceMbarInit();
  }
  // Every query tile's class against this key tile, as two bits per tile (visible, partial), so
  // the loop below finds the next visible tile in shared memory (a class read from global memory
  // at each step stalled every warp: kernels/NOTES.md run 13).
  {
    const int4 kBox = p.kTiles[kt];
    for (int w = warpId; w < nw; w += THREADS / 32) {
      const int qt = w * 32 + lane;
      int c = qt < nqt ? classifyTile(m, p.qTiles[qt], kBox) : TILE_EMPTY;
      if (kRagged && c != TILE_EMPTY) c = TILE_PARTIAL;  // missing keys must get P = 0
      const u32 vis = __ballot_sync(0xffffffffu, c != TILE_EMPTY), part = __ballot_sync(0xffffffffu, c == TILE_PARTIAL);
      if (lane == 0) {
        sVis[w] = vis;
        sPart[w] = part;
      }
    }
  }
  __syncthreads();
  // The first visible query tile at or after qt, or -1.
  auto nextQt = [&](int qt) {
    int w = qt >> 5;
    if (w >= nw) return -1;
    u32 b = sVis[w] & (0xffffffffu << (qt & 31));
    while (b == 0) {
      if (++w >= nw) return -1;
      b = sVis[w];
    }
    return (w << 5) + __ffs(b) - 1;
  };
  // Q, dO, LSE, delta and positions of (head hLo + hi, query tile qt) into stage st: 16-byte
  // copies for the tiles, one 4-byte copy a thread for the rows (zero past Sq: Q = dO = 0 there,
  // so those rows add nothing).
  // TMA: thread 0 loads the tiles (rows past Sq arrive as zeros, and count) onto the stage's
  // mbarrier.
  auto loadPair = [&](int hi, int qt, int st) {
    const int h = hLo + hi, q0 = qt * BQ;
    const int t = PP ? threadIdx.x - 128 : threadIdx.x;  // this thread among the loaders
    if (TMA) {
      if (t == 0) {
        mbarExpectTx(bar(st), 2 * C::Q_BYTES);
#pragma unroll
        for (int z = 0; z < D / 64; z++) {
          tmaLoad3d(sQ(st) + z * BQ * 128, maps.q, bar(st), z * 64, h, q0);
          tmaLoad3d(sdO(st) + z * BQ * 128, maps.dO, bar(st), z * 64, h, q0);
        }
      }
    } else {
      loadSwizzled<BQ, D, THREADS>(sQ(st), (const u16*)p.q, q0, p.Sq - q0, p.H, h, threadIdx.x);
      loadSwizzled<BQ, D, THREADS>(sdO(st), (const u16*)p.dO, q0, p.Sq - q0, p.H, h, threadIdx.x);
    }
#pragma unroll
    for (int x = 0; x < 4 * BQ / LOADERS; x++) {
      const unsigned e = t + x * LOADERS;
      const int a = e / BQ, r = e % BQ, i = q0 + r;
      const bool ok = i < p.Sq;
      const int ic = ok ? i : 0;
      const void* g = a == 0 ? (const void*)(p.lse + (u64)ic * p.H + h)
                    : a == 1 ? (const void*)(p.delta + (u64)ic * p.H + h)
                    : a == 2 ? (const void*)(p.qPos + ic)
                             : (const void*)((m.hasSeg ? p.qSeg : p.qPos) + ic);
      cpAsync4(sRows + st * C::ROW_BYTES + e * 4, g, ok && (a != 3 || m.hasSeg));
    }
    if (PP) cpAsyncArrive(bar(st));
  };

  // The (head, query tile) pair after (h, q) in the loop's order, or q = -1 at the end.
  const int firstQt = nextQt(0);
  auto advance = [&](int& h, int& q) {
    if (q < 0) return;
    q = nextQt(q + 1);
    if (q < 0 && ++h < nh) q = firstQt;
  };
  int hi = 0, qt = firstQt;  // this tile
  if (qt >= 0 && (!PP || wg == 1)) loadPair(hi, qt, 0);
  cpAsyncCommit();
  int h1 = hi, q1 = qt;      // the next one
  advance(h1, q1);
  if (q1 >= 0 && (!PP || wg == 1)) loadPair(h1, q1, 1);
  cpAsyncCommit();
  if constexpr (PP) {
    cpAsyncWait<0>();  // K and V, for every warp (the stages' rows arrive on their mbarriers)
    fenceAsyncShared();
    __syncthreads();
    if (wg == 1 && qt >= 0) ppPass(1);  // warpgroup 0 takes the first turn
  }

  float dK[D / 2], dV[D / 2];
#pragma unroll
  for (int i = 0; i < D / 2; i++) dK[i] = dV[i] = 0.f;
  // The query positions that see this thread's two keys (rows lane/4 and lane/4 + 8 of its
  // warp's 16), for the partial tiles' masks; a key past Sk is seen by none.
  QueryRange qRange[2];
  int kSegR[2];
  for (int r = 0; r < 2; r++) {
    const int j = k0 + wg * 64 + warp * 16 + (lane >> 2) + 8 * r;
    qRange[r] = j < p.Sk ? queryRange(m, p.kPos[j]) : noQueries();
    kSegR[r] = j < p.Sk && m.hasSeg ? p.kSeg[j] : 0;
  }
  const u32 kRows = sK + wg * 64 * 128, vRows = sV + wg * 64 * 128;  // this warpgroup's 64 keys
  const u32 stg = sStg + warpId * STG_WARP;                         // this warp's dQ staging rows
  // dQ over all 128 keys: at D=128 warpgroup w takes columns 64w.. of the 64 queries; at D=64 (128
  // queries) all 64 columns of queries 64w..64w+63.
  const int colPanel = D == 128 ? wg : 0, qLo = D == 128 ? 0 : wg * 64;

  BTRACE(int pairs = 0);
  for (int st = 0, it = 0; qt >= 0; st = st == STAGES - 1 ? 0 : st + 1, it++) {
    int h2 = h1, q2 = q1;
    const bool last = q1 < 0;  // PP: this warpgroup's last tile
    if constexpr (PP) {
      mbarWait(bar(st), (it / STAGES) & 1);  // Q, dO and the rows (no accumulators in flight: may trap)
      BTRACE(if (it == 0) trace.mark(1));
      advance(h2, q2);
      if (wg == 1 && q2 >= 0) {  // the pair after next, into the stage every warp released last
        const int nt = it + 2, ns = st == 0 ? STAGES - 1 : st - 1;
        if (nt >= STAGES) mbarWait(emptyBar(ns), (nt / STAGES - 1) & 1);
        loadPair(h2, q2, ns);
        cpAsyncCommit();
      }
      ppWait(wg);
    } else {
      cpAsyncWait<STAGES - 2>();  // this tile's copies (and K/V) have landed; the next tile's may be in flight
      fenceAsyncShared();
      __syncthreads();   // ... for every thread; and every warp is done with the last tile's stage and dS^T
      BTRACE(if (it == 0) trace.mark(1));
      // The pair after next, loaded into the last tile's stage while this one is computed.
      advance(h2, q2);
      if (q2 >= 0) loadPair(h2, q2, st == 0 ? STAGES - 1 : st - 1);
      cpAsyncCommit();
    }

    const int h = hLo + hi, q0 = qt * BQ;
    const bool partial = (sPart[qt >> 5] >> (qt & 31)) & 1;

    // S^T = K Q^T and dP^T = V dO^T: 64 keys x BQ queries per warpgroup.
    float s[BQ / 2], dp[BQ / 2];
    auto ssQ = [&](float (&d)[BQ / 2], u64 da, u64 db, bool first) {
      if constexpr (BQ == 128) {
        if (first) M::template ss128<0, 0, 0>(d, da, db);
        else M::template ss128<0, 0, 1>(d, da, db);
      } else {
        if (first) M::template ss64<0, 0, 0>(d, da, db);
        else M::template ss64<0, 0, 1>(d, da, db);
      }
    };
    wgmmaFence();
#pragma unroll
    for (int j = 0; j < D / 16; j++) {
      const u32 off = (j >> 2) * BK * 128 + (j & 3) * 32, offQ = (j >> 2) * BQ * 128 + (j & 3) * 32;
      ssQ(s, desc(kRows + off, 16, 1024), desc(sQ(st) + offQ, 16, 1024), j == 0);
      ssQ(dp, desc(vRows + off, 16, 1024), desc(sdO(st) + offQ, 16, 1024), j == 0);
    }
    wgmmaCommit();
    if (PP) ppPass(wg);
    // This thread's query columns' LSE (log2 units; +inf for a row that saw nothing, so its P is
    // 0) and delta: at BQ = 64 read into registers while the MMAs run; at 128 (64 more registers
    // beside S^T and dP^T's 128) read from shared memory where they are used.
    constexpr int NC = BQ == 64 ? 2 * NQ : 1;
    float lseC[NC], dlC[NC];
    auto lseOf = [&](int c) {
      const float L = sLse(st)[(c >> 1) * 8 + 2 * (lane & 3) + (c & 1)];
      return L == NEG_INF ? POS_INF : L * LOG2E;
    };
    auto deltaOf = [&](int c) { return sDelta(st)[(c >> 1) * 8 + 2 * (lane & 3) + (c & 1)]; };
    if constexpr (BQ == 64) {
#pragma unroll
      for (int c = 0; c < NC; c++) {
        lseC[c] = lseOf(c);
        dlC[c] = deltaOf(c);
      }
    }
    wgmmaWait<0>();
    fenceRegs(s);
    fenceRegs(dp);

    // P^T (into s) and dS^T (into dp). Register 4n + e: key row (CTA) 64wg + 16warp + lane/4 +
    // 8(e >> 1), query column 8n + 2(lane % 4) + (e & 1). The exponentials are one branch-free
    // pass over every tile; in a partial tile P and dS then become 0 where the query does not see
    // the key. (A score masked to -inf before the exponential would give P = exp2(-inf - L), NaN
    // for a row whose LSE is NaN, one that saw a NaN under allowNonfinite: that row's NaN would
    // reach dV of keys it does not see. Masked after, such keys get P = dS = 0, as on the CPU.)
#pragma unroll
    for (int n = 0; n < NQ; n++)
#pragma unroll
      for (int e = 0; e < 4; e++) {
        const int c = 2 * n + (e & 1);
        const float pv = exp2Fast(s[4 * n + e] * scaleLog2 - (BQ == 64 ? lseC[c % NC] : lseOf(c)));
        s[4 * n + e] = pv;
        dp[4 * n + e] = pv * (dp[4 * n + e] - (BQ == 64 ? dlC[c % NC] : deltaOf(c)));
      }
    if (partial) {
      // Each query column's position (and segment) read once, tested against the thread's two
      // keys' query ranges without a branch. A per-element visible() compiled to blocks branching
      // around it, four shared-memory loads each (kernels/NOTES.md, session 20; run 65 on an H100:
      // the mask tests pass, the timings within their spread).
#pragma unroll
      for (int c = 0; c < 2 * NQ; c++) {
        const int col = (c >> 1) * 8 + 2 * (lane & 3) + (c & 1);
        const int qp = sQPos(st)[col], qs = m.hasSeg ? sQSeg(st)[col] : 0;
#pragma unroll
        for (int r = 0; r < 2; r++) {
          const bool ok = qRange[r].has(qp) & (!m.hasSeg | (qs == kSegR[r]));
          const int x = 4 * (c >> 1) + 2 * r + (c & 1);
          s[x] = ok ? s[x] : 0.f;
          dp[x] = ok ? dp[x] : 0.f;
        }
      }
    }
    // PP: warpgroup 1's dQ of the last tile has read dS^T (warpgroup 1 is ordered by the turns).
    if (PP && wg == 0 && it > 0) asm volatile("bar.sync 3, 256;" ::: "memory");
    // 16-bit A fragments (queries 16kk..16kk+15 are registers 8kk..8kk+7), and dS^T to shared
    // memory for dQ: panels of 64 queries, each [128 keys][128 B] in the 128-byte swizzle.
    u32 ap[BQ / 16][4], ad[BQ / 16][4];
#pragma unroll
    for (int kk = 0; kk < BQ / 16; kk++)
#pragma unroll
      for (int c = 0; c < 4; c++) {
        ap[kk][c] = pack2<T>(s[8 * kk + 2 * c], s[8 * kk + 2 * c + 1]);
        ad[kk][c] = pack2<T>(dp[8 * kk + 2 * c], dp[8 * kk + 2 * c + 1]);
      }
#pragma unroll
    for (int n = 0; n < NQ; n++)
#pragma unroll
      for (int r = 0; r < 2; r++) {
        const int kr = wg * 64 + warp * 16 + (lane >> 2) + 8 * r;
        // registers 4n + 2r, 4n + 2r + 1: columns 8n + 2(lane % 4) + {0, 1} of row kr
        const u32 v2 = ad[n >> 1][(n & 1) * 2 + r];
        *(u32*)((unsigned char*)dsPtr + (n >> 3) * BK * 128 + kr * 128 + (((n & 7) ^ (kr & 7)) << 4) + 4 * (lane & 3)) = v2;
      }
    // dV += P^T dO, dK += dS^T Q: A from registers, B (dO, Q: [query][d]) read MN-major.
    if constexpr (PP) {
      fenceAsyncShared();  // dS^T for the other warpgroup's dQ (wgmma reads through the async proxy)
      ppWait(wg);
    }
    wgmmaFence();
#pragma unroll
    for (int kk = 0; kk < BQ / 16; kk++) {
      M::template rs<D, 1>(dV, ap[kk], desc(sdO(st) + kk * 16 * 128, BQ * 128, 1024));
      M::template rs<D, 1>(dK, ad[kk], desc(sQ(st) + kk * 16 * 128, BQ * 128, 1024));
    }
    wgmmaCommit();
    if constexpr (PP) {
      ppPass(wg);
      ppWait(wg);  // the other warpgroup's dS^T is stored: it passed its dV/dK turn
    } else {
      fenceAsyncShared();  // dS^T was written through the generic proxy; wgmma reads it through the async one
      __syncthreads();     // both warpgroups' dS^T
    }

    // dQ = dS K (A = dS^T [key][query] read MN-major, B = K [key][d] read MN-major).
    float dq[32];
    wgmmaFence();
#pragma unroll
    for (int kk = 0; kk < BK / 16; kk++) {
      const u32 key = kk * 16;
      const u64 da = desc(sdS + (qLo / 64) * BK * 128 + key * 128, BK * 128, 1024);
      const u64 db = desc(sK + colPanel * BK * 128 + key * 128, BK * 128, 1024);
      if (kk == 0) M::template ss64<1, 1, 0>(dq, da, db);
      else M::template ss64<1, 1, 1>(dq, da, db);
    }
    wgmmaCommit();
    if (PP && !(wg == 1 && last)) ppPass(wg);  // the last turn of all is not passed
    // This warp's staging rows are free once its last TMA reduce has read them.
    if (lane == 0) bulkWaitRead();
    __syncwarp();
    wgmmaWait<0>();
    fenceRegs(dK);
    fenceRegs(dq);
    fenceRegs(dV);
    if constexpr (PP) {
      // This warp is done with the stage (dV/dK read dO and Q): every warp's, warpgroup 1's too,
      // since wgmma's wait covers only the waiting warp's own products.
      __syncwarp();
      if (lane == 0) mbarArrive(emptyBar(st));
      if (wg == 1 && !last) asm volatile("bar.arrive 3, 256;" ::: "memory");  // this warpgroup's dQ has read dS^T
    }
    // dQ (scaled) to this warp's staging (two boxes of 16 rows x 32 columns, 128-byte rows,
    // 128-byte swizzle: the float2 stores are conflict-free), then two TMA reduce-adds into
    // global dq (rows past Sq are skipped by the hardware). 32 atomics a thread in v1, 16 bulk
    // reduces a warp (issued one lane at a time) in v2: kernels/NOTES.md runs 13-15.
#pragma unroll
    for (int n = 0; n < 8; n++)
#pragma unroll
      for (int r = 0; r < 2; r++) {
        const int row = (lane >> 2) + 8 * r, chunk = 2 * (n & 3) + ((lane >> 1) & 1);
        const u32 a = stg + (n >> 2) * 2048 + row * 128 + ((chunk ^ (row & 7)) << 4) + 8 * (lane & 1);
        asm volatile("st.shared.v2.f32 [%0], {%1, %2};" ::"r"(a), "f"(dq[4 * n + 2 * r] * p.scale), "f"(dq[4 * n + 2 * r + 1] * p.scale) : "memory");
      }
    fenceAsyncShared();
    __syncwarp();
    if (lane == 0) {
      tmaReduceAdd3d(maps.dq, stg, colPanel * 64, h, q0 + qLo + warp * 16);
      tmaReduceAdd3d(maps.dq, stg + 2048, colPanel * 64 + 32, h, q0 + qLo + warp * 16);
      bulkCommit();
    }
    hi = h1;
    qt = q1;
    h1 = h2;
    q1 = q2;
    BTRACE(if (it == 0) trace.mark(2); pairs++);
  }
  cpAsyncWait<0>();  // a CTA that found no visible tile still drains its K/V copies
  if (lane == 0) bulkWait();
  BTRACE(trace.mark(3));

  // dK, dV rows of this warpgroup, added into global dk / dv by reductions: nothing is read back,
  // so no thread waits on memory here. With a split, the CTAs of one key tile meet there; without,
  // this CTA alone adds to those rows (the same fp32 sum as a read-add-write, except that red's
  // f32 add flushes subnormals to zero). dk, dv 8-byte aligned (the host checks 16). A
  // read-add-write waited for each of its 32 loads in turn (they could not move above the stores
  // to the other array): ~14 us a CTA, 5-7% of the kernel at 8k (kernels/NOTES.md run 58).
#pragma unroll
  for (int r = 0; r < 2; r++) {
    const int j = k0 + wg * 64 + warp * 16 + (lane >> 2) + 8 * r;
    if (j >= p.Sk) continue;
    const u64 row = ((u64)j * p.Hk + kh) * D + 2 * (lane & 3);
#pragma unroll
    for (int n = 0; n < D / 8; n++) {
      redAdd2(p.dk + row + n * 8, dK[4 * n + 2 * r] * p.scale, dK[4 * n + 2 * r + 1] * p.scale);
      redAdd2(p.dv + row + n * 8, dV[4 * n + 2 * r], dV[4 * n + 2 * r + 1]);
    }
  }
#ifdef BWD_TRACE
  __syncthreads();  // every thread's dK/dV reductions issued
  trace.stop();
  trace.write(p.trace, pairs, kt, lt.y);  // lt.y: KV head x split + part
#endif
}
}  // namespace bwdh

#define BWDH_ENTRY(name, T, D, TMA)                                                                                   \
  extern "C" __global__ void __launch_bounds__(bwdh::THREADS, 1) name(const BwdParams p, const __grid_constant__ bwdh::BwdMaps maps) { \
    bwdh::run<T, D, TMA>(p, maps);                                                                                              \
  }
BWDH_ENTRY(attn_bwd_h_bf16_d64, Bf16, 64, false)
BWDH_ENTRY(attn_bwd_h_bf16_d128, Bf16, 128, false)
BWDH_ENTRY(attn_bwd_h_f16_d64, F16, 64, false)
BWDH_ENTRY(attn_bwd_h_f16_d128, F16, 128, false)
BWDH_ENTRY(attn_bwd_ht_bf16_d64, Bf16, 64, true)
BWDH_ENTRY(attn_bwd_ht_bf16_d128, Bf16, 128, true)
BWDH_ENTRY(attn_bwd_ht_f16_d64, F16, 64, true)
BWDH_ENTRY(attn_bwd_ht_f16_d128, F16, 128, true)
#endif  // sm_90a
