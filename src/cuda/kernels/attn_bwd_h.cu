// Blockwise attention backward on Hopper (sm_90a only): attn_bwd_h_{bf16,f16}_d{64,128}.
//
// The contract of attn_bwd.cu's tensor-core kernel (one KV block, the final LSE and delta =
// rowsum(dO * O), adds into fp32 dq, dk, dv; tiles classified on global positions; p.split
// shares a key tile's GQA group over CTAs whose dK/dV then meet by atomics), on warpgroup MMA:
//   - a CTA owns 128 keys of one KV head (grid (ceil(Sk / 128), Hk * split), 256 threads): two
//     warpgroups of 64 keys each, holding dK and dV (m64 x D fp32) in registers for the whole
//     loop over the group's query heads and 64-query tiles;
//   - K and V are loaded once, Q and dO tiles (with LSE, delta, positions) double-buffered by
//     16-byte cp.async from all threads, in the 128-byte swizzle ([D/64 panels][rows][128 B]);
//   - per query tile each warpgroup issues S^T = K Q^T and dP^T = V dO^T (m64n64k16, both
//     operands in shared memory), forms P^T = exp2(S^T·scale·log2e − LSE·log2e) and
//     dS^T = P^T (dP^T − delta) in registers (masked on partial tiles), issues dV += P^T dO and
//     dK += dS^T Q with the 16-bit P^T / dS^T as register A operands and dO / Q read MN-major,
//     and writes dS^T to shared memory; after a barrier the two warpgroups compute dQ = dS K
//     (A = dS^T read transposed, B = K read MN-major): at D=128 warpgroup w takes columns
//     64w..64w+63 over all 128 keys, at D=64 its own 64 keys over all columns; dQ goes to
//     global memory by fp32 atomics, scaled.
// Written and compiled (nvcc sm_90a) but not yet run on a GPU: opt-in (RINGATTN_WGMMA_BWD=1,
// src/cuda/attention.ts) until tests/cuda/attention.gpu.test.ts has passed with it.
#include "common.cuh"
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#include "hopper.cuh"

