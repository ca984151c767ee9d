import { fork, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { readdirSync } from 'node:fs';
import os from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { BackendError, InputError } from '../core/errors.js';
import { kernelEntries, nvrtcDefines } from './compile.js';
import { kernelSource, kernelsDir } from './context.js';

/**
 * Every CUDA kernel compiled into the NVRTC cache ahead of use, by several processes at once
 * (`ringattn compile`). A process compiles a kernel the first time it launches it (one entry of a
 * file, or a whole file: CudaContext.module), one at a time, a few seconds each: a first run of
 * every path (the GPU tests) spends minutes there. The jobs here are the same compiles, with the
 * same sources, options and cache keys (moduleSource, compileCuda), handed out to `jobs` worker
 * processes (precompile-worker.ts) as each finishes its last.
 */

/** One compile: kernel `name` of `file` (an entry), or the whole file (null). */
export interface CompileJob {
  file: string;
  name: string | null;
}

export interface CompileOutcome {
  job: CompileJob;
  /** Found in the cache (nothing compiled). */
  cached: boolean;
  ms: number;
  error?: string;
}

/** Messages between precompile() and its workers. */
export type WorkerRequest = { job: CompileJob; arch: string };
export type WorkerReply = { ok: true; cached: boolean; ms: number } | { ok: false; error: string; fatal?: boolean };

/** The kernel files (`*.cu` beside CudaContext's module), sorted. */
export function kernelFiles(): string[] {
  return readdirSync(kernelsDir()).filter((f) => f.endsWith('.cu')).sort();
}

/**
 * The compiles of `files` (default: every kernel file): one a kernel for files whose kernels are
 * declared by entry macros, one a file otherwise; whole files first (the longest compiles start first).
 */
export function compileJobs(files: readonly string[] = kernelFiles()): CompileJob[] {
  const known = new Set(kernelFiles());
  const whole: CompileJob[] = [];
  const entries: CompileJob[] = [];
  for (const file of new Set(files)) {
    if (!known.has(file)) throw new InputError('--kernels', `expected kernel files among ${[...known].join(', ')}, got '${file}'`);
    const names = kernelEntries(kernelSource(file));
    if (names.length === 0) whole.push({ file, name: null });
    else for (const name of names) entries.push({ file, name });
  }
  return [...whole, ...entries];
}

export function jobLabel(job: CompileJob): string {
  return job.name === null ? job.file : `${job.file}#${job.name}`;
}

const WORKER = join(dirname(fileURLToPath(import.meta.url)), 'precompile-worker.js');

/** The lines of a dead worker's stderr worth quoting: its error lines, else its last lines. */
function deathNote(stderr: string): string {
  const lines = stderr.split('\n').map((l) => l.trim()).filter((l) => l.length > 0);
  const errors = lines.filter((l) => /error|fatal|abort|memory/i.test(l) && !/^at /.test(l));
  return (errors.length > 0 ? errors.slice(0, 3) : lines.slice(-3)).join(' | ');
}

/**
 * Runs `jobs` (compileJobs) for `arch` on `workers` processes (default: the CPUs, at most one a
 * job). Resolves with every job's outcome, failed compiles included (their `error` says why; a
 * worker that dies, the OOM killer's way, fails its job and is replaced); rejects when NVRTC
 * cannot be loaded (or RINGATTN_NVRTC_DEFINES is malformed: an InputError, before any worker
 * starts). `onDone` follows the progress.
 */
export async function precompile(o: {
  arch: string;
  jobs?: CompileJob[];
  workers?: number;
  onDone?: (done: number, total: number, outcome: CompileOutcome) => void;
}): Promise<{ outcomes: CompileOutcome[]; workers: number; seconds: number }> {
  nvrtcDefines();  // every worker would fail every job on a malformed RINGATTN_NVRTC_DEFINES: say it once
  const jobs = o.jobs ?? compileJobs();
  const asked = o.workers === undefined ? os.availableParallelism() : Math.floor(o.workers);
  if (!(asked >= 1)) throw new InputError('workers', `expected a positive integer, got ${o.workers}`);
  const workers = Math.min(asked, jobs.length);
  const t0 = performance.now();
  const outcomes: CompileOutcome[] = [];
  if (jobs.length === 0) return { outcomes, workers: 0, seconds: 0 };
  let next = 0;
  const children: ChildProcess[] = [];
  try {
    await new Promise<void>((resolve, reject) => {
      let live = 0;
      let failed = false;
      const fail = (e: Error) => {
        if (failed) return;
        failed = true;
        reject(e);
      };
      const record = (outcome: CompileOutcome) => {
        outcomes.push(outcome);
        o.onDone?.(outcomes.length, jobs.length, outcome);
      };
      const start = () => {
        const child = fork(WORKER, [], { stdio: ['ignore', 'ignore', 'pipe', 'ipc'], serialization: 'json' });
        children.push(child);
        live++;
        let current: CompileJob | null = null;
        let stderr = '';
        child.stderr?.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-4000)));
        const give = () => {
          if (failed || next >= jobs.length) {
            current = null;
            child.disconnect();
            return;
          }
          current = jobs[next++];
          const msg: WorkerRequest = { job: current, arch: o.arch };
          child.send(msg);
        };
        child.on('message', (m: WorkerReply) => {
          if (!current) return;
          if (!m.ok && m.fatal) return fail(new BackendError(m.error));
          record(m.ok ? { job: current, cached: m.cached, ms: m.ms } : { job: current, cached: false, ms: 0, error: m.error });
          give();
        });
        child.on('error', (e) => fail(new BackendError(`a compile worker failed to start: ${e.message}`)));
        // The exit and the end of its stderr, so that a death's note has all of it (the child's own
        // 'close' event does not come with an IPC channel here, Node 20).
        Promise.all([once(child, 'exit'), child.stderr && once(child.stderr, 'close')]).then(([[code, signal]]) => {
          live--;
          if (current && !failed) {
            const what = signal ? `signal ${signal}` : `exit code ${code}`;
            const note = deathNote(stderr);
            record({ job: current, cached: false, ms: 0, error: `the compiler process died (${what})${note ? `: ${note}` : ''}` });
            current = null;
            if (next < jobs.length) start();  // its replacement takes the next job
          }
          if (live === 0 && !failed) resolve();
        }, fail);
        give();
      };
      for (let i = 0; i < workers; i++) start();
    });
  } finally {
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  }
  return { outcomes, workers, seconds: (performance.now() - t0) / 1000 };
}
