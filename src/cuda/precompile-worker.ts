import { loadNvrtc } from './bindings/nvrtc.js';
import { compileModule, moduleSource } from './compile.js';
import { kernelSource } from './context.js';
import type { WorkerReply, WorkerRequest } from './precompile.js';

/**
 * One worker process of precompile(): compiles each job it is sent into the cache, as
 * CudaContext.module would, and answers with the outcome. Exits when its parent disconnects.
 */

const nvrtc = loadNvrtc();
const reply = (m: WorkerReply) => process.send!(m);

process.on('message', (m: WorkerRequest) => {
  if ('error' in nvrtc) return reply({ ok: false, error: nvrtc.error, fatal: true });
  const t0 = performance.now();
  try {
    const c = compileModule(moduleSource(m.job.file, m.job.name, kernelSource), m.arch, nvrtc);
    reply({ ok: true, cached: c.cached, ms: performance.now() - t0 });
  } catch (e) {
    reply({ ok: false, error: (e as Error).message });
  }
});
process.on('disconnect', () => process.exit(0));
