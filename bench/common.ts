/**
 * Best wall time of `fn` in seconds: at least `min` runs, then more while the total stays under
 * `budget` seconds, at most `max` runs; `warmup` runs first are not timed.
 */
export function bestTime(fn: () => void, o: { min: number; budget: number; max?: number; warmup?: number }): number {
  for (let i = 0; i < (o.warmup ?? 0); i++) fn();
  let best = Infinity;
  let total = 0;
  for (let r = 0; r < (o.max ?? 20) && (r < o.min || total < o.budget); r++) {
    const t = performance.now();
    fn();
    const dt = (performance.now() - t) / 1e3;
    best = Math.min(best, dt);
    total += dt;
  }
  return best;
}

/** Deterministic inputs in [-1, 1) (an LCG): the same data for every run and peer. */
export function fill(n: number, seed: number): Float32Array {
  const x = new Float32Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    x[i] = s / 2 ** 31 - 1;
  }
  return x;
}
