// Blockwise attention forward on Hopper (sm_90a only): attn_fwd_{h,hp,hs,hq,ht}_{bf16,f16}_d{64,128}
// and attn_fwd_hw_{bf16,f16}_d64.
//
// The same contract as attn_fwd.cu's kernels (queries of one shard against one KV block, merged
// into the running fp32 (O, LSE); tiles classified on global positions: empty tiles skipped,
// full tiles without mask arithmetic), on Hopper's warpgroup MMA:
//   - a CTA owns BQ = 128 query rows of one head (192 in hw): consumer warpgroups of 64 rows each
//     and one producer warpgroup (384 threads; 512 in hw); the producer gives registers back
//     (setmaxnreg) so that the consumers can hold S, P and O: 40 / 232 a thread with cp.async,
//     24 / 240 with TMA (either way 128 x p + 256 x c = 384 x 168), 24 / 160 in hw;
//   - the producer loads Q once, then 128-key tiles of K and V into a ring of STAGES stages in the
//     128-byte-swizzled layout wgmma reads ([D/64 panels][rows][128 B] for all three: K-major
//     for Q and K, and the same bytes read MN-major for V): ht with TMA (one thread, bulk tensor
//     copies completing the stage's `full` mbarrier by transaction count), the others with
//     16-byte cp.async from all 128 producer threads; consumers release a stage through its
//     `empty` mbarrier after their P·V has read it;
//   - per tile a consumer issues S = Q·K^T (wgmma m64n128k16, both operands in shared memory,
//     fp32 accumulators), masks partial tiles, runs the online softmax in registers (exp2 with
//     the scale folded in), and issues O += P·V with P taken from registers (the accumulator
//     layout of S is the A-fragment layout of the next wgmma) and V from shared memory.
// Consumer schedules (the Mode enum below): h one tile at a time, the two warpgroups running
// independently; hp software-pipelined inside each warpgroup (S of tile n+1 issued before P·V of
// tile n, so the softmax of n+1 overlaps that P·V, as FlashAttention-3 does); hs ping-pong turns
// between the warpgroups (named barriers), each issuing P·V of one tile and S of the next back to
// back; hq and ht both (ht loading with TMA, the default at D=128: kernels/NOTES.md runs 9-12;
// ht alone runs on a persistent grid whose CTAs take items from a counter, runs 82-85).
// hw is ht with three consumer warpgroups (192 query rows, 512 threads, 160 registers a consumer
// thread, the turns passed round robin): at D=64 a warpgroup's products are half as long as at
// D=128 while its softmax is not, so two warpgroups could not keep the tensor cores fed; hw is
// 7-17% faster than ht there and the default at D=64 (NOTES.md run 26). At D=128 a consumer needs
// 240 registers: two warpgroups only.
// Timed on H100s or H200s, slower or no faster than this default, and removed in session 26
// (kernels/NOTES.md has the designs and numbers): a persistent grid (runs 79-80), P in two register
// sets (68-70), the P·V wait across the loop's back edge (64), the warpgroup index through a
// shuffle for uniform Q descriptors and the rows' old lse read before the loop (72).
// Launch: grid (ceil(Sq / BQ), H), or for ht (persistent) min(items, SMs) CTAs (wgFwdGrid),
// 2 BQ + 128 threads, dynamic shared memory fwdh::Cfg<D, WGS>::SMEM
// (src/cuda/attention.ts); tile boxes at BQ rows for queries and 128 for keys; ht and hw take the
// tensor maps as a second parameter.
#include "common.cuh"
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#include "hopper.cuh"

