import { createHash } from 'node:crypto';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { BASE_FLAGS, cacheDir, kernelsDir } from '../../../src/cpu/build.js';

/**
 * Test-only builds of the native kernels linked with the call driver (driver.c) into one program,
 * cached like the library (keyed by the compiler, the flags and the text of every source):
 * - neonDriver: cross-compiled for AArch64 (baseline ARMv8-A, NEON), static, run by qemu-user;
 * - sanitizedDriver: for this CPU with AddressSanitizer and UndefinedBehaviorSanitizer. The driver
 *   copies every array into a heap block of exactly its size, so a kernel that reads or writes
 *   one element past any argument is stopped with a report, not only one whose values go wrong.
 * Both use the library's base flags less -fPIC/-shared.
 */
export const CROSS_CC = 'aarch64-linux-gnu-gcc';
export const RUNNER = 'qemu-aarch64';
export const PACKAGES = 'gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user (Debian)';

/** The driver's source, in the source tree beside this module's compiled form (dist/tests/cpu/emul). */
const DRIVER_C = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', '..', 'tests', 'cpu', 'emul', 'driver.c');

export type Driver = { command: string[] } | { unavailable: string };

function version(cmd: string): string | null {
  const r = spawnSync(cmd, ['--version'], { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.split('\n')[0] : null;
}

function compile(cc: string, args: string[]): Promise<string | null> {
  return new Promise((resolve) => {
    const child = spawn(cc, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    child.stderr.on('data', (d) => (err += d));
    child.on('error', (e) => resolve(e.message));
    child.on('close', (code) => resolve(code === 0 ? null : err || `exit ${code}`));
  });
}

/** Compiles the driver with the kernels, each file in its own process (or finds it cached); its path, or why not. */
async function build(cc: string, ccVersion: string, tag: string, extra: string[]): Promise<string | { unavailable: string }> {
  const dir = kernelsDir();
  const files = readdirSync(dir).sort();
  const sources = files.filter((f) => f.endsWith('.c')).map((f) => join(dir, f));
  const headers = files.filter((f) => f.endsWith('.h')).map((f) => join(dir, f));
  const flags = [...BASE_FLAGS.filter((f) => f !== '-fPIC' && f !== '-shared'), ...extra, `-I${dir}`];
  const h = createHash('sha256').update(['driver-v1', cc, ccVersion, flags.join(' ')].join('\0'));
  for (const f of [DRIVER_C, ...sources, ...headers]) h.update(readFileSync(f));
  const out = join(cacheDir(), `ringattn-driver-${tag}-${h.digest('hex').slice(0, 24)}`);
  if (existsSync(out)) return out;
  const work = mkdtempSync(`${out}.${process.pid}.`);
  try {
    const all = [DRIVER_C, ...sources];
    const objects = all.map((_, i) => join(work, `${i}.o`));
    const errors = await Promise.all(all.map((src, i) => compile(cc, [...flags, '-c', '-o', objects[i], src])));
    const linked = errors.find((e) => e !== null) ?? (await compile(cc, [...flags, '-o', join(work, 'driver'), ...objects, '-lm']));
    if (linked !== null) return { unavailable: `${cc} ${flags.join(' ')} failed: ${linked.trim().split('\n').slice(0, 3).join(' / ')}` };
    renameSync(join(work, 'driver'), out);
    return out;
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

/** The kernels for AArch64 NEON under qemu-user (x86-64 hosts with the cross tools). */
export async function neonDriver(): Promise<Driver> {
  if (process.arch === 'arm64') return { unavailable: 'this machine is AArch64: its native run is the NEON path' };
  const cc = version(CROSS_CC), runner = version(RUNNER);
  if (!cc || !runner) return { unavailable: `no ${[cc ? '' : CROSS_CC, runner ? '' : RUNNER].filter(Boolean).join(' or ')} (install ${PACKAGES})` };
  const out = await build(CROSS_CC, cc, 'aarch64', ['-march=armv8-a', '-fopenmp', '-static']);
  return typeof out === 'string' ? { command: [RUNNER, out] } : out;
}

/** The kernels for this CPU (its own ISA, as the library), with AddressSanitizer and UBSan. */
export async function sanitizedDriver(archFlags: string[]): Promise<Driver> {
  // a plain compiler only: build.ts's CC may be a wrapper with arguments (CC="ccache gcc")
  const [cc, ...pre] = (process.env.CC?.trim() || 'cc').split(/\s+/);
  if (pre.length > 0) return { unavailable: `CC='${process.env.CC}' has arguments: set CC to a plain compiler for the sanitizer build` };
  const v = version(cc);
  if (!v) return { unavailable: `no C compiler '${cc}'` };
  // -O1 (after the base -O3): the usual level for sanitizers, and decode.c compiles 3x faster
  const san = ['-O1', '-g', '-fsanitize=address,undefined', '-fno-sanitize-recover=all', '-fno-omit-frame-pointer'];
  const out = await build(cc, v, 'asan', [...archFlags, '-fopenmp', ...san]);
  return typeof out === 'string' ? { command: [out] } : out;
}
