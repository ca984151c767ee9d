import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import { BackendError, defineList, InputError } from '../core/errors.js';
import { loadNvrtc, type NvrtcApi } from './bindings/nvrtc.js';

/**
 * NVRTC compilation of the `.cu` kernel sources to a cubin for this GPU's architecture, cached
 * on disk ($RINGATTN_CACHE or ~/.cache/ringattn) under sha256(source, headers, options, arch,
 * NVRTC version). Compile errors carry the program log.
 *
 * Options: no --use_fast_math. It would flush denormals and swap expf/logf/division for
 * approximations everywhere, including the fp32 path and the LSE merges, where the kernels need
 * exact -inf handling and fp32 accuracy; the tensor-core kernels call ex2.approx explicitly
 * (exp2Fast in common.cuh) where the approximation is wanted.
 */

export interface Source {
  name: string;
  text: string;
}

export interface Compiled {
  cubin: Buffer;
  /** NVRTC's log (ptxas register/spill report with -v), empty on a cache hit. */
  log: string;
  cached: boolean;
  key: string;
}

export const BASE_OPTIONS = ['-std=c++17', '-DNDEBUG', '--ptxas-options=-v'];

/** The cubin target for a compute capability: sm_90a on 9.0 (wgmma, setmaxnreg), sm_XY elsewhere. */
export function archFor(major: number, minor: number): string {
  if (major === 9 && minor === 0) return 'sm_90a';
  return `sm_${major}${minor}`;
}

export function cudaCacheDir(): string {
  for (const dir of [process.env.RINGATTN_CACHE, join(os.homedir(), '.cache', 'ringattn'), join(os.tmpdir(), 'ringattn-cache')]) {
    if (!dir) continue;
    try {
      mkdirSync(join(dir, 'cuda'), { recursive: true });
      return join(dir, 'cuda');
    } catch {
      // not writable: try the next
    }
  }
  return os.tmpdir();
}

export function cacheKey(src: Source, headers: Source[], options: string[], arch: string, nvrtcVersion: string): string {
  const h = createHash('sha256');
  for (const part of ['ringattn-cubin-v1', src.name, src.text, ...headers.flatMap((x) => [x.name, x.text]), ...options, arch, nvrtcVersion]) h.update(part).update('\0');
  return h.digest('hex');
}

function nvrtcCheck(api: NvrtcApi, call: string, rc: number, log?: string): void {
  if (rc === 0) return;
  let what = `nvrtcResult ${rc}`;
  try {
    what = `${api.nvrtcGetErrorString(rc)} [code ${rc}]`;
  } catch {
    // keep the number
  }
  throw new BackendError(`${call} failed: ${what}${log ? `\n${log.trim()}` : ''}`);
}

export function nvrtcVersion(api: NvrtcApi): string {
  const major: [number] = [0];
  const minor: [number] = [0];
  nvrtcCheck(api, 'nvrtcVersion', api.nvrtcVersion(major, minor));
  return `${major[0]}.${minor[0]}`;
}

/**
 * The source of one kernel entry: where `name` is declared by an entry-macro line (a line that
 * starts with an UPPER_CASE macro whose name contains ENTRY, first argument the kernel's name, as
 * attn_fwd_h.cu's `FWDH_ENTRY(attn_fwd_ht_bf16_d128, ...)`), the text with every other such line
 * blanked, so NVRTC instantiates and assembles that kernel alone (3 s instead of 40 for
 * attn_fwd_h.cu's 22 entries, 67 s for gemm.cu's 19); null where `name` is not declared that way
 * (the file is compiled whole). Line numbers stay as in the file, for compile errors.
 */
export function entrySource(text: string, name: string): string | null {
  const lines = text.split('\n');
  if (!lines.some((l) => ENTRY_LINE.exec(l)?.[1] === name)) return null;
  return lines.map((l) => { const m = ENTRY_LINE.exec(l); return m && m[1] !== name ? '' : l; }).join('\n');
}

