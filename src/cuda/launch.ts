import { spawn, type ChildProcess } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { InputError } from '../core/errors.js';

/**
 * `ringattn launch --nproc N <command ...>`: N processes of one host with torchrun's variables
 * (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT), their output
 * forwarded line by line with a `[rank r]` prefix. The first rank to fail ends the job: the
 * others get `graceMs` to stop by themselves (the control channel tells them, control.ts), then
 * SIGTERM, then SIGKILL; the result names the failing rank and its last error line.
 *
 * Exit codes of ranks: 0 ok; EXIT_SECONDARY when a rank only stopped because another failed
 * (so that the launcher reports the rank that failed first, not a bystander).
 */

export const EXIT_SECONDARY = 3;

export interface LaunchOptions {
  nproc: number;
  /** The program and its arguments, e.g. [process.execPath, 'script.js']. */
  command: string[];
  env?: NodeJS.ProcessEnv;
  masterAddr?: string;
  /** Default: a free port. */
  masterPort?: number;
  /** Sinks for the prefixed output lines (default: this process's stdout and stderr). */
  stdout?: (line: string) => void;
  stderr?: (line: string) => void;
  /** After the first failure, how long the other ranks have to exit by themselves (ms, default 5000). */
  graceMs?: number;
}

export interface RankExit {
  rank: number;
  code: number | null;
  signal: NodeJS.Signals | null;
  /** ms since the launch. */
  at: number;
  /** Last lines the rank wrote to stderr. */
  tail: string[];
}

export interface LaunchResult {
  /** 0 when every rank succeeded, else the failing rank's exit code (1 if it died by a signal). */
  code: number;
  failedRank?: number;
  /** The failing rank's error (its last `ringattn:` line on stderr, or its last line). */
  message?: string;
  ranks: RankExit[];
}

/** A TCP port that was free a moment ago on `host`. */
export function freePort(host = '127.0.0.1'): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.on('error', reject);
    s.listen(0, host, () => {
      const a = s.address();
      const port = typeof a === 'object' && a ? a.port : 0;
      s.close(() => resolve(port));
    });
  });
}

function lines(stream: NodeJS.ReadableStream | null, each: (line: string) => void): Promise<void> {
  return new Promise((resolve) => {
    if (!stream) return resolve();
    let buf = '';
    stream.setEncoding('utf8');
    stream.on('data', (chunk: string) => {
      buf += chunk;
      for (let i = buf.indexOf('\n'); i >= 0; i = buf.indexOf('\n')) {
        each(buf.slice(0, i));
        buf = buf.slice(i + 1);
      }
    });
    stream.on('end', () => {
      if (buf) each(buf);
      resolve();
    });
    stream.on('error', () => resolve());
  });
}

/** The last `ringattn:` line a rank printed (its own report of its error), without the prefix. */
function reportedLine(tail: string[]): string | undefined {
  return [...tail].reverse().find((l) => /^ringattn: /.test(l.trim()))?.trim().replace(/^ringattn: /, '');
}

/**
 * The error line a failed rank left: its last `ringattn:` line; else, when it died of an uncaught
 * exception (Node prints the stack, then its own version as the last line), that exception's
 * `...Error: ...` line; else its last non-empty line (Node's version and hint lines skipped).
 */
