import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { createConnection, type Socket } from 'node:net';
import { fileURLToPath } from 'node:url';
import { Control, rankEnv } from '../../src/cuda/control.js';
import { errorLine, freePort, launch, EXIT_SECONDARY } from '../../src/cuda/launch.js';
import { InputError } from '../../src/core/errors.js';

// No GPU needed: the launcher, torchrun's variables, the TCP rendezvous with a fake NCCL id and
// the failure path (tests/cuda/rdv-rank.ts is the rank program).

const rankJs = fileURLToPath(new URL('./rdv-rank.js', import.meta.url));
const cliJs = fileURLToPath(new URL('../../../bin/ringattn.js', import.meta.url));

function collect() {
  const out: string[] = [];
  const err: string[] = [];
  return { out, err, stdout: (l: string) => out.push(l), stderr: (l: string) => err.push(l) };
}

test('rankEnv reads torchrun variables and names the bad one', () => {
  assert.equal(rankEnv({}), null);
  assert.deepEqual(rankEnv({ RANK: '1', WORLD_SIZE: '2', LOCAL_RANK: '1', MASTER_ADDR: '10.0.0.1', MASTER_PORT: '29500' }), { rank: 1, world: 2, localRank: 1, masterAddr: '10.0.0.1', masterPort: 29500 });
  assert.equal(rankEnv({ RANK: '0', WORLD_SIZE: '1' })?.localRank, 0);
  assert.throws(() => rankEnv({ RANK: '2', WORLD_SIZE: '2', MASTER_ADDR: 'h', MASTER_PORT: '1' }), (e: unknown) => e instanceof InputError && /RANK: expected an integer in 0..1/.test(e.message));
  assert.throws(() => rankEnv({ RANK: '0', WORLD_SIZE: '2', MASTER_PORT: '1' }), /MASTER_ADDR/);
  assert.throws(() => rankEnv({ RANK: '0', WORLD_SIZE: '2', MASTER_ADDR: 'h', MASTER_PORT: 'x' }), /MASTER_PORT/);
  assert.throws(() => rankEnv({ RANK: 'one', WORLD_SIZE: '2' }), /RANK/);
});

test('errorLine picks the last ringattn: line, else an uncaught exception\'s line, never Node\'s version', () => {
  assert.equal(errorLine(['a', 'ringattn: rank 1: boom', 'at x', '']), 'rank 1: boom');
  assert.equal(errorLine(['plain failure', '']), 'plain failure');
  const uncaught = ['file:///tmp/x.mjs:1', "throw new Error('bad thing')", '^', '', 'Error: bad thing', '    at file:///tmp/x.mjs:1:7', '    at ModuleJob.run (node:internal/modules/esm/module_job:234:25)', '', 'Node.js v20.20.2'];
  assert.equal(errorLine(uncaught), 'Error: bad thing');
  assert.equal(errorLine(['TypeError [ERR_INVALID_ARG_TYPE]: The "path" argument must be of type string', '    at x', 'Node.js v22.1.0']), 'TypeError [ERR_INVALID_ARG_TYPE]: The "path" argument must be of type string');
  assert.equal(errorLine(['some output', '', 'Node.js v20.20.2']), 'some output');
  // An Error line from earlier output is not the failure when the rank did not die of an exception.
  assert.equal(errorLine(['Error: retrying in 1 s', 'gave up after 3 tries']), 'gave up after 3 tries');
  // throw 'a string': Node's hint line is skipped.
  assert.equal(errorLine(['        ^', 'a string', '(Use `node --trace-uncaught ...` to show where the exception was thrown)', '', 'Node.js v20.20.2']), 'a string');
});

