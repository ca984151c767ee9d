import type koffi from 'koffi';
import type { Isa, NativeLoad } from '../../../src/cpu/build.js';
import { RemoteLibrary } from './remote.js';

/**
 * Test-only stand-in for src/cpu/build.js (hooks.ts puts it in place): the same exports, but
 * loadNative() gives the kernels of another architecture, run by the driver that
 * RINGATTN_EMUL_COMMAND names (JSON: runner, its arguments, the driver) with the ISA
 * RINGATTN_EMUL_ISA. The kernel modules bind their functions from it unchanged.
 */
export * from '../../../src/cpu/build.js';

let loaded: NativeLoad | undefined;

export function loadNative(): NativeLoad {
  if (process.env.RINGATTN_KERNEL === 'ts') return { error: 'RINGATTN_KERNEL=ts' };
  if (loaded) return loaded;
  const command = process.env.RINGATTN_EMUL_COMMAND, isa = process.env.RINGATTN_EMUL_ISA;
  if (!command || !isa) return (loaded = { error: 'RINGATTN_EMUL_COMMAND and RINGATTN_EMUL_ISA must be set' });
  const argv = JSON.parse(command) as string[];
  return (loaded = { lib: new RemoteLibrary(argv) as unknown as koffi.IKoffiLib, isa: isa as Isa, path: argv[argv.length - 1] });
}
