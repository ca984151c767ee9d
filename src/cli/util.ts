import { InputError, INT32_MAX, RingAttnError } from '../core/errors.js';
import { MAX_RANKS, parseDecimal } from '../core/inputs.js';
import { loadNative } from '../cpu/build.js';
import { getKernel, type KernelChoice } from '../cpu/attention.js';

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
  // The machine said no (a path, a host name, memory): one line, no stack; these are not our bugs.
  const sys = systemFailure(err);
  if (sys) {
    process.stderr.write(`ringattn: ${sys}\n`);
    return EXIT_FAIL;
  }
  process.stderr.write(`ringattn: internal error: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  return EXIT_FAIL;
}

/** An error raised by the system rather than by a bug: its one-line description, else undefined. */
export function systemFailure(err: unknown): string | undefined {
  if (!(err instanceof Error)) return undefined;
  const code = (err as NodeJS.ErrnoException).code;
  if (typeof code === 'string' && /^(E[A-Z]+|EAI_[A-Z]+)$/.test(code)) return err.message; // (errno codes; Node's own ERR_* are bugs)
  // (a negative length is a bug, not memory: only allocation failures and lengths past the limits)
  if (err instanceof RangeError && /allocation failed|Invalid (typed )?array length: \d|Invalid array buffer length/i.test(err.message)) {
    return `out of memory: ${err.message} (the sizes asked for do not fit this machine's memory or a JavaScript array)`;
  }
  return undefined;
}

/**
 * The library names its arguments (q, gradOut, blockQ); the CLI user typed flags. An InputError
 * naming an argument that `flags` maps is returned naming the flag instead; anything else as it is.
 * Use: `catch (e) { throw asFlagError(e, FLAGS); }`.
 */
export function asFlagError(err: unknown, flags: Readonly<Record<string, string>>): unknown {
  if (err instanceof InputError && Object.hasOwn(flags, err.arg)) {
    return new InputError(flags[err.arg], err.message.slice(err.arg.length + 2));
  }
  return err;
}

/** A command's action whose library errors name its flags (asFlagError with `flags`). */
export function withFlagNames<F>(flags: Readonly<Record<string, string>>, body: (f: F) => Promise<void> | void): (f: F) => Promise<void> {
  return async (f: F) => {
    try {
      await body(f);
    } catch (e) {
      throw asFlagError(e, flags);
    }
  };
}

/**
 * Parse a CLI integer option, naming it in the error. Every integer flag is an int32 at most
 * (the kernels' sizes and mask arguments are), unless `max` says less: 1e20 is refused here, naming
 * the flag, not later inside a worker.
 */
export function intOpt(name: string, v: string | undefined, opts: { min?: number; max?: number } = {}): number | undefined {
  if (v === undefined) return undefined;
  const n = parseDecimal(v);
  const { min } = opts, max = opts.max ?? INT32_MAX;
  if (!Number.isInteger(n) || (min !== undefined && n < min) || n > max) {
    throw new InputError(name, `expected an integer ${min !== undefined ? `in [${min}, ${max}]` : `<= ${max}`}, got '${v}'`);
  }
  return n;
}

/** Seeds are used as uint32 (`seed >>> 0`). */
export const SEED_MAX = 2 ** 32 - 1;
/** `plan` only does arithmetic: its sizes may pass int32 (a 2^32-token sequence over 1024 GPUs). */
export const PLAN_MAX = Number.MAX_SAFE_INTEGER;

/** --devices: ranks of one ring; on CPUs (worker threads of this process) at most MAX_RANKS. */
export function devicesOpt(v: string | undefined, gpu = false): number | undefined {
  return intOpt('--devices', v, gpu ? { min: 1 } : { min: 1, max: MAX_RANKS });
}

export function numOpt(name: string, v: string | undefined, opts: { positive?: boolean } = {}): number | undefined {
  if (v === undefined) return undefined;
  const n = parseDecimal(v);
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

export type BackendOpt = 'cpu' | 'cuda';

/** The --backend option: cpu or cuda. */
export function backendOpt(v: string): BackendOpt {
  if (v === 'cpu' || v === 'cuda') return v;
  throw new InputError('--backend', `expected cpu or cuda, got '${v}'`);
}

/** The model's --dtype on GPUs: fp32 (float32) or bf16 (bfloat16). */
export function modelDtypeOpt(v: string | undefined): 'float32' | 'bfloat16' {
  const d = (v ?? 'fp32').toLowerCase();
  if (d === 'fp32' || d === 'float32') return 'float32';
  if (d === 'bf16' || d === 'bfloat16') return 'bfloat16';
  throw new InputError('--dtype', `expected fp32 or bf16, got '${v}'`);
}

/**
 * Print the planner's text once per job: not on ranks other than 0, and not again in the ranks
 * a command launches for itself (they inherit RINGATTN_PLAN_PRINTED).
 */
export function printPlanOnce(text: () => string): void {
  if ((process.env.RANK ?? '0') !== '0' || process.env.RINGATTN_PLAN_PRINTED) return;
  process.stderr.write(text() + '\n\n');
  process.env.RINGATTN_PLAN_PRINTED = '1';
}

/**
 * Build (or find cached) the C kernels now, before a command starts its clock, saying so on stderr
 * when they compile (the first run on a machine: tens of seconds); `kernel` 'ts' needs none. Where
 * they are unavailable the fallback's notice is printed here, once, not by every worker.
 */
export function prepareCpuKernels(kernel: string | undefined, quiet = false): void {
  if (kernel === 'ts') return;
  loadNative((m) => quiet || process.stderr.write(`ringattn: ${m}\n`));
  getKernel({ kernel: kernel as KernelChoice | undefined });
}