export function errorLine(tail: string[]): string {
  const reported = reportedLine(tail);
  if (reported !== undefined) return reported;
  const back = [...tail].reverse().map((l) => l.trim());
  const nodeCrash = /^Node\.js v\d/.test(back.find((l) => l !== '') ?? '');
  const thrown = nodeCrash ? back.find((l) => /^[\w.$]*(Error|Exception)\b( \[[^\]]*\])?: /.test(l)) : undefined;
  return thrown ?? back.find((l) => l !== '' && !(nodeCrash && (/^Node\.js v\d/.test(l) || /^\(Use `node --trace/.test(l)))) ?? '';
}

/** Every process's children, from /proc's ppid fields (Linux; empty where /proc is absent). */
export function processChildren(): Map<number, number[]> {
  const kids = new Map<number, number[]>();
  let entries: string[];
  try {
    entries = readdirSync('/proc');
  } catch {
    return kids;
  }
  for (const e of entries) {
    if (!/^\d+$/.test(e)) continue;
    let stat: string;
    try {
      stat = readFileSync(`/proc/${e}/stat`, 'utf8');
    } catch {
      continue; // ended while we looked
    }
    // "pid (comm) state ppid ...": comm may hold spaces and parentheses, so read after the last ')'.
    const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
    const list = kids.get(ppid);
    if (list) list.push(Number(e));
    else kids.set(ppid, [Number(e)]);
  }
  return kids;
}

/** The pids of every descendant of `pid` in `kids` (processChildren). */
export function descendants(pid: number, kids: Map<number, number[]>): number[] {
  const out: number[] = [];
  const todo = [pid];
  while (todo.length) {
    for (const c of kids.get(todo.pop()!) ?? []) {
      out.push(c);
      todo.push(c);
    }
  }
  return out;
}

export async function launch(opts: LaunchOptions): Promise<LaunchResult> {
  const { nproc, command } = opts;
  if (!Number.isInteger(nproc) || nproc < 1) throw new InputError('--nproc', `expected a positive integer, got ${nproc}`);
  if (!command.length || !command[0]) throw new InputError('command', 'expected a command to run on every rank');
  const masterAddr = opts.masterAddr ?? '127.0.0.1';
  const masterPort = opts.masterPort ?? (await freePort(masterAddr));
  const out = opts.stdout ?? ((l: string) => process.stdout.write(l + '\n'));
  const err = opts.stderr ?? ((l: string) => process.stderr.write(l + '\n'));
  const graceMs = opts.graceMs ?? 5000;
  const t0 = Date.now();
  const children: ChildProcess[] = [];
  const exits: (RankExit | null)[] = Array.from({ length: nproc }, () => null);
  const tails: string[][] = Array.from({ length: nproc }, () => []);
  let failedAt = -1;
  const timers: NodeJS.Timeout[] = [];
  const signalled = new Set<number>(); // ranks this launcher sent a signal to
  // A rank's own children are signalled with it (found in /proc when it is signalled): a rank that
  // is a shell running its program as a child (`bash -c '...'`) ends with that child. Signalling
  // the shell alone left the child holding the rank's output open, and the launcher waited on it
  // (a review found a 1000 s hang). The ranks stay in the launcher's process group, so a signal
  // to the whole job (Ctrl-C, a SIGKILL from timeout) still reaches every one of them.
  const killAll = (sig: NodeJS.Signals) => {
    const kids = processChildren(); // one read of /proc for every rank
    children.forEach((c, r) => {
      // (a rank that has exited but whose output is still open, held by a child of its own, is not signalled)
      if (exits[r] || c.exitCode !== null || c.signalCode !== null || c.pid === undefined) return;
      const below = descendants(c.pid, kids);
      if (c.kill(sig)) signalled.add(r);
      for (const pid of below) {
        try {
          process.kill(pid, sig);
        } catch {
          // ended already
        }
      }
    });
  };
  const onSignal = (sig: NodeJS.Signals) => {
    killAll(sig);
    timers.push(setTimeout(() => killAll('SIGKILL'), 2000));
  };
  const onInt = () => onSignal('SIGINT');
  const onTerm = () => onSignal('SIGTERM');
  process.on('SIGINT', onInt);
  process.on('SIGTERM', onTerm);

  const done = new Promise<void>((resolve) => {
    let left = nproc;
    const exited = (r: number, code: number | null, signal: NodeJS.Signals | null) => {
      if (exits[r]) return;
      exits[r] = { rank: r, code, signal, at: Date.now() - t0, tail: tails[r] };
      if ((code !== 0 || signal) && failedAt < 0) {
        failedAt = Date.now();
        timers.push(setTimeout(() => killAll('SIGTERM'), graceMs));
        timers.push(setTimeout(() => killAll('SIGKILL'), graceMs + 2000));
      }
      if (--left === 0) resolve();
    };
    for (let r = 0; r < nproc; r++) {
      const env = {
        ...(opts.env ?? process.env),
        RANK: String(r), WORLD_SIZE: String(nproc), LOCAL_RANK: String(r), LOCAL_WORLD_SIZE: String(nproc),
        MASTER_ADDR: masterAddr, MASTER_PORT: String(masterPort),
      };
      const child = spawn(command[0], command.slice(1), { env, stdio: ['ignore', 'pipe', 'pipe'] });
      children.push(child);
      const prefix = `[rank ${r}] `;
      const streams = Promise.all([
        lines(child.stdout, (l) => out(prefix + l)),
        lines(child.stderr, (l) => {
          tails[r].push(l);
          if (tails[r].length > 40) tails[r].shift();
          err(prefix + l);
        }),
      ]);
      child.on('error', (e) => {
        tails[r].push(`ringattn: cannot start '${command[0]}': ${e.message}`);
        exited(r, 127, null);
      });
      // 'close' comes after the output streams ended: every line is forwarded first.
      child.on('close', (code, signal) => void streams.then(() => exited(r, code, signal)));
    }
  });
  try {
    await done;
  } finally {
    timers.forEach(clearTimeout);
    process.off('SIGINT', onInt);
    process.off('SIGTERM', onTerm);
  }
  const ranks = exits as RankExit[];
  const failed = ranks.filter((e) => e.code !== 0 || e.signal);
  if (!failed.length) return { code: 0, ranks };
  // The rank that failed first: not a bystander (EXIT_SECONDARY) and not one the launcher ended.
  // Failing that, the first that ended by itself: a program's own exit code 3 (the bystanders'
  // code, which a rank only gives after another's failure), not the rank we then terminated.
  const byTime = [...failed].sort((a, b) => a.at - b.at);
  const own = (e: RankExit) => !signalled.has(e.rank);
  const primary = byTime.find((e) => own(e) && e.code !== EXIT_SECONDARY) ?? byTime.find(own) ?? byTime.find((e) => e.code !== EXIT_SECONDARY) ?? byTime[0];
  const ownCode = own(primary) && primary.code !== null && primary.code !== 0;
  const why = primary.signal ? `killed by ${primary.signal}` : `exit code ${primary.code}`;
  // A rank killed by a signal says nothing of it: its last line (progress, say) is only context.
  const last = errorLine(primary.tail);
  const message = primary.signal && reportedLine(primary.tail) === undefined ? (last ? `${why} (its last line: ${last})` : why) : last || why;
  return { code: ownCode ? (primary.code as number) : 1, failedRank: primary.rank, message, ranks };
}
