// DRAM read patterns of the GPU decode, without its arithmetic: how fast can a kernel shaped like
// decode_mma (CTA = chunk x KV head, 256-byte rows at an Hk * 256-byte stride, K and V tiles by
// 16-byte cp.async into shared memory) read a KV cache, and which load scheme reads it fastest?
// Standalone (CUDA runtime), so that one device run can sweep schemes the decode kernel would take
// an edit each to try. Prints TB/s per scheme, median of REPS runs after a warm-up.
//   nvcc -arch=sm_90a -O3 -std=c++17 -o .devbin/dram-probe bench/probes/dram-probe.cu
//   .devbin/dram-probe [rows=1048576] [reps=15]
#include <cstdio>
#include <cstdlib>
#include <cstdint>
#include <vector>
#include <algorithm>
#include <cuda_runtime.h>

#define CK(x) do { cudaError_t e_ = (x); if (e_ != cudaSuccess) { fprintf(stderr, "%s: %s\n", #x, cudaGetErrorString(e_)); exit(1); } } while (0)

constexpr int D = 128;      // bf16 elements a row of one head: 256 bytes
constexpr int HK = 8;       // KV heads: a cache row of all heads is 2 KB
constexpr int CH = D / 8;   // 16-byte pieces a row

__device__ __forceinline__ unsigned smemAddr(const void* p) { return (unsigned)__cvta_generic_to_shared(p); }
__device__ __forceinline__ void cpAsync16(void* s, const void* g) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(smemAddr(s)), "l"(g));
}
__device__ __forceinline__ void commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N> __device__ __forceinline__ void waitGroup() { asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory"); }

// Decode's skeleton: STAGES stages of BK-row K and V tiles (rows padded to D + 8 elements), the
// next tile issued after a wait for the oldest and a barrier; the "compute" reads one 16-byte
// piece a thread so the copies have a consumer. SPLIT: single K and V buffers loaded alternately
// (K(t+1) while V(t) is consumed, V(t+1) while K(t+1) is), as the rejected -DDEC_SPLIT build did
// (kernels/NOTES.md run 41).
template <int STAGES, int BK, int THREADS, bool SPLIT>
__global__ void __launch_bounds__(THREADS) skeleton(const uint16_t* K, const uint16_t* V, long rows, long rowsPerChunk, unsigned* sink) {
  constexpr int LD = D + 8;
  extern __shared__ __align__(16) uint16_t sm[];
  const long r0 = blockIdx.x * rowsPerChunk, r1 = min(rows, r0 + rowsPerChunk);
  const int kh = blockIdx.y;
  const int tiles = (int)((r1 - r0 + BK - 1) / BK);
  auto loadT = [&](uint16_t* dst, const uint16_t* src, int t) {
#pragma unroll
    for (int i = 0; i < BK * CH / THREADS; i++) {
      const int c = threadIdx.x + i * THREADS, r = c / CH, cc = (c % CH) * 8;
      long row = r0 + (long)t * BK + r;
      if (row >= r1) row = r1 - 1;
      cpAsync16(dst + r * LD + cc, src + (row * HK + kh) * D + cc);
    }
  };
  uint16_t* sK = sm;
  auto stK = [&](int s) { return sm + s * 2 * BK * LD; };
  auto stV = [&](int s) { return sm + s * 2 * BK * LD + BK * LD; };
  unsigned acc = 0;
  if constexpr (SPLIT) {
    uint16_t* sV = sm + BK * LD;
    if (tiles > 0) loadT(sK, K, 0);
    commit();
    if (tiles > 0) loadT(sV, V, 0);
    commit();
    for (int t = 0; t < tiles; t++) {
      waitGroup<1>();
      __syncthreads();
      acc ^= *(const unsigned*)(sK + (threadIdx.x % BK) * LD + 2 * (threadIdx.x / BK));
      __syncthreads();
      if (t + 1 < tiles) loadT(sK, K, t + 1);
      commit();
      waitGroup<1>();
      __syncthreads();
      acc ^= *(const unsigned*)(sV + (threadIdx.x % BK) * LD + 2 * (threadIdx.x / BK));
      __syncthreads();
      if (t + 1 < tiles) loadT(sV, V, t + 1);
      commit();
    }
  } else {
#pragma unroll
    for (int s = 0; s < STAGES - 1; s++) {
      if (s < tiles) {
        loadT(stK(s), K, s);
        loadT(stV(s), V, s);
      }
      commit();
    }
    for (int t = 0; t < tiles; t++) {
      waitGroup<STAGES - 2>();
      __syncthreads();
      const int n = t + STAGES - 1;
      if (n < tiles) {
        loadT(stK(n % STAGES), K, n);
        loadT(stV(n % STAGES), V, n);
      }
      commit();
      const int s = t % STAGES;
      acc ^= *(const unsigned*)(stK(s) + (threadIdx.x % BK) * LD + 2 * (threadIdx.x / BK));
      acc ^= *(const unsigned*)(stV(s) + (threadIdx.x % BK) * LD + 2 * (threadIdx.x / BK));
    }
  }
  waitGroup<0>();
  if (acc == 0x9e3779b9u) sink[0] = acc;
}

// Same CTAs and rows, loads straight into registers (ld.global.nc.v4), U rows' pieces in flight
// a thread, no shared memory.
template <int U, int THREADS>
__global__ void __launch_bounds__(THREADS) direct(const uint16_t* K, const uint16_t* V, long rows, long rowsPerChunk, unsigned* sink) {
  const long r0 = blockIdx.x * rowsPerChunk, r1 = min(rows, r0 + rowsPerChunk);
  const int kh = blockIdx.y;
  constexpr int ROWS = THREADS / CH;  // rows a pass of the CTA
  unsigned acc = 0;
  const int cc = (threadIdx.x % CH) * 8;
  for (long base = r0 + threadIdx.x / CH; base < r1; base += (long)ROWS * U) {
    uint4 k[U], v[U];
#pragma unroll
    for (int u = 0; u < U; u++) {
      long row = base + (long)u * ROWS;
      if (row >= r1) row = r1 - 1;
      const uint4* pk = (const uint4*)(K + (row * HK + kh) * D + cc);
      const uint4* pv = (const uint4*)(V + (row * HK + kh) * D + cc);
      asm volatile("ld.global.nc.v4.u32 {%0,%1,%2,%3}, [%4];" : "=r"(k[u].x), "=r"(k[u].y), "=r"(k[u].z), "=r"(k[u].w) : "l"(pk));
      asm volatile("ld.global.nc.v4.u32 {%0,%1,%2,%3}, [%4];" : "=r"(v[u].x), "=r"(v[u].y), "=r"(v[u].z), "=r"(v[u].w) : "l"(pv));
    }
#pragma unroll
    for (int u = 0; u < U; u++) acc ^= k[u].x ^ k[u].w ^ v[u].y ^ v[u].z;
  }
  if (acc == 0x9e3779b9u) sink[0] = acc;
}

// decode_ldg's load path without its arithmetic: 8 warps a CTA, each streaming its own 16-row
// tiles (warp w: tiles w, w + 8, ...); a tile's K then V arrive in registers (8 x 16 bytes a
// thread), go to the warp's shared tile, and one is in flight while the other is "used".
__global__ void __launch_bounds__(256, 2) staged(const uint16_t* K, const uint16_t* V, long rows, long rowsPerChunk, unsigned* sink) {
  constexpr int LD = D + 8, BK = 16;
  extern __shared__ __align__(16) uint16_t sm[];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const long r0 = blockIdx.x * rowsPerChunk, r1 = min(rows, r0 + rowsPerChunk);
  const int kh = blockIdx.y;
  const int tiles = (int)((r1 - r0 + BK - 1) / BK);
  uint16_t* sK = sm + warp * 2 * BK * LD;
  uint16_t* mine = sK + (lane >> 4) * LD + (lane & 15) * 8;
  uint4 stg[8];
  auto load = [&](const uint16_t* src, int t) {
#pragma unroll
    for (int i = 0; i < 8; i++) {
      long row = r0 + (long)t * BK + i * 2 + (lane >> 4);
      if (row >= r1) row = r1 - 1;
      const uint4* g = (const uint4*)(src + (row * HK + kh) * D + (lane & 15) * 8);
      asm volatile("ld.global.nc.v4.u32 {%0,%1,%2,%3}, [%4];" : "=r"(stg[i].x), "=r"(stg[i].y), "=r"(stg[i].z), "=r"(stg[i].w) : "l"(g));
    }
  };
  auto store = [&](int off) {
#pragma unroll
    for (int i = 0; i < 8; i++) *(uint4*)(mine + off + i * 2 * LD) = stg[i];
  };
  unsigned acc = 0;
  int t = warp;
  if (t < tiles) load(K, t);
  for (; t < tiles; t += 8) {
    __syncwarp();
    store(0);
    __syncwarp();
    load(V, t);
    acc ^= *(const unsigned*)(sK + (lane & 15) * LD + 2 * (lane >> 4));
    __syncwarp();
    store(BK * LD);
    __syncwarp();
    if (t + 8 < tiles) load(K, t + 8);
    acc ^= *(const unsigned*)(sK + BK * LD + (lane & 15) * LD + 2 * (lane >> 4));
  }
  if (acc == 0x9e3779b9u) sink[0] = acc;
}

// Grid-stride read of both buffers as one array each (decode_read_bw's pattern).
__global__ void __launch_bounds__(256) linear(const uint4* a, const uint4* b, long n, unsigned* sink) {
  const long stride = (long)gridDim.x * blockDim.x;
  unsigned x = 0;
  for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += 4 * stride) {
    uint4 v[8];
#pragma unroll
    for (int j = 0; j < 4; j++) {
      const long k = min(i + j * stride, n - 1);
      asm volatile("ld.global.cs.v4.u32 {%0,%1,%2,%3}, [%4];" : "=r"(v[j].x), "=r"(v[j].y), "=r"(v[j].z), "=r"(v[j].w) : "l"(a + k));
      asm volatile("ld.global.cs.v4.u32 {%0,%1,%2,%3}, [%4];" : "=r"(v[4 + j].x), "=r"(v[4 + j].y), "=r"(v[4 + j].z), "=r"(v[4 + j].w) : "l"(b + k));
    }
#pragma unroll
    for (int j = 0; j < 8; j++) x ^= v[j].x ^ v[j].w;
  }
  if (x == 0x9e3779b9u) sink[0] = x;
}