namespace bwdh {
using namespace hop;
constexpr int BK = 128, BQ = 64, THREADS = 256;

template <int D> struct Cfg {
  static constexpr int KV_BYTES = BK * D * 2;  // K or V
  static constexpr int Q_BYTES = BQ * D * 2;   // Q or dO of one stage
  static constexpr int DS_BYTES = BK * BQ * 2;  // dS^T [128 keys][64 queries], 16-bit
  static constexpr int ROW_BYTES = 4 * BQ * 4;  // LSE·log2e, delta, qPos, qSeg of one stage
  static constexpr int SMEM = 1024 + 2 * KV_BYTES + 2 * 2 * Q_BYTES + DS_BYTES + 2 * ROW_BYTES + 2 * BK * 4;
  static_assert(SMEM <= 227 * 1024, "shared memory");
};

template <typename T, int D>
__device__ __forceinline__ void run(const BwdParams& p) {
  using C = Cfg<D>;
  using M = Wg<T>;
  extern __shared__ __align__(1024) unsigned char smemRaw[];
  const u32 base = (smemAddr(smemRaw) + 1023) & ~1023u;
  unsigned char* const gbase = smemRaw + (base - smemAddr(smemRaw));
  const u32 sK = base, sV = sK + C::KV_BYTES;
  auto sQ = [&](int st) { return sV + C::KV_BYTES + st * 2 * C::Q_BYTES; };
  auto sdO = [&](int st) { return sQ(st) + C::Q_BYTES; };
  const u32 sdS = sV + C::KV_BYTES + 4 * C::Q_BYTES;
  float* const rowsBase = (float*)(gbase + (sdS - base) + C::DS_BYTES);
  auto sLse = [&](int st) { return rowsBase + st * 4 * BQ; };
  auto sDelta = [&](int st) { return sLse(st) + BQ; };
  auto sQPos = [&](int st) { return (int*)(sLse(st) + 2 * BQ); };
  auto sQSeg = [&](int st) { return (int*)(sLse(st) + 3 * BQ); };
  int* const sKPos = (int*)(rowsBase + 8 * BQ);
  int* const sKSeg = sKPos + BK;
  u16* const dsPtr = (u16*)(gbase + (sdS - base));

  const int split = p.split > 1 ? p.split : 1;
  const int kt = blockIdx.x, kh = blockIdx.y / split, group = p.H / p.Hk, k0 = kt * BK;
  const int hLo = (blockIdx.y % split) * (group / split), hHi = hLo + group / split;
  const int wg = threadIdx.x >> 7, warp = (threadIdx.x >> 5) & 3, lane = threadIdx.x & 31;
  const Mask m = maskOf(p);
  const int4 kBox = p.kTiles[kt];
  const bool kRagged = k0 + BK > p.Sk;
  const int nqt = (p.Sq + BQ - 1) / BQ;
  const float scaleLog2 = p.scale * LOG2E;

  // The visible (head, query tile) pairs in order, as one index h·nqt + qt; -1 past the end.
  auto nextPair = [&](int x) {
    for (; x < (hHi - hLo) * nqt; x++) {
      if (classifyTile(m, p.qTiles[x % nqt], kBox) != TILE_EMPTY) return x;
    }
    return -1;
  };
  auto loadPair = [&](int x, int st) {
    const int h = kh * group + hLo + x / nqt, q0 = (x % nqt) * BQ;
    loadSwizzled<BQ, D, THREADS>(sQ(st), (const u16*)p.q, q0, p.Sq - q0, p.H, h, threadIdx.x);
    loadSwizzled<BQ, D, THREADS>(sdO(st), (const u16*)p.dO, q0, p.Sq - q0, p.H, h, threadIdx.x);
    for (int r = threadIdx.x; r < BQ; r += THREADS) {
      const int i = q0 + r;
      const bool ok = i < p.Sq;
      const float L = ok ? p.lse[(u64)i * p.H + h] : NEG_INF;
      sLse(st)[r] = L == NEG_INF ? POS_INF : L * LOG2E;  // exp2(s - inf) = 0: rows that saw nothing, padding
      sDelta(st)[r] = ok ? p.delta[(u64)i * p.H + h] : 0.f;
      sQPos(st)[r] = ok ? p.qPos[i] : 0;
      sQSeg(st)[r] = (ok && m.hasSeg) ? p.qSeg[i] : 0;
    }
  };

  loadSwizzled<BK, D, THREADS>(sK, (const u16*)p.k, k0, p.Sk - k0, p.Hk, kh, threadIdx.x);
  loadSwizzled<BK, D, THREADS>(sV, (const u16*)p.v, k0, p.Sk - k0, p.Hk, kh, threadIdx.x);
  for (int r = threadIdx.x; r < BK; r += THREADS) {
    const int j = k0 + r;
    sKPos[r] = j < p.Sk ? p.kPos[j] : 0;
    sKSeg[r] = (j < p.Sk && m.hasSeg) ? p.kSeg[j] : 0;
  }
  int x = nextPair(0);
  if (x >= 0) loadPair(x, 0);
  cpAsyncCommit();

  float dK[D / 2], dV[D / 2];
#pragma unroll
  for (int i = 0; i < D / 2; i++) dK[i] = dV[i] = 0.f;
  const u32 kRows = sK + wg * 64 * 128, vRows = sV + wg * 64 * 128;  // this warpgroup's 64 keys

  for (int it = 0; x >= 0; it++) {
    const int st = it & 1;
    const int xn = nextPair(x + 1);
    if (xn >= 0) loadPair(xn, st ^ 1);  // that stage was released by the barrier ending the last tile
    cpAsyncCommit();
    cpAsyncWait<1>();  // this tile's copies (and K/V) have landed
    fenceAsyncShared();
    __syncthreads();

    const int h = kh * group + hLo + x / nqt, q0 = (x % nqt) * BQ;
    int cls = classifyTile(m, p.qTiles[x % nqt], kBox);
    if (kRagged) cls = TILE_PARTIAL;  // missing keys must get P = 0

    // S^T = K Q^T and dP^T = V dO^T: 64 keys x 64 queries per warpgroup.
    float s[32], dp[32];
    wgmmaFence();
#pragma unroll
    for (int j = 0; j < D / 16; j++) {
      const u32 off = (j >> 2) * BK * 128 + (j & 3) * 32, offQ = (j >> 2) * BQ * 128 + (j & 3) * 32;
      if (j == 0) {
        M::template ss64<0, 0, 0>(s, desc(kRows + off, 16, 1024), desc(sQ(st) + offQ, 16, 1024));
        M::template ss64<0, 0, 0>(dp, desc(vRows + off, 16, 1024), desc(sdO(st) + offQ, 16, 1024));
      } else {
        M::template ss64<0, 0, 1>(s, desc(kRows + off, 16, 1024), desc(sQ(st) + offQ, 16, 1024));
        M::template ss64<0, 0, 1>(dp, desc(vRows + off, 16, 1024), desc(sdO(st) + offQ, 16, 1024));
      }
    }
    wgmmaCommit();
    wgmmaWait<0>();
    fenceRegs(s);
    fenceRegs(dp);

    // P^T (into s) and dS^T (into dp). Register 4n + e: key row (CTA) 64wg + 16warp + lane/4 +
    // 8(e >> 1), query column 8n + 2(lane % 4) + (e & 1).
    const float* lse = sLse(st);
    const float* dl = sDelta(st);
#pragma unroll
    for (int n = 0; n < 8; n++)
#pragma unroll
      for (int e = 0; e < 4; e++) {
        const int col = n * 8 + 2 * (lane & 3) + (e & 1);
        const int kr = wg * 64 + warp * 16 + (lane >> 2) + 8 * (e >> 1);
        float pv = exp2Fast(s[4 * n + e] * scaleLog2 - lse[col]);
        if (cls == TILE_PARTIAL && (k0 + kr >= p.Sk || !visible(m, sQPos(st)[col], sKPos[kr], sQSeg(st)[col], sKSeg[kr]))) pv = 0.f;
        s[4 * n + e] = pv;
        dp[4 * n + e] = pv * (dp[4 * n + e] - dl[col]);
      }
    // 16-bit A fragments (queries 16kk..16kk+15 are registers 8kk..8kk+7), and dS^T to shared
    // memory ([key][query] rows of 128 B, 128-byte swizzle) for dQ.
    u32 ap[4][4], ad[4][4];
#pragma unroll
    for (int kk = 0; kk < 4; kk++)
#pragma unroll
      for (int c = 0; c < 4; c++) {
        ap[kk][c] = pack2<T>(s[8 * kk + 2 * c], s[8 * kk + 2 * c + 1]);
        ad[kk][c] = pack2<T>(dp[8 * kk + 2 * c], dp[8 * kk + 2 * c + 1]);
      }
#pragma unroll
    for (int n = 0; n < 8; n++)
#pragma unroll
      for (int r = 0; r < 2; r++) {
        const int kr = wg * 64 + warp * 16 + (lane >> 2) + 8 * r;
        // registers 4n + 2r, 4n + 2r + 1: columns 8n + 2(lane % 4) + {0, 1} of row kr
        const u32 v2 = ad[n >> 1][(n & 1) * 2 + r];
        *(u32*)((unsigned char*)dsPtr + kr * 128 + ((n ^ (kr & 7)) << 4) + 4 * (lane & 3)) = v2;
      }
    // dV += P^T dO, dK += dS^T Q: A from registers, B (dO, Q: [query][d]) read MN-major.
    wgmmaFence();
#pragma unroll
    for (int kk = 0; kk < 4; kk++) {
      M::template rs<D, 1>(dV, ap[kk], desc(sdO(st) + kk * 16 * 128, BQ * 128, 1024));
      M::template rs<D, 1>(dK, ad[kk], desc(sQ(st) + kk * 16 * 128, BQ * 128, 1024));
    }
    wgmmaCommit();
    fenceAsyncShared();  // dS^T was written through the generic proxy; wgmma reads it through the async one
    __syncthreads();     // both warpgroups' dS^T

    // dQ = dS K: D=128, warpgroup w takes columns 64w.. over all 128 keys; D=64, its own keys.
    constexpr int KEYS = D == 128 ? BK : 64;
    const int keyLo = D == 128 ? 0 : wg * 64, colPanel = D == 128 ? wg : 0;
    float dq[32];
    wgmmaFence();
#pragma unroll
    for (int kk = 0; kk < KEYS / 16; kk++) {
      const u32 key = keyLo + kk * 16;
      const u64 da = desc(sdS + key * 128, BK * 128, 1024);                    // dS^T [key][query]: A = dS, MN-major
      const u64 db = desc(sK + colPanel * BK * 128 + key * 128, BK * 128, 1024);  // K [key][d]: B, MN-major
      if (kk == 0) M::template ss64<1, 1, 0>(dq, da, db);
      else M::template ss64<1, 1, 1>(dq, da, db);
    }
    wgmmaCommit();
    wgmmaWait<0>();
    fenceRegs(dq);
    fenceRegs(dK);
    fenceRegs(dV);
#pragma unroll
    for (int r = 0; r < 2; r++) {
      const int i = q0 + warp * 16 + (lane >> 2) + 8 * r;
      if (i >= p.Sq) continue;
      float* dst = p.dq + ((u64)i * p.H + h) * D + colPanel * 64 + 2 * (lane & 3);
#pragma unroll
      for (int n = 0; n < 8; n++) {
        atomicAdd(dst + n * 8, dq[4 * n + 2 * r] * p.scale);
        atomicAdd(dst + n * 8 + 1, dq[4 * n + 2 * r + 1] * p.scale);
      }
    }
    __syncthreads();  // this tile's stage and dS^T are free
    x = xn;
  }
  cpAsyncWait<0>();  // a CTA that found no visible tile still drains its K/V copies

  // dK, dV rows of this warpgroup; without a split this CTA alone owns them: read-add-write.
#pragma unroll
  for (int r = 0; r < 2; r++) {
    const int j = k0 + wg * 64 + warp * 16 + (lane >> 2) + 8 * r;
    if (j >= p.Sk) continue;
    const u64 row = ((u64)j * p.Hk + kh) * D + 2 * (lane & 3);
#pragma unroll
    for (int n = 0; n < D / 8; n++) {
      const float k0v = dK[4 * n + 2 * r] * p.scale, k1v = dK[4 * n + 2 * r + 1] * p.scale;
      const float v0v = dV[4 * n + 2 * r], v1v = dV[4 * n + 2 * r + 1];
      if (split > 1) {
        atomicAdd(p.dk + row + n * 8, k0v);
        atomicAdd(p.dk + row + n * 8 + 1, k1v);
        atomicAdd(p.dv + row + n * 8, v0v);
        atomicAdd(p.dv + row + n * 8 + 1, v1v);
      } else {
        float2* pk = (float2*)(p.dk + row + n * 8);
        float2* pv = (float2*)(p.dv + row + n * 8);
        float2 a = *pk, b = *pv;
        a.x += k0v;
        a.y += k1v;
        b.x += v0v;
        b.y += v1v;
        *pk = a;
        *pv = b;
      }
    }
  }
}
}  // namespace bwdh

#define BWDH_ENTRY(name, T, D) \
  extern "C" __global__ void __launch_bounds__(bwdh::THREADS, 1) name(const BwdParams p) { bwdh::run<T, D>(p); }
BWDH_ENTRY(attn_bwd_h_bf16_d64, Bf16, 64)
BWDH_ENTRY(attn_bwd_h_bf16_d128, Bf16, 128)
BWDH_ENTRY(attn_bwd_h_f16_d64, F16, 64)
BWDH_ENTRY(attn_bwd_h_f16_d128, F16, 128)
#endif  // sm_90a
