// Copies kernel sources (.c, .h, .cu, .cuh) next to the compiled JavaScript so that the
// runtime finds them beside its own modules.
import { cpSync, readdirSync, statSync, mkdirSync } from 'node:fs';
import { join, dirname } from 'node:path';
const exts = ['.c', '.h', '.cu', '.cuh'];
function walk(dir) {
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) walk(p);
    else if (exts.some((e) => name.endsWith(e))) {
      const dest = join('dist', p);
      mkdirSync(dirname(dest), { recursive: true });
      cpSync(p, dest);
    }
  }
}
walk('src');
