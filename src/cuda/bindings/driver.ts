import koffi from 'koffi';
import { loadLibrary } from '../libs.js';

/**
 * CUDA driver API declarations (libcuda.so.1), nothing else. Every function returns a CUresult
 * (0 = success); outputs come back through one-element arrays. Handles (contexts, modules,
 * functions, streams, events) are opaque koffi pointers; device pointers (CUdeviceptr) are
 * plain numbers (addresses below 2^53). RINGATTN_LIBCUDA overrides the library path.
 */

/** An opaque driver handle (CUcontext, CUmodule, CUfunction, CUstream, CUevent). */
export type Handle = unknown;
export type Out<T> = [T];

export interface DriverApi {
  readonly path: string;
  cuInit(flags: number): number;
  cuDriverGetVersion(out: Out<number>): number;
  cuDeviceGetCount(out: Out<number>): number;
  cuDeviceGet(out: Out<number>, ordinal: number): number;
  cuDeviceGetName(name: Buffer, len: number, dev: number): number;
  cuDeviceGetAttribute(out: Out<number>, attrib: number, dev: number): number;
  cuDeviceTotalMem_v2(out: Out<number>, dev: number): number;
  cuDevicePrimaryCtxRetain(out: Out<Handle>, dev: number): number;
  cuDevicePrimaryCtxRelease_v2(dev: number): number;
  cuCtxSetCurrent(ctx: Handle): number;
  cuCtxSynchronize(): number;
  cuMemAlloc_v2(out: Out<number>, bytes: number): number;
  cuMemFree_v2(ptr: number): number;
  cuMemcpyHtoD_v2(dst: number, src: ArrayBufferView, bytes: number): number;
  cuMemcpyDtoH_v2(dst: ArrayBufferView, src: number, bytes: number): number;
  cuMemcpyHtoDAsync_v2(dst: number, src: ArrayBufferView, bytes: number, stream: Handle): number;
  cuMemcpyDtoHAsync_v2(dst: ArrayBufferView, src: number, bytes: number, stream: Handle): number;
  cuMemcpyDtoDAsync_v2(dst: number, src: number, bytes: number, stream: Handle): number;
  cuMemsetD8_v2(dst: number, value: number, count: number): number;
  cuMemsetD32_v2(dst: number, value: number, count: number): number;
  cuMemsetD32Async(dst: number, value: number, count: number, stream: Handle): number;
  cuModuleLoadData(out: Out<Handle>, image: Buffer): number;
  cuModuleUnload(mod: Handle): number;
  cuModuleGetFunction(out: Out<Handle>, mod: Handle, name: string): number;
  cuFuncSetAttribute(fn: Handle, attrib: number, value: number): number;
  cuFuncGetAttribute(out: Out<number>, attrib: number, fn: Handle): number;
  cuLaunchKernel(fn: Handle, gx: number, gy: number, gz: number, bx: number, by: number, bz: number, sharedBytes: number, stream: Handle, params: Buffer[], extra: null): number;
  cuStreamCreate(out: Out<Handle>, flags: number): number;
  cuStreamDestroy_v2(stream: Handle): number;
  cuStreamSynchronize(stream: Handle): number;
  cuStreamWaitEvent(stream: Handle, event: Handle, flags: number): number;
  // The ring's (src/cuda/group.ts): optional so that test fakes of the single-GPU API stay valid.
  /** 0 when all work on the stream is done, 600 (CUDA_ERROR_NOT_READY) while some is pending. */
  cuStreamQuery?(stream: Handle): number;
  cuStreamCreateWithPriority?(out: Out<Handle>, flags: number, priority: number): number;
  cuCtxGetStreamPriorityRange?(least: Out<number>, greatest: Out<number>): number;
  cuEventCreate(out: Out<Handle>, flags: number): number;
  cuEventDestroy_v2(event: Handle): number;
  cuEventRecord(event: Handle, stream: Handle): number;
  cuEventSynchronize(event: Handle): number;
  /** 0 when the event has completed, 600 (CUDA_ERROR_NOT_READY) before. */
  cuEventQuery?(event: Handle): number;
  cuEventElapsedTime(out: Out<number>, start: Handle, end: Handle): number;
  /**
   * Writes a 128-byte TMA descriptor into `map` (64-byte aligned). Optional: test fakes and
   * drivers before CUDA 12 lack it (the attention forward then copies with cp.async, and the
   * backward runs the mma.sync kernel).
   */
  cuTensorMapEncodeTiled?(
    map: Buffer, dtype: number, rank: number, address: number, dims: Buffer, strides: Buffer,
    box: Buffer, elementStrides: Buffer, interleave: number, swizzle: number, l2Promotion: number, oobFill: number,
  ): number;
  /** Writes a pointer to a static C string into out[0]; decode with `cString`. */
  cuGetErrorName(code: number, out: Out<unknown>): number;
  cuGetErrorString(code: number, out: Out<unknown>): number;
}