namespace fwdh {
using namespace hop;
constexpr int PRODUCERS = 128;

// -DFWD_TRACE (bench/gpu-trace.ts): consumer thread 0 of each CTA writes its hop::Trace record:
// marks 1 when Q has landed, 2 when the first tile is done (its S and softmax in the pipelined and
// ping-pong schedules; its whole step in h), 3 when the last P·V is done, and stops once every
// consumer has issued its epilogue stores. Off, TRACE(x) is nothing.
#ifdef FWD_TRACE
#define TRACE(x) x
#else
#define TRACE(x)
#endif
// -DFWD_TRACE_WG=1 (with -DFWD_TRACE_ITEMS): the record is warpgroup 1's (its thread 0's marks),
// to set its last P·V and epilogue beside warpgroup 0's (a trace's epilogue phase runs from the
// owner's last P·V to the end of every consumer's epilogue).
#ifndef FWD_TRACE_WG
#define FWD_TRACE_WG 0
#endif
// -DFWD_TRACE_EPI (with -DFWD_TRACE -DFWD_TRACE_ITEMS; `gpu.js trace ... epi`): each warpgroup's
// thread 0 records its epilogue instead: the clock starts after its last P·V, marks 1 and 2 follow
// row 0's and row 1's merge (their stores issued, so their loads landed), mark 3 the consumers'
// bar.sync; two records an item (slot 2 x item + warpgroup, the warpgroup in the count field).
#ifdef FWD_TRACE_EPI
#define TRACE_EPI(x) x
#else
#define TRACE_EPI(x)
#endif

// WGS consumer warpgroups of 64 query rows each: 2 (BQ = 128, 384 threads), or 3 at D=64 (hw:
// BQ = 192, 512 threads, 160 registers a consumer thread). Key tiles of BKN rows: 128, or 176 (hl,
// D=128: S is m64n176, 88 registers, and P 44; two stages).
template <int D, int WGS = 2, int BKN = 128> struct Cfg {
  static constexpr int BQ = 64 * WGS, CONSUMERS = 128 * WGS, THREADS = CONSUMERS + PRODUCERS, BK = BKN;
  static_assert(BK == 128 || (BK == 176 && D == 128 && WGS == 2), "176-key tiles: D=128, two consumer warpgroups");
  static constexpr int Q_BYTES = BQ * D * 2;
  static constexpr int KV_BYTES = BK * D * 2;  // K or V of one stage
  // D=128: 1 KB + 32 KB + 3 x 64 KB (128 keys) or 2 x 88 KB (176 keys), under 227 KB
  static constexpr int STAGES = D == 64 ? 4 : BK == 128 ? 3 : 2;
  static constexpr int SMEM = 1024 /* alignment slack */ + Q_BYTES + STAGES * 2 * KV_BYTES + (2 * STAGES + 1) * 8 + 64;  // full, empty, Q's; ht's qFree and item slot
  static_assert(SMEM <= 227 * 1024, "shared memory");
};
// Consumer schedules: ONE_TILE (attn_fwd_h), PIPELINED (attn_fwd_hp), PING_PONG (attn_fwd_hs: P·V
// of the last tile and S of this one issued back to back, in turns), PIPE_PONG (attn_fwd_hq: both).
enum Mode { ONE_TILE, PIPELINED, PING_PONG, PIPE_PONG };
// Named barriers 1..WGS (0 is __syncthreads): warpgroup w waits on 1 + w for its turn at the
// tensor cores and, once its products are issued, hands the turn to the next one, round robin.
__device__ __forceinline__ void turnWait(int wg) { asm volatile("bar.sync %0, 256;" ::"r"(1 + wg) : "memory"); }
template <int WGS>
__device__ __forceinline__ void turnPass(int wg) { asm volatile("bar.arrive %0, 256;" ::"r"(1 + (wg + 1) % WGS) : "memory"); }

// The trace build (-DFWD_TRACE) times CTAs, one item each: ht then runs on the full grid, as the
// host's wgFwdGrid knows. With -DFWD_TRACE_ITEMS as well, ht keeps its persistent grid and writes
// one record an item (at index h nx + qt), its clock started at the top of the item: the gap
// between one item's end and the next one's start on an SM is then the persistent loop's own
// (the wait for the next Q), and the rest of an item's fixed cost shows in its phases.
#ifdef FWD_TRACE
constexpr bool TRACED = true;
#else
constexpr bool TRACED = false;
#endif
// Q in registers (the default since session 32; -DFWD_Q_SMEM builds the earlier form, for A/B
// runs): ht at D=128 reads each item's Q from shared memory into registers once (ldmatrix, the
// A-fragment layout: 32 registers a consumer thread) and issues S = Q K^T with A from registers,
// so that S's products read only K from shared memory (while S runs, its operands' 96 B a clock
// and TMA's K/V writes come to about all of shared memory's 128); and Q's buffer is free (qFree)
// as soon as it is read, so the next item's Q loads while this one runs. On an H200 (kernels/NOTES.md
// run 113) a tile took 1.69 us against 1.76 at 8k, and the 16k forward gained 2-5%.
#ifdef FWD_Q_SMEM
constexpr bool Q_REGS_BUILD = false;
#else
constexpr bool Q_REGS_BUILD = true;
#endif
#ifdef FWD_TRACE_ITEMS
constexpr bool TRACE_ITEMS = true;
#else
constexpr bool TRACE_ITEMS = false;
#endif
__device__ __forceinline__ void stShared(u32 addr, int v) { asm volatile("st.shared.b32 [%0], %1;" ::"r"(addr), "r"(v) : "memory"); }
__device__ __forceinline__ int ldShared(u32 addr) {
  int v;
  asm volatile("ld.shared.b32 %0, [%1];" : "=r"(v) : "r"(addr) : "memory");
  return v;
}

// TMA tensor maps of q [Sq, H, D], k and v [Sk, Hk, D] (16-bit elements as uint16; box 64
// elements x 1 head x the query tile's rows (q) or the key tile's (k, v), 128-byte swizzle), written by cuTensorMapEncodeTiled on the host
// (src/cuda/attention.ts) and passed by value.
struct TmaMaps {
  alignas(64) unsigned char q[128];
  alignas(64) unsigned char k[128];
  alignas(64) unsigned char v[128];
};

// Q's tile (C::BQ rows of head h from row q0) by TMA onto mbarrier `bar`, its bytes announced
// first.
template <typename C, int D>
__device__ __forceinline__ void loadQ(u32 sQ, const TmaMaps* maps, u32 bar, int h, int q0) {
  mbarExpectTx(bar, C::Q_BYTES);
#pragma unroll
  for (int z = 0; z < D / 64; z++) tmaLoad3d(sQ + z * C::BQ * 128, maps->q, bar, z * 64, h, q0);
}

// TMA: the producer is one thread issuing bulk tensor copies (D/64 boxes per tile and operand)
// that complete on the stage's mbarrier by transaction count; it keeps 24 registers and the
// consumers get 240. Otherwise 128 producer threads copy with 16-byte cp.async (40 / 232).
// CLUSTER (hc: ht in clusters of two CTAs, for unmasked blocks with an even number of query
// tiles; the host sends the others to ht): the two CTAs of a cluster are query tiles of one head
// and read the same key tiles, so each producer loads half of every stage, K (rank 0) or V (rank
// 1), multicast into both CTAs, halving the K/V traffic from L2 (FlashAttention-3 does this for
// D=128 without a mask). A stage is free again once the consumer warps of both CTAs have released
// it (one arrival per warp on each CTA's `empty`).
template <typename T, int D, int MODE, bool TMA, int WGS = 2, int BKN = 128, bool CLUSTER = false>
__device__ __forceinline__ void run(const FwdParams& p, const TmaMaps* maps) {
  using C = Cfg<D, WGS, BKN>;
  constexpr int STAGES = C::STAGES, BQ = C::BQ, BK = C::BK, CONSUMERS = C::CONSUMERS;
  static_assert(WGS == 2 || (WGS == 3 && TMA && MODE == PIPE_PONG && D == 64), "three consumer warpgroups: hw only");
  static_assert(BK == 128 || (TMA && MODE == PIPE_PONG), "176-key tiles: hl (ht's schedule) only");
  static_assert(!CLUSTER || (TMA && MODE == PIPE_PONG && WGS == 2 && BK == 128), "clusters: hc (ht's schedule) only");
  extern __shared__ __align__(1024) unsigned char smemRaw[];
  const u32 sQ = (smemAddr(smemRaw) + 1023) & ~1023u;  // swizzle atoms are 1024-byte aligned
  auto stK = [&](int s) { return sQ + C::Q_BYTES + s * 2 * C::KV_BYTES; };
  auto stV = [&](int s) { return stK(s) + C::KV_BYTES; };
  const u32 bars = sQ + C::Q_BYTES + STAGES * 2 * C::KV_BYTES;
  auto full = [&](int s) { return bars + s * 8; };
  auto empty = [&](int s) { return bars + (STAGES + s) * 8; };
  const u32 qBar = bars + 2 * STAGES * 8;
  // PERSIST (ht, the default at D=128): a persistent grid of one CTA an SM (the host launches
  // min(items, SMs) CTAs, wgFwdGrid) whose CTAs take items (query tile, head) from a global
  // counter, in the order a full grid launches them (the heavier end's query tiles first), so the
  // items balance as the hardware's CTA scheduling balances them (the static rounds of session
  // 25's persistent kernel lost 29% at 8k causal for want of it: kernels/NOTES.md runs 79-80). The
  // producer thread takes the next item once it has issued the last loads of the current one,
  // skips items that see nothing in this block, and once the consumers have waited for their last
  // S (qFree; with QREGS once they have read Q into registers) passes the item through shared
  // memory (`slot`, ordered by Q's mbarrier) and loads its Q; the stage ring runs on across items.
  // What this hides is a CTA's fixed cost: its start, Q's and the first tiles' loads, the gap
  // between CTAs (9.9 us a CTA against 1.65 us a tile at 8k causal in the session-19 trace). On
  // an H100, +2-5% at 32k causal, level to +2% elsewhere (NOTES.md runs 84-85). The counter sits
  // just past the query tiles' spans; attn_tile_spans zeroes it before each launch.
  constexpr bool PERSIST = TMA && !CLUSTER && WGS == 2 && BK == 128 && MODE == PIPE_PONG && (!TRACED || TRACE_ITEMS);
  const u32 qFree = qBar + 8, slot = qBar + 16;
  // QREGS: S's A operand from registers, read from Q's buffer once an item.
  constexpr bool QREGS = PERSIST && Q_REGS_BUILD && D == 128;
  const int nx = (p.Sq + BQ - 1) / BQ, nItems = nx * p.H;
  if (PERSIST && gridDim.y != 1) __trap();  // a full grid (the trace build's): each item would run once per head

  TRACE(Trace trace; trace.start());
  // hc launched without its cluster of two would wait forever for the other half of every stage.
  if (CLUSTER && clusterSize() != 2) __trap();
  const Mask m = maskOf(p);
  // The CTA's item: query tile qt of head h (one item a CTA, or in ht one after another).
  int qt, h, kh, q0, end, first;
  int4 qBox;
  // A ragged last tile is never 'full': its missing keys must read as -inf.
  auto tileClass = [&](int t) {
    const int c = classifyTile(m, qBox, p.kTiles[t]);
    return (c == TILE_FULL && (t + 1) * BK > p.Sk) ? TILE_PARTIAL : c;
  };
  // Key tiles at or past `end` (and before the span's first) are empty for this query tile (attn_tile_spans).
  auto nextTile = [&](int t) {
    while (t < end && tileClass(t) == TILE_EMPTY) t++;
    return t;
  };
  // The item of launch tile lt (launchTile, orderTile) of the nx query tiles; false if it sees nothing
  // in this block. (A full grid's x extent is nx.)
  // The heavier end's query tiles first: the last under a causal mask, the first at a window's edge.
  const bool lastHeavy = lastQueriesHeavier(m, p.qSpans, nx);
  auto setItem = [&](int2 lt) {
    qt = lastHeavy ? nx - 1 - lt.x : lt.x;
    h = lt.y, kh = h / (p.H / p.Hk), q0 = qt * BQ;
    qBox = p.qTiles[qt];
    const int2 span = p.qSpans[qt];
    end = span.y;
    first = nextTile(span.x);
    return first < end;
  };
  // hc: one head at a time whatever RINGATTN_HEAD_GROUP says (it is ignored there), so that a
  // cluster's two CTAs (blockIdx.x 2c and 2c + 1) are query tiles of one head and share its K/V.
  if (!PERSIST && !setItem(launchTile(CLUSTER ? 1 : p.headGroup))) {  // nothing seen (in hc neither by its partner: same span)
    TRACE(trace.stop(); trace.write(p.trace, 0, qt, h));
    return;
  }
  constexpr u32 ARRIVALS = TMA ? 1 : PRODUCERS;  // one expect_tx arrival, or one cp.async arrival per producer thread
  if (threadIdx.x == 0) {
    for (int s = 0; s < STAGES; s++) {
      mbarInit(full(s), ARRIVALS);
      mbarInit(empty(s), CLUSTER ? 2 * CONSUMERS / 32 : CONSUMERS);  // every consumer thread; hc: every consumer warp of both CTAs
    }
    mbarInit(qBar, ARRIVALS);
    if (PERSIST) mbarInit(qFree, CONSUMERS);
    if (TMA) fenceMbarInit();
  }
  if (CLUSTER) clusterSync();  // both CTAs' mbarriers initialised before either multicasts or arrives remotely
  else __syncthreads();

  if (TMA && threadIdx.x >= CONSUMERS) {  // the producer warpgroup, one thread of it
    asm volatile("setmaxnreg.dec.sync.aligned.u32 24;");
    if (threadIdx.x == CONSUMERS) {
      const u32 rank = CLUSTER ? clusterRank() : 0;
      // Key tile t into stage i % STAGES (i counts the tiles the CTA has loaded).
      auto loadKV = [&](int t, int i) {
        const int s = i % STAGES;
        // The first pass finds every stage free. hc: the partner's consumers release too (cluster scope).
        mbarWait<CLUSTER>(empty(s), ((i / STAGES) & 1) ^ 1);
        mbarExpectTx(full(s), 2 * C::KV_BYTES);  // hc: half from this CTA's copy, half from the partner's
#pragma unroll
        for (int z = 0; z < D / 64; z++) {
          if (!CLUSTER) {
            tmaLoad3d(stK(s) + z * BK * 128, maps->k, full(s), z * 64, kh, t * BK);
            tmaLoad3d(stV(s) + z * BK * 128, maps->v, full(s), z * 64, kh, t * BK);
          } else if (rank == 0) {
            tmaLoad3dMulticast(stK(s) + z * BK * 128, maps->k, full(s), z * 64, kh, t * BK, 3);
          } else {
            tmaLoad3dMulticast(stV(s) + z * BK * 128, maps->v, full(s), z * 64, kh, t * BK, 3);
          }
        }
      };
      if (PERSIST) {
        int* const counter = (int*)(p.qSpans + nx);
        int i = 0;
        for (int n = 0;; n++) {
          int L = atomicAdd(counter, 1);
          while (L < nItems && !setItem(orderTile(L, p.headGroup, nx, p.H))) L = atomicAdd(counter, 1);
          if (n > 0) mbarWait(qFree, (n - 1) & 1);  // the consumers are done with the last item's Q (and its slot)
          if (L >= nItems) {  // no item left: the consumers read -1 and stop
            stShared(slot, -1);
            mbarArrive(qBar);
            break;
          }
          // The item as the consumers need it (they then keep no item index of their own).
          stShared(slot, 1);
          stShared(slot + 4, qt);
          stShared(slot + 8, h);
          stShared(slot + 12, end);
          stShared(slot + 16, first);
          stShared(slot + 20, qBox.x);
          stShared(slot + 24, qBox.y);
          stShared(slot + 28, qBox.z);
          stShared(slot + 32, qBox.w);
          loadQ<C, D>(sQ, maps, qBar, h, q0);
          for (int t = first; t < end; t = nextTile(t + 1), i++) loadKV(t, i);
        }
      } else
      {
        loadQ<C, D>(sQ, maps, qBar, h, q0);
        int i = 0;
        for (int t = first; t < end; t = nextTile(t + 1), i++) loadKV(t, i);
      }
    }
    // hc: no CTA of the cluster leaves while the other may still write its shared memory or
    // arrive on its barriers.
    if (CLUSTER) clusterSync();
    return;
  }
  if (!TMA && threadIdx.x >= CONSUMERS) {  // the producer warpgroup
    asm volatile("setmaxnreg.dec.sync.aligned.u32 40;");
    const int lane = threadIdx.x - CONSUMERS;
    loadSwizzled<BQ, D, PRODUCERS>(sQ, (const u16*)p.q, q0, p.Sq - q0, p.H, h, lane);
    cpAsyncArrive(qBar);
    int i = 0;
    for (int t = first; t < end; t = nextTile(t + 1), i++) {
      const int s = i % STAGES;
      mbarWait(empty(s), ((i / STAGES) & 1) ^ 1);  // the first pass finds every stage free
      loadSwizzled<BK, D, PRODUCERS>(stK(s), (const u16*)p.k, t * BK, p.Sk - t * BK, p.Hk, kh, lane);
      loadSwizzled<BK, D, PRODUCERS>(stV(s), (const u16*)p.v, t * BK, p.Sk - t * BK, p.Hk, kh, lane);
      cpAsyncArrive(full(s));
    }
    asm volatile("cp.async.wait_all;" ::: "memory");
    return;
  }

  // 128 x 24 + 256 x 240 = 128 x 40 + 256 x 232 = 128 x 24 + 384 x 160 (<=) = the 64 K registers.
  if (WGS == 3) asm volatile("setmaxnreg.inc.sync.aligned.u32 160;");
  else if (TMA) asm volatile("setmaxnreg.inc.sync.aligned.u32 240;");
  else asm volatile("setmaxnreg.inc.sync.aligned.u32 232;");
  // Consumers. Accumulator layout (m64nN): warp w of the group holds rows 16w + lane/4 (+8);
  // register 4q + e holds column 8q + 2·(lane%4) + (e & 1), row + 8·(e >> 1).
  const int wg = threadIdx.x >> 7;
  const int warp = (threadIdx.x >> 5) & 3, lane = threadIdx.x & 31;
  // The first of the thread's two accumulator rows (the other is 8 below), and their positions and
  // segments (startItem, below, sets them for each item).
  auto firstRow = [&](int wg, int warp, int lane) { return q0 + wg * 64 + warp * 16 + (lane >> 2); };
  auto rowsOf = [&](int rowBase, int (&qPos)[2], int (&qSeg)[2]) {
    for (int r = 0; r < 2; r++) {
      const int i = rowBase + 8 * r;
      qPos[r] = i < p.Sq ? p.qPos[i] : 0;
      qSeg[r] = (i < p.Sq && m.hasSeg) ? p.qSeg[i] : 0;
    }
  };
  int rowBase = 0;  // set at the top of each item, as are the rows' positions and ranges, O and the statistics
  int qPos[2], qSeg[2];
  const float scaleLog2 = p.scale * LOG2E;
  float o[D / 2];
  float rowMax[2] = {NEG_INF, NEG_INF}, rowSum[2] = {0.f, 0.f};  // max in log2 units
  const u32 qRows = sQ + wg * 64 * 128;
  float sc[BK / 2];  // S of one tile (64 x BK per warpgroup), then its exponentials
  u32 a[BK / 16][4];  // P of one tile, 16-bit, in the A-fragment layout
  float corr[2];
  int ib = 0;  // tiles the consumers took from the stage ring for the CTA's earlier items (ht)

  // Descriptors step by adding the byte offset >> 4 to the start-address field (bits 0..13): every
  // address stays inside shared memory, so the field cannot carry into the next.
  const u64 dq0 = desc(qRows, 16, 1024);
  u32 qa[QREGS ? D / 16 : 1][4];  // QREGS: Q's A fragments, k step j of 16 columns in qa[j]
  // S = Q K^T from stage s, issued (not waited for).
  auto issueQK = [&](int s) {
    const u64 dk0 = desc(stK(s), 16, 1024);
    wgmmaFence();
#pragma unroll
    for (int j = 0; j < D / 16; j++) {
      const u64 dk = dk0 + (((j >> 2) * BK * 128 + (j & 3) * 32) >> 4);  // 64-wide panel, 16-element step inside it
      if constexpr (QREGS) {
        if (j == 0) Wg<T>::template rs128s<0, 0>(sc, qa[j], dk);
        else Wg<T>::template rs128s<0, 1>(sc, qa[j], dk);
      } else {
        const u64 dq = dq0 + (((j >> 2) * BQ * 128 + (j & 3) * 32) >> 4);
        if (j == 0) Wg<T>::template ss<BK, 0, 0, 0>(sc, dq, dk);  // scale-d 0: S starts from this product, no zeroing
        else Wg<T>::template ss<BK, 0, 0, 1>(sc, dq, dk);
      }
    }
    wgmmaCommit();
  };
  // -inf where a partial tile's key is not visible to the row: column 8q + 2(lane%4) + c of row
  // r is register 4q + 2r + c. Positions are loaded CH columns at a time (more spill in hw's 160
  // registers), the index clamped into the block; each key costs two or three compares of its
  // position against the row's range, and one of its segment.
  KeyRange range[2];
  // (SEG a plain bool, not a generic lambda's template: NVRTC takes an unannotated generic lambda
  // for a host function; each call below passes a constant, and the lambda is inlined.)
  auto maskTile = [&](const bool SEG, int t) {
    constexpr int CH = 4;
    const int kb = t * BK + 2 * (lane & 3);
#pragma unroll
    for (int x0 = 0; x0 < BK / 4; x0 += CH) {
      int kp[CH], ks[CH];
#pragma unroll
      for (int x = 0; x < CH; x++) {
        const int kc = min(kb + ((x0 + x) >> 1) * 8 + (x & 1), p.Sk - 1);
        kp[x] = __ldg(p.kPos + kc);
        ks[x] = SEG ? __ldg(p.kSeg + kc) : 0;
      }
#pragma unroll
      for (int x = 0; x < CH; x++) {
        const bool in = kb + ((x0 + x) >> 1) * 8 + (x & 1) < p.Sk;
#pragma unroll
        for (int r = 0; r < 2; r++) {
          const bool ok = in & range[r].has(kp[x]) & (!SEG | (ks[x] == qSeg[r]));
          float& v = sc[4 * ((x0 + x) >> 1) + 2 * r + (x & 1)];
          v = ok ? v : NEG_INF;
        }
      }
    }
  };
  // Lazy rescaling at D=128: a row keeps its running max until a tile's exceeds it by more than
  // LAZY_SLACK (log2 units), so after the first tiles the max rarely moves, corr is 1 and a warp
  // whose rows all kept theirs skips O's rescale (64 FMULs a thread, inside the ping-pong turn), as
  // FlashAttention-4 does on Blackwell. Exact all the same: O, the sum and the lse are taken
  // against the one max the row holds; the exponentials grow to at most 2^LAZY_SLACK = 256 (P in
  // bf16 or fp16 keeps its relative precision, fp16's range is 65504; an fp32 sum of 2^20 keys
  // stays under 2^28). On an H100 (kernels/NOTES.md run 83) +2% at 32k unmasked and +6% at 32k
  // causal, level at 8k; at D=64 (hw: half the FMULs for the same vote) level to -2%, so not there.
  constexpr bool LAZY = D == 128;
  constexpr float LAZY_SLACK = 8.f;
  // Mask (partial tiles), online softmax statistics and exponentials of tile t in sc; corr[r]
  // is the factor the running O of row r must take. The scale is folded into the exponent (one
  // FFMA a score: exp2(s·scale·log2e − max)); the host sends only scale > 0 here, so the raw
  // maximum is the scaled one's. Max and sum run as four independent chains, not one of 32.
  auto softmax = [&](int t, int cls) {
    if (cls == TILE_PARTIAL) {
      // The thread's 32 key columns: every position (and segment) loaded unconditionally, the
      // index clamped into the block, then compared without a branch. A per-element visible()
      // with its loads compiled to 64 branchy blocks, each waiting on its own load: ~1600
      // instructions and as many load latencies in turn, against ~450 for a whole full tile (SASS,
      // kernels/NOTES.md session 20). On an H100 this made the window edge's forward 8% faster
      // and the 8k causal one 4-7% (run 65).
      if (m.hasSeg) maskTile(true, t);
      else maskTile(false, t);
    }
    // A row's BK columns live in the 4 lanes of a quad.
#pragma unroll
    for (int r = 0; r < 2; r++) {
      float m4[4];
#pragma unroll
      for (int c = 0; c < 4; c++) m4[c] = fmaxf(sc[4 * c + 2 * r], sc[4 * c + 2 * r + 1]);
#pragma unroll
      for (int q = 4; q < BK / 8; q++) m4[q & 3] = fmaxf(m4[q & 3], fmaxf(sc[4 * q + 2 * r], sc[4 * q + 2 * r + 1]));
      float mx = fmaxf(fmaxf(m4[0], m4[1]), fmaxf(m4[2], m4[3]));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float mNew = LAZY ? (mx * scaleLog2 > rowMax[r] + LAZY_SLACK ? mx * scaleLog2 : rowMax[r]) : fmaxf(rowMax[r], mx * scaleLog2);
      const float mUse = mNew == NEG_INF ? 0.f : mNew;  // a row with nothing visible yet: exponents of -inf give 0
      corr[r] = exp2Fast(rowMax[r] - mUse);
      rowMax[r] = mNew;
      float s4[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
      for (int q = 0; q < BK / 8; q++) {
        sc[4 * q + 2 * r] = exp2Fast(fmaf(sc[4 * q + 2 * r], scaleLog2, -mUse));
        sc[4 * q + 2 * r + 1] = exp2Fast(fmaf(sc[4 * q + 2 * r + 1], scaleLog2, -mUse));
        s4[q & 3] += sc[4 * q + 2 * r] + sc[4 * q + 2 * r + 1];
      }
      rowSum[r] = rowSum[r] * corr[r] + ((s4[0] + s4[1]) + (s4[2] + s4[3]));
    }
  };
  // Rescale O; P to 16 bits (keys 16kk..16kk+15 are S columns q = 2kk, 2kk + 1).
  auto rescale = [&]() {
    if (LAZY && __all_sync(0xffffffffu, corr[0] == 1.f && corr[1] == 1.f)) return;  // no row of the warp moved its max
#pragma unroll
    for (int n = 0; n < D / 8; n++) {
      o[4 * n] *= corr[0];
      o[4 * n + 1] *= corr[0];
      o[4 * n + 2] *= corr[1];
      o[4 * n + 3] *= corr[1];
    }
  };
  auto pack = [&]() {
#pragma unroll
    for (int kk = 0; kk < BK / 16; kk++) {
      a[kk][0] = pack2<T>(sc[8 * kk + 0], sc[8 * kk + 1]);
      a[kk][1] = pack2<T>(sc[8 * kk + 2], sc[8 * kk + 3]);
      a[kk][2] = pack2<T>(sc[8 * kk + 4], sc[8 * kk + 5]);
      a[kk][3] = pack2<T>(sc[8 * kk + 6], sc[8 * kk + 7]);
    }
  };
  // The pipelined schedules rescale O between issuing the next tile's S and this tile's P·V, while
  // the tensor cores run the first, as FlashAttention-3 does; the others right after the softmax.
  constexpr bool LATE_RESCALE = MODE == PIPELINED || MODE == PIPE_PONG;
  // O += P V from stage s, issued (not waited for).
  auto issuePV = [&](int s) {
    const u64 dv0 = desc(stV(s), BK * 128, 1024);
    wgmmaFence();
#pragma unroll
    for (int kk = 0; kk < BK / 16; kk++) Wg<T>::template rs<D, 1>(o, a[kk], dv0 + ((kk * 16 * 128) >> 4));
    wgmmaCommit();
  };
  // The consumers are done with stage s: every thread arrives on `empty`; in hc one lane a warp
  // arrives on both CTAs' (their producers multicast into both).
  auto release = [&](int s) {
    if (CLUSTER) {
      __syncwarp();
      if (lane == 0) {
        mbarArriveCluster(empty(s), 0);
        mbarArriveCluster(empty(s), 1);
      }
    } else {
      mbarArrive(empty(s));
    }
  };
  // The next visible tile from 32 tiles' classes at once: lane j classifies tile base + j (one
  // coalesced load of the key boxes), two ballots keep them as bitmasks, and the loop's step reads
  // bits instead of a global load and ~60 uniform-datapath instructions of classifyTile a tile
  // (kernels/NOTES.md run 62: that load stalled each step). On an H200 the forward ran 5-14%
  // faster at D=128 and up to 6% at D=64, masked or not (runs 68-71).
  int maskBase = -(1 << 30);  // no tile classified yet
  u32 visM = 0, partM = 0;
  auto nextVis = [&](int t, int& cls) {
    while (t < end) {
      if ((unsigned)(t - maskBase) >= 32u) {
        maskBase = t;
        const int c = t + lane < end ? tileClass(t + lane) : TILE_EMPTY;
        visM = __ballot_sync(0xffffffffu, c != TILE_EMPTY);
        partM = __ballot_sync(0xffffffffu, c == TILE_PARTIAL);
      }
      const u32 bits = visM >> (t - maskBase);
      if (bits) {
        t += __ffs(bits) - 1;
        cls = (partM >> (t - maskBase)) & 1 ? TILE_PARTIAL : TILE_FULL;
        return t;
      }
      t = maskBase + 32;
    }
    return end;
  };
  auto waitFull = [&](int i) {  // i counts the item's tiles (ib those of the CTA's items before it)
    mbarSpin(full((ib + i) % STAGES), ((ib + i) / STAGES) & 1);
    if (!TMA) fenceAsyncShared();  // cp.async wrote through the generic proxy; TMA through the async one
  };

  // The two-product schedules' first tile (its S alone, then its softmax) and last (its P·V
  // alone). With turns, warpgroup 1 hands warpgroup 0 the first turn and skips its last pass, so
  // that every bar.sync of one warpgroup meets one bar.arrive of the other.
  auto firstTile = [&](bool pong) {
    if (pong && wg == WGS - 1) turnPass<WGS>(wg);
    waitFull(0);
    if (pong) turnWait(wg);
    issueQK(ib % STAGES);
    if (pong) turnPass<WGS>(wg);
    const int cls = tileClass(first);
    wgmmaWait<0>();
    fenceRegs(sc);
    softmax(first, cls);
    if (!LATE_RESCALE) rescale();
    pack();
  };
  // The pipelined schedules' step i waits for P·V of tile i - 1, frees its stage and packs the
  // next P, after the softmax of step i - 1. (ptxas moves that wait above the whole softmax, SASS:
  // the WARPGROUP.DEPBAR.LE gsb0, 0x0 after its first FMNMX, so the softmax does not overlap P·V,
  // kernels/NOTES.md run 62. Waiting across the loop's back edge instead, where it cannot be
  // moved, was 4-8% slower on an H100, run 64; two P register sets, 3-12% faster than the schedule
  // of its day but no faster than the tile masks, runs 68-70. Both were removed in session 26.)
  auto finishPV = [&](int i) {
    wgmmaWait<0>();
    fenceRegs(o);
    if (i > 0) release((ib + i - 1) % STAGES);
    pack();
  };
  auto lastTile = [&](bool pong, int s) {
    if (pong) turnWait(wg);
    if (LATE_RESCALE) rescale();
    issuePV(s);
    if (pong && wg != WGS - 1) turnPass<WGS>(wg);
    wgmmaWait<0>();
    fenceRegs(o);
    release(s);
  };

  // ht: waits for item n's Q and reads the item from the slot; false once no item is left. (The
  // wait and read at the loop's back edge rather than at its top: with them at the top and a
  // break, ptxas spilled P inside the tile loop.)
  auto nextItem = [&](int n) {
    mbarWait(qBar, n & 1);
    if (ldShared(slot) < 0) return false;  // the slot is written before the producer's arrival on qBar
    qt = ldShared(slot + 4), h = ldShared(slot + 8), end = ldShared(slot + 12), first = ldShared(slot + 16);
    kh = h / (p.H / p.Hk), q0 = qt * BQ;
    qBox = make_int4(ldShared(slot + 20), ldShared(slot + 24), ldShared(slot + 28), ldShared(slot + 32));
    return true;
  };
  // The item's rows (positions, segments, key ranges), O and the statistics from zero.
  auto startItem = [&]() {
    rowBase = firstRow(wg, warp, lane);
    rowsOf(rowBase, qPos, qSeg);
    for (int r = 0; r < 2; r++) range[r] = keyRange(m, qPos[r]);
#pragma unroll
    for (int x = 0; x < D / 2; x++) o[x] = 0.f;
    for (int r = 0; r < 2; r++) rowMax[r] = NEG_INF, rowSum[r] = 0.f;
    maskBase = -(1 << 30), visM = 0, partM = 0;
  };
  if (!PERSIST) {  // one item: its rows' loads are issued before the wait for Q, and overlap it
    startItem();
    mbarWait(qBar, 0);
  }
  int n = 0;  // items taken
  // The loop over items (one, but in ht) spans the schedules and the epilogue, left unindented.
  for (bool more = PERSIST ? nextItem(0) : true; more; more = PERSIST && nextItem(++n)) {
    if (PERSIST) {
      TRACE(trace.start());
      startItem();
      if constexpr (QREGS) {
        // ldmatrix x4 per 16 columns: lanes 0-7 address rows 0-7 of the warp's 16, lanes 8-15 rows
        // 8-15 (columns k..k+7), lanes 16-31 the same rows at columns k+8..k+15; r0..r3 are then
        // the m16n8k16 A fragment. Q is [D/64 panels][BQ rows][128 B] with the 128-byte swizzle:
        // 16-byte chunk c of row r sits at chunk c ^ (r % 8) (the buffer is 1024-byte aligned).
        const int r = warp * 16 + (lane & 7) + 8 * ((lane >> 3) & 1);
#pragma unroll
        for (int j = 0; j < D / 16; j++) {
          const int k0 = 16 * j + 8 * (lane >> 4), c = (k0 & 63) >> 3;
          ldsm4(qa[j], qRows + (k0 >> 6) * BQ * 128 + r * 128 + ((c ^ (r & 7)) << 4));
        }
        fenceAsyncShared();  // these generic reads before the producer's next TMA write of the buffer
        mbarArrive(qFree);   // the item's Q is in registers: its buffer may take the next item's
      }
    }
  TRACE(trace.mark(1));
  TRACE(int traced = 0);  // tiles computed, counted in the loops (a count taken after the clock
                          // stopped, by reading the tile list, held the SM ~0.3 us a tile)
  if (MODE == PING_PONG) {
    // Per tile, a warpgroup issues P·V of the last tile and S of this one back to back, waits for
    // both, then runs this tile's softmax; the two warpgroups take turns at issuing (named
    // barriers), so that one's softmax runs while the other's products keep the tensor cores
    // busy (FlashAttention-3's ping-pong). Both warpgroups see the same tiles, so their turns
    // pair up.
    firstTile(true);
    TRACE(trace.mark(2));
    int t = first, i = 0, cls;
    for (int tn = nextVis(t + 1, cls); tn < end; t = tn, tn = nextVis(t + 1, cls), i++) {
      waitFull(i + 1);
      turnWait(wg);
      issuePV((ib + i) % STAGES);
      issueQK((ib + i + 1) % STAGES);
      turnPass<WGS>(wg);
      wgmmaWait<0>();
      fenceRegs(sc);
      fenceRegs(o);
      release((ib + i) % STAGES);
      softmax(tn, cls);
      rescale();
      pack();
    }
    lastTile(true, (ib + i) % STAGES);
    TRACE(traced = i + 1);
  } else if (MODE == ONE_TILE) {
    // One tile at a time: the other warpgroup's products overlap this one's softmax.
    int i = 0, cls = tileClass(first);
    for (int t = first; t < end; t = nextVis(t + 1, cls), i++) {
      waitFull(i);
      issueQK((ib + i) % STAGES);
      wgmmaWait<0>();
      fenceRegs(sc);
      softmax(t, cls);
      rescale();
      pack();
      issuePV((ib + i) % STAGES);
      wgmmaWait<0>();
      fenceRegs(o);
      release((ib + i) % STAGES);
      TRACE(if (i == 0) trace.mark(2));
    }
    TRACE(traced = i);
  } else {
    // Software-pipelined (FlashAttention-3's intra-warpgroup overlap): S of the next tile is
    // issued before P·V of this one, so this warpgroup's softmax of tile n+1 runs while the
    // tensor cores do its P·V of tile n. PIPE_PONG adds the ping-pong turns around the issues.
    constexpr bool pong = MODE == PIPE_PONG;
    firstTile(pong);
    TRACE(trace.mark(2));
    int t = first, i = 0, cls;
    for (int tn = nextVis(t + 1, cls); tn < end; t = tn, tn = nextVis(t + 1, cls), i++) {
      waitFull(i + 1);
      if (pong) turnWait(wg);
      issueQK((ib + i + 1) % STAGES);
      rescale();  // by tile t's factors, before its P·V
      issuePV((ib + i) % STAGES);
      if (pong) turnPass<WGS>(wg);
      wgmmaWait<1>();  // S of tile tn (committed first) is done; P·V of tile t may still run
      fenceRegs(sc);
      softmax(tn, cls);
      finishPV(i + 1);  // P·V of tile t; P of tile tn packed
    }
    if (PERSIST && !QREGS) mbarArrive(qFree);  // every S product of this item waited for: its Q may go
    lastTile(pong, (ib + i) % STAGES);
    TRACE(traced = i + 1);
    ib += i + 1;
  }

  TRACE(trace.mark(3));
  // Epilogue: block (o, lse) per row, merged into the running accumulators in fp32.
  TRACE_EPI(trace.start());
#pragma unroll
  for (int r = 0; r < 2; r++) {
    mergeRowOut<D>(p, rowBase + 8 * r, h, lane, r, rowMax[r], rowSum[r], o);
    TRACE_EPI(trace.mark(1 + r));
  }
#ifdef FWD_TRACE
  asm volatile("bar.sync 7, %0;" ::"r"(CONSUMERS) : "memory");  // every consumer's epilogue issued
  TRACE_EPI(trace.mark(3));
  trace.stop();
#ifdef FWD_TRACE_EPI
  trace.write(p.trace, wg, qt, h, 2 * (h * nx + qt) + wg, 128 * wg);
#else
  trace.write(p.trace, traced, qt, h, PERSIST ? h * nx + qt : -1, PERSIST ? 128 * FWD_TRACE_WG : 0);
#endif
#endif
  }  // the items (one, but in ht)
  if (CLUSTER) clusterSync();  // as the producer warpgroup's, above
}
}  // namespace fwdh

#define FWDH_ENTRY(name, T, D, MODE) \
  extern "C" __global__ void __launch_bounds__(fwdh::Cfg<D>::THREADS, 1) name(const FwdParams p) { fwdh::run<T, D, fwdh::MODE, false>(p, nullptr); }
#define FWDH_TMA_ENTRY(name, T, D, MODE, WGS, BKN)                                                                                        \
  extern "C" __global__ void __launch_bounds__(fwdh::Cfg<D, WGS>::THREADS, 1) name(const FwdParams p, const __grid_constant__ fwdh::TmaMaps maps) { \
    fwdh::run<T, D, fwdh::MODE, true, WGS, BKN>(p, &maps);                                                                                \
  }
FWDH_ENTRY(attn_fwd_h_bf16_d64, Bf16, 64, ONE_TILE)
FWDH_ENTRY(attn_fwd_h_f16_d64, F16, 64, ONE_TILE)
FWDH_ENTRY(attn_fwd_h_bf16_d128, Bf16, 128, ONE_TILE)
FWDH_ENTRY(attn_fwd_h_f16_d128, F16, 128, ONE_TILE)
FWDH_ENTRY(attn_fwd_hp_bf16_d64, Bf16, 64, PIPELINED)
FWDH_ENTRY(attn_fwd_hp_f16_d64, F16, 64, PIPELINED)
FWDH_ENTRY(attn_fwd_hp_bf16_d128, Bf16, 128, PIPELINED)
FWDH_ENTRY(attn_fwd_hp_f16_d128, F16, 128, PIPELINED)
FWDH_ENTRY(attn_fwd_hs_bf16_d64, Bf16, 64, PING_PONG)
FWDH_ENTRY(attn_fwd_hs_f16_d64, F16, 64, PING_PONG)
FWDH_ENTRY(attn_fwd_hs_bf16_d128, Bf16, 128, PING_PONG)
FWDH_ENTRY(attn_fwd_hs_f16_d128, F16, 128, PING_PONG)
FWDH_ENTRY(attn_fwd_hq_bf16_d64, Bf16, 64, PIPE_PONG)
FWDH_ENTRY(attn_fwd_hq_f16_d64, F16, 64, PIPE_PONG)
FWDH_ENTRY(attn_fwd_hq_bf16_d128, Bf16, 128, PIPE_PONG)
FWDH_ENTRY(attn_fwd_hq_f16_d128, F16, 128, PIPE_PONG)
FWDH_TMA_ENTRY(attn_fwd_ht_bf16_d64, Bf16, 64, PIPE_PONG, 2, 128)
FWDH_TMA_ENTRY(attn_fwd_ht_f16_d64, F16, 64, PIPE_PONG, 2, 128)
FWDH_TMA_ENTRY(attn_fwd_ht_bf16_d128, Bf16, 128, PIPE_PONG, 2, 128)
FWDH_TMA_ENTRY(attn_fwd_ht_f16_d128, F16, 128, PIPE_PONG, 2, 128)
FWDH_TMA_ENTRY(attn_fwd_hw_bf16_d64, Bf16, 64, PIPE_PONG, 3, 128)
FWDH_TMA_ENTRY(attn_fwd_hw_f16_d64, F16, 64, PIPE_PONG, 3, 128)
FWDH_TMA_ENTRY(attn_fwd_hl_bf16_d128, Bf16, 128, PIPE_PONG, 2, 176)
FWDH_TMA_ENTRY(attn_fwd_hl_f16_d128, F16, 128, PIPE_PONG, 2, 176)
#define FWDH_CLUSTER_ENTRY(name, T, D)                                                                                                        \
  extern "C" __global__ void __cluster_dims__(2, 1, 1) __launch_bounds__(fwdh::Cfg<D>::THREADS, 1) name(const FwdParams p, const __grid_constant__ fwdh::TmaMaps maps) { \
    fwdh::run<T, D, fwdh::PIPE_PONG, true, 2, 128, true>(p, &maps);                                                                         \
  }
FWDH_CLUSTER_ENTRY(attn_fwd_hc_bf16_d128, Bf16, 128)
FWDH_CLUSTER_ENTRY(attn_fwd_hc_f16_d128, F16, 128)
#endif  // sm_90a
