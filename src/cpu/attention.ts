import { BackendError } from '../core/errors.js';
import type { AttentionKernel, BlockArgs } from '../core/kernel.js';
import { loadNative } from './build.js';
import { tsKernel } from './kernels/attn.js';
import { cKernel } from './native.js';
import { checkBlockArgs } from '../core/kernel.js';

export type KernelChoice = 'auto' | 'c' | 'ts';

/** Marks, across worker threads started after it, that the fallback notice was printed. */
const WARNED_ENV = 'RINGATTN_TS_KERNEL_NOTICE';
let warned = false;

function notice(reason: string): void {
  if (warned || process.env[WARNED_ENV] === '1') return;
  warned = true;
  process.env[WARNED_ENV] = '1';
  process.stderr.write(`ringattn: the C kernel is unavailable (${reason}); using the TypeScript kernel (slower)\n`);
}

/**
 * The block attention kernel for this process. 'auto' (the default) uses the C kernel built
 * for this CPU and falls back to the TypeScript kernel with a one-line notice on stderr; 'c'
 * throws BackendError with the reason when the C kernel is unavailable; 'ts' is the fallback.
 * RINGATTN_KERNEL=ts forces the fallback (silently).
 */
export function getKernel(opts: { kernel?: KernelChoice } = {}): AttentionKernel {
  const choice = opts.kernel ?? 'auto';
  if (choice === 'ts') return tsKernel;
  const n = loadNative();
  if ('error' in n) {
    if (choice === 'c') throw new BackendError(`C kernel unavailable: ${n.error}`);
    if (process.env.RINGATTN_KERNEL !== 'ts') notice(n.error);
    return tsKernel;
  }
  if (choice === 'c') return cKernel();
  try {
    return cKernel();
  } catch (e) {
    notice((e as Error).message);
    return tsKernel;
  }
}

/** Null when the kernels can run these arguments, else the reason (naming the argument). */
export function supported(args: BlockArgs): string | null {
  return checkBlockArgs(args);
}
