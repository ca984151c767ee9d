/** What the main thread and the control thread (control-worker.ts) share. */
export interface ControlInit {
  rank: number;
  world: number;
  host: string;
  port: number;
  timeoutMs: number;
  graceMs: number;
  /** Rank 0: the id to hand out (base64). */
  id?: string;
  /** Int32 slots (SLOT) shared with the main thread, and the failure text (UTF-8). */
  flags: SharedArrayBuffer;
  text: SharedArrayBuffer;
  /** Int32 per rank: 1 once that rank has ended normally (said goodbye). */
  left: SharedArrayBuffer;
}

/** left: how many other ranks have ended normally (said goodbye); ControlInit.left says which. */
/** beat: counted up by the control thread every HEARTBEAT_MS while it runs. */
export const SLOT = { state: 0, failedRank: 1, textLen: 2, ack: 3, sent: 4, left: 5, beat: 6 } as const;
export const HEARTBEAT_MS = 500;

/**
 * Record a failure in the shared slots, for the main thread's polls: the first one wins (false
 * when one is there already). Written by the control thread, or by the main thread once that
 * thread is gone.
 */
export function recordFailure(flags: Int32Array, text: Uint8Array, rank: number, message: string, state: number): boolean {
  if (Atomics.load(flags, SLOT.state) >= STATE.aborted) return false;
  const b = Buffer.from(message, 'utf8').subarray(0, text.length);
  text.set(b);
  Atomics.store(flags, SLOT.textLen, b.length);
  Atomics.store(flags, SLOT.failedRank, rank);
  Atomics.store(flags, SLOT.state, state);
  return true;
}
export const STATE = { rendezvous: 0, ready: 1, aborted: 2, error: 3 } as const;

