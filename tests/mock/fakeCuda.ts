import type { DriverApi, Out } from '../../src/cuda/bindings/driver.js';

/**
 * A fake libcuda: the DriverApi surface over host memory, so that context, upload/download,
 * fills, streams, events and the error paths run in CI without a GPU. Kernels are not
 * executed (cuLaunchKernel only records the launch). `fail` makes a named call return a code.
 */
export interface FakeCudaOptions {
  devices?: number;
  name?: string;
  computeCapability?: [number, number];
  /** Call name -> CUresult it returns instead of succeeding. */
  fail?: Partial<Record<keyof DriverApi, number>>;
}

export interface FakeCuda extends DriverApi {
  /** Every call, in order (name only). */
  readonly calls: string[];
  readonly launches: { fn: unknown; grid: number[]; block: number[]; smem: number; params: Buffer[] }[];
  /** Bytes currently allocated. */
  allocated(): number;
}

const NAMES: Record<number, [string, string]> = {
  0: ['CUDA_SUCCESS', 'no error'],
  2: ['CUDA_ERROR_OUT_OF_MEMORY', 'out of memory'],
  100: ['CUDA_ERROR_NO_DEVICE', 'no CUDA-capable device is detected'],
  700: ['CUDA_ERROR_ILLEGAL_ADDRESS', 'an illegal memory access was encountered'],
};

export function fakeCuda(o: FakeCudaOptions = {}): FakeCuda {
  const calls: string[] = [];
  const launches: FakeCuda['launches'] = [];
  const mem = new Map<number, Uint8Array>();
  let next = 0x1000_0000;
  let initialised = false;
  const devices = o.devices ?? 1;
  const cc = o.computeCapability ?? [9, 0];

  const at = (ptr: number, bytes: number): Uint8Array => {
    for (const [base, a] of mem) {
      if (ptr >= base && ptr + bytes <= base + a.length) return a.subarray(ptr - base, ptr - base + bytes);
    }
    throw new Error(`fake cuda: ${bytes} bytes at 0x${ptr.toString(16)} are not allocated`);
  };
  const view = (v: ArrayBufferView) => new Uint8Array(v.buffer, v.byteOffset, v.byteLength);

  // Each entry: the fake behaviour; the wrapper below records the call and applies `fail`.
  const impl: Omit<DriverApi, 'path'> = {
    cuInit: () => ((initialised = true), 0),
    cuDriverGetVersion: (out: Out<number>) => ((out[0] = 13000), 0),
    cuDeviceGetCount: (out: Out<number>) => ((out[0] = devices), 0),
    cuDeviceGet: (out: Out<number>, ordinal: number) => (ordinal < devices ? ((out[0] = ordinal), 0) : 101),
    cuDeviceGetName: (name: Buffer, len: number) => {
      name.fill(0, 0, len);
      name.write((o.name ?? 'Fake GPU').slice(0, len - 1));
      return 0;
    },
    cuDeviceGetAttribute: (out: Out<number>, attrib: number) => {
      out[0] = attrib === 75 ? cc[0] : attrib === 76 ? cc[1] : attrib === 16 ? 132 : attrib === 97 ? 232448 : 0;
      return 0;
    },
    cuDeviceTotalMem_v2: (out: Out<number>) => ((out[0] = 80 << 30), 0),
    cuDevicePrimaryCtxRetain: (out: Out<unknown>) => ((out[0] = { ctx: true }), initialised ? 0 : 3),
    cuDevicePrimaryCtxRelease_v2: () => 0,
    cuCtxSetCurrent: () => 0,
    cuCtxSynchronize: () => 0,
    cuMemAlloc_v2: (out: Out<number>, bytes: number) => {
      out[0] = next;
      mem.set(next, new Uint8Array(bytes));
      next += Math.ceil(bytes / 256) * 256 + 256;
      return 0;
    },
    cuMemFree_v2: (ptr: number) => (mem.delete(ptr) ? 0 : 1),
    cuMemcpyHtoD_v2: (dst: number, src: ArrayBufferView, bytes: number) => (at(dst, bytes).set(view(src).subarray(0, bytes)), 0),
    cuMemcpyDtoH_v2: (dst: ArrayBufferView, src: number, bytes: number) => (view(dst).set(at(src, bytes)), 0),
    cuMemcpyHtoDAsync_v2: (dst: number, src: ArrayBufferView, bytes: number) => (at(dst, bytes).set(view(src).subarray(0, bytes)), 0),
    cuMemcpyDtoHAsync_v2: (dst: ArrayBufferView, src: number, bytes: number) => (view(dst).set(at(src, bytes)), 0),
    cuMemcpyDtoDAsync_v2: (dst: number, src: number, bytes: number) => (at(dst, bytes).set(at(src, bytes)), 0),
    cuMemsetD8_v2: (dst: number, value: number, count: number) => (at(dst, count).fill(value), 0),
    cuMemsetD32_v2: (dst: number, value: number, count: number) => {
      const a = at(dst, count * 4);
      new Uint32Array(a.buffer, a.byteOffset, count).fill(value);
      return 0;
    },
    cuMemsetD32Async: (dst: number, value: number, count: number) => {
      const a = at(dst, count * 4);
      new Uint32Array(a.buffer, a.byteOffset, count).fill(value);
      return 0;
    },
    cuModuleLoadData: (out: Out<unknown>) => ((out[0] = { module: true }), 0),
    cuModuleUnload: () => 0,
    cuModuleGetFunction: (out: Out<unknown>, _mod: unknown, name: string) => ((out[0] = { fn: name }), 0),
    cuFuncSetAttribute: () => 0,
    cuFuncGetAttribute: (out: Out<number>) => ((out[0] = 0), 0),
    cuLaunchKernel: (fn, gx, gy, gz, bx, by, bz, smem, _stream, params) => {
      launches.push({ fn, grid: [gx, gy, gz], block: [bx, by, bz], smem, params });
      return 0;
    },
    cuStreamCreate: (out: Out<unknown>) => ((out[0] = { stream: true }), 0),
    cuStreamDestroy_v2: () => 0,
    cuStreamSynchronize: () => 0,
    cuStreamWaitEvent: () => 0,
    cuEventCreate: (out: Out<unknown>) => ((out[0] = { event: true }), 0),
    cuEventDestroy_v2: () => 0,
    cuEventRecord: () => 0,
    cuEventSynchronize: () => 0,
    cuEventElapsedTime: (out: Out<number>) => ((out[0] = 0), 0),
    cuGetErrorName: (code: number, out: Out<unknown>) => (NAMES[code] ? ((out[0] = NAMES[code][0]), 0) : 1),
    cuGetErrorString: (code: number, out: Out<unknown>) => (NAMES[code] ? ((out[0] = NAMES[code][1]), 0) : 1),
  };
  const api: Record<string, unknown> = { path: 'fake-libcuda.so', calls, launches, allocated: () => [...mem.values()].reduce((s, a) => s + a.length, 0) };
  for (const [name, f] of Object.entries(impl)) {
    api[name] = (...args: unknown[]) => {
      calls.push(name);
      const code = o.fail?.[name as keyof DriverApi];
      if (code !== undefined) return code;
      return (f as (...a: unknown[]) => number)(...args);
    };
  }
  return api as unknown as FakeCuda;
}