static int sms = 0;

template <typename F>
static double timeIt(F launch, int reps) {
  cudaEvent_t a, b;
  CK(cudaEventCreate(&a));
  CK(cudaEventCreate(&b));
  launch();
  CK(cudaDeviceSynchronize());
  std::vector<float> ts;
  for (int r = 0; r < reps; r++) {
    CK(cudaEventRecord(a));
    launch();
    CK(cudaEventRecord(b));
    CK(cudaEventSynchronize(b));
    float ms = 0;
    CK(cudaEventElapsedTime(&ms, a, b));
    ts.push_back(ms);
  }
  CK(cudaGetLastError());
  std::sort(ts.begin(), ts.end());
  return ts[ts.size() / 2];
}

template <int STAGES, int BK, int THREADS, bool SPLIT>
static void runSkeleton(const char* name, const uint16_t* K, const uint16_t* V, long rows, double bytes, int reps, unsigned* sink, int waves) {
  const int smem = (SPLIT ? 1 : STAGES) * 2 * BK * (D + 8) * 2;
  auto fn = skeleton<STAGES, BK, THREADS, SPLIT>;
  CK(cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  int perSm = 0;
  CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&perSm, fn, THREADS, smem));
  const long chunks = std::max(1L, (long)waves * sms * perSm / HK);
  const long per = (rows + chunks - 1) / chunks;
  const double ms = timeIt([&] { fn<<<dim3((unsigned)chunks, HK), THREADS, smem>>>(K, V, rows, per, sink); }, reps);
  printf("%-34s waves %d  %d CTA/SM  %5ld CTAs  %6.1f KB/SM in flight  %8.3f ms  %5.2f TB/s\n", name, waves, perSm, chunks * HK,
         perSm * (SPLIT ? 1.0 : STAGES - 1.0) * 2 * BK * 256 / 1024.0, ms, bytes / ms / 1e9);
}

