import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { BackendError } from '../core/errors.js';
import { CU_DEVICE_ATTRIBUTE, CU_EVENT_DEFAULT, CU_FUNC_ATTRIBUTE, loadDriver, type DriverApi, type Handle } from './bindings/driver.js';
import { check, driverDescribe, type Describe } from './check.js';
import { archFor, compileModule, moduleSource } from './compile.js';
import type { NvrtcApi } from './bindings/nvrtc.js';

/**
 * One GPU: the driver, its primary context, a compute stream, and the kernel modules compiled
 * for it (lazily, through the NVRTC cache). Device pointers are numbers.
 */

export interface DeviceBuffer {
  readonly ptr: number;
  readonly bytes: number;
}

/** A kernel argument: a device pointer, a 32-bit int or float. */
export type Arg = { ptr: number } | { i32: number } | { f32: number };

/** The directory holding the kernel sources (dist/src/cuda/kernels after copy-assets). */
export function kernelsDir(): string {
  return join(dirname(fileURLToPath(import.meta.url)), 'kernels');
}

const kernelTexts = new Map<string, string>();
/** A kernel source file's text (or a header's), read once per process: every kernel of a file looks it up. */
export function kernelSource(file: string): string {
  let text = kernelTexts.get(file);
  if (text === undefined) {
    text = readFileSync(join(kernelsDir(), file), 'utf8');
    kernelTexts.set(file, text);
  }
  return text;
}

/** Writes one field at `off`: a device address (an integer below 2^53) as a little-endian u64, or an i32 / f32. */
function writeArg(buf: Buffer, f: Arg, off: number): void {
  if ('ptr' in f) {
    buf.writeUInt32LE(f.ptr % 0x100000000, off);
    buf.writeUInt32LE(Math.floor(f.ptr / 0x100000000), off + 4);
  } else if ('i32' in f) buf.writeInt32LE(f.i32, off);
  else buf.writeFloatLE(f.f32, off);
}

/** Pack fields as a C struct (pointers 8-aligned, 4-byte fields 4-aligned, size a multiple of 8). */
export function packStruct(fields: Arg[]): Buffer {
  let size = 0;
  for (const f of fields) size = ('ptr' in f ? Math.ceil(size / 8) * 8 + 8 : size + 4);
  const buf = Buffer.alloc(Math.ceil(size / 8) * 8);
  let off = 0;
  for (const f of fields) {
    if ('ptr' in f) off = Math.ceil(off / 8) * 8;
    writeArg(buf, f, off);
    off += 'ptr' in f ? 8 : 4;
  }
  return buf;
}

/**
 * Kernel parameters as cuLaunchKernel wants them: one buffer per argument (8 bytes for a
 * pointer, 4 otherwise), each allocated at its size (Buffer.subarray cost ~1 us a call on the host).
 */
export function argBuffers(args: Arg[]): Buffer[] {
  return args.map((a) => {
    const b = Buffer.allocUnsafe('ptr' in a ? 8 : 4);
    writeArg(b, a, 0);
    return b;
  });
}

export class CudaContext {
  readonly describe: Describe;
  readonly name: string;
  readonly computeCapability: [number, number];
  readonly arch: string;
  readonly smCount: number;
  readonly maxSharedOptin: number;
  readonly stream: Handle;
  private readonly modules = new Map<string, Handle>();
  /** NVRTC to compile with (tests pass a fake one); the system's library when unset. */
  private nvrtc?: NvrtcApi;
  private readonly functions = new Map<string, { fn: Handle; smem: number }>();
  /** NVRTC logs of the modules compiled in this process (ptxas register reports). */
  readonly compileLogs = new Map<string, string>();
  /**
   * Set when the rank's group has failed and the process is ending: free() does nothing from then
   * on (a free waits for the device, which may be stuck behind a collective with a dead peer).
   */
  abandoned = false;

