import { createHash, randomBytes } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, realpathSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { delimiter, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { threadId } from 'node:worker_threads';
import koffi from 'koffi';
import { defineList } from '../core/errors.js';

/**
 * Builds the native CPU kernels: every `.c` file in `kernels/` beside this module is compiled
 * for this CPU into one shared library, cached on disk (keyed by the text of every `.c` and `.h`
 * file there: the kernels include simd.h) and loaded with koffi. Other modules bind their own
 * symbols from the same handle (`loadNative().lib.func(...)`).
 *
 * Flags: -O3 -march=native with OpenMP when it links. -ffp-contract=fast lets the compiler fuse
 * multiply-adds; -ffast-math is never used because it assumes no infinities, and the kernels
 * rely on -inf for masked logits and for rows that see no key.
 *
 * RINGATTN_CPU_ISA=avx2 or scalar (x86-64 only) builds a lower instruction set than this CPU's
 * (-mno-avx512f, -mno-avx): the tests run every SIMD path the machine can execute, and users can
 * rule out a miscompiled wide path. Unset or `native`: the CPU's own.
 *
 * RINGATTN_CPU_DEFINES: extra -D options (defineList) for kernel experiments, e.g.
 * `-DPF_SEG_ROWS=8`; part of the library's cache key.
 */

export type Isa = 'avx512' | 'avx2' | 'neon' | 'scalar';
export interface NativeLib {
  lib: koffi.IKoffiLib;
  isa: Isa;
  path: string;
}
export type NativeLoad = NativeLib | { error: string };

export const BASE_FLAGS = ['-O3', '-fPIC', '-shared', '-std=gnu11', '-ffp-contract=fast', '-fno-math-errno', '-pthread'];
/** Tried in order after BASE_FLAGS; the first set that compiles and links a probe wins. */
const FLAG_SETS: string[][] = [
  ['-march=native', '-fopenmp'],
  ['-march=native'],
  ['-mcpu=native', '-fopenmp'],
  ['-mcpu=native'],
  ['-fopenmp'],
  [],
];

const PROBE_OMP = '#include <omp.h>\nint ra_probe(void) { return omp_get_max_threads(); }\n';
const PROBE = 'int ra_probe(void) { return 1; }\n';

/** The directory holding the kernel sources (dist/src/cpu/kernels after copy-assets). */
export function kernelsDir(): string {
  return join(dirname(fileURLToPath(import.meta.url)), 'kernels');
}

export function cacheDir(): string {
  const candidates = [process.env.RINGATTN_CACHE, join(os.homedir(), '.cache', 'ringattn'), join(os.tmpdir(), 'ringattn-cache')];
  for (const dir of candidates) {
    if (!dir) continue;
    try {
      mkdirSync(dir, { recursive: true });
      return dir;
    } catch {
      // not writable: try the next
    }
  }
  return os.tmpdir();
}

interface Compiler {
  cmd: string;
  pre: string[];
  version: string;
}

function run(cmd: string, args: string[], input?: string): { ok: boolean; out: string; err: string } {
  const r = spawnSync(cmd, args, { encoding: 'utf8', input, timeout: 120_000, maxBuffer: 16 << 20 });
  if (r.error) return { ok: false, out: '', err: r.error.message };
  return { ok: r.status === 0, out: r.stdout ?? '', err: r.stderr ?? '' };
}

/** The file a command runs (PATH searched, links resolved) and its identity, or null. */
function commandIdentity(cmd: string): string | null {
  const dirs = cmd.includes('/') ? [''] : (process.env.PATH ?? '').split(delimiter).filter(Boolean);
  for (const dir of dirs) {
    try {
      const file = realpathSync(dir ? join(dir, cmd) : cmd);
      const st = statSync(file);
      if (st.isFile()) return `${file}|${st.size}|${st.mtimeMs}`;
    } catch {
      // not there
    }
  }
  return null;
}

/** A small JSON memo in the cache folder (probes cost a process spawn each: every worker thread asks). */
function readMemo<T>(name: string): T | undefined {
  try {
    return JSON.parse(readFileSync(join(cacheDir(), name), 'utf8')) as T;
  } catch {
    return undefined;
  }
}

function writeMemo(name: string, value: unknown): void {
  try {
    const path = join(cacheDir(), name);
    const tmp = tmpName(path);
    writeFileSync(tmp, JSON.stringify(value));
    renameSync(tmp, path);
  } catch {
    // a memo is only a shortcut
  }
}

/** CC when set (and only CC: a compiler asked for by name is not silently replaced by another),
 *  else the first of cc, gcc and clang that answers --version. */
function findCompiler(): Compiler | string {
  const asked = process.env.CC?.trim();
  const names = asked ? [asked] : ['cc', 'gcc', 'clang'];
  for (const name of names) {
    const [cmd, ...pre] = name.trim().split(/\s+/);
    if (!cmd) continue;
    // A plain compiler's --version is remembered per executable (path, size, mtime: an upgrade
    // changes them); a wrapper with arguments (CC="ccache gcc") is asked every time. A wrapper
    // script or a ccache link named as the compiler hides an upgrade behind it: clear the cache
    // folder (RINGATTN_CACHE) after one.
    const id = pre.length === 0 ? commandIdentity(cmd) : null;
    const memo = id ? `cc-${sha256(['cc-v1', cmd, id]).slice(0, 24)}.json` : '';
    const known = memo ? readMemo<{ version?: unknown }>(memo) : undefined;
    if (typeof known?.version === 'string') return { cmd, pre, version: known.version };
    const r = run(cmd, [...pre, '--version']);
    if (r.ok) {
      if (memo) writeMemo(memo, { version: r.out.trim() });
      return { cmd, pre, version: r.out.trim() };
    }
  }
  if (asked) return `CC='${asked}' does not run ('${asked} --version' failed): set CC to a working C compiler, or unset it to use cc, gcc or clang`;
  return `no C compiler found (tried ${names.join(', ')}): install one, or set CC`;
}

function cpuIdentity(): string {
  try {
    const info = readFileSync('/proc/cpuinfo', 'utf8');
    const model = /^model name\s*:\s*(.*)$/m.exec(info)?.[1] ?? '';
    const flags = /^(?:flags|Features)\s*:\s*(.*)$/m.exec(info)?.[1] ?? '';
    if (model || flags) return `${model}|${flags}`;
  } catch {
    // not Linux
  }
  const cpus = os.cpus();
  return `${cpus[0]?.model ?? 'unknown'}|${cpus.length}`;
}

function libExt(): string {
  return process.platform === 'darwin' ? 'dylib' : process.platform === 'win32' ? 'dll' : 'so';
}

function sha256(parts: string[]): string {
  const h = createHash('sha256');
  for (const p of parts) h.update(p).update('\0');
  return h.digest('hex');
}

function tmpName(path: string): string {
  return `${path}.${process.pid}.${threadId}.${randomBytes(4).toString('hex')}.tmp`;
}

/** Flags that compile and link on this compiler (cached per compiler and CPU: probes cost a spawn). */
function detectFlags(cc: Compiler, dir: string): string[] | string {
  const memo = `flags-${sha256(['flags-v1', cc.cmd, cc.pre.join(' '), cc.version, cpuIdentity(), process.platform, process.arch]).slice(0, 24)}.json`;
  const known = readMemo<unknown>(memo);
  if (Array.isArray(known) && known.every((f) => typeof f === 'string')) return known as string[];
  const errors: string[] = [];
  for (const extra of FLAG_SETS) {
    const flags = [...BASE_FLAGS, ...extra];
    const src = tmpName(join(dir, 'probe')) + '.c';
    const out = tmpName(join(dir, 'probe')) + '.' + libExt();
    try {
      writeFileSync(src, extra.includes('-fopenmp') ? PROBE_OMP : PROBE);
      const r = run(cc.cmd, [...cc.pre, ...flags, '-o', out, src]);
      if (r.ok) {
        writeMemo(memo, flags);
        return flags;
      }
      errors.push(`${extra.join(' ') || '(base flags)'}: ${r.err.trim().split('\n')[0] ?? ''}`);
    } finally {
      rmSync(src, { force: true });
      rmSync(out, { force: true });
    }
  }
  return `no working flags (${errors.join('; ')})`;
}

/**
 * RINGATTN_CPU_ISA: the lower ISA asked for and the flags that give it (none for the CPU's own),
 * or the reason it cannot be (an error).
 */
function isaChoice(): { want: Isa | null; flags: string[] } | string {
  const want = process.env.RINGATTN_CPU_ISA;
  if (want === undefined || want === '' || want === 'native') return { want: null, flags: [] };
  if (want !== 'avx2' && want !== 'scalar') return `RINGATTN_CPU_ISA: expected native, avx2 or scalar, got '${want}'`;
  if (process.arch !== 'x64') return `RINGATTN_CPU_ISA: ${want} can only be chosen on x86-64 (this is ${process.arch}); use native`;
  return { want, flags: want === 'avx2' ? ['-mno-avx512f'] : ['-mno-avx'] };
}

/** The ISA from the compiler's predefined macros under the chosen flags (remembered per compiler, flags and CPU). */
function detectIsa(cc: Compiler, flags: string[]): Isa {
  const arch = flags.filter((f) => f.startsWith('-march=') || f.startsWith('-mcpu=') || f.startsWith('-mno-'));
  const memo = `isa-${sha256(['isa-v1', cc.cmd, cc.pre.join(' '), cc.version, arch.join(' '), cpuIdentity(), process.platform, process.arch]).slice(0, 24)}.json`;
  const known = readMemo<{ isa?: unknown }>(memo)?.isa;
  if (known === 'avx512' || known === 'avx2' || known === 'neon' || known === 'scalar') return known;
  const r = run(cc.cmd, [...cc.pre, ...arch, '-dM', '-E', '-x', 'c', '-'], '');
  const has = (m: string) => new RegExp(`^#define ${m} `, 'm').test(r.out);
  const isa: Isa = has('__AVX512F__') ? 'avx512' : has('__AVX2__') && has('__FMA__') ? 'avx2' : has('__ARM_NEON') && has('__aarch64__') ? 'neon' : 'scalar';
  if (r.ok) writeMemo(memo, { isa });
  return isa;
}

function build(notice?: (message: string) => void): NativeLoad {
  const dir = kernelsDir();
  let sources: string[], headers: string[];
  try {
    const files = readdirSync(dir).sort();
    sources = files.filter((f) => f.endsWith('.c'));
    headers = files.filter((f) => f.endsWith('.h'));
  } catch (e) {
    return { error: `kernel sources not found in ${dir} (${(e as Error).message})` };
  }
  if (sources.length === 0) return { error: `no .c kernel sources in ${dir}` };
  const cc = findCompiler();
  if (typeof cc === 'string') return { error: cc };
  const cache = cacheDir();
  const found = detectFlags(cc, cache);
  if (typeof found === 'string') return { error: found };
  const lower = isaChoice();
  if (typeof lower === 'string') return { error: lower };
  const flags = [...found, ...lower.flags, ...defineList('RINGATTN_CPU_DEFINES', process.env.RINGATTN_CPU_DEFINES)];
  const isa = detectIsa(cc, flags);
  if (lower.want && isa !== lower.want) return { error: `RINGATTN_CPU_ISA=${lower.want}: this CPU and compiler give ${isa} (a lower ISA can be chosen, not a higher one)` };
  const parts = ['lib-v1', cc.version, cc.cmd, cc.pre.join(' '), flags.join(' '), cpuIdentity(), process.platform, process.arch];
  // the headers the kernels include (simd.h) are part of what is compiled: a change to one rebuilds
  for (const s of [...sources, ...headers]) parts.push(s, readFileSync(join(dir, s), 'utf8'));
  const path = join(cache, `ringattn-${sha256(parts).slice(0, 32)}.${libExt()}`);
  if (!existsSync(path)) {
    notice?.(`compiling the C kernels for this CPU (${isa}) with ${cc.cmd}, once: the library is cached in ${cache}`);
    const tmp = tmpName(path);
    const r = run(cc.cmd, [...cc.pre, ...flags, '-o', tmp, ...sources.map((s) => join(dir, s)), '-lm']);
    if (!r.ok) {
      rmSync(tmp, { force: true });
      return { error: `compiling ${sources.join(', ')} with ${cc.cmd} failed: ${r.err.trim().slice(0, 2000)}` };
    }
    try {
      renameSync(tmp, path); // atomic: a concurrent builder's identical library is simply replaced
    } catch (e) {
      rmSync(tmp, { force: true });
      if (!existsSync(path)) return { error: `cannot store ${path}: ${(e as Error).message}` };
    }
  }
  try {
    return { lib: koffi.load(path), isa, path };
  } catch (e) {
    return { error: `loading ${path} failed: ${(e as Error).message}` };
  }
}

let loaded: NativeLoad | undefined;

/**
 * The native library for this CPU, built on first use (per thread: a worker finds the cached
 * library on disk and just loads it). Never throws: returns the reason when it is unavailable.
 * RINGATTN_KERNEL=ts forces the TypeScript fallback.
 */
export function loadNative(notice?: (message: string) => void): NativeLoad {
  if (process.env.RINGATTN_KERNEL === 'ts') return { error: 'RINGATTN_KERNEL=ts' };
  if (!loaded) {
    try {
      loaded = build(notice);
    } catch (e) {
      loaded = { error: (e as Error).message };
    }
  }
  return loaded;
}
