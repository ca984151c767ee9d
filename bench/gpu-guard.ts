import { basename } from 'node:path';
import { cudaAvailable } from '../src/cuda/check.js';

// Imported first by the GPU benches: without a usable GPU they end with one line saying why
// (exit 1), not a stack trace from their first driver call.
const cuda = cudaAvailable();
if (!cuda.ok) {
  process.stderr.write(`${basename(process.argv[1] ?? 'bench')}: ${cuda.reason}\n`);
  process.exit(1);
}