template <int U, int THREADS>
static void runDirect(const char* name, const uint16_t* K, const uint16_t* V, long rows, double bytes, int reps, unsigned* sink, int perSm, int waves) {
  auto fn = direct<U, THREADS>;
  int occ = 0;
  CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ, fn, THREADS, 0));
  perSm = std::min(perSm, occ);
  const long chunks = std::max(1L, (long)waves * sms * perSm / HK);
  const long per = (rows + chunks - 1) / chunks;
  const double ms = timeIt([&] { fn<<<dim3((unsigned)chunks, HK), THREADS>>>(K, V, rows, per, sink); }, reps);
  printf("%-34s waves %d  %d CTA/SM  %5ld CTAs  %6.1f KB/SM in flight  %8.3f ms  %5.2f TB/s\n", name, waves, perSm, chunks * HK,
         perSm * THREADS * U * 32 / 1024.0, ms, bytes / ms / 1e9);
}

int main(int argc, char** argv) {
  const long rows = argc > 1 ? atol(argv[1]) : 1048576;
  const int reps = argc > 2 ? atoi(argv[2]) : 15;
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  sms = prop.multiProcessorCount;
  const size_t each = (size_t)rows * HK * D * 2;
  uint16_t *K, *V;
  unsigned* sink;
  CK(cudaMalloc(&K, each));
  CK(cudaMalloc(&V, each));
  CK(cudaMalloc(&sink, 64));
  CK(cudaMemset(K, 0x11, each));
  CK(cudaMemset(V, 0x22, each));
  const double bytes = 2.0 * each;
  printf("%s, %d SMs; K and V [%ld rows, %d heads, %d] bf16, %.2f GB read a run; median of %d\n", prop.name, sms, rows, HK, D, bytes / 1e9, reps);
  const long n16 = (long)(each / 16);
  for (int g : {1, 2, 4}) {
    const double ms = timeIt([&] { linear<<<sms * g * 4, 256>>>((const uint4*)K, (const uint4*)V, n16, sink); }, reps);
    printf("%-34s grid %d x 256  %8.3f ms  %5.2f TB/s\n", "linear (grid-stride, ld.cs)", sms * g * 4, ms, bytes / ms / 1e9);
  }
  for (int w : {1, 3}) {
    const int smem = 100 * 1024;  // more than the tiles need: two CTAs an SM, as decode_ldg
    CK(cudaFuncSetAttribute(staged, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    int perSm = 0;
    CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&perSm, staged, 256, smem));
    const long chunks = std::max(1L, (long)w * sms * perSm / HK);
    const long per = (rows + chunks - 1) / chunks;
    const double ms = timeIt([&] { staged<<<dim3((unsigned)chunks, HK), 256, smem>>>(K, V, rows, per, sink); }, reps);
    printf("%-34s waves %d  %d CTA/SM  %5ld CTAs  %6.1f KB/SM in flight  %8.3f ms  %5.2f TB/s\n", "ld.nc -> st.shared (decode_ldg)", w, perSm, chunks * HK, perSm * 256 * 128 / 1024.0, ms, bytes / ms / 1e9);
    runSkeleton<2, 64, 128, false>("cp.async 2 stages x 64 rows", K, V, rows, bytes, reps, sink, w);
    runSkeleton<3, 64, 128, false>("cp.async 3 stages x 64 rows", K, V, rows, bytes, reps, sink, w);
    runSkeleton<2, 32, 128, false>("cp.async 2 stages x 32 rows", K, V, rows, bytes, reps, sink, w);
    runSkeleton<3, 32, 128, false>("cp.async 3 stages x 32 rows", K, V, rows, bytes, reps, sink, w);
    runSkeleton<2, 128, 128, false>("cp.async 2 stages x 128 rows", K, V, rows, bytes, reps, sink, w);
    runSkeleton<1, 128, 128, true>("cp.async split K/V x 128 rows", K, V, rows, bytes, reps, sink, w);
    runSkeleton<1, 64, 128, true>("cp.async split K/V x 64 rows", K, V, rows, bytes, reps, sink, w);
    runSkeleton<2, 64, 256, false>("cp.async 2 x 64 rows, 256 threads", K, V, rows, bytes, reps, sink, w);
    runDirect<4, 128>("ld.nc 4 rows a thread, 128 thr", K, V, rows, bytes, reps, sink, 2, w);
    runDirect<4, 128>("ld.nc 4 rows a thread, 128 thr", K, V, rows, bytes, reps, sink, 4, w);
    runDirect<8, 128>("ld.nc 8 rows a thread, 128 thr", K, V, rows, bytes, reps, sink, 2, w);
    runDirect<4, 256>("ld.nc 4 rows a thread, 256 thr", K, V, rows, bytes, reps, sink, 2, w);
  }
  CK(cudaFree(K));
  CK(cudaFree(V));
  CK(cudaFree(sink));
  return 0;
}
