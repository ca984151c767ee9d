// Hopper (sm_90a) helpers shared by the wgmma kernels (gemm.cu, attn_fwd_h.cu, attn_bwd_h.cu):
// mbarriers with a trap instead of a hang, cp.async and TMA loads into the 128-byte swizzle,
// shared-memory matrix descriptors, and the wgmma instructions the kernels issue (with Wg<T>
// choosing the bf16 or fp16 form). Include after the u32/u64 typedefs, inside
// `#if defined(__CUDA_ARCH_FEAT_SM90_ALL)`.
#pragma once

struct Bf16;  // 16-bit element types (common.cuh), as tags for Wg<T>
struct F16;

namespace hop {
__device__ __forceinline__ void mbarInit(u32 bar, u32 count) { asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(count)); }
__device__ __forceinline__ void mbarArrive(u32 bar) { asm volatile("{\n.reg .b64 st;\nmbarrier.arrive.shared::cta.b64 st, [%0];\n}" ::"r"(bar) : "memory"); }
// CLUSTER_SCOPE: acquire at cluster scope, for a barrier whose arrivals come from other CTAs of
// the cluster (release.cluster) and whose completion lets this CTA overwrite their data.
template <bool CLUSTER_SCOPE = false>
__device__ __forceinline__ bool mbarTry(u32 bar, u32 parity) {
  u32 done;
  if (CLUSTER_SCOPE) {
    asm volatile(
        "{\n.reg .pred p;\nmbarrier.try_wait.parity.acquire.cluster.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}"
        : "=r"(done) : "r"(bar), "r"(parity) : "memory");
  } else {
    asm volatile(
        "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}"
        : "=r"(done) : "r"(bar), "r"(parity) : "memory");
  }
  return done != 0;
}
__device__ __forceinline__ u64 globalTimer() {
  u64 t;
  asm volatile("mov.u64 %0, %globaltimer;" : "=l"(t));
  return t;
}
// Waits for the phase of parity `parity` to complete. A wait of more than 4 s is a pipeline bug,
// not a slow GPU: trap (the launch fails with an error) rather than hang the process.
template <bool CLUSTER_SCOPE = false>
__device__ __forceinline__ void mbarWait(u32 bar, u32 parity) {
  if (mbarTry<CLUSTER_SCOPE>(bar, parity)) return;
  const u64 t0 = globalTimer();
  while (!mbarTry<CLUSTER_SCOPE>(bar, parity)) {
    if (globalTimer() - t0 > 4000000000ull) __trap();
  }
}
// The same wait without the timer, for code that holds in-flight wgmma accumulators: the timer's
// registers were enough to make ptxas serialise the attention forward's wgmma at D=128 (C7512).
// A pipeline bug there still ends in an error: the producer's waits trap, and the host's wait on
// the launch is bounded (RINGATTN_GPU_TIMEOUT).
__device__ __forceinline__ void mbarSpin(u32 bar, u32 parity) {
  while (!mbarTry(bar, parity)) {
  }
}
// Arrives on `bar` once every cp.async this thread issued so far has landed (no count increment).
__device__ __forceinline__ void cpAsyncArrive(u32 bar) { asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];" ::"r"(bar) : "memory"); }
// cp.async wrote through the generic proxy; wgmma reads through the async proxy.
__device__ __forceinline__ void fenceAsyncShared() { asm volatile("fence.proxy.async.shared::cta;" ::: "memory"); }

