/**
 * File plumbing for the io layer: atomic writes (temp file in the same directory, fsync,
 * rename) so that a reader never sees half a file and a CLI that fails half way leaves no
 * output behind, plus a reader that turns file-system errors into `InputError`s naming the
 * argument the path came from.
 */
import {
  closeSync,
  constants as fsConstants,
  existsSync,
  fstatSync,
  fsyncSync,
  lstatSync,
  openSync,
  readSync,
  renameSync,
  statSync,
  unlinkSync,
  writeSync,
} from 'node:fs';
import { constants as bufferConstants } from 'node:buffer';
import { randomBytes } from 'node:crypto';
import { basename, dirname, join, resolve } from 'node:path';
import { InputError } from '../core/errors.js';

const utf8 = new TextEncoder();

function errCode(err: unknown): string | undefined {
  return typeof err === 'object' && err !== null && 'code' in err ? String((err as { code: unknown }).code) : undefined;
}

/** Translate the file-system errors a user can cause into InputErrors; anything else is rethrown. */
function asInputError(err: unknown, arg: string, path: string, doing: string): unknown {
  switch (errCode(err)) {
    case 'ENOENT':
      return new InputError(arg, `${path}: no such file; expected an existing file to ${doing}`);
    case 'EISDIR':
      return new InputError(arg, `${path} is a directory; expected a file to ${doing}`);
    case 'ENOTDIR':
      return new InputError(arg, `${path}: a parent of this path is not a directory`);
    case 'EACCES':
    case 'EPERM':
      return new InputError(arg, `${path}: permission denied; expected a file we may ${doing}`);
    case 'EROFS':
      return new InputError(arg, `${path}: read-only file system; expected a writable location`);
    default:
      return err;
  }
}

/** Everything a pipe or device gives until its end, in growing chunks (no size known ahead). */
function readStream(fd: number, path: string, arg: string): Uint8Array {
  const parts: Uint8Array[] = [];
  let total = 0;
  for (let size = 1 << 16; ; size = Math.min(size * 2, 1 << 26)) {
    const buf = new Uint8Array(size);
    let n: number;
    try {
      n = readSync(fd, buf, 0, size, null);
    } catch (err) {
      if (errCode(err) === 'EAGAIN') continue; // a non-blocking stdin with nothing yet
      throw err;
    }
    if (n === 0) break;
    total += n;
    if (total > bufferConstants.MAX_LENGTH) throw new InputError(arg, `${path} gave more than ${bufferConstants.MAX_LENGTH} bytes; expected at most one buffer`);
    parts.push(buf.subarray(0, n));
  }
  const out = new Uint8Array(total);
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}

/**
 * Read a whole file into memory. Reads in chunks so files above the 2 GiB limit of
 * `readFileSync` (model shards) still load, up to the largest buffer Node allows.
 */
export function readInputFile(path: string, arg: string = path): Uint8Array {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch (err) {
    throw asInputError(err, arg, path, 'read');
  }
  try {
    const st = fstatSync(fd);
    if (st.isDirectory()) throw new InputError(arg, `${path} is a directory; expected a file to read`);
    if (!st.isFile()) return readStream(fd, path, arg); // a pipe (<(...), /dev/stdin): its size reads 0
    if (st.size > bufferConstants.MAX_LENGTH) {
      throw new InputError(arg, `${path} is ${st.size} bytes; expected at most ${bufferConstants.MAX_LENGTH} bytes (one buffer)`);
    }
    const out = new Uint8Array(st.size);
    let off = 0;
    const chunk = 1 << 30;
    while (off < out.length) {
      const n = readSync(fd, out, off, Math.min(chunk, out.length - off), off);
      if (n === 0) break; // file shrank under us; callers validate lengths
      off += n;
    }
    return off === out.length ? out : out.subarray(0, off);
  } catch (err) {
    throw asInputError(err, arg, path, 'read');
  } finally {
    closeSync(fd);
  }
}

/**
 * Throw an InputError naming `arg` unless `path` can be an output file: its directory must
 * exist, be a directory and take a new file (probed, so that a long run does not end in EACCES),
 * and the path itself must be absent or a regular file. A pipe, a device or a link to one
 * (/dev/stdout) is refused: the output goes to a temp file renamed over the path, which would
 * replace the pipe or link and send nothing through it.
 */
