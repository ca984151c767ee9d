import { Worker, type WorkerOptions } from 'node:worker_threads';

/**
 * A worker thread running a module file. By default a worker takes the parent's Node.js options,
 * but Node refuses to start a module worker under --input-type (a program run by
 * `node --input-type=module -e`): then the worker is given the parent's options less that one.
 * Given explicitly, options are checked one by one and process-wide ones (--max-old-space-size,
 * --expose-gc, ...) are refused: those the refusal names are left out too.
 */
export function startWorker(url: URL, options: WorkerOptions = {}): Worker {
  const argv = process.execArgv;
  if (!argv.some((a) => a === '--input-type' || a.startsWith('--input-type='))) return new Worker(url, options);
  let execArgv: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--input-type') i++;
    else if (!argv[i].startsWith('--input-type=')) execArgv.push(argv[i]);
  }
  try {
    return new Worker(url, { ...options, execArgv });
  } catch (e) {
    const m = /invalid execArgv flags: (.*)$/.exec((e as Error).message);
    if ((e as { code?: string }).code !== 'ERR_WORKER_INVALID_EXEC_ARGV' || !m) throw e;
    const refused = new Set(m[1].split(', '));
    execArgv = execArgv.filter((a) => !refused.has(a));
    return new Worker(url, { ...options, execArgv });
  }
}