export const CU_DEVICE_ATTRIBUTE = {
  MULTIPROCESSOR_COUNT: 16,
  COMPUTE_CAPABILITY_MAJOR: 75,
  COMPUTE_CAPABILITY_MINOR: 76,
  MAX_SHARED_MEMORY_PER_BLOCK_OPTIN: 97,
} as const;

export const CU_FUNC_ATTRIBUTE = {
  NUM_REGS: 4,
  MAX_DYNAMIC_SHARED_SIZE_BYTES: 8,
} as const;

export const CU_STREAM_NON_BLOCKING = 1;
export const CU_EVENT_DEFAULT = 0;
export const CU_EVENT_DISABLE_TIMING = 2;
export const CUDA_ERROR_NOT_READY = 600;

/** Read a `const char *` returned through an out-parameter. */
export function cString(ptr: unknown): string {
  if (typeof ptr === 'string') return ptr; // fakes hand back JS strings
  return ptr ? (koffi.decode(ptr, 'char', -1) as string) : '';
}

const DECLS: Record<Exclude<keyof DriverApi, 'path'>, string> = {
  cuInit: 'int cuInit(unsigned int flags)',
  cuDriverGetVersion: 'int cuDriverGetVersion(_Out_ int *v)',
  cuDeviceGetCount: 'int cuDeviceGetCount(_Out_ int *n)',
  cuDeviceGet: 'int cuDeviceGet(_Out_ int *dev, int ordinal)',
  cuDeviceGetName: 'int cuDeviceGetName(void *name, int len, int dev)',
  cuDeviceGetAttribute: 'int cuDeviceGetAttribute(_Out_ int *v, int attrib, int dev)',
  cuDeviceTotalMem_v2: 'int cuDeviceTotalMem_v2(_Out_ size_t *bytes, int dev)',
  cuDevicePrimaryCtxRetain: 'int cuDevicePrimaryCtxRetain(_Out_ void **ctx, int dev)',
  cuDevicePrimaryCtxRelease_v2: 'int cuDevicePrimaryCtxRelease_v2(int dev)',
  cuCtxSetCurrent: 'int cuCtxSetCurrent(void *ctx)',
  cuCtxSynchronize: 'int cuCtxSynchronize()',
  cuMemAlloc_v2: 'int cuMemAlloc_v2(_Out_ uint64_t *dptr, size_t bytes)',
  cuMemFree_v2: 'int cuMemFree_v2(uint64_t dptr)',
  cuMemcpyHtoD_v2: 'int cuMemcpyHtoD_v2(uint64_t dst, const void *src, size_t bytes)',
  cuMemcpyDtoH_v2: 'int cuMemcpyDtoH_v2(void *dst, uint64_t src, size_t bytes)',
  cuMemcpyHtoDAsync_v2: 'int cuMemcpyHtoDAsync_v2(uint64_t dst, const void *src, size_t bytes, void *stream)',
  cuMemcpyDtoHAsync_v2: 'int cuMemcpyDtoHAsync_v2(void *dst, uint64_t src, size_t bytes, void *stream)',
  cuMemcpyDtoDAsync_v2: 'int cuMemcpyDtoDAsync_v2(uint64_t dst, uint64_t src, size_t bytes, void *stream)',
  cuMemsetD8_v2: 'int cuMemsetD8_v2(uint64_t dst, uint8_t value, size_t count)',
  cuMemsetD32_v2: 'int cuMemsetD32_v2(uint64_t dst, uint32_t value, size_t count)',
  cuMemsetD32Async: 'int cuMemsetD32Async(uint64_t dst, uint32_t value, size_t count, void *stream)',
  cuModuleLoadData: 'int cuModuleLoadData(_Out_ void **mod, const void *image)',
  cuModuleUnload: 'int cuModuleUnload(void *mod)',
  cuModuleGetFunction: 'int cuModuleGetFunction(_Out_ void **fn, void *mod, const char *name)',
  cuFuncSetAttribute: 'int cuFuncSetAttribute(void *fn, int attrib, int value)',
  cuFuncGetAttribute: 'int cuFuncGetAttribute(_Out_ int *v, int attrib, void *fn)',
  cuLaunchKernel:
    'int cuLaunchKernel(void *fn, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx, unsigned int by, unsigned int bz, ' +
    'unsigned int sharedBytes, void *stream, void **params, void **extra)',
  cuStreamCreate: 'int cuStreamCreate(_Out_ void **stream, unsigned int flags)',
  cuStreamDestroy_v2: 'int cuStreamDestroy_v2(void *stream)',
  cuStreamSynchronize: 'int cuStreamSynchronize(void *stream)',
  cuStreamWaitEvent: 'int cuStreamWaitEvent(void *stream, void *event, unsigned int flags)',
  cuStreamQuery: 'int cuStreamQuery(void *stream)',
  cuStreamCreateWithPriority: 'int cuStreamCreateWithPriority(_Out_ void **stream, unsigned int flags, int priority)',
  cuCtxGetStreamPriorityRange: 'int cuCtxGetStreamPriorityRange(_Out_ int *least, _Out_ int *greatest)',
  cuEventCreate: 'int cuEventCreate(_Out_ void **event, unsigned int flags)',
  cuEventDestroy_v2: 'int cuEventDestroy_v2(void *event)',
  cuEventRecord: 'int cuEventRecord(void *event, void *stream)',
  cuEventSynchronize: 'int cuEventSynchronize(void *event)',
  cuEventQuery: 'int cuEventQuery(void *event)',
  cuEventElapsedTime: 'int cuEventElapsedTime(_Out_ float *ms, void *start, void *end)',
  cuTensorMapEncodeTiled:
    'int cuTensorMapEncodeTiled(void *map, int dtype, unsigned int rank, uint64_t address, const void *dims, ' +
    'const void *strides, const void *box, const void *elementStrides, int interleave, int swizzle, int l2Promotion, int oobFill)',
  cuGetErrorName: 'int cuGetErrorName(int code, _Out_ void **str)',
  cuGetErrorString: 'int cuGetErrorString(int code, _Out_ void **str)',
};

/** Functions a driver may lack (older CUDA): the callers check for them. */
const OPTIONAL = new Set(['cuTensorMapEncodeTiled']);

/** Load libcuda and declare the functions above; `{ error }` (one line) where it cannot. */
export function loadDriver(): DriverApi | { error: string } {
  const l = loadLibrary(['libcuda.so.1', 'libcuda.so'], 'RINGATTN_LIBCUDA');
  if ('error' in l) return { error: `CUDA driver library not found: ${l.error}` };
  const api: Record<string, unknown> = { path: l.path };
  try {
    for (const [name, decl] of Object.entries(DECLS)) {
      try {
        api[name] = l.lib.func(decl);
      } catch (e) {
        // Only a missing symbol is forgiven (an old driver), never a bad declaration.
        if (!OPTIONAL.has(name) || !/Cannot find function/.test((e as Error).message)) throw e;
      }
    }
  } catch (e) {
    return { error: `${l.path} lacks a driver function: ${(e as Error).message}` };
  }
  return api as unknown as DriverApi;
}
