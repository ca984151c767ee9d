import type { Command } from 'commander';
import { BackendError, InputError } from '../../core/errors.js';
import { progressBar } from '../progress.js';
import { intOpt } from '../util.js';

interface CompileFlags {
  arch?: string;
  jobs?: string;
  kernels?: string;
  verbose?: boolean;
}

/**
 * `ringattn compile`: every CUDA kernel compiled into the NVRTC cache now, on all CPUs, instead
 * of one at a time at first use (src/cuda/precompile.ts). For this machine's GPU by default, or
 * for --arch (a machine without a GPU can fill a cache for one that has).
 */
export function registerCompile(program: Command): void {
  program
    .command('compile')
    .description('compile the CUDA kernels into the cache ahead of use, in parallel (NVRTC; the first GPU run then loads them instead of compiling)')
    .option('--arch <sm>', "target, e.g. sm_90a (H100/H200) or sm_80 (default: GPU 0's)")
    .option('--jobs <N>', 'compiler processes at once (default: the CPUs)')
    .option('--kernels <files>', 'comma-separated kernel files, e.g. attn_fwd_h.cu,decode.cu (default: all)')
    .option('--verbose', 'one line a kernel: its time, or that it was already cached')
    .action(async (f: CompileFlags) => {
      const jobsN = intOpt('--jobs', f.jobs, { min: 1 });
      const { compileJobs, jobLabel, precompile } = await import('../../cuda/precompile.js');
      const { archFor, cudaCacheDir } = await import('../../cuda/compile.js');
      if (f.arch !== undefined && !/^sm_\d{2,3}a?$/.test(f.arch)) throw new InputError('--arch', `expected sm_<major><minor>, e.g. sm_90a or sm_80, got '${f.arch}'`);
      const { cudaAvailable } = await import('../../cuda/check.js');
      const cuda = cudaAvailable();
      if (f.arch === undefined && !cuda.ok) throw new InputError('--arch', `no GPU to take it from (${cuda.reason}); name the target, e.g. --arch sm_90a`);
      const here = cuda.ok ? archFor(...cuda.computeCapability) : null;
      const arch = f.arch ?? here!;
      // e.g. sm_90 on an H100, whose kernels are built for sm_90a: entries this machine never reads.
      if (cuda.ok && arch !== here) process.stderr.write(`ringattn: note: GPU 0 here (${cuda.name}) runs ${here} kernels; the ${arch} ones go to the cache for another GPU\n`);
      const files = f.kernels?.split(',').map((s) => s.trim()).filter((s) => s.length > 0);
      if (files && files.length === 0) throw new InputError('--kernels', 'expected at least one kernel file');
      const jobs = compileJobs(files);
      const bar = progressBar(`compile ${arch}`, 'kernels');
      const r = await precompile({
        arch, jobs, workers: jobsN,
        onDone: (done, total, o) => {
          bar.update(done, total);
          if (f.verbose) process.stdout.write(`${jobLabel(o.job)}: ${o.error ? 'failed' : o.cached ? 'cached' : `${(o.ms / 1000).toFixed(1)} s`}\n`);
        },
      }).finally(() => bar.stop());
      const failed = r.outcomes.filter((o) => o.error);
      const cached = r.outcomes.filter((o) => o.cached).length;
      const compiled = r.outcomes.length - cached - failed.length;
      // A compile is one kernel of a file of entry macros, or a whole file.
      process.stdout.write(`${arch}: ${compiled} of ${r.outcomes.length} compiles done, ${cached} found in the cache, ${failed.length} failed; ${r.seconds.toFixed(1)} s on ${r.workers} processes; cache ${cudaCacheDir()}\n`);
      if (failed.length > 0) {
        throw new BackendError(`${failed.length} of ${r.outcomes.length} compiles failed:\n${failed.map((o) => `  ${jobLabel(o.job)}: ${o.error}`).join('\n')}`);
      }
    });
}
