// Blockwise attention backward for one KV block, with the final (global) LSE and
// delta = rowsum(dO * O), so the same kernels serve every ring step. Adds into fp32 dq, dk, dv.
//   attn_delta_{f32,bf16,f16}: delta[r] = sum_d dO[r, d] * O[r, d]. Grid ceil(rows/4), 128 threads.
//   attn_bwd_mma_{bf16,f16}_d{64,128}: FA2-style on mma.sync. A CTA owns 64 keys of one KV head
//     (grid (ceil(Sk/64), Hk), 128 threads; warp w owns keys 16w..16w+15) and loops over the
//     GQA group's query heads and the query tiles, so dK/dV sum the group in registers (no KV
//     copies, no atomics). With p.split = s > 1 (grid (ceil(Sk/64), Hk * s)) the group's query
//     heads are shared out over s CTAs per key tile, which then add their dK/dV with fp32
//     atomics: more, shorter CTAs when a ring step's block is too small to fill the GPU for
//     several waves. Per query tile (BQ = 64 at d64, 32 at d128):
//       S^T = K Q^T, P^T = exp2(S^T scale log2e - LSE log2e), dP^T = V dO^T,
//       dS^T = P^T (dP^T - delta), dV += P^T dO, dK += dS^T Q, dQ += dS K (fp32 atomics).
//   attn_bwd_generic_{f32,bf16,f16}: one warp per (query row, head); dq in registers, dk/dv by
//     fp32 atomics. Grid (ceil(Sq/4), H), 128 threads.
#include "common.cuh"

template <typename T>
__device__ __forceinline__ void deltaRows(const T* dO, const float* o, float* delta, int rows, int D) {
  const int r = blockIdx.x * 4 + (threadIdx.x >> 5), lane = threadIdx.x & 31;
  if (r >= rows) return;
  float s = 0.f;
  for (int d = lane; d < D; d += 32) s += toF32(dO[(u64)r * D + d]) * o[(u64)r * D + d];
  s = warpSum(s);
  if (lane == 0) delta[r] = s;
}

// Shapes: dO [rows, D] (T), o [rows, D] fp32, delta [rows] fp32; rows = Sq * H.
extern "C" __global__ void attn_delta_f32(const float* dO, const float* o, float* delta, int rows, int D) { deltaRows(dO, o, delta, rows, D); }
extern "C" __global__ void attn_delta_bf16(const Bf16* dO, const float* o, float* delta, int rows, int D) { deltaRows(dO, o, delta, rows, D); }
extern "C" __global__ void attn_delta_f16(const F16* dO, const float* o, float* delta, int rows, int D) { deltaRows(dO, o, delta, rows, D); }

// ---- tensor-core path ----------------------------------------------------------------------

