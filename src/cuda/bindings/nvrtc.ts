import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import koffi from 'koffi';
import { loadLibrary } from '../libs.js';
import type { Out } from './driver.js';

/**
 * NVRTC declarations (libnvrtc.so.13 or .12), nothing else. Functions return an nvrtcResult
 * (0 = success). libnvrtc loads libnvrtc-builtins by soname; where that is not on the loader's
 * path (pip wheels), the builtins are loaded first by absolute path from the same folder
 * (KERNELS.md §4). RINGATTN_LIBNVRTC overrides the library path.
 */

export interface NvrtcApi {
  readonly path: string;
  nvrtcVersion(major: Out<number>, minor: Out<number>): number;
  nvrtcCreateProgram(out: Out<unknown>, src: string, name: string, numHeaders: number, headers: string[] | null, includeNames: string[] | null): number;
  nvrtcCompileProgram(prog: unknown, numOptions: number, options: string[]): number;
  nvrtcGetProgramLogSize(prog: unknown, out: Out<number>): number;
  nvrtcGetProgramLog(prog: unknown, log: Buffer): number;
  nvrtcGetCUBINSize(prog: unknown, out: Out<number>): number;
  nvrtcGetCUBIN(prog: unknown, cubin: Buffer): number;
  nvrtcDestroyProgram(prog: Out<unknown>): number;
  nvrtcGetErrorString(code: number): string;
}

const DECLS: Record<keyof Omit<NvrtcApi, 'path'>, string> = {
  nvrtcVersion: 'int nvrtcVersion(_Out_ int *major, _Out_ int *minor)',
  nvrtcCreateProgram: 'int nvrtcCreateProgram(_Out_ void **prog, const char *src, const char *name, int numHeaders, const char **headers, const char **includeNames)',
  nvrtcCompileProgram: 'int nvrtcCompileProgram(void *prog, int numOptions, const char **options)',
  nvrtcGetProgramLogSize: 'int nvrtcGetProgramLogSize(void *prog, _Out_ size_t *size)',
  nvrtcGetProgramLog: 'int nvrtcGetProgramLog(void *prog, void *log)',
  nvrtcGetCUBINSize: 'int nvrtcGetCUBINSize(void *prog, _Out_ size_t *size)',
  nvrtcGetCUBIN: 'int nvrtcGetCUBIN(void *prog, void *cubin)',
  nvrtcDestroyProgram: 'int nvrtcDestroyProgram(_Inout_ void **prog)',
  nvrtcGetErrorString: 'const char *nvrtcGetErrorString(int code)',
};

/** Preload libnvrtc-builtins.so.* from `dir` by absolute path (ignored when absent). */
function preloadBuiltins(dir: string): void {
  let names: string[] = [];
  try {
    names = readdirSync(dir).filter((n) => n.startsWith('libnvrtc-builtins.so'));
  } catch {
    return;
  }
  // Prefer the most specific name (libnvrtc-builtins.so.13.0 over .so).
  names.sort((a, b) => b.length - a.length);
  for (const n of names) {
    const p = join(dir, n);
    if (!existsSync(p)) continue;
    try {
      koffi.load(p);
      return;
    } catch {
      // try the next
    }
  }
}

export function loadNvrtc(): NvrtcApi | { error: string } {
  const l = loadLibrary(['libnvrtc.so.13', 'libnvrtc.so.12', 'libnvrtc.so'], 'RINGATTN_LIBNVRTC', preloadBuiltins);
  if ('error' in l) return { error: `NVRTC library not found: ${l.error}` };
  const api: Record<string, unknown> = { path: l.path };
  try {
    for (const [name, decl] of Object.entries(DECLS)) api[name] = l.lib.func(decl);
  } catch (e) {
    return { error: `${l.path} lacks an NVRTC function: ${(e as Error).message}` };
  }
  return api as unknown as NvrtcApi;
}
