import { InputError, RingAttnError } from '../core/errors.js';

/** Exit codes: 0 ok, 1 runtime failure, 2 bad input. */
export const EXIT_OK = 0;
export const EXIT_FAIL = 1;
export const EXIT_INPUT = 2;

/** Print one line for a known error (no stack), the stack for a bug; return the exit code. */
export function reportError(err: unknown): number {
  if (err instanceof InputError) {
    process.stderr.write(`ringattn: ${err.message}\n`);
    return EXIT_INPUT;
  }
  if (err instanceof RingAttnError) {
    process.stderr.write(`ringattn: ${err.message}\n`);
    return EXIT_FAIL;
  }
  process.stderr.write(`ringattn: internal error: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  return EXIT_FAIL;
}

/** Parse a CLI integer option, naming it in the error. */
export function intOpt(name: string, v: string | undefined, opts: { min?: number } = {}): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isInteger(n) || (opts.min !== undefined && n < opts.min)) {
    throw new InputError(name, `expected an integer${opts.min !== undefined ? ` >= ${opts.min}` : ''}, got '${v}'`);
  }
  return n;
}

export function numOpt(name: string, v: string | undefined, opts: { positive?: boolean } = {}): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isFinite(n) || (opts.positive && n <= 0)) {
    throw new InputError(name, `expected a ${opts.positive ? 'positive ' : ''}number, got '${v}'`);
  }
  return n;
}

export type KernelOpt = 'auto' | 'c' | 'ts';

/** The --kernel option: auto, c or ts. */
export function kernelOpt(v: string): KernelOpt {
  if (v === 'auto' || v === 'c' || v === 'ts') return v;
  throw new InputError('--kernel', `expected auto, c or ts, got '${v}'`);
}