namespace bwd {
constexpr int BK = 64;
constexpr int THREADS = 128;

template <int D, int BQ> struct Smem {
  static constexpr int LD = D + 8, LDS = BQ + 8;
  // K, V [BK][LD]; Q, dO [BQ][LD]; dS^T [BK][LDS] (16-bit); lse, delta, qPos, qSeg [BQ]; kPos, kSeg [BK]
  static constexpr int BYTES = (2 * BK * LD + 2 * BQ * LD + BK * LDS) * 2 + 4 * BQ * 4 + 2 * BK * 4;
};

template <typename T, int D, int BQ>
__device__ __forceinline__ void run(const BwdParams& p) {
  constexpr int LD = Smem<D, BQ>::LD, LDS = Smem<D, BQ>::LDS, ND = D / 8, NQ = BQ / 8;
  // dQ tile [BQ][D] split over the 4 warps: WR row groups of 16 x WC column groups.
  constexpr int WR = BQ / 16, WC = 4 / WR, DC = D / WC;
  extern __shared__ __align__(16) unsigned char smem[];
  u16* sK = (u16*)smem;
  u16* sV = sK + BK * LD;
  u16* sQ = sV + BK * LD;
  u16* sdO = sQ + BQ * LD;
  u16* sdS = sdO + BQ * LD;  // dS^T [key][query]
  float* sLse = (float*)(sdS + BK * LDS);  // LSE * log2e; +inf where the row contributes nothing
  float* sDelta = sLse + BQ;
  int* sQPos = (int*)(sDelta + BQ);
  int* sQSeg = sQPos + BQ;
  int* sKPos = sQSeg + BQ;
  int* sKSeg = sKPos + BK;

  const int split = p.split > 1 ? p.split : 1;
  const Mask m = maskOf(p);
  const int nqt = (p.Sq + BQ - 1) / BQ;
  const int2 lt = launchTile(p.headGroup);
  // the heavier end's key tiles first (common.cuh): the first under a causal mask
  const int kt = firstKeysHeavier(m, p.qTiles, nqt, p.kTiles, gridDim.x) ? lt.x : gridDim.x - 1 - lt.x;
  const int kh = lt.y / split, group = p.H / p.Hk, k0 = kt * BK;
  const int hLo = (lt.y % split) * (group / split), hHi = hLo + group / split;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int4 kBox = p.kTiles[kt];
  const bool kRagged = k0 + BK > p.Sk;
  const float scaleLog2 = p.scale * LOG2E;
  const T* q = (const T*)p.q;
  const T* dO = (const T*)p.dO;

  {
    const T* k = (const T*)p.k;
    const T* v = (const T*)p.v;
    for (int c = threadIdx.x; c < BK * (D / 8); c += THREADS) {
      const int r = c / (D / 8), cc = (c % (D / 8)) * 8, j = k0 + r;
      const bool ok = j < p.Sk;
      const u64 off = ((u64)(ok ? j : 0) * p.Hk + kh) * D + cc;
      cpAsync16(sK + r * LD + cc, k + off, ok);
      cpAsync16(sV + r * LD + cc, v + off, ok);
    }
    cpAsyncCommit();
    if (threadIdx.x < BK) {
      const int j = k0 + threadIdx.x;
      sKPos[threadIdx.x] = j < p.Sk ? p.kPos[j] : 0;
      sKSeg[threadIdx.x] = (j < p.Sk && m.hasSeg) ? p.kSeg[j] : 0;
    }
  }

  float dK[ND][4], dV[ND][4];
  for (int n = 0; n < ND; n++)
    for (int e = 0; e < 4; e++) dK[n][e] = dV[n][e] = 0.f;

  for (int hh = hLo; hh < hHi; hh++) {
    const int h = kh * group + hh;
    for (int qt = 0; qt < nqt; qt++) {
      int cls = classifyTile(m, p.qTiles[qt], kBox);
      if (cls == TILE_EMPTY) continue;
      if (kRagged) cls = TILE_PARTIAL;  // missing keys must get P = 0
      const int q0 = qt * BQ;
      __syncthreads();  // the previous tile is done with sQ, sdO, sdS and the row arrays
      for (int c = threadIdx.x; c < BQ * (D / 8); c += THREADS) {
        const int r = c / (D / 8), cc = (c % (D / 8)) * 8, i = q0 + r;
        const bool ok = i < p.Sq;
        const u64 off = ((u64)(ok ? i : 0) * p.H + h) * D + cc;
        cpAsync16(sQ + r * LD + cc, q + off, ok);
        cpAsync16(sdO + r * LD + cc, dO + off, ok);
      }
      cpAsyncCommit();
      for (int r = threadIdx.x; r < BQ; r += THREADS) {
        const int i = q0 + r;
        const bool ok = i < p.Sq;
        const float L = ok ? p.lse[(u64)i * p.H + h] : NEG_INF;
        sLse[r] = L == NEG_INF ? POS_INF : L * LOG2E;  // exp2(s - inf) = 0: rows that saw nothing, padding
        sDelta[r] = ok ? p.delta[(u64)i * p.H + h] : 0.f;
        sQPos[r] = ok ? p.qPos[i] : 0;
        sQSeg[r] = (ok && m.hasSeg) ? p.qSeg[i] : 0;
      }
      cpAsyncWait<0>();
      __syncthreads();

      // S^T = K Q^T and dP^T = V dO^T: 16 keys x BQ queries per warp.
      float st[NQ][4], dpt[NQ][4];
      for (int n = 0; n < NQ; n++)
        for (int e = 0; e < 4; e++) st[n][e] = dpt[n][e] = 0.f;
#pragma unroll
      for (int kk = 0; kk < D / 16; kk++) {
        u32 ak[4], av[4];
        ldsm4(ak, sK + (warp * 16 + (lane & 15)) * LD + kk * 16 + (lane >> 4) * 8);
        ldsm4(av, sV + (warp * 16 + (lane & 15)) * LD + kk * 16 + (lane >> 4) * 8);
#pragma unroll
        for (int nb = 0; nb < BQ / 16; nb++) {
          const int off = (nb * 16 + (lane & 7) + ((lane >> 4) << 3)) * LD + kk * 16 + ((lane >> 3) & 1) * 8;
          u32 b[4];
          ldsm4(b, sQ + off);
          mma16816<T>(st[2 * nb], ak, b[0], b[1]);
          mma16816<T>(st[2 * nb + 1], ak, b[2], b[3]);
          ldsm4(b, sdO + off);
          mma16816<T>(dpt[2 * nb], av, b[0], b[1]);
          mma16816<T>(dpt[2 * nb + 1], av, b[2], b[3]);
        }
      }
      // P^T (into st) and dS^T (into dpt). Element (n, e): key row warp*16 + lane/4 + 8*(e/2),
      // query column n*8 + 2*(lane%4) + e%2.
#pragma unroll
      for (int n = 0; n < NQ; n++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
          const int col = n * 8 + 2 * (lane & 3) + (e & 1);
          const int kr = warp * 16 + (lane >> 2) + 8 * (e >> 1);
          float pv = exp2Fast(st[n][e] * scaleLog2 - sLse[col]);
          if (cls == TILE_PARTIAL && (k0 + kr >= p.Sk || !visible(m, sQPos[col], sKPos[kr], sQSeg[col], sKSeg[kr]))) pv = 0.f;
          st[n][e] = pv;
          dpt[n][e] = pv * (dpt[n][e] - sDelta[col]);
        }
      // dV += P^T dO and dK += dS^T Q (A from registers, B = dO / Q rows via ldmatrix.trans).
#pragma unroll
      for (int kk = 0; kk < BQ / 16; kk++) {
        u32 ap[4], ad[4];
        ap[0] = pack2<T>(st[2 * kk][0], st[2 * kk][1]);
        ap[1] = pack2<T>(st[2 * kk][2], st[2 * kk][3]);
        ap[2] = pack2<T>(st[2 * kk + 1][0], st[2 * kk + 1][1]);
        ap[3] = pack2<T>(st[2 * kk + 1][2], st[2 * kk + 1][3]);
        ad[0] = pack2<T>(dpt[2 * kk][0], dpt[2 * kk][1]);
        ad[1] = pack2<T>(dpt[2 * kk][2], dpt[2 * kk][3]);
        ad[2] = pack2<T>(dpt[2 * kk + 1][0], dpt[2 * kk + 1][1]);
        ad[3] = pack2<T>(dpt[2 * kk + 1][2], dpt[2 * kk + 1][3]);
        // dS^T to shared memory for the dQ product.
        const int r0 = warp * 16 + (lane >> 2), c0 = kk * 16 + 2 * (lane & 3);
        *(u32*)(sdS + r0 * LDS + c0) = ad[0];
        *(u32*)(sdS + (r0 + 8) * LDS + c0) = ad[1];
        *(u32*)(sdS + r0 * LDS + c0 + 8) = ad[2];
        *(u32*)(sdS + (r0 + 8) * LDS + c0 + 8) = ad[3];
#pragma unroll
        for (int nd = 0; nd < D / 16; nd++) {
          const int off = (kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + nd * 16 + (lane >> 4) * 8;
          u32 b[4];
          ldsm4T(b, sdO + off);
          mma16816<T>(dV[2 * nd], ap, b[0], b[1]);
          mma16816<T>(dV[2 * nd + 1], ap, b[2], b[3]);
          ldsm4T(b, sQ + off);
          mma16816<T>(dK[2 * nd], ad, b[0], b[1]);
          mma16816<T>(dK[2 * nd + 1], ad, b[2], b[3]);
        }
      }
      __syncthreads();  // dS^T complete

      // dQ[BQ][D] = dS K over the 64 keys; warp (wr, wc) owns rows 16 wr.., columns DC wc..
      {
        const int wr = warp % WR, wc = warp / WR;
        float dq[DC / 8][4];
        for (int n = 0; n < DC / 8; n++) dq[n][0] = dq[n][1] = dq[n][2] = dq[n][3] = 0.f;
#pragma unroll
        for (int kk = 0; kk < BK / 16; kk++) {
          const int mi = lane >> 3;
          u32 a[4];
          ldsm4T(a, sdS + (kk * 16 + (lane & 7) + (mi >> 1) * 8) * LDS + wr * 16 + (mi & 1) * 8);
#pragma unroll
          for (int nd = 0; nd < DC / 16; nd++) {
            u32 b[4];
            ldsm4T(b, sK + (kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + wc * DC + nd * 16 + (lane >> 4) * 8);
            mma16816<T>(dq[2 * nd], a, b[0], b[1]);
            mma16816<T>(dq[2 * nd + 1], a, b[2], b[3]);
          }
        }
#pragma unroll
        for (int r = 0; r < 2; r++) {
          const int i = q0 + wr * 16 + (lane >> 2) + 8 * r;
          if (i >= p.Sq) continue;
          float* dst = p.dq + ((u64)i * p.H + h) * D + wc * DC + 2 * (lane & 3);
#pragma unroll
          for (int n = 0; n < DC / 8; n++) {
            atomicAdd(dst + n * 8, dq[n][2 * r] * p.scale);
            atomicAdd(dst + n * 8 + 1, dq[n][2 * r + 1] * p.scale);
          }
        }
      }
    }
  }

  cpAsyncWait<0>();  // a CTA that found no visible tile still drains its K/V copies
  // Without a split this CTA alone owns keys [k0, k0 + 64) of head kh: plain read-add-write.
#pragma unroll
  for (int r = 0; r < 2; r++) {
    const int j = k0 + warp * 16 + (lane >> 2) + 8 * r;
    if (j >= p.Sk) continue;
    const u64 base = ((u64)j * p.Hk + kh) * D + 2 * (lane & 3);
    if (split > 1) {
#pragma unroll
      for (int n = 0; n < ND; n++) {
        atomicAdd(p.dk + base + n * 8, dK[n][2 * r] * p.scale);
        atomicAdd(p.dk + base + n * 8 + 1, dK[n][2 * r + 1] * p.scale);
        atomicAdd(p.dv + base + n * 8, dV[n][2 * r]);
        atomicAdd(p.dv + base + n * 8 + 1, dV[n][2 * r + 1]);
      }
      continue;
    }
#pragma unroll
    for (int n = 0; n < ND; n++) {
      float2* pk = (float2*)(p.dk + base + n * 8);
      float2* pv = (float2*)(p.dv + base + n * 8);
      float2 a = *pk, b = *pv;
      a.x += dK[n][2 * r] * p.scale;
      a.y += dK[n][2 * r + 1] * p.scale;
      b.x += dV[n][2 * r];
      b.y += dV[n][2 * r + 1];
      *pk = a;
      *pv = b;
    }
  }
}
}  // namespace bwd

// ---- generic path --------------------------------------------------------------------------

namespace bwdg {
constexpr int ROWS = 4, MAXC = 8, BK = 64;

template <typename T>
__device__ __forceinline__ void run(const BwdParams& p) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int i = blockIdx.x * ROWS + warp, h = blockIdx.y, kh = h / (p.H / p.Hk), D = p.D;
  if (i >= p.Sq) return;
  const u64 row = (u64)i * p.H + h;
  const float L = p.lse[row];
  if (L == NEG_INF) return;  // this row saw no key: no gradient
  const float delta = p.delta[row];
  const Mask m = maskOf(p);
  const int qp = p.qPos[i], qs = m.hasSeg ? p.qSeg[i] : 0;
  const int4 qBox = make_int4(qp, qp, qs, qs);
  const T* q = (const T*)p.q + row * D;
  const T* dO = (const T*)p.dO + row * D;
  float qv[MAXC], gv[MAXC], dq[MAXC];
  for (int c = 0; c < MAXC; c++) {
    const int d = lane + 32 * c;
    qv[c] = d < D ? toF32(q[d]) : 0.f;
    gv[c] = d < D ? toF32(dO[d]) : 0.f;
    dq[c] = 0.f;
  }
  const int nkt = (p.Sk + BK - 1) / BK;
  for (int t = 0; t < nkt; t++) {
    const int cls = classifyTile(m, qBox, p.kTiles[t]);
    if (cls == TILE_EMPTY) continue;
    const int end = min(p.Sk, (t + 1) * BK);
    for (int j = t * BK; j < end; j++) {
      if (cls == TILE_PARTIAL && !visible(m, qp, p.kPos[j], qs, m.hasSeg ? p.kSeg[j] : 0)) continue;
      const u64 kr = ((u64)j * p.Hk + kh) * D;
      const T* k = (const T*)p.k + kr;
      const T* v = (const T*)p.v + kr;
      float dot = 0.f, dp = 0.f;
      for (int c = 0; c < MAXC; c++) {
        const int d = lane + 32 * c;
        if (d < D) {
          dot += qv[c] * toF32(k[d]);
          dp += gv[c] * toF32(v[d]);
        }
      }
      dot = warpSum(dot);
      dp = warpSum(dp);
      const float pj = expf(dot * p.scale - L);
      const float ds = pj * (dp - delta) * p.scale;
      for (int c = 0; c < MAXC; c++) {
        const int d = lane + 32 * c;
        if (d < D) {
          dq[c] += ds * toF32(k[d]);
          atomicAdd(p.dk + kr + d, ds * qv[c]);
          atomicAdd(p.dv + kr + d, pj * gv[c]);
        }
      }
    }
  }
  for (int c = 0; c < MAXC; c++) {
    const int d = lane + 32 * c;
    if (d < D) p.dq[row * D + d] += dq[c];  // this warp alone owns the row
  }
}
}  // namespace bwdg

// Entries. Shapes: see BwdParams in common.cuh. Dynamic shared memory (mma): bwd::Smem<D, BQ>::BYTES.
extern "C" __global__ void __launch_bounds__(128) attn_bwd_mma_bf16_d64(const BwdParams p) { bwd::run<Bf16, 64, 64>(p); }
extern "C" __global__ void __launch_bounds__(128) attn_bwd_mma_bf16_d128(const BwdParams p) { bwd::run<Bf16, 128, 32>(p); }
extern "C" __global__ void __launch_bounds__(128) attn_bwd_mma_f16_d64(const BwdParams p) { bwd::run<F16, 64, 64>(p); }
extern "C" __global__ void __launch_bounds__(128) attn_bwd_mma_f16_d128(const BwdParams p) { bwd::run<F16, 128, 32>(p); }
extern "C" __global__ void __launch_bounds__(128) attn_bwd_generic_f32(const BwdParams p) { bwdg::run<float>(p); }
extern "C" __global__ void __launch_bounds__(128) attn_bwd_generic_bf16(const BwdParams p) { bwdg::run<Bf16>(p); }
extern "C" __global__ void __launch_bounds__(128) attn_bwd_generic_f16(const BwdParams p) { bwdg::run<F16>(p); }