// Two ranks of `node -e script` (rank 1 fails); the launch's verdict against what it should name.
const failureCases: { what: string; script: string; graceMs: number; code: number; message: string }[] = [
  {
    what: 'a rank dying of an uncaught exception is reported by its Error line',
    script: 'if (process.env.RANK === "1") throw new Error("bad thing"); setTimeout(() => {}, 60000);',
    graceMs: 300, code: 1, message: 'Error: bad thing',
  },
  {
    // Rank 1 fails (exit 1) leaving a child on its stderr for 2 s; rank 0 then stops as a bystander (exit 3).
    what: 'a rank that exited while a child of its own holds its output open is not counted as ended by the launcher',
    script: 'if (process.env.RANK === "1") { require("child_process").spawn("sleep", ["2"], { stdio: "inherit" }); console.error("ringattn: rank 1: first failure"); process.exit(1); } setTimeout(() => process.exit(3), 300);',
    graceMs: 600, code: 1, message: 'rank 1: first failure',
  },
  {
    what: 'a program\'s own exit code 3 (the bystanders\' code) names that rank and code, not the rank the launcher then ended',
    script: 'if (process.env.RANK === "1") { console.error("my own failure"); process.exit(3); } setTimeout(() => {}, 60000);',
    graceMs: 300, code: 3, message: 'my own failure',
  },
];
for (const k of failureCases) {
  test(`launch: ${k.what}`, async () => {
    const c = collect();
    const r = await launch({ nproc: 2, command: [process.execPath, '-e', k.script], stdout: c.stdout, stderr: c.stderr, graceMs: k.graceMs });
    assert.deepEqual({ failedRank: r.failedRank, code: r.code, message: r.message }, { failedRank: 1, code: k.code, message: k.message }, JSON.stringify(r));
  });
}

test('launch: 3 ranks rendezvous over TCP and share rank 0\'s id', async () => {
  const c = collect();
  const r = await launch({ nproc: 3, command: [process.execPath, rankJs, 'ok'], stdout: c.stdout, stderr: c.stderr });
  assert.equal(r.code, 0, c.err.join('\n'));
  const ids = c.out.filter((l) => / id /.test(` ${l}`));
  assert.equal(ids.length, 3, c.out.join('\n'));
  for (let rank = 0; rank < 3; rank++) {
    const line = c.out.find((l) => l.startsWith(`[rank ${rank}] id `));
    assert.ok(line, `rank ${rank} printed its id: ${c.out.join('\n')}`);
    assert.match(line!, new RegExp(`rank ${rank} of 3 local ${rank} master 127\\.0\\.0\\.1:\\d+`));
    assert.ok(line!.includes('id 030a11181f262d34'), line);
  }
});

test('launch: a failing rank ends every rank with its error, within seconds', async () => {
  const c = collect();
  const t0 = Date.now();
  const r = await launch({ nproc: 3, command: [process.execPath, rankJs, 'fail', '1'], stdout: c.stdout, stderr: c.stderr });
  const ms = Date.now() - t0;
  assert.equal(r.failedRank, 1, JSON.stringify(r));
  assert.equal(r.code, 1);
  assert.match(r.message ?? '', /boom from the test/);
  assert.ok(ms < 10000, `took ${ms} ms`);
  for (const rank of [0, 2]) {
    assert.equal(r.ranks[rank].code, EXIT_SECONDARY, JSON.stringify(r.ranks[rank]));
    assert.ok(c.err.some((l) => l.startsWith(`[rank ${rank}] ringattn: rank ${rank}: stopped because rank 1 failed: boom from the test`)), c.err.join('\n'));
  }
});

test('launch: the failing rank 0 reaches the others too', async () => {
  const c = collect();
  const r = await launch({ nproc: 2, command: [process.execPath, rankJs, 'fail', '0'], stdout: c.stdout, stderr: c.stderr });
  assert.equal(r.failedRank, 0, JSON.stringify(r));
  assert.match(r.message ?? '', /boom/);
  assert.equal(r.ranks[1].code, EXIT_SECONDARY);
});

