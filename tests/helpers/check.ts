import assert from 'node:assert/strict';

/** Seeded PRNG (mulberry32) so failures reproduce; tests pass a fresh seed and print it on failure. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** A fresh seed per run (printed by assertions), unless RINGATTN_SEED fixes it. */
export function freshSeed(): number {
  return process.env.RINGATTN_SEED ? Number(process.env.RINGATTN_SEED) : (Math.random() * 2 ** 31) >>> 0;
}

export function randn(n: number, r: () => number, scale = 1): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const u = Math.max(r(), 1e-12);
    out[i] = scale * Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * r());
  }
  return out;
}

/** max|a - b| / max(max|b|, floor) (with -Infinity entries required to match exactly); max|a - b| where that is 0. */
export function relErr(a: ArrayLike<number>, b: ArrayLike<number>, floor = 0): number {
  assert.equal(a.length, b.length, 'length mismatch');
  let num = 0, den = 0;
  for (let i = 0; i < a.length; i++) {
    const x = a[i], y = b[i];
    if (!Number.isFinite(y)) {
      assert.equal(x, y, `element ${i}: expected ${y}, got ${x}`);
      continue;
    }
    assert.ok(Number.isFinite(x), `element ${i} is ${x}, expected ${y}`);
    num = Math.max(num, Math.abs(x - y));
    den = Math.max(den, Math.abs(y));
  }
  den = Math.max(den, floor);
  return den === 0 ? num : num / den;
}

export function assertClose(a: ArrayLike<number>, b: ArrayLike<number>, tol: number, what: string): void {
  const e = relErr(a, b);
  assert.ok(e <= tol, `${what}: relative error ${e.toExponential(3)} > ${tol}`);
}

/**
 * LSEs: max|a - b| / max(max|b|, 1). An LSE's error matters through exp(lse), so below 1 it is
 * held to the same tolerance absolutely; relative to itself a near-zero LSE is ill-conditioned
 * (one key: lse = q·k·scale, and an fp32 dot product of terms summing to 2.5 in magnitude that
 * cancel to 0.004 is off by 1.4e-5 of that: seed 766240496, S=1, D=16).
 */
export function assertCloseLse(a: ArrayLike<number>, b: ArrayLike<number>, tol: number, what: string): void {
  const e = relErr(a, b, 1);
  assert.ok(e <= tol, `${what}: error ${e.toExponential(3)} (relative to max(max|lse|, 1)) > ${tol}`);
}

/**
 * Runs `body` with the environment variables `vars` set (undefined: unset) and restores their
 * previous values afterwards, also when `body` throws or its promise rejects.
 */
export function withEnv<R>(vars: Record<string, string | undefined>, body: () => R): R {
  const set = (vs: Record<string, string | undefined>) => {
    for (const [k, v] of Object.entries(vs)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  };
  const saved = Object.fromEntries(Object.keys(vars).map((k) => [k, process.env[k]]));
  set(vars);
  let r: R;
  try {
    r = body();
  } catch (e) {
    set(saved);
    throw e;
  }
  if (r instanceof Promise) return r.finally(() => set(saved)) as R;
  set(saved);
  return r;
}
