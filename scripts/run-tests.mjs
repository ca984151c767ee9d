// Runs every compiled test file under dist/tests with Node's test runner.
// Usage: node scripts/run-tests.mjs [filter]   (filter: substring of the test path)
//
// The nvcc check (dist/tests/cuda/nvcc.test.js: every kernel compiled by nvcc, ~2 minutes of two
// cores where nvcc is installed) runs in its own test process beside the others, at a lower CPU
// priority, instead of after them: on the 2-core CI machine the suite then takes about the longer
// of the two rather than their sum. Its report is printed when it ends; the exit status is
// non-zero when either process fails.
import { readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { spawn, spawnSync } from 'node:child_process';

const filter = process.argv[2] ?? '';
const files = [];
(function walk(dir) {
  for (const name of readdirSync(dir).sort()) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) walk(p);
    else if (name.endsWith('.test.js') && p.includes(filter)) files.push(p);
  }
})('dist/tests');

const apart = files.filter((f) => f.endsWith(join('cuda', 'nvcc.test.js')));
const rest = files.filter((f) => !apart.includes(f));
const testArgs = (list) => ['--test', '--test-reporter=spec', ...list];

function runApart() {
  if (apart.length === 0) return Promise.resolve({ code: 0, out: '' });
  const hasNice = spawnSync('nice', ['-n', '0', 'true']).status === 0;
  const [cmd, args] = hasNice ? ['nice', ['-n', '10', process.execPath, ...testArgs(apart)]] : [process.execPath, testArgs(apart)];
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (out += d));
    child.on('error', (e) => resolve({ code: 1, out: `${out}\ncould not start ${cmd}: ${e.message}\n` }));
    child.on('close', (code, signal) => resolve({ code: code ?? 1, out: signal ? `${out}\nended by ${signal}\n` : out }));
  });
}

function runRest() {
  if (rest.length === 0) return Promise.resolve(0);
  return new Promise((resolve) => {
    const child = spawn(process.execPath, testArgs(rest), { stdio: 'inherit' });
    child.on('error', () => resolve(1));
    child.on('close', (code) => resolve(code ?? 1));
  });
}

const [restCode, apartResult] = await Promise.all([runRest(), runApart()]);
if (apart.length > 0) {
  process.stdout.write(`\n# ${apart.join(' ')} (run beside the other tests)\n${apartResult.out}`);
}
process.exit(restCode !== 0 ? restCode : apartResult.code);