const ENTRY_LINE = /^[A-Z][A-Z0-9_]*ENTRY[A-Z0-9_]*\(\s*(\w+)\s*,/;

/** The kernels a source declares by entry-macro lines (entrySource), in file order. */
export function kernelEntries(text: string): string[] {
  return text.split('\n').flatMap((l) => ENTRY_LINE.exec(l)?.[1] ?? []);
}

/**
 * What is compiled for kernel `name` of `file` (null: the whole file): the entry's source
 * (entrySource) or the file's, the headers it includes by name, and the key of the module (one a
 * kernel, or one a file). `read` returns a kernel file's text. CudaContext and `ringattn compile`
 * both go through here, so that they fill and find the same cache entries.
 */
export function moduleSource(file: string, name: string | null, read: (file: string) => string): { key: string; src: Source; headers: Source[] } {
  const text = read(file);
  const one = name === null ? null : entrySource(text, name);
  const headers = [...text.matchAll(/#include\s+"([^"]+)"/g)].map((m) => ({ name: m[1], text: read(m[1]) }));
  return { key: one === null ? file : `${file}#${name}`, src: { name: file, text: one ?? text }, headers };
}

/**
 * Compile a module (moduleSource's) for `arch` through the cache, as every caller does
 * (CudaContext.module, `ringattn compile`'s workers): compileCuda with RINGATTN_NVRTC_DEFINES.
 */
export function compileModule(mod: { src: Source; headers: Source[] }, arch: string, nvrtc?: NvrtcApi): Compiled {
  return compileCuda(mod.src, mod.headers, arch, nvrtcDefines(), nvrtc);  // the cache key hashes the text and options
}

/** Extra -D options for every kernel compile, from RINGATTN_NVRTC_DEFINES (defineList). */
export function nvrtcDefines(env: string | undefined = process.env.RINGATTN_NVRTC_DEFINES): string[] {
  return defineList('RINGATTN_NVRTC_DEFINES', env);
}

/** Compile `src` (which may #include the `headers` by name) for `arch`; cached on disk. */
export function compileCuda(src: Source, headers: Source[], arch: string, extra: string[] = [], nvrtc?: NvrtcApi): Compiled {
  const loaded = nvrtc ?? loadNvrtc();
  if ('error' in loaded) throw new BackendError(loaded.error);
  const api = loaded;
  const options = [...BASE_OPTIONS, `--gpu-architecture=${arch}`, ...extra];
  const key = cacheKey(src, headers, options, arch, nvrtcVersion(api));
  const dir = cudaCacheDir();
  const file = join(dir, `${src.name.replace(/[^\w.-]/g, '_')}-${arch}-${key.slice(0, 24)}.cubin`);
  try {
    return { cubin: readFileSync(file), log: '', cached: true, key };
  } catch {
    // not cached yet
  }
  const prog: [unknown] = [null];
  nvrtcCheck(api, `nvrtcCreateProgram(${src.name})`, api.nvrtcCreateProgram(prog, src.text, src.name, headers.length, headers.map((x) => x.text), headers.map((x) => x.name)));
  try {
    const rc = api.nvrtcCompileProgram(prog[0], options.length, options);
    const size: [number] = [0];
    let log = '';
    if (api.nvrtcGetProgramLogSize(prog[0], size) === 0 && size[0] > 1) {
      const buf = Buffer.alloc(size[0]);
      if (api.nvrtcGetProgramLog(prog[0], buf) === 0) log = buf.subarray(0, size[0] - 1).toString('utf8');
    }
    nvrtcCheck(api, `nvrtcCompileProgram(${src.name}, ${arch}, ${options.join(' ')})`, rc, log);
    nvrtcCheck(api, 'nvrtcGetCUBINSize', api.nvrtcGetCUBINSize(prog[0], size));
    const cubin = Buffer.alloc(size[0]);
    nvrtcCheck(api, 'nvrtcGetCUBIN', api.nvrtcGetCUBIN(prog[0], cubin));
    try {
      const tmp = `${file}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`;
      writeFileSync(tmp, cubin);
      renameSync(tmp, file);
    } catch {
      // a read-only cache only costs a recompile next time
    }
    return { cubin, log, cached: false, key };
  } finally {
    api.nvrtcDestroyProgram(prog);
  }
}