// After mbarInit of barriers that TMA will complete (through the async proxy): makes the
// initialisation visible to it.
__device__ __forceinline__ void fenceMbarInit() { asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory"); }
// Arrives on `bar` and adds `bytes` to the transaction count its phase waits for (TMA copies).
__device__ __forceinline__ void mbarExpectTx(u32 bar, u32 bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(bytes) : "memory");
}
// Fetch a tensor map (a __grid_constant__ parameter, by its generic address) into the TMA unit's
// descriptor cache ahead of its first copy.
__device__ __forceinline__ void tmaPrefetchMap(const void* map) { asm volatile("prefetch.tensormap [%0];" ::"l"((u64)map) : "memory"); }
// TMA: the box at coordinates (c0, c1, c2) of the 3-D tensor map `map` (a __grid_constant__
// kernel parameter) into shared memory at `dst`; its bytes count toward `bar`'s transaction
// count (announced by mbarExpectTx). Elements outside the tensor arrive as zeros (and count).
__device__ __forceinline__ void tmaLoad3d(u32 dst, const void* map, u32 bar, int c0, int c1, int c2) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4, %5}], [%2];"
      ::"r"(dst), "l"((u64)map), "r"(bar), "r"(c0), "r"(c1), "r"(c2) : "memory");
}
// The same copy multicast to the CTAs of the cluster in `ctaMask` (bit r: CTA rank r): the box
// lands at `dst` in each of them and its bytes count toward the mbarrier at `bar` in each.
__device__ __forceinline__ void tmaLoad3dMulticast(u32 dst, const void* map, u32 bar, int c0, int c1, int c2, unsigned short ctaMask) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes.multicast::cluster [%0], [%1, {%3, %4, %5}], [%2], %6;"
      ::"r"(dst), "l"((u64)map), "r"(bar), "r"(c0), "r"(c1), "r"(c2), "h"(ctaMask) : "memory");
}
// Clusters: this CTA's rank; a barrier of every thread of the cluster that has not exited
// (release / acquire: shared-memory writes and mbarrier inits before it are seen by the other
// CTAs after it); an arrival on the mbarrier at offset `bar` of CTA `rank`'s shared memory.
__device__ __forceinline__ u32 clusterRank() {
  u32 r;
  asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
  return r;
}
__device__ __forceinline__ u32 clusterSize() {
  u32 n;
  asm volatile("mov.u32 %0, %%cluster_nctarank;" : "=r"(n));
  return n;
}
__device__ __forceinline__ void clusterSync() { asm volatile("barrier.cluster.arrive.release;\n\tbarrier.cluster.wait.acquire;" ::: "memory"); }
__device__ __forceinline__ void mbarArriveCluster(u32 bar, u32 rank) {
  asm volatile("{\n.reg .b32 ra;\nmapa.shared::cluster.u32 ra, %0, %1;\nmbarrier.arrive.release.cluster.shared::cluster.b64 _, [ra];\n}" ::"r"(bar), "r"(rank) : "memory");
}

// TMA reduce: adds the shared-memory box at `src` (laid out as the map's box and swizzle) into
// the box at (c0, c1, c2) of the 3-D fp32 tensor map `map` (a __grid_constant__ parameter),
// element-wise atomically, in this thread's bulk group; elements outside the tensor are skipped.
__device__ __forceinline__ void tmaReduceAdd3d(const void* map, u32 src, int c0, int c1, int c2) {
  asm volatile("cp.reduce.async.bulk.tensor.3d.global.shared::cta.add.tile.bulk_group [%0, {%2, %3, %4}], [%1];"
               ::"l"((u64)map), "r"(src), "r"(c0), "r"(c1), "r"(c2) : "memory");
}
__device__ __forceinline__ void bulkCommit() { asm volatile("cp.async.bulk.commit_group;" ::: "memory"); }
// This thread's bulk groups have finished reading shared memory (.read) / have completed.
__device__ __forceinline__ void bulkWaitRead() { asm volatile("cp.async.bulk.wait_group.read 0;" ::: "memory"); }
__device__ __forceinline__ void bulkWait() { asm volatile("cp.async.bulk.wait_group 0;" ::: "memory"); }
// Two adjacent fp32 added into global memory without waiting for the old values (a reduction the
// memory system applies: nothing returns, so the thread goes on at once).
__device__ __forceinline__ void redAdd2(float* g, float a, float b) {
  asm volatile("red.global.add.v2.f32 [%0], {%1, %2};" ::"l"(g), "f"(a), "f"(b) : "memory");
}

// Shared-memory matrix descriptor, 128-byte swizzle: start >> 4, LBO >> 4 (bits 16..29),
// SBO >> 4 (bits 32..45), swizzle mode 1 (bits 62..63).
__device__ __forceinline__ u64 desc(u32 addr, u32 lbo, u32 sbo) {
  return (u64)((addr & 0x3ffff) >> 4) | ((u64)(lbo >> 4) << 16) | ((u64)(sbo >> 4) << 32) | (1ull << 62);
}
// Byte offset of 16-byte chunk `c` (0..7) of row `r` in a 128-byte-swizzled panel of 128-byte rows.
__device__ __forceinline__ u32 swz(int r, int c) { return (u32)(r * 128 + ((c ^ (r & 7)) << 4)); }

