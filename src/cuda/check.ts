import { BackendError } from '../core/errors.js';
import { cString, loadDriver, CU_DEVICE_ATTRIBUTE, type DriverApi } from './bindings/driver.js';

/**
 * One error path for every CUDA driver call: `check('cuMemAlloc_v2', rc)` throws a BackendError
 * naming the call and the code's name and meaning. Names come from the driver
 * (cuGetErrorName/String) when one is given, else from the table of common codes below.
 */

/** Common CUresult codes (cuda.h), used when no driver can describe a code. */
export const CU_RESULT: Record<number, [string, string]> = {
  0: ['CUDA_SUCCESS', 'no error'],
  1: ['CUDA_ERROR_INVALID_VALUE', 'invalid argument'],
  2: ['CUDA_ERROR_OUT_OF_MEMORY', 'out of memory'],
  3: ['CUDA_ERROR_NOT_INITIALIZED', 'initialization error'],
  4: ['CUDA_ERROR_DEINITIALIZED', 'driver shutting down'],
  34: ['CUDA_ERROR_STUB_LIBRARY', 'CUDA driver is a stub library'],
  35: ['CUDA_ERROR_INSUFFICIENT_DRIVER', 'CUDA driver version is insufficient for CUDA runtime version'],
  46: ['CUDA_ERROR_DEVICE_UNAVAILABLE', 'CUDA-capable device(s) is/are busy or unavailable'],
  100: ['CUDA_ERROR_NO_DEVICE', 'no CUDA-capable device is detected'],
  101: ['CUDA_ERROR_INVALID_DEVICE', 'invalid device ordinal'],
  200: ['CUDA_ERROR_INVALID_IMAGE', 'device kernel image is invalid'],
  201: ['CUDA_ERROR_INVALID_CONTEXT', 'invalid device context'],
  209: ['CUDA_ERROR_NO_BINARY_FOR_GPU', 'no kernel image is available for execution on the device'],
  218: ['CUDA_ERROR_INVALID_PTX', 'a PTX JIT compilation failed'],
  222: ['CUDA_ERROR_UNSUPPORTED_PTX_VERSION', 'the provided PTX was compiled with an unsupported toolchain'],
  400: ['CUDA_ERROR_INVALID_HANDLE', 'invalid resource handle'],
  500: ['CUDA_ERROR_NOT_FOUND', 'named symbol not found'],
  600: ['CUDA_ERROR_NOT_READY', 'device not ready'],
  700: ['CUDA_ERROR_ILLEGAL_ADDRESS', 'an illegal memory access was encountered'],
  701: ['CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES', 'too many resources requested for launch'],
  702: ['CUDA_ERROR_LAUNCH_TIMEOUT', 'the launch timed out and was terminated'],
  716: ['CUDA_ERROR_MISALIGNED_ADDRESS', 'misaligned address'],
  719: ['CUDA_ERROR_LAUNCH_FAILED', 'unspecified launch failure'],
  999: ['CUDA_ERROR_UNKNOWN', 'unknown error'],
};

/** Turns a result code into "NAME (meaning)". */
export type Describe = (code: number) => string;

export function describeFromTable(code: number): string {
  const e = CU_RESULT[code];
  return e ? `${e[0]} (${e[1]})` : `CUresult ${code}`;
}

/** A describer that asks the driver, falling back to the table. */
export function driverDescribe(drv: Pick<DriverApi, 'cuGetErrorName' | 'cuGetErrorString'>): Describe {
  return (code) => {
    try {
      const name: [unknown] = [null];
      const text: [unknown] = [null];
      if (drv.cuGetErrorName(code, name) === 0 && drv.cuGetErrorString(code, text) === 0) {
        const n = cString(name[0]);
        const t = cString(text[0]);
        if (n) return `${n} (${t})`;
      }
    } catch {
      // fall through to the table
    }
    return describeFromTable(code);
  };
}

/** Throw a BackendError naming `call` unless `code` is 0. */
export function check(call: string, code: number, describe: Describe = describeFromTable): void {
  if (code === 0) return;
  throw new BackendError(`${call} failed: ${describe(code)} [code ${code}]`);
}

export type CudaAvailability = { ok: true; devices: number; name: string; computeCapability: [number, number]; driverPath: string } | { ok: false; reason: string };

/**
 * Is a CUDA GPU usable here? Never throws: where there is no driver or no device, `reason` is
 * one line saying what is missing. `driver` injects a driver (tests pass a fake).
 */
export function cudaAvailable(driver?: DriverApi | { error: string }): CudaAvailability {
  let drv: DriverApi | { error: string };
  try {
    drv = driver ?? loadDriver();
  } catch (e) {
    return { ok: false, reason: `CUDA unavailable: ${(e as Error).message.split('\n')[0]}` };
  }
  if ('error' in drv) return { ok: false, reason: `CUDA unavailable: ${drv.error}` };
  const describe = driverDescribe(drv);
  const fail = (call: string, rc: number) => ({ ok: false as const, reason: `CUDA unavailable: ${call} failed with ${describe(rc)} (driver ${drv.path})` });
  try {
    let rc = drv.cuInit(0);
    if (rc !== 0) return fail('cuInit', rc);
    const n: [number] = [0];
    rc = drv.cuDeviceGetCount(n);
    if (rc !== 0) return fail('cuDeviceGetCount', rc);
    if (n[0] < 1) return { ok: false, reason: `CUDA unavailable: the driver (${drv.path}) sees no GPU` };
    const dev: [number] = [0];
    rc = drv.cuDeviceGet(dev, 0);
    if (rc !== 0) return fail('cuDeviceGet', rc);
    const buf = Buffer.alloc(256);
    rc = drv.cuDeviceGetName(buf, buf.length, dev[0]);
    if (rc !== 0) return fail('cuDeviceGetName', rc);
    const major: [number] = [0];
    const minor: [number] = [0];
    rc = drv.cuDeviceGetAttribute(major, CU_DEVICE_ATTRIBUTE.COMPUTE_CAPABILITY_MAJOR, dev[0]);
    if (rc !== 0) return fail('cuDeviceGetAttribute', rc);
    rc = drv.cuDeviceGetAttribute(minor, CU_DEVICE_ATTRIBUTE.COMPUTE_CAPABILITY_MINOR, dev[0]);
    if (rc !== 0) return fail('cuDeviceGetAttribute', rc);
    const name = buf.subarray(0, Math.max(0, buf.indexOf(0))).toString('utf8');
    return { ok: true, devices: n[0], name, computeCapability: [major[0], minor[0]], driverPath: drv.path };
  } catch (e) {
    return { ok: false, reason: `CUDA unavailable: ${(e as Error).message.split('\n')[0]}` };
  }
}
