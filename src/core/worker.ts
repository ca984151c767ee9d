/**
 * The parent's Node.js options for a worker, less --input-type: a worker runs a module file, and
 * Node refuses to start one under that option (a program run by `node --input-type=module -e`).
 */
export function workerExecArgv(): string[] {
  const out: string[] = [];
  const argv = process.execArgv;
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--input-type') i++;
    else if (!argv[i].startsWith('--input-type=')) out.push(argv[i]);
  }
  return out;
}