// Rows [0, ROWS) of head `head` of a [rows, heads, D] 16-bit tensor, from row r0, into a tile in
// the 128-byte swizzle ([D/64 panels][ROWS][128 B], 1024-byte aligned) by 16-byte cp.async from
// NT threads (t = 0..NT-1); rows at or past `avail` are zero-filled. Thread t always copies chunk
// t % (D/8) of rows t / (D/8) + k·STEP, so its swizzled column and source offset never change and
// a copy costs a pointer step, a compare and the cp.async (a generic index loop cost ~45
// instructions a copy: kernels/NOTES.md run 10). Unrolled by 4: a 40-register producer spilled
// with 16 pointers live. The caller commits / arrives.
template <int ROWS, int D, int NT>
__device__ __forceinline__ void loadSwizzled(u32 dst, const u16* g, int r0, int avail, int heads, int head, int t) {
  constexpr int CPR = D / 8;             // 16-byte chunks per row
  constexpr int STEP = NT / CPR;         // rows per pass
  static_assert(STEP % 8 == 0 && ROWS % STEP == 0, "a thread's swizzle phase must not change between passes");
  const int c = t % CPR, rr = t / CPR;
  const u64 stride = (u64)heads * D;     // elements from one row to the next
  const u16* src = g + ((u64)r0 + rr) * stride + (u64)head * D + c * 8;
  const u16* fallback = g + (u64)head * D;  // a valid address for zero-filled rows
  u32 d = dst + (c >> 3) * ROWS * 128 + swz(rr, c & 7);
#pragma unroll 4
  for (int r = rr; r < ROWS; r += STEP, src += STEP * stride, d += STEP * 128) {
    const bool ok = r < avail;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(d), "l"(ok ? src : fallback), "r"(ok ? 16 : 0));
  }
}

