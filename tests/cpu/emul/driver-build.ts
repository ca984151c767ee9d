import { createHash } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, renameSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { BASE_FLAGS, cacheDir, kernelsDir } from '../../../src/cpu/build.js';

/**
 * Test-only: the native kernels for AArch64 (NEON), cross-compiled with the call driver
 * (driver.c) into one static program that qemu-user runs on this x86-64 machine. Built with the
 * library's own base flags (less -fPIC/-shared, plus -static) for the baseline ARMv8-A, cached
 * like the library (keyed by the compiler and the text of every source).
 */
export const CROSS_CC = 'aarch64-linux-gnu-gcc';
export const RUNNER = 'qemu-aarch64';
export const PACKAGES = 'gcc-aarch64-linux-gnu qemu-user (Debian)';

/** The driver's source, beside this module's compiled form (dist/tests/cpu/emul) in the source tree. */
const DRIVER_C = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', '..', 'tests', 'cpu', 'emul', 'driver.c');

function version(cmd: string): string | null {
  const r = spawnSync(cmd, ['--version'], { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.split('\n')[0] : null;
}

/** The command that runs the driver (runner, driver path), or why there is none. */
export function neonDriver(): { command: string[] } | { unavailable: string } {
  if (process.arch === 'arm64') return { unavailable: 'this machine is AArch64: its native run is the NEON path' };
  const cc = version(CROSS_CC), runner = version(RUNNER);
  if (!cc || !runner) return { unavailable: `no ${[cc ? '' : CROSS_CC, runner ? '' : RUNNER].filter(Boolean).join(' or ')} (install ${PACKAGES})` };
  const dir = kernelsDir();
  const sources = readdirSync(dir).filter((f) => f.endsWith('.c')).sort().map((f) => join(dir, f));
  const headers = readdirSync(dir).filter((f) => f.endsWith('.h')).sort().map((f) => join(dir, f));
  const flags = [...BASE_FLAGS.filter((f) => f !== '-fPIC' && f !== '-shared'), '-march=armv8-a', '-fopenmp', '-static', `-I${dir}`];
  const h = createHash('sha256').update(['emul-v1', cc, flags.join(' ')].join('\0'));
  for (const f of [DRIVER_C, ...sources, ...headers]) h.update(readFileSync(f));
  const out = join(cacheDir(), `ringattn-aarch64-driver-${h.digest('hex').slice(0, 24)}`);
  if (!existsSync(out)) {
    const tmp = `${out}.${process.pid}.tmp`;
    const r = spawnSync(CROSS_CC, [...flags, '-o', tmp, DRIVER_C, ...sources, '-lm'], { encoding: 'utf8' });
    if (r.status !== 0) {
      rmSync(tmp, { force: true });
      throw new Error(`cross-compiling the kernels with ${CROSS_CC} failed:\n${r.stderr}`);
    }
    renameSync(tmp, out);
  }
  return { command: [RUNNER, out] };
}