test('launch: ranks stuck in a native call are ended by their watchdog', async () => {
  const c = collect();
  const t0 = Date.now();
  const r = await launch({ nproc: 3, command: [process.execPath, rankJs, 'spin', '2'], env: { ...process.env, RDV_GRACE: '1000' }, stdout: c.stdout, stderr: c.stderr, graceMs: 8000 });
  const ms = Date.now() - t0;
  assert.equal(r.failedRank, 2, JSON.stringify(r));
  assert.match(r.message ?? '', /boom/);
  assert.ok(ms < 8000, `took ${ms} ms (the watchdog should end ranks 0 and 1 after 1 s)`);
  assert.ok(c.err.some((l) => /\[rank 0\] ringattn: rank 0: stopped because rank 2 failed: boom from the test \(the rank did not stop/.test(l)), c.err.join('\n'));
});

test('launch: the launcher ends ranks that do not stop by themselves', async () => {
  const c = collect();
  const t0 = Date.now();
  const script = 'if (process.env.RANK === "1") { console.error("ringattn: rank 1: gave up"); process.exit(4); } setTimeout(() => {}, 60000);';
  const r = await launch({ nproc: 2, command: [process.execPath, '-e', script], stdout: c.stdout, stderr: c.stderr, graceMs: 300 });
  assert.equal(r.failedRank, 1);
  assert.equal(r.code, 4);
  assert.equal(r.message, 'rank 1: gave up');
  assert.equal(r.ranks[0].signal, 'SIGTERM');
  assert.ok(Date.now() - t0 < 5000);
});

test('launch: a rank that is a shell running its program as a child is ended with that child (its descendants are signalled with it), not waited for', { timeout: 30_000 }, async () => {
  const c = collect();
  const t0 = Date.now();
  // bash forks sleep (not the last command, so no exec): signalling bash alone left sleep holding the output.
  const script = 'if [ "$RANK" = 0 ]; then echo "ringattn: boom" >&2; exit 1; else sleep 1000; true; fi';
  const r = await launch({ nproc: 2, command: ['bash', '-c', script], stdout: c.stdout, stderr: c.stderr, graceMs: 300 });
  assert.equal(r.failedRank, 0, JSON.stringify(r));
  assert.equal(r.message, 'boom');
  assert.ok(Date.now() - t0 < 10_000, `took ${Date.now() - t0} ms`);
});

test('ringattn launch: bad --nproc, --master-port and --master-addr are one line each, exit 2 (the flag named) or 1 (an unknown host), no stack', () => {
  const run = (...args: string[]) => spawnSync(process.execPath, [cliJs, 'launch', ...args, '--', 'true'], { encoding: 'utf8', timeout: 60_000 });
  for (const [args, re] of [
    [['--nproc', '2000'], /^ringattn: --nproc: expected an integer in \[1, 1024\], got '2000'$/],
    [['--nproc', '1e20'], /^ringattn: --nproc: expected an integer in \[1, 1024\]/],
    [['--nproc', '1', '--master-port', '70000'], /^ringattn: --master-port: expected an integer in \[1, 65535\]/],
  ] as const) {
    const r = run(...args);
    assert.equal(r.status, 2, r.stderr);
    assert.match(r.stderr.trim(), re);
  }
  const host = run('--nproc', '1', '--master-addr', '999.1.1.1');
  assert.equal(host.status, 1, host.stderr);
  assert.equal(host.stderr.trim().split('\n').length, 1, host.stderr);
  assert.match(host.stderr, /^ringattn: .*999\.1\.1\.1/);
});

test('launch: a rank killed by a signal is reported as killed, its last line as context', async () => {
  const c = collect();
  const script = 'if (process.env.RANK === "1") { console.error("loading shard 1 of 1"); setTimeout(() => process.kill(process.pid, "SIGKILL"), 50); setInterval(() => {}, 1000); }';
  const r = await launch({ nproc: 2, command: [process.execPath, '-e', script], stdout: c.stdout, stderr: c.stderr, graceMs: 300 });
  assert.equal(r.failedRank, 1, JSON.stringify(r));
  assert.equal(r.message, 'killed by SIGKILL (its last line: loading shard 1 of 1)');
});

test('rendezvous: a missing rank or rank 0 times out with a clear error', async () => {
  const port = await freePort();
  const run = (rank: number) =>
    new Promise<{ code: number | null; err: string }>((resolve) => {
      const p = spawn(process.execPath, [rankJs, 'ok'], { env: { ...process.env, RANK: String(rank), WORLD_SIZE: '2', MASTER_ADDR: '127.0.0.1', MASTER_PORT: String(port), RDV_TIMEOUT: '700' } });
      let err = '';
      p.stderr.on('data', (d) => (err += d));
      p.on('close', (code) => resolve({ code, err }));
    });
  const r0 = await run(0);
  assert.equal(r0.code, 1);
  assert.match(r0.err, /rendezvous timed out after 700 ms: rank\(s\) 1 did not connect to 127\.0\.0\.1:\d+/);
  const r1 = await run(1);
  assert.equal(r1.code, 1);
  assert.match(r1.err, /rendezvous timed out after 700 ms: no id from rank 0 at 127\.0\.0\.1:\d+/);
});

test('launch: a command that cannot start is an error of its rank', async () => {
  const c = collect();
  const r = await launch({ nproc: 2, command: ['/nonexistent/ringattn-test-binary'], stdout: c.stdout, stderr: c.stderr, graceMs: 100 });
  assert.notEqual(r.code, 0);
  assert.match(r.message ?? '', /cannot start|ENOENT/);
});

test('ringattn launch: the CLI forwards output and exits non-zero with the failing rank', async () => {
  const script = 'console.log("hello from", process.env.RANK, process.env.WORLD_SIZE); if (process.env.RANK === "1") { console.error("ringattn: rank 1: broken"); process.exit(1); }';
  const res = await new Promise<{ code: number | null; out: string; err: string }>((resolve) => {
    const p = spawn(process.execPath, [cliJs, 'launch', '--nproc', '2', '--', process.execPath, '-e', script]);
    let out = '', err = '';
    p.stdout.on('data', (d) => (out += d));
    p.stderr.on('data', (d) => (err += d));
    p.on('close', (code) => resolve({ code, out, err }));
  });
  assert.equal(res.code, 1, res.err);
  assert.match(res.out, /\[rank 0\] hello from 0 2/);
  assert.match(res.out, /\[rank 1\] hello from 1 2/);
  assert.match(res.err, /ringattn: launch: rank 1 failed .*: broken/);
  assert.throws(() => { throw new InputError('x', 'y'); });
});

const stuckJs = fileURLToPath(new URL('./stuck-rank.js', import.meta.url));

/** Starts `world` ranks of stuck-rank.js by hand (no launcher to end them); per rank: exit code, ms from its "in allGatherF64" line to its exit, stderr. */
async function stuckRanks(mode: string, world: number, extra: NodeJS.ProcessEnv = {}) {
  const port = await freePort();
  return Promise.all(
    Array.from({ length: world }, (_, rank) =>
      new Promise<{ rank: number; code: number | null; signal: string | null; afterWait: number; err: string }>((resolve) => {
        const p = spawn(process.execPath, [stuckJs, mode], {
          env: { ...process.env, ...extra, RANK: String(rank), WORLD_SIZE: String(world), MASTER_ADDR: '127.0.0.1', MASTER_PORT: String(port) },
          stdio: ['ignore', 'ignore', 'pipe'],
        });
        let err = '';
        let waitAt = NaN;
        p.stderr.on('data', (d) => {
          err += d;
          if (Number.isNaN(waitAt) && err.includes('in allGatherF64')) waitAt = Date.now();
        });
        const kill = setTimeout(() => p.kill('SIGKILL'), 30_000);
        p.on('close', (code, signal) => {
          clearTimeout(kill);
          resolve({ rank, code, signal, afterWait: Date.now() - waitAt, err });
        });
      }),
    ),
  );
}

test('a rank killed while the others are in a collective: they abort NCCL and end at once, though a free would block behind the collective', async () => {
  const ranks = await stuckRanks('peer-dies', 3);
  assert.equal(ranks[1].signal, 'SIGKILL');
  for (const r of [ranks[0], ranks[2]]) {
    assert.equal(r.code, EXIT_SECONDARY, `rank ${r.rank}: ${r.err}`);
    assert.match(r.err, new RegExp(`ringattn: rank ${r.rank}: stopped because rank 1 `), r.err);
    assert.match(r.err, /ncclCommAbort/, r.err);
    assert.doesNotMatch(r.err, /cuMemFree_v2 blocks|did not stop within/, r.err);
    assert.ok(r.afterWait < 3000, `rank ${r.rank} ended ${r.afterWait} ms after entering the collective:\n${r.err}`);
  }
});

test('a rank that ends normally without a collective the others wait in: they end within the grace, naming it, not at RINGATTN_GPU_TIMEOUT', async () => {
  const grace = 1000;
  const ranks = await stuckRanks('peer-leaves', 3, { STUCK_LEFT_GRACE_MS: String(grace) });
  assert.equal(ranks[1].code, 0, `rank 1 ends normally:\n${ranks[1].err}`);
  for (const r of [ranks[0], ranks[2]]) {
    assert.ok(r.code === 1 || r.code === EXIT_SECONDARY, `rank ${r.rank}: code ${r.code} ${r.signal}\n${r.err}`);
    assert.match(r.err, /rank 1 has ended while this rank's ncclAllGather still waits for it 1\.0 s later \(the ranks did not make the same collective calls\)/, r.err);
    assert.match(r.err, /ncclCommAbort/, r.err);
    assert.ok(r.afterWait < grace + 2500, `rank ${r.rank} ended ${r.afterWait} ms after entering the collective:\n${r.err}`);
  }
  assert.ok(ranks.some((r) => r.code === 1), 'a waiting rank reports it');
});

test('a rank that ends normally while the others have a second collective queued behind the one it skipped: still found within the grace', async () => {
  const grace = 1000;
  const ranks = await stuckRanks('queued-leaves', 3, { STUCK_LEFT_GRACE_MS: String(grace), STUCK_TIMEOUT_MS: '9000' });
  assert.equal(ranks[1].code, 0, `rank 1 ends normally:\n${ranks[1].err}`);
  for (const r of [ranks[0], ranks[2]]) {
    assert.ok(r.code === 1 || r.code === EXIT_SECONDARY, `rank ${r.rank}: code ${r.code} ${r.signal}\n${r.err}`);
    assert.match(r.err, /rank 1 has ended while this rank's ncclAllGather\(first\) still waits for it 1\.0 s later/, r.err);
    assert.ok(r.afterWait < grace + 2500, `rank ${r.rank} ended ${r.afterWait} ms after entering the collectives:\n${r.err}`);
  }
  // The first completes, the second (behind it) is the one left waiting: it is named.
  const later = await stuckRanks('done-then-stuck', 3, { STUCK_LEFT_GRACE_MS: String(grace), STUCK_TIMEOUT_MS: '9000' });
  for (const r of [later[0], later[2]]) {
    assert.match(r.err, /rank 1 has ended while this rank's ncclAllReduce\(second\) still waits for it 1\.0 s later/, r.err);
    assert.ok(r.afterWait < grace + 2800, `rank ${r.rank} ended ${r.afterWait} ms after entering the collectives:\n${r.err}`);
  }
});

test('rank 0 ends first: it stays the hub, so a later goodbye or death of another rank still reaches a rank waiting on it', async () => {
  const grace = 1000;
  for (const mode of ['hub-leaves', 'hub-leaves-peer-dies']) {
    const ranks = await stuckRanks(mode, 3, { STUCK_LEFT_GRACE_MS: String(grace), STUCK_TIMEOUT_MS: '9000' });
    assert.equal(ranks[0].code, 0, `${mode}: rank 0 ends normally:\n${ranks[0].err}`);
    const r1 = ranks[1];
    assert.ok(r1.code === 1 || r1.code === EXIT_SECONDARY, `${mode}: rank 1: code ${r1.code} ${r1.signal}\n${r1.err}`);
    if (mode === 'hub-leaves') {
      assert.equal(ranks[2].code, 0, `rank 2 ends normally:\n${ranks[2].err}`);
      assert.match(r1.err, /rank 2 has ended while this rank's ncclRecv\(from rank 2\) still waits for it 1\.0 s later/, r1.err);
    } else {
      assert.equal(ranks[2].signal, 'SIGKILL');
      assert.match(r1.err, /stopped because rank 2 failed: rank 2 exited or lost its connection without a word/, r1.err);
    }
    assert.ok(r1.afterWait < grace + 3000, `${mode}: rank 1 ended ${r1.afterWait} ms after entering the receive:\n${r1.err}`);
  }
});

test('a rank that ends normally is no failure for a wait on other ranks (a receive from a live, busy rank; a ring step whose send to it is done)', async () => {
  const ranks = await stuckRanks('other-leaves', 3, { STUCK_LEFT_GRACE_MS: '500' });
  for (const r of ranks) assert.equal(r.code, 0, `rank ${r.rank}: code ${r.code}\n${r.err}`);
  assert.match(ranks[0].err, /received/, ranks[0].err);
  assert.ok(ranks[0].afterWait >= 2000, `rank 0 waited for rank 1 (${ranks[0].afterWait} ms)`);
});

test('rank 0 lingers at close only while other ranks run: a stray connection does not hold it; past an explicit lingerMs the others only lose the relay', async () => {
  const until = async (cond: () => boolean, ms: number) => {
    for (const end = Date.now() + ms; !cond() && Date.now() < end;) await new Promise((r) => setTimeout(r, 20));
    return cond();
  };
  const pair = async (opts: { lingerMs?: number; stray?: boolean }) => {
    const masterPort = await freePort();
    const env = (rank: number) => ({ rank, world: 2, localRank: rank, masterAddr: '127.0.0.1', masterPort });
    const makeId = () => new Uint8Array(128);
    const first = Control.start(env(0), { makeId, graceMs: 0, lingerMs: opts.lingerMs });
    let stray: Socket | null = null;
    if (opts.stray) {
      // a connection that never says hello, accepted before the rendezvous ends
      for (let tries = 0; !stray && tries < 50; tries++) {
        const s = createConnection({ host: '127.0.0.1', port: masterPort });
        const ok = await new Promise<boolean>((r) => (s.once('connect', () => r(true)), s.once('error', () => r(false))));
        if (ok) stray = s;
        else await new Promise((r) => setTimeout(r, 50));
      }
      assert.ok(stray, 'the stray connection reached rank 0');
      stray.on('error', () => {});
    }
    const [c0, c1] = await Promise.all([first, Control.start(env(1), { makeId, graceMs: 0 })]);
    return { c0, c1, stray };
  };
  // Both end normally, rank 0 first (no limit): it returns right after rank 1 does, the stray socket notwithstanding.
  {
    const { c0, c1, stray } = await pair({ stray: true });
    assert.equal(c0.lingerMs, Infinity);
    const closing0 = c0.close();
    assert.ok(await until(() => c1.hasLeft(0), 3000), 'rank 1 knows rank 0 has ended');
    await new Promise((r) => setTimeout(r, 300));
    const t0 = Date.now();
    await c1.close();
    await closing0;
    assert.ok(Date.now() - t0 < 2000, `rank 0's close returned ${Date.now() - t0} ms after rank 1's began`);
    assert.equal(c0.failure(), null);
    assert.equal(c1.failure(), null);
    stray!.destroy();
  }
  // Rank 1 still running when an explicit lingerMs ends: rank 0 goes, rank 1 is not failed.
  {
    const { c0, c1 } = await pair({ lingerMs: 500 });
    const t0 = Date.now();
    await c0.close();
    assert.ok(Date.now() - t0 >= 450, `rank 0 lingered ${Date.now() - t0} ms`);
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(c1.failure(), null);
    assert.ok(c1.hasLeft(0));
    await c1.close();
  }
  await assert.rejects(Control.start({ rank: 0, world: 1, localRank: 0, masterAddr: '127.0.0.1', masterPort: 1 }, { lingerMs: Number.NaN }), (e: Error) => e instanceof InputError && /lingerMs/.test(e.message));
});

test('the control thread is watched: a blocked main thread is no failure; a thread that dies is, by its exit or by its heartbeat', async () => {
  const start = async () => Control.start({ rank: 0, world: 1, localRank: 0, masterAddr: '127.0.0.1', masterPort: await freePort() }, { makeId: () => new Uint8Array(128), heartbeatTimeoutMs: 1500 });
  const c = await start();
  const worker = (c as unknown as { worker: { terminate(): Promise<number>; removeAllListeners(e: string): void } }).worker;
  try {
    c.throwIfFailed();
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 2000); // the main thread busy for longer than the timeout
    c.throwIfFailed();
    assert.equal(c.failure(), null);
    // The thread dies where the main thread cannot see its exit (blocked in GPU waits): the heartbeat stops.
    worker.removeAllListeners('exit');
    await worker.terminate();
    const t0 = Date.now();
    let err: unknown = null;
    while (!err && Date.now() - t0 < 5000) {
      try {
        c.throwIfFailed();
      } catch (e) {
        err = e;
      }
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 50);
    }
    assert.match(String(err), /rank 0: the control thread stopped \(no heartbeat for \d+ ms\): failures of other ranks can no longer reach this one/);
    assert.ok(Date.now() - t0 >= 1000, 'not before the timeout');
  } finally {
    c.acknowledge();
  }
  // Its exit, seen by the event loop, fails the rank at once.
  const d = await start();
  await (d as unknown as { worker: { terminate(): Promise<number> } }).worker.terminate();
  await new Promise((r) => setTimeout(r, 50));
  assert.throws(() => d.throwIfFailed(), /the control thread ended: failures of other ranks can no longer reach this one/);
});

test('a collective that never completes: RINGATTN_GPU_TIMEOUT ends every rank once, not once per wait', async () => {
  const timeout = 2000;
  const ranks = await stuckRanks('timeout', 2, { STUCK_TIMEOUT_MS: String(timeout) });
  for (const r of ranks) {
    assert.ok(r.code === 1 || r.code === EXIT_SECONDARY, `rank ${r.rank}: code ${r.code} ${r.signal}\n${r.err}`);
    assert.match(r.err, /still waiting after 2000 ms/, r.err);
    // a second wait in cleanup (syncAll in a finally) throws the same failure at once
    assert.ok(r.afterWait < 1.75 * timeout, `rank ${r.rank} ended ${r.afterWait} ms after entering the collective (timeout ${timeout} ms):\n${r.err}`);
  }
  assert.ok(ranks.some((r) => r.code === 1), 'a rank reports its own timeout');
});

test('a GPU query that fails (a sticky error) stops the group: NCCL aborted, later frees skipped, later waits throw the same error', async () => {
  const { fakeCuda } = await import('../mock/fakeCuda.js');
  const { CudaContext } = await import('../../src/cuda/context.js');
  const { CudaGroup } = await import('../../src/cuda/group.js');
  const drv = fakeCuda() as unknown as Record<string, unknown>;
  drv.cuCtxGetStreamPriorityRange = (a: number[], b: number[]) => ((a[0] = 0), (b[0] = -5), 0);
  drv.cuStreamCreateWithPriority = (out: unknown[]) => ((out[0] = { stream: 'comm' }), 0);
  drv.cuStreamQuery = (s: { stream?: string } | null) => (s?.stream === 'comm' ? 700 : 0); // CUDA_ERROR_ILLEGAL_ADDRESS
  let aborted = 0;
  const nccl = { ncclCommAbort: () => ((aborted += 1), 0), ncclCommGetAsyncError: (_c: unknown, e: number[]) => ((e[0] = 0), 0) };
  const ctx = CudaContext.open(0, drv as never);
  const G = CudaGroup as unknown as new (...a: unknown[]) => { syncStream(s: unknown): void; comm: unknown };
  const g = new G({ rank: 0, world: 1, localRank: 0, masterAddr: '127.0.0.1', masterPort: 1 }, null, ctx, nccl, { comm: true }, 60_000);
  assert.throws(() => g.syncStream(g.comm), /CUDA_ERROR_ILLEGAL_ADDRESS/);
  assert.equal(aborted, 1);
  assert.equal(ctx.abandoned, true, 'no free runs on the lost context');
  assert.throws(() => g.syncStream(g.comm), /CUDA_ERROR_ILLEGAL_ADDRESS/);
  assert.equal(aborted, 1, 'aborted once');
});