__device__ __forceinline__ void wgmmaFence() { asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void wgmmaCommit() { asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory"); }
template <int N> __device__ __forceinline__ void wgmmaWait() { asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(N) : "memory"); }
// The compiler sees a wgmma's accumulators written when the asm is issued, not when the wait
// returns: pin every read of them after the wait (an empty asm that 'modifies' each register,
// ordered after the wait like any volatile asm). Costs no instruction.
template <int N> __device__ __forceinline__ void fenceRegs(float (&r)[N]) {
#pragma unroll
  for (int i = 0; i < N; i++) asm volatile("" : "+f"(r[i])::"memory");
}
// wgmma's accumulator operands: N fp32 registers of d as the string "{%0, ..., %N-1}" and the
// matching "+f" constraints; the other operands are numbered from N.
#define HOP_ACC32 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}"
#define HOP_ACC64 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}"
#define HOP_ACC128 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, %96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, %112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127}"
#define HOP_ACC88 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, %87}"
#define HOP_D32(d) "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
#define HOP_D64(d) "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
#define HOP_D88(d) "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]), "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]), "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]), "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87])
#define HOP_D128(d) "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]), "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]), "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]), "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]), "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]), "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]), "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]), "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])

// d[64x256] += A[64x16] · B[16x256], both from shared memory; TA / TB: the operand is MN-major.
template <int TA, int TB> __device__ __forceinline__ void ssBf16N256(float (&d)[128], u64 da, u64 db) {
  asm volatile("wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 " HOP_ACC128 ", %128, %129, 1, 1, 1, %130, %131;"
               : HOP_D128(d)
               : "l"(da), "l"(db), "n"(TA), "n"(TB));
}

// The wgmma forms for element type T (Bf16 or F16), defined once by HOP_WG with TY the PTX type
// name:
//   ss128 / ss176 / ss64: d[64xN] (+)= A[64x16] · B[16xN], both from shared memory; TA / TB:
//     the operand is MN-major; SD = 0 ignores d's old value (the first k step of a product,
//     without zeroing d first); ss<N> picks ss128 or ss176;
//   rs<N, TB> (rs128 / rs64): d[64xN] += A[64x16] · B[16xN], A from registers (the m16n8k16
//     A-fragment layout per warp), B from shared memory; TB: B is MN-major; rs128s<TB, SD>: rs128
//     with SD as ss's (0: d's old value ignored).
template <typename T> struct Wg;
#define HOP_WG(T, TY)                                                                                                   \
  template <> struct Wg<T> {                                                                                            \
    template <int TA, int TB, int SD> __device__ __forceinline__ static void ss128(float (&d)[64], u64 da, u64 db) {    \
      asm volatile("wgmma.mma_async.sync.aligned.m64n128k16.f32." TY "." TY " " HOP_ACC64 ", %64, %65, %68, 1, 1, %66, %67;" \
                   : HOP_D64(d)                                                                                         \
                   : "l"(da), "l"(db), "n"(TA), "n"(TB), "n"(SD));                                                      \
    }                                                                                                                   \
    template <int TA, int TB, int SD> __device__ __forceinline__ static void ss176(float (&d)[88], u64 da, u64 db) {    \
      asm volatile("wgmma.mma_async.sync.aligned.m64n176k16.f32." TY "." TY " " HOP_ACC88 ", %88, %89, %92, 1, 1, %90, %91;" \
                   : HOP_D88(d)                                                                                         \
                   : "l"(da), "l"(db), "n"(TA), "n"(TB), "n"(SD));                                                      \
    }                                                                                                                   \
    template <int N, int TA, int TB, int SD> __device__ __forceinline__ static void ss(float (&d)[N / 2], u64 da, u64 db) { \
      if constexpr (N == 176) ss176<TA, TB, SD>(d, da, db);                                                             \
      else ss128<TA, TB, SD>(d, da, db);                                                                                \
    }                                                                                                                   \
    template <int TA, int TB, int SD> __device__ __forceinline__ static void ss64(float (&d)[32], u64 da, u64 db) {     \
      asm volatile("wgmma.mma_async.sync.aligned.m64n64k16.f32." TY "." TY " " HOP_ACC32 ", %32, %33, %36, 1, 1, %34, %35;" \
                   : HOP_D32(d)                                                                                         \
                   : "l"(da), "l"(db), "n"(TA), "n"(TB), "n"(SD));                                                      \
    }                                                                                                                   \
    template <int TB, int SD> __device__ __forceinline__ static void rs128s(float (&d)[64], const u32 (&a)[4], u64 db) { \
      asm volatile("wgmma.mma_async.sync.aligned.m64n128k16.f32." TY "." TY " " HOP_ACC64 ", {%64, %65, %66, %67}, %68, %70, 1, 1, %69;" \
                   : HOP_D64(d)                                                                                         \
                   : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "n"(TB), "n"(SD));                           \
    }                                                                                                                   \
    template <int TB> __device__ __forceinline__ static void rs128(float (&d)[64], const u32 (&a)[4], u64 db) {         \
      rs128s<TB, 1>(d, a, db);                                                                                          \
    }                                                                                                                   \
    template <int TB> __device__ __forceinline__ static void rs64(float (&d)[32], const u32 (&a)[4], u64 db) {          \
      asm volatile("wgmma.mma_async.sync.aligned.m64n64k16.f32." TY "." TY " " HOP_ACC32 ", {%32, %33, %34, %35}, %36, 1, 1, 1, %37;" \
                   : HOP_D32(d)                                                                                         \
                   : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "n"(TB));                                    \
    }                                                                                                                   \
    template <int N, int TB> __device__ __forceinline__ static void rs(float (&d)[N / 2], const u32 (&a)[4], u64 b) {   \
      if constexpr (N == 128) rs128<TB>(d, a, b);                                                                       \
      else rs64<TB>(d, a, b);                                                                                           \
    }                                                                                                                   \
  };
HOP_WG(Bf16, "bf16")
HOP_WG(F16, "f16")

// Per-CTA timestamps for bench/gpu-trace.ts, in kernels built with -DFWD_TRACE / -DBWD_TRACE:
// thread 0 writes 8 u64 at out[8 x linear CTA index] = {smid | work items (saturated at 0xffff)
// << 16 | tile << 32 | head << 48, clock64 at the start, at marks 1..3 (each kernel says what
// they are) and at stop(), %globaltimer at the start and at stop()}. A mark never reached reads
// as the previous one's clock (start() sets them all), so a skipped phase takes no time.
struct Trace {
  u64 c[5] = {0, 0, 0, 0, 0}, g0 = 0, g1 = 0;
  __device__ __forceinline__ void start() {
    c[0] = c[1] = c[2] = c[3] = clock64();
    g0 = globalTimer();
  }
  __device__ __forceinline__ void mark(int i) {
    c[i] = clock64();
    for (int j = i + 1; j < 4; j++) c[j] = c[i];
  }
  __device__ __forceinline__ void stop() {
    c[4] = clock64();
    g1 = globalTimer();
  }
  // The record's slot: `at`, or where at < 0 the CTA's linear index. Written by thread `owner`,
  // whose clocks it holds.
  __device__ __forceinline__ void write(u64* out, int items, int tile, int head, int at = -1, int owner = 0) const {
    if (!out || threadIdx.x != owner) return;
    u32 sm;
    asm volatile("mov.u32 %0, %%smid;" : "=r"(sm));
    u64* r = out + 8ull * (at >= 0 ? at : blockIdx.y * gridDim.x + blockIdx.x);
    r[0] = sm | (u64)min(items, 0xffff) << 16 | (u64)(tile & 0xffff) << 32 | (u64)(head & 0xffff) << 48;
    for (int i = 0; i < 5; i++) r[1 + i] = c[i];
    r[6] = g0;
    r[7] = g1;
  }
};
}  // namespace hop