  private constructor(readonly drv: DriverApi, readonly device: number, private readonly ctx: Handle) {
    this.describe = driverDescribe(drv);
    const attr = (a: number) => {
      const v: [number] = [0];
      this.check('cuDeviceGetAttribute', drv.cuDeviceGetAttribute(v, a, device));
      return v[0];
    };
    this.computeCapability = [attr(CU_DEVICE_ATTRIBUTE.COMPUTE_CAPABILITY_MAJOR), attr(CU_DEVICE_ATTRIBUTE.COMPUTE_CAPABILITY_MINOR)];
    this.arch = archFor(...this.computeCapability);
    this.smCount = attr(CU_DEVICE_ATTRIBUTE.MULTIPROCESSOR_COUNT);
    this.maxSharedOptin = attr(CU_DEVICE_ATTRIBUTE.MAX_SHARED_MEMORY_PER_BLOCK_OPTIN);
    const buf = Buffer.alloc(256);
    this.check('cuDeviceGetName', drv.cuDeviceGetName(buf, buf.length, device));
    this.name = buf.subarray(0, Math.max(0, buf.indexOf(0))).toString('utf8');
    const s: [Handle] = [null];
    // A blocking stream: ordered with the legacy default stream that NCCL-free code may use.
    this.check('cuStreamCreate', drv.cuStreamCreate(s, 0));
    this.stream = s[0];
  }

  /** Open GPU `ordinal` (its primary context, made current on this thread). */
  static open(ordinal = 0, driver?: DriverApi, nvrtc?: NvrtcApi): CudaContext {
    const loaded = driver ?? loadDriver();
    if ('error' in loaded) throw new BackendError(loaded.error);
    const drv = loaded;
    const describe = driverDescribe(drv);
    check('cuInit', drv.cuInit(0), describe);
    const dev: [number] = [0];
    check(`cuDeviceGet(${ordinal})`, drv.cuDeviceGet(dev, ordinal), describe);
    const ctx: [Handle] = [null];
    check('cuDevicePrimaryCtxRetain', drv.cuDevicePrimaryCtxRetain(ctx, dev[0]), describe);
    check('cuCtxSetCurrent', drv.cuCtxSetCurrent(ctx[0]), describe);
    const c = new CudaContext(drv, dev[0], ctx[0]);
    c.nvrtc = nvrtc;
    return c;
  }

  check(call: string, rc: number): void {
    check(call, rc, this.describe);
  }

  alloc(bytes: number): DeviceBuffer {
    const p: [number] = [0];
    this.check(`cuMemAlloc_v2(${bytes} bytes)`, this.drv.cuMemAlloc_v2(p, Math.max(bytes, 4)));
    if (!Number.isSafeInteger(p[0])) throw new BackendError(`cuMemAlloc_v2 returned an address beyond 2^53: ${p[0]}`);
    return { ptr: p[0], bytes };
  }

  free(b: DeviceBuffer | undefined): void {
    if (b && !this.abandoned) this.check('cuMemFree_v2', this.drv.cuMemFree_v2(b.ptr));
  }

  /** Host -> device on the compute stream (pageable source: staged before the call returns). */
  upload(dst: DeviceBuffer | number, src: ArrayBufferView, offsetBytes = 0): void {
    const ptr = typeof dst === 'number' ? dst : dst.ptr;
    if (typeof dst !== 'number' && offsetBytes + src.byteLength > dst.bytes) throw new BackendError(`upload of ${src.byteLength} bytes overflows a ${dst.bytes}-byte buffer`);
    if (src.byteLength) this.check('cuMemcpyHtoDAsync_v2', this.drv.cuMemcpyHtoDAsync_v2(ptr + offsetBytes, src, src.byteLength, this.stream));
  }

  /** Device -> host; waits for the stream. */
  download<T extends ArrayBufferView>(dst: T, src: DeviceBuffer | number, offsetBytes = 0): T {
    const ptr = typeof src === 'number' ? src : src.ptr;
    if (dst.byteLength) this.check('cuMemcpyDtoHAsync_v2', this.drv.cuMemcpyDtoHAsync_v2(dst, ptr + offsetBytes, dst.byteLength, this.stream));
    this.sync();
    return dst;
  }

  /** Fill `count` 32-bit words with `bits` (e.g. 0xff800000 for -inf, 0x7fc00000 for NaN). */
  fill32(dst: DeviceBuffer | number, bits: number, count: number): void {
    const ptr = typeof dst === 'number' ? dst : dst.ptr;
    if (count) this.check('cuMemsetD32Async', this.drv.cuMemsetD32Async(ptr, bits >>> 0, count, this.stream));
  }

  sync(): void {
    this.check('cuStreamSynchronize', this.drv.cuStreamSynchronize(this.stream));
  }

