import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

/**
 * Float64 references kept per key for a test file's run (its kernel variants check the same
 * inputs), and, with RINGATTN_REF_CACHE=DIR, on disk: an A/B script that runs a GPU test file once
 * per kernel build with one RINGATTN_SEED (bench/device-env.sh) then computes each reference once.
 * A key must name the case and its seed; it does not name the test file's version, so the folder
 * is for one script run. The arrays come back bit for bit.
 */
export class RefCache<R extends { [K in keyof R]: Float64Array }> {
  private readonly mem = new Map<string, R>();

  constructor(private readonly dir: string | undefined = process.env.RINGATTN_REF_CACHE) {}

  get(key: string, compute: () => R): R {
    let r = this.mem.get(key);
    if (r) return r;
    const file = this.dir && join(this.dir, `${createHash('sha256').update(key).digest('hex').slice(0, 32)}.json`);
    if (file && existsSync(file)) {
      const saved = JSON.parse(readFileSync(file, 'utf8')) as Record<string, string>;
      r = Object.fromEntries(Object.entries(saved).map(([n, b64]) => [n, new Float64Array(new Uint8Array(Buffer.from(b64, 'base64')).buffer)])) as unknown as R;
    } else {
      r = compute();
      if (file) {
        mkdirSync(this.dir!, { recursive: true });
        const tmp = `${file}.${process.pid}.tmp`;
        const out = Object.fromEntries(Object.entries(r as Record<string, Float64Array>).map(([n, a]) => [n, Buffer.from(a.buffer, a.byteOffset, a.byteLength).toString('base64')]));
        writeFileSync(tmp, JSON.stringify(out));
        renameSync(tmp, file);
      }
    }
    this.mem.set(key, r);
    return r;
  }
}