export function checkOutputPath(path: string, arg: string = path): void {
  if (typeof path !== 'string' || path === '') throw new InputError(arg, 'expected a non-empty file path');
  const dir = dirname(resolve(path));
  let st;
  try {
    st = statSync(dir);
  } catch (err) {
    if (errCode(err) === 'ENOENT') {
      throw new InputError(arg, `directory ${dir} does not exist; expected an existing directory for the output file`);
    }
    throw asInputError(err, arg, dir, 'write into');
  }
  if (!st.isDirectory()) throw new InputError(arg, `${dir} is not a directory; expected an existing directory for the output file`);
  try {
    const target = statSync(path);
    if (target.isDirectory()) throw new InputError(arg, `${path} is a directory; expected a file path to write`);
    if (!target.isFile()) throw new InputError(arg, `${path} is not a regular file (a pipe, device or link to one); expected a file path (outputs are written to a temp file, then renamed over it)`);
  } catch (err) {
    if (err instanceof InputError) throw err;
    if (errCode(err) !== 'ENOENT') throw asInputError(err, arg, path, 'write');
  }
  const probe = tempPathFor(path);
  try {
    closeSync(openSync(probe, fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_EXCL, 0o666));
  } catch (err) {
    throw asInputError(err, arg, dir, 'write into');
  }
  removeQuietly(probe);
}

/**
 * Throw an InputError naming `arg` unless `dir` can be an output directory, made if missing: the
 * path must be a directory or absent, and its nearest existing ancestor a directory that takes
 * new files (checked before the work that ends in writing there, not after it).
 */
export function checkOutputDir(dir: string, arg: string = dir): void {
  if (typeof dir !== 'string' || dir === '') throw new InputError(arg, 'expected a non-empty directory path');
  let link = false;
  try {
    link = lstatSync(dir).isSymbolicLink();
  } catch {
    // absent: made later
  }
  if (link && !existsSync(dir)) throw new InputError(arg, `${dir} is a link to nothing; expected a directory (made if missing) or a link to one`);
  let p = resolve(dir);
  for (;;) {
    let st;
    try {
      st = statSync(p);
    } catch (err) {
      const code = errCode(err);
      if (code !== 'ENOENT' && code !== 'ENOTDIR') throw asInputError(err, arg, p, 'write into');
      if (code === 'ENOTDIR' || dirname(p) === p) throw new InputError(arg, `${dir}: a parent of this path is not a directory`);
      p = dirname(p);
      continue;
    }
    if (!st.isDirectory()) throw new InputError(arg, p === resolve(dir) ? `${dir} is a file; expected a directory (made if missing)` : `${dir}: ${p} is a file; expected a directory (made if missing)`);
    checkOutputPath(join(p, '.ringattn-probe'), arg);
    return;
  }
}

/**
 * Throw an InputError naming the output flag whose path is the file of one of `inputs` (the same
 * path, or another name for the same file): writing it would replace an input. Entries whose path
 * is undefined are skipped.
 */
export function checkOutputsNotInputs(outputs: readonly (readonly [string, string | undefined])[], inputs: readonly (readonly [string, string | undefined])[]): void {
  const id = (p: string): string => {
    try {
      const st = statSync(p);
      return `${st.dev}:${st.ino}`;
    } catch {
      return resolve(p);
    }
  };
  const ins = inputs.filter((e): e is readonly [string, string] => e[1] !== undefined).map(([flag, p]) => [flag, id(p)] as const);
  for (const [flag, p] of outputs) {
    if (p === undefined) continue;
    const hit = ins.find(([, i]) => i === id(p));
    if (hit) throw new InputError(flag, `${p} is the ${hit[0]} input; expected a different file (writing it would replace the input)`);
  }
}

/**
 * Temp files not yet renamed or removed; removed on process exit so failures leave no junk, and on
 * SIGINT, SIGTERM and SIGHUP (which end a process without its 'exit' event: an interrupted run
 * left a partial temp file). The handler removes them. If it is the signal's only listener it
 * then raises the signal again with itself gone, so the process ends as the signal says; where
 * the program listens too, what the signal does is the program's to decide (raised again, the
 * program's listener would run twice).
 */
const liveTemps = new Set<string>();
let exitHookInstalled = false;
const SIGNALS = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;

function onSignal(sig: NodeJS.Signals): void {
  for (const t of [...liveTemps]) removeQuietly(t);
  if (process.listenerCount(sig) > 1) return;
  for (const s of SIGNALS) process.removeListener(s, onSignal);
  process.kill(process.pid, sig);
}

function trackTemp(p: string): void {
  liveTemps.add(p);
  if (!exitHookInstalled) {
    exitHookInstalled = true;
    process.on('exit', () => {
      for (const t of liveTemps) removeQuietly(t);
    });
    for (const s of SIGNALS) process.on(s, onSignal);
  }
}

function removeQuietly(p: string): void {
  liveTemps.delete(p);
  try {
    unlinkSync(p);
  } catch {
    // already gone (or never created): nothing to clean
  }
}

