import { RankError } from '../core/errors.js';

/** Index of the abort flag: any rank that fails sets it and wakes every waiting rank. */
export const FLAG_ABORT = 0;

/** Raise the abort flag and wake every rank waiting on any flag. */
export function raiseAbort(flags: Int32Array): void {
  Atomics.store(flags, FLAG_ABORT, 1);
  for (let i = 0; i < flags.length; i++) Atomics.notify(flags, i);
}

/** Test hook: make one rank fail at its first compute step `step` (of `phase`, or of either). */
export interface InjectedFailure {
  rank: number;
  step: number;
  mode: 'throw' | 'exit';
  phase?: 'forward' | 'backward';
}

/** How long a waiting rank sleeps between checks of the abort flag. */
const WAIT_SLICE_MS = 50;

/**
 * Int32 flags in shared memory through which the ranks of a group signal each other: a rank
 * posts a value (a step's seq, an epoch) and others wait until it reaches what they need. Every
 * wait also watches the abort flag, so a failed rank never leaves the others hanging.
 */
export class SharedFlags {
  constructor(readonly flags: Int32Array, readonly rank: number) {}

  checkAbort(): void {
    if (Atomics.load(this.flags, FLAG_ABORT) !== 0) throw new RankError(this.rank, 'stopped because another rank failed', true);
  }

  /** Wait until flags[idx] >= want. */
  wait(idx: number, want: number): void {
    for (;;) {
      const v = Atomics.load(this.flags, idx);
      if (v >= want) return;
      this.checkAbort();
      Atomics.wait(this.flags, idx, v, WAIT_SLICE_MS);
    }
  }

  post(idx: number, value: number): void {
    Atomics.store(this.flags, idx, value);
    Atomics.notify(this.flags, idx);
  }
}
