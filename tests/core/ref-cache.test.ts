import assert from 'node:assert/strict';
import { test } from 'node:test';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { RefCache } from '../helpers/ref-cache.js';
import { freshSeed, rng } from '../helpers/check.js';

// The GPU tests' reference cache (tests/helpers/ref-cache.ts): what a second process reads back
// must be the computed arrays bit for bit, or every later build of an A/B run would be checked
// against something else.
test('RefCache: computed once per key in a run, read back from RINGATTN_REF_CACHE bit for bit by a later run', () => {
  const dir = mkdtempSync(join(tmpdir(), 'ringattn-refcache-'));
  try {
    const r = rng(freshSeed());
    const special = [0, -0, Infinity, -Infinity, NaN, 5e-324, -Number.MAX_VALUE, Math.PI];
    const make = () => ({ o: Float64Array.from({ length: 37 }, (_, i) => (i < special.length ? special[i] : r() * 2 - 1)), lse: Float64Array.from({ length: 5 }, () => r() * 100).subarray(1, 4) });
    let calls = 0;
    const first = new RefCache<ReturnType<typeof make>>(dir);
    const a = first.get('case A seed=1', () => (calls++, make()));
    assert.equal(first.get('case A seed=1', () => (calls++, make())), a, 'the same object again within a run');
    const b = first.get('case B seed=1', () => (calls++, make()));
    assert.equal(calls, 2);
    assert.equal(readdirSync(dir).filter((f) => f.endsWith('.json')).length, 2, 'one file a key, no temp files');
    assert.equal(readdirSync(dir).length, 2);
    const later = new RefCache<ReturnType<typeof make>>(dir);
    for (const [key, want] of [['case A seed=1', a], ['case B seed=1', b]] as const) {
      const got = later.get(key, () => { throw new Error(`${key} computed again`); });
      for (const n of ['o', 'lse'] as const) {
        assert.equal(got[n].length, want[n].length);
        assert.ok(got[n].every((x, i) => Object.is(x, want[n][i])), `${key} ${n}: not bit for bit`);
      }
    }
    // without a folder nothing is written and a new cache computes again
    const memOnly = new RefCache<ReturnType<typeof make>>(undefined);
    memOnly.get('case A seed=1', () => (calls++, make()));
    assert.equal(calls, 3);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