function tempPathFor(path: string): string {
  const abs = resolve(path);
  return join(dirname(abs), `.${basename(abs)}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`);
}

function toBytes(data: Uint8Array | string): Uint8Array {
  return typeof data === 'string' ? utf8.encode(data) : data;
}

/** Write `data` to a fresh temp file beside `path` and fsync it; returns the temp path. */
function writeTemp(path: string, data: Uint8Array | string, arg: string): string {
  checkOutputPath(path, arg);
  const bytes = toBytes(data);
  const tmp = tempPathFor(path);
  let fd: number | undefined;
  try {
    fd = openSync(tmp, fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_EXCL, 0o666);
    trackTemp(tmp);
    let off = 0;
    while (off < bytes.length) off += writeSync(fd, bytes, off, Math.min(bytes.length - off, 1 << 30));
    fsyncSync(fd);
    closeSync(fd);
    fd = undefined;
    return tmp;
  } catch (err) {
    if (fd !== undefined) {
      try {
        closeSync(fd);
      } catch {
        // the write error is the one to report
      }
    }
    removeQuietly(tmp);
    throw asInputError(err, arg, path, 'write');
  }
}

/** Make the renames durable; some file systems refuse fsync on a directory, which is fine. */
function syncDir(dir: string): void {
  try {
    const fd = openSync(dir, 'r');
    try {
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
  } catch {
    // best effort
  }
}

function commitTemp(tmp: string, path: string, arg: string): void {
  try {
    renameSync(tmp, path);
    liveTemps.delete(tmp);
  } catch (err) {
    removeQuietly(tmp);
    throw asInputError(err, arg, path, 'write');
  }
}

/**
 * Write `data` to `path` atomically: readers see the old file or the whole new one, never a
 * part. On any error the temp file is removed and `path` is untouched.
 */
export function writeFileAtomic(path: string, data: Uint8Array | string, arg: string = path): void {
  const tmp = writeTemp(path, data, arg);
  commitTemp(tmp, path, arg);
  syncDir(dirname(resolve(path)));
}

interface Staged {
  tmp: string;
  path: string;
  arg: string;
}

/**
 * Several output files that appear together or not at all (as far as a file system allows):
 *
 *   const out = new AtomicOutputs();
 *   try { out.stage(a, bytesA); out.stage(b, bytesB); out.commit(); }
 *   catch (e) { out.abort(); throw e; }
 *
 * `stage` writes and fsyncs a temp file beside the destination; `commit` renames them all;
 * `abort` removes every temp. A failing `stage` aborts everything staged so far. Temps still
 * staged when the process exits are removed.
 */
export class AtomicOutputs {
  private staged: Staged[] = [];
  private state: 'open' | 'committed' | 'aborted' = 'open';

  /** Destination paths staged so far. */
  get paths(): string[] {
    return this.staged.map((s) => s.path);
  }

  stage(path: string, data: Uint8Array | string, arg: string = path): void {
    if (this.state !== 'open') throw new Error(`AtomicOutputs: stage() after ${this.state === 'committed' ? 'commit()' : 'abort()'}`);
    const abs = resolve(path);
    const other = this.staged.find((s) => resolve(s.path) === abs);
    if (other) {
      this.abort();
      throw new InputError(arg, `${path} is also the output of ${other.arg}; expected distinct output paths`);
    }
    let tmp: string;
    try {
      tmp = writeTemp(path, data, arg);
    } catch (err) {
      this.abort();
      throw err;
    }
    this.staged.push({ tmp, path, arg });
  }

  /**
   * Rename every temp onto its destination. Destinations are re-checked first so the usual
   * failures (directory vanished, destination became a directory) happen before any rename.
   */
  commit(): void {
    if (this.state !== 'open') throw new Error(`AtomicOutputs: commit() after ${this.state === 'committed' ? 'commit()' : 'abort()'}`);
    try {
      for (const s of this.staged) checkOutputPath(s.path, s.arg);
      for (let i = 0; i < this.staged.length; i++) {
        const s = this.staged[i];
        commitTemp(s.tmp, s.path, s.arg);
      }
    } catch (err) {
      this.abort();
      throw err;
    }
    this.state = 'committed';
    const dirs = new Set(this.staged.map((s) => dirname(resolve(s.path))));
    for (const d of dirs) syncDir(d);
    this.staged = [];
  }

  /** Remove every temp not yet committed. Safe to call more than once, and after commit(). */
  abort(): void {
    for (const s of this.staged) removeQuietly(s.tmp);
    this.staged = [];
    if (this.state === 'open') this.state = 'aborted';
  }
}
