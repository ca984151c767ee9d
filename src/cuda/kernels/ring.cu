// Small helpers of the GPU ring (src/cuda/transport.ts): accumulate the dK/dV partials that
// arrive from the previous rank into the block's own.
extern "C" __global__ void ring_add_f32(float* __restrict__ dst, const float* __restrict__ src, int n) {
  const int stride = gridDim.x * blockDim.x;
  const int n4 = n >> 2;
  float4* d4 = reinterpret_cast<float4*>(dst);
  const float4* s4 = reinterpret_cast<const float4*>(src);
  // Both buffers come from cuMemAlloc (256-byte aligned) at 16-byte aligned offsets.
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n4; i += stride) {
    float4 a = d4[i];
    const float4 b = s4[i];
    a.x += b.x;
    a.y += b.y;
    a.z += b.z;
    a.w += b.w;
    d4[i] = a;
  }
  for (int i = (n4 << 2) + blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) dst[i] += src[i];
}