  /** A kernel by name from `file` (a .cu beside this module), compiled and loaded on first use. */
  fn(file: string, name: string, dynamicSmem = 0): Handle {
    const key = `${file}:${name}`;
    let f = this.functions.get(key);
    if (!f) {
      const mod = this.module(file, name);
      const out: [Handle] = [null];
      this.check(`cuModuleGetFunction(${name})`, this.drv.cuModuleGetFunction(out, mod, name));
      f = { fn: out[0], smem: 0 };
      this.functions.set(key, f);
    }
    if (dynamicSmem > 48 * 1024 && dynamicSmem > f.smem) {
      if (dynamicSmem > this.maxSharedOptin) throw new BackendError(`${name} needs ${dynamicSmem} bytes of shared memory; ${this.name} allows ${this.maxSharedOptin}`);
      this.check(`cuFuncSetAttribute(${name}, MAX_DYNAMIC_SHARED_SIZE_BYTES, ${dynamicSmem})`, this.drv.cuFuncSetAttribute(f.fn, CU_FUNC_ATTRIBUTE.MAX_DYNAMIC_SHARED_SIZE_BYTES, dynamicSmem));
      f.smem = dynamicSmem;
    }
    return f.fn;
  }

  /**
   * The module holding `name`: a kernel declared by an entry macro is compiled alone (entrySource),
   * so a process compiles only the kernels it launches; other files are compiled whole.
   */
  private module(file: string, name: string): Handle {
    const m = moduleSource(file, name, kernelSource);
    const key = m.key;
    let mod = this.modules.get(key);
    if (mod) return mod;
    const compiled = compileModule(m, this.arch, this.nvrtc);
    if (compiled.log) this.compileLogs.set(key, compiled.log);
    const out: [Handle] = [null];
    this.check(`cuModuleLoadData(${key}, ${this.arch})`, this.drv.cuModuleLoadData(out, compiled.cubin));
    mod = out[0];
    this.modules.set(key, mod);
    return mod;
  }

  launch(fn: Handle, name: string, grid: [number, number, number], block: number, smem: number, params: Buffer[]): void {
    if (grid[0] === 0 || grid[1] === 0 || grid[2] === 0) return;
    this.check(
      `cuLaunchKernel(${name}, grid ${grid.join('x')}, block ${block}, smem ${smem})`,
      this.drv.cuLaunchKernel(fn, grid[0], grid[1], grid[2], block, 1, 1, smem, this.stream, params, null),
    );
  }

  /** Time `fn` on the stream with events (ms). */
  time(fn: () => void): number {
    const a: [Handle] = [null];
    const b: [Handle] = [null];
    this.check('cuEventCreate', this.drv.cuEventCreate(a, CU_EVENT_DEFAULT));
    this.check('cuEventCreate', this.drv.cuEventCreate(b, CU_EVENT_DEFAULT));
    try {
      this.check('cuEventRecord', this.drv.cuEventRecord(a[0], this.stream));
      fn();
      this.check('cuEventRecord', this.drv.cuEventRecord(b[0], this.stream));
      this.check('cuEventSynchronize', this.drv.cuEventSynchronize(b[0]));
      const ms: [number] = [0];
      this.check('cuEventElapsedTime', this.drv.cuEventElapsedTime(ms, a[0], b[0]));
      return ms[0];
    } finally {
      this.drv.cuEventDestroy_v2(a[0]);
      this.drv.cuEventDestroy_v2(b[0]);
    }
  }

  dispose(): void {
    for (const m of this.modules.values()) this.drv.cuModuleUnload(m);
    this.modules.clear();
    this.functions.clear();
    this.drv.cuStreamDestroy_v2(this.stream);
    this.drv.cuDevicePrimaryCtxRelease_v2(this.device);
  }
}

/**
 * Device buffers for one host-side call (upload inputs, run, download): made as needed and
 * freed together once the stream has drained.
 */
export class Staging {
  private readonly bufs: DeviceBuffer[] = [];
  constructor(private readonly ctx: CudaContext) {}

  /** A device copy of `x`; its pointer. */
  up(x: ArrayBufferView): number {
    const b = this.alloc(x.byteLength);
    this.ctx.upload(b, x);
    return b.ptr;
  }

  /** `bytes` (at least 16, rounded up to whole words), uninitialised. */
  alloc(bytes: number): DeviceBuffer {
    const b = this.ctx.alloc(Math.max(Math.ceil(bytes / 4) * 4, 16));
    this.bufs.push(b);
    return b;
  }

  /** `bytes` filled with `bits` per 32-bit word (default 0x7fc07fc0: NaN as fp32 and as two bf16). */
  poisoned(bytes: number, bits = 0x7fc07fc0): number {
    const b = this.alloc(bytes);
    this.ctx.fill32(b, bits, b.bytes / 4);
    return b.ptr;
  }

  free(): void {
    this.ctx.sync();
    for (const b of this.bufs) this.ctx.free(b);
    this.bufs.length = 0;
  }
}
