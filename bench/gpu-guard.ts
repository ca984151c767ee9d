import { basename } from 'node:path';
import { cudaAvailable } from '../src/cuda/check.js';

/**
 * Called by the GPU benches before their first driver call (after checking their arguments, so
 * that a bad flag is named as such on any machine): without a usable GPU they end with one line
 * saying why (exit 1), not a stack trace from that call.
 */
export function requireGpu(): void {
  const cuda = cudaAvailable();
  if (!cuda.ok) {
    process.stderr.write(`${basename(process.argv[1] ?? 'bench')}: ${cuda.reason}\n`);
    process.exit(1);
  }
}
