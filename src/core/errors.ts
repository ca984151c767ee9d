/**
 * Typed errors. `InputError` is bad input from a caller (the CLI maps it to exit code 2 and
 * prints only its message); anything else is a bug or an environment failure.
 */
export class RingAttnError extends Error {
  override name = 'RingAttnError';
}

/** Bad input: `arg` names the argument, the message says what was expected. */
export class InputError extends RingAttnError {
  override name = 'InputError';
  constructor(readonly arg: string, message: string) {
    super(`${arg}: ${message}`);
  }
}

/**
 * The argument checks return a reason 'argument: what was expected, got ...' or null; this
 * throws it as the InputError naming that argument.
 */
export function throwReason(reason: string | null): void {
  if (reason) {
    const i = reason.indexOf(': ');
    throw new InputError(reason.slice(0, i), reason.slice(i + 2));
  }
}

/**
 * Extra preprocessor definitions for the kernel compilers from an environment variable (space
 * separated, each `-DNAME` or `-DNAME=value`): a kernel-development switch, so a benchmark can time
 * two builds of one kernel; they enter the compile cache key. Anything else is an InputError naming
 * the variable.
 */
export function defineList(name: string, env: string | undefined): string[] {
  const parts = (env ?? '').split(/\s+/).filter((x) => x !== '');
  for (const d of parts) {
    if (!/^-D[A-Za-z_]\w*(=[\w.+-]+)?$/.test(d)) throw new InputError(name, `expected space-separated -DNAME or -DNAME=value, got '${d}'`);
  }
  return parts;
}

/** A rank of the ring failed; `rank` says which, the message carries its error. */
export class RankError extends RingAttnError {
  override name = 'RankError';
  /** `secondary`: this rank only stopped because another one failed. */
  constructor(readonly rank: number, readonly detail: string, readonly secondary = false) {
    super(`rank ${rank}: ${detail}`);
  }
}

/** Native build or load failure (compiler, koffi, driver). */
export class BackendError extends RingAttnError {
  override name = 'BackendError';
}

/** The largest value an int32 argument of the kernels takes. */
export const INT32_MAX = 2 ** 31 - 1;

/** A value as an error message shows it: an object by its type's name, a string quoted. */
export function describe(x: unknown): string {
  if (typeof x === 'string') return JSON.stringify(x);
  if (typeof x === 'object' && x !== null) return x.constructor?.name ?? 'an object';
  return String(x);
}

export function check(cond: unknown, arg: string, message: string): asserts cond {
  if (!cond) throw new InputError(arg, message);
}
