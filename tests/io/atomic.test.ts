import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { InputError } from '../../src/core/errors.js';
import { AtomicOutputs, checkOutputDir, checkOutputPath, readInputFile, writeFileAtomic } from '../../src/io/atomic.js';

function rejects(fn: () => unknown, ...fragments: string[]): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof InputError, `expected InputError, got ${String(err)}`);
    for (const f of fragments) assert.ok(err.message.includes(f), `message ${JSON.stringify(err.message)} lacks ${JSON.stringify(f)}`);
    return true;
  });
}

function withDir(fn: (dir: string) => void): void {
  const dir = mkdtempSync(join(tmpdir(), 'ringattn-atomic-'));
  try {
    fn(dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

test('writeFileAtomic: writes bytes and strings, replaces an old file, leaves no temp', () => {
  withDir((dir) => {
    const p = join(dir, 'out.bin');
    writeFileAtomic(p, Uint8Array.of(1, 2, 3));
    assert.deepEqual([...readFileSync(p)], [1, 2, 3]);
    writeFileAtomic(p, 'héllo\n');
    assert.equal(readFileSync(p, 'utf8'), 'héllo\n');
    writeFileAtomic(join(dir, 'empty'), new Uint8Array(0));
    assert.equal(readFileSync(join(dir, 'empty')).length, 0);
    assert.deepEqual(readdirSync(dir).sort(), ['empty', 'out.bin']);
    // a view into a larger buffer writes only the view
    const big = Uint8Array.of(9, 8, 7, 6);
    writeFileAtomic(p, big.subarray(1, 3));
    assert.deepEqual([...readFileSync(p)], [8, 7]);
  });
});

test('writeFileAtomic: bad destinations are InputErrors naming the arg; nothing is left', () => {
  withDir((dir) => {
    rejects(() => writeFileAtomic(join(dir, 'missing', 'o.npy'), 'x', '--out'), '--out', 'does not exist', 'expected an existing directory');
    writeFileSync(join(dir, 'file'), 'x');
    rejects(() => writeFileAtomic(join(dir, 'file', 'o.npy'), 'x', '--out'), '--out', 'is not a directory');
    mkdirSync(join(dir, 'sub'));
    rejects(() => writeFileAtomic(join(dir, 'sub'), 'x', '--out'), '--out', 'is a directory', 'expected a file path');
    rejects(() => checkOutputPath(join(dir, 'missing', 'x')), join(dir, 'missing', 'x'), 'does not exist');
    rejects(() => checkOutputPath('', '--report'), '--report', 'non-empty');
    // A link to a device (as /dev/stdout is) would be replaced by the rename, and nothing sent through it.
    symlinkSync('/dev/null', join(dir, 'devlink'));
    rejects(() => writeFileAtomic(join(dir, 'devlink'), 'x', '--out'), '--out', 'not a regular file');
    rmSync(join(dir, 'devlink'));
    assert.deepEqual(readdirSync(dir).sort(), ['file', 'sub']);
    assert.deepEqual(readdirSync(join(dir, 'sub')), []);
  });
});

test('readInputFile: reads files; missing files and directories are InputErrors', () => {
  withDir((dir) => {
    writeFileSync(join(dir, 'a'), Uint8Array.of(5, 6));
    assert.deepEqual([...readInputFile(join(dir, 'a'))], [5, 6]);
    rejects(() => readInputFile(join(dir, 'b'), '--q'), '--q', 'no such file', 'expected an existing file to read');
    rejects(() => readInputFile(dir, '--q'), '--q', 'is a directory', 'expected a file');
  });
});

test('readInputFile: a pipe is read to its end (its size reads 0)', () => {
  const bytes = Buffer.alloc(300_000, 7);
  bytes[0] = 1;
  bytes[bytes.length - 1] = 9;
  const script = `import { readInputFile } from ${JSON.stringify(new URL('../../src/io/atomic.js', import.meta.url).href)};
    const b = readInputFile('/dev/stdin', '--q'); process.stdout.write(b.length + ' ' + b[0] + ' ' + b[b.length - 1]);\n`;
  const dir = mkdtempSync(join(tmpdir(), 'ringattn-pipe-'));
  writeFileSync(join(dir, 'in.bin'), bytes);
  writeFileSync(join(dir, 'read.mjs'), script);
  // cat | node: stdin is a pipe (spawnSync's own input would be a socket, which /dev/stdin cannot open)
  const r = spawnSync('bash', ['-c', 'cat "$1" | "$2" "$3"', 'sh', join(dir, 'in.bin'), process.execPath, join(dir, 'read.mjs')], { encoding: 'utf8' });
  rmSync(dir, { recursive: true, force: true });
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout, '300000 1 9');
});

test('AtomicOutputs: nothing appears before commit, everything after', () => {
  withDir((dir) => {
    const out = new AtomicOutputs();
    out.stage(join(dir, 'a.npy'), 'A');
    out.stage(join(dir, 'b.npy'), Uint8Array.of(66));
    assert.deepEqual(out.paths, [join(dir, 'a.npy'), join(dir, 'b.npy')]);
    assert.ok(!existsSync(join(dir, 'a.npy')) && !existsSync(join(dir, 'b.npy')));
    assert.equal(readdirSync(dir).length, 2, 'two temps while staged');
    assert.ok(readdirSync(dir).every((n) => n.startsWith('.') && n.endsWith('.tmp')), 'temps are hidden .tmp files');
    out.commit();
    assert.deepEqual(readdirSync(dir).sort(), ['a.npy', 'b.npy']);
    assert.equal(readFileSync(join(dir, 'a.npy'), 'utf8'), 'A');
    assert.equal(readFileSync(join(dir, 'b.npy'), 'utf8'), 'B');
    out.abort(); // harmless after commit
    assert.deepEqual(readdirSync(dir).sort(), ['a.npy', 'b.npy']);
    assert.throws(() => out.stage(join(dir, 'c'), 'C'), /after commit/);
  });
});

test('AtomicOutputs: abort removes every temp and leaves old files untouched', () => {
  withDir((dir) => {
    writeFileSync(join(dir, 'a.npy'), 'old');
    const out = new AtomicOutputs();
    out.stage(join(dir, 'a.npy'), 'new');
    out.stage(join(dir, 'b.npy'), 'B');
    out.abort();
    out.abort();
    assert.deepEqual(readdirSync(dir), ['a.npy']);
    assert.equal(readFileSync(join(dir, 'a.npy'), 'utf8'), 'old');
    assert.throws(() => out.commit(), /after abort/);
  });
});

test('AtomicOutputs: a failing stage aborts what was staged before it', () => {
  withDir((dir) => {
    const out = new AtomicOutputs();
    out.stage(join(dir, 'a.npy'), 'A', '--out');
    rejects(() => out.stage(join(dir, 'nodir', 'b.npy'), 'B', '--lse-out'), '--lse-out', 'does not exist');
    assert.deepEqual(readdirSync(dir), [], 'first temp removed too');
    assert.throws(() => out.commit(), /after abort/);

    const dup = new AtomicOutputs();
    dup.stage(join(dir, 'x'), '1', '--out');
    rejects(() => dup.stage(join(dir, '.', 'x'), '2', '--lse-out'), '--lse-out', 'also the output of --out', 'expected distinct output paths');
    assert.deepEqual(readdirSync(dir), []);
  });
});

test('AtomicOutputs: a commit whose destination turned bad renames nothing and cleans up', () => {
  withDir((dir) => {
    const out = new AtomicOutputs();
    out.stage(join(dir, 'a'), 'A');
    out.stage(join(dir, 'b'), 'B', '--b');
    mkdirSync(join(dir, 'b')); // the destination became a directory after staging
    rejects(() => out.commit(), '--b', 'is a directory');
    assert.deepEqual(readdirSync(dir), ['b']);
    assert.deepEqual(readdirSync(join(dir, 'b')), []);
  });
});

/** A child process that stages `files` (each holding its name) in `dir`, then runs `then`. */
function stageInChild(dir: string, files: string[], then: string): ReturnType<typeof spawnSync> {
  const mod = new URL('../../src/io/atomic.js', import.meta.url).href;
  const code = `
    const { AtomicOutputs } = await import(${JSON.stringify(mod)});
    const out = new AtomicOutputs();
    for (const f of ${JSON.stringify(files)}) out.stage(${JSON.stringify(dir)} + '/' + f, f);
    ${then}`;
  return spawnSync(process.execPath, ['--input-type=module', '-e', code], { encoding: 'utf8', timeout: 20_000 });
}

test('AtomicOutputs: temps still staged when the process exits are removed', () => {
  withDir((dir) => {
    const r = stageInChild(dir, ['a', 'b'], 'process.exit(3);');
    assert.equal(r.status, 3, String(r.stderr));
    assert.deepEqual(readdirSync(dir), []);
  });
});

test('AtomicOutputs: temps staged when SIGINT, SIGTERM or SIGHUP arrives are removed, and the process still ends by that signal', () => {
  // Those signals end a process without its 'exit' event: an interrupted CLI run left a partial temp file.
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    withDir((dir) => {
      const r = stageInChild(dir, ['a'], `process.kill(process.pid, '${sig}'); setTimeout(() => process.exit(7), 5000);`);
      assert.equal(r.signal, sig, `${sig}: status ${r.status}, signal ${r.signal}\n${String(r.stderr)}`);
      assert.deepEqual(readdirSync(dir), [], sig);
    });
  }
});

test('AtomicOutputs: where the program listens to the signal too, the temps go and the program decides (its listener runs once, the process is not ended for it)', () => {
  withDir((dir) => {
    const then = `let n = 0;
      process.on('SIGTERM', () => { n++; setTimeout(() => { console.log('calls ' + n); process.exit(5); }, 300); });
      process.kill(process.pid, 'SIGTERM');
      setTimeout(() => process.exit(7), 5000);`;
    const r = stageInChild(dir, ['a'], then);
    assert.equal(r.status, 5, String(r.stderr));
    assert.equal(String(r.stdout).trim(), 'calls 1');
    assert.deepEqual(readdirSync(dir), []);
  });
});

test('checkOutputPath: a directory that refuses new files is named before any work (probed)', { skip: process.getuid?.() === 0 && !existsSync('/sys') ? 'running as root without /sys: no directory here refuses new files' : false }, () => {
  // /sys refuses new files even to root; elsewhere a directory without write permission does.
  const target = process.getuid?.() === 0 ? '/sys/ringattn-probe.html' : '/ringattn-probe.html';
  rejects(() => checkOutputPath(target, '--report'), '--report');
  assert.ok(!existsSync(target));
});

test('checkOutputDir: absent (made later) or a directory passes; a file, or a file on the way, is named up front; nothing is left', () => {
  withDir((dir) => {
    checkOutputDir(join(dir, 'new', 'deeper'), '--checkpoint');
    checkOutputDir(dir, '--checkpoint');
    writeFileSync(join(dir, 'file'), 'x');
    rejects(() => checkOutputDir(join(dir, 'file'), '--checkpoint'), '--checkpoint', 'is a file; expected a directory');
    rejects(() => checkOutputDir(join(dir, 'file', 'ck'), '--checkpoint'), '--checkpoint', 'a parent of this path is not a directory');
    rejects(() => checkOutputDir('', '--checkpoint'), '--checkpoint', 'non-empty');
    symlinkSync(join(dir, 'nowhere'), join(dir, 'dangling'));
    rejects(() => checkOutputDir(join(dir, 'dangling'), '--checkpoint'), '--checkpoint', 'a link to nothing');
    rmSync(join(dir, 'dangling'));
    assert.deepEqual(readdirSync(dir), ['file']);
  });
});
