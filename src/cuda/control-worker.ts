import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { writeSync } from 'node:fs';
import { parentPort, workerData } from 'node:worker_threads';
import { HEARTBEAT_MS, recordFailure, SLOT, STATE, type ControlInit } from './control-proto.js';

/**
 * The control channel of a GPU rank, on its own thread (see control.ts): the TCP rendezvous
 * that hands out the NCCL unique id, then a watch for failures. It runs beside the rank's main
 * thread, which may be blocked in a GPU wait or an FFI call, so a failure anywhere reaches
 * every rank: the main thread sees the abort flag at its next poll; if it does not answer
 * within `graceMs`, this thread prints the reason and ends the process.
 *
 * Star topology through rank 0, newline-delimited JSON:
 *   q -> 0  {"hello": q, "world": P}        0 -> q  {"id": base64}  (once all P-1 are in)
 *   any     {"fail": r, "message": m}       0 -> all {"abort": r, "message": m}
 *   any     {"bye": r}                      (a close without "bye" is a failure of that rank)
 *   0 -> all {"left": r}                     (rank r said goodbye: a rank still waiting on a
 *                                            collective with it can tell it will not come)
 * Rank 0 ending normally sends {"left": 0} and stays the hub until every other rank has said
 * goodbye or gone (Control.close waits for it): the goodbyes and failures of the ranks still
 * running reach each other as before. (It never says "bye": it closes after all the others.)
 */

const init = workerData as ControlInit;
const flags = new Int32Array(init.flags);
const text = new Uint8Array(init.text);
const left = new Int32Array(init.left);
const sockets = new Map<number, Socket>();
const saidBye = new Set<number>();
let server: Server | null = null;
let upstream: Socket | null = null;
let closing = false;
/** Rank 0 after its own normal end: the hub's last duty (see the header), then this. */
let lingerDone: (() => void) | null = null;
/** Every connection rank 0 accepted (a stray one that never said hello too: finish ends them all). */
const accepted = new Set<Socket>();
/** Rank q > 0: rank 0 has ended normally ({"left": 0}) and relays until every rank has ended. */
let hubLeft = false;
let watchdog: NodeJS.Timeout | null = null;
// The main thread checks that this thread is alive (Control.throwIfFailed): without it, no other
// rank's failure would reach this one.
const heartbeat = setInterval(() => Atomics.add(flags, SLOT.beat, 1), HEARTBEAT_MS);

/** Record a failure for the main thread (first one wins) and arm the watchdog. */
function abort(rank: number, message: string, state: number = STATE.aborted): void {
  if (!recordFailure(flags, text, rank, message, state)) return;
  Atomics.notify(flags, SLOT.state);
  parentPort?.postMessage({ type: 'abort', rank, message });
  if (state === STATE.aborted) armWatchdog(rank, message);
}

/**
 * After a failure (another rank's or this one's) the process must end within graceMs, or say it
 * has stopped (Control.acknowledge): else this thread prints the reason and ends it.
 */
function armWatchdog(rank: number, message: string): void {
  if (watchdog || init.graceMs <= 0) return;
  watchdog = setTimeout(() => {
    if (Atomics.load(flags, SLOT.ack) !== 0) return;
    const what = rank === init.rank ? message : `stopped because rank ${rank} failed: ${message}`;
    writeSync(2, `ringattn: rank ${init.rank}: ${what} (the rank did not stop within ${init.graceMs} ms; ending it)\n`);
    process.kill(process.pid, 'SIGKILL');
  }, init.graceMs);
}

/** A rank ended normally: the main thread's GPU waits check whether they wait on it (CudaGroup). */
function peerLeft(rank: number): void {
  if (rank < 0 || rank >= init.world || rank === init.rank) return;
  if (Atomics.compareExchange(left, rank, 0, 1) === 0) Atomics.add(flags, SLOT.left, 1);
}

function send(s: Socket | null, msg: object): Promise<void> {
  return new Promise((resolve) => {
    if (!s || s.destroyed || !s.writable) return resolve();
    s.write(JSON.stringify(msg) + '\n', () => resolve());
  });
}

/** Split a socket's stream into JSON messages. */
function onMessages(s: Socket, fn: (m: Record<string, unknown>) => void): void {
  let buf = '';
  s.setEncoding('utf8');
  s.on('data', (chunk: string) => {
    buf += chunk;
    for (let i = buf.indexOf('\n'); i >= 0; i = buf.indexOf('\n')) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      if (!line.trim()) continue;
      try {
        fn(JSON.parse(line) as Record<string, unknown>);
      } catch {
        // a malformed line: ignore it
      }
    }
  });
}

const where = `${init.host}:${init.port}`;

function relay(rank: number, message: string, except?: number): void {
  for (const [q, s] of sockets) if (q !== except) void send(s, { abort: rank, message });
}

/** Rank 0, lingering: done once every connected rank has said goodbye or gone (closing without one removes it). */
function checkLinger(): void {
  if (!lingerDone) return;
  for (const q of sockets.keys()) if (!saidBye.has(q)) return;
  const done = lingerDone;
  lingerDone = null;
  done();
}

function serve(): void {
  const pending = new Set<number>(Array.from({ length: init.world - 1 }, (_, i) => i + 1));
  let rendezvousOver = init.world === 1; // every rank joined, or the deadline passed
  const timer = setTimeout(() => {
    rendezvousOver = true;
    const missing = [...pending].join(', ');
    const message = `rendezvous timed out after ${init.timeoutMs} ms: rank(s) ${missing} did not connect to ${where}`;
    relay(0, message);
    abort(0, message, STATE.error);
    server?.close();
  }, init.timeoutMs);
  server = createServer((s) => {
    s.setNoDelay(true);
    accepted.add(s);
    let peer = -1;
    onMessages(s, (m) => {
      if (typeof m.hello === 'number') {
        const q = m.hello;
        if (rendezvousOver) {
          void send(s, { abort: 0, message: `rendezvous: rank ${q} said hello after the rendezvous ended` });
          s.end();
          return;
        }
        if (m.world !== init.world || q < 1 || q >= init.world || sockets.has(q)) {
          void send(s, { abort: 0, message: `rendezvous: rank ${q} (world ${String(m.world)}) does not fit world ${init.world} or is taken` });
          s.end();
          return;
        }
        peer = q;
        sockets.set(q, s);
        pending.delete(q);
        if (pending.size === 0) {
          rendezvousOver = true;
          clearTimeout(timer);
          for (const c of sockets.values()) void send(c, { id: init.id });
          Atomics.store(flags, SLOT.state, STATE.ready);
          Atomics.notify(flags, SLOT.state);
          parentPort?.postMessage({ type: 'ready' });
        }
      } else if (typeof m.fail === 'number') {
        const message = String(m.message ?? 'failed');
        relay(m.fail, message, m.fail);
        if (!closing) abort(m.fail, message);
      } else if (typeof m.bye === 'number') {
        saidBye.add(m.bye);
        peerLeft(m.bye);
        for (const [q, c] of sockets) if (q !== m.bye) void send(c, { left: m.bye });
        checkLinger();
      }
    });
    s.on('error', () => {});
    s.on('close', () => {
      accepted.delete(s);
      if (peer < 0) return;
      if (!saidBye.has(peer) && (!closing || lingerDone)) {
        sockets.delete(peer);
        const message = `rank ${peer} exited or lost its connection without a word`;
        relay(peer, message, peer);
        if (!closing) abort(peer, message);
      }
      checkLinger();
    });
  });
  server.on('error', (e) => {
    clearTimeout(timer);
    abort(0, `rendezvous: cannot listen on ${where}: ${(e as Error).message}`, STATE.error);
  });
  server.listen(init.port, init.host);
  if (init.world === 1) {
    clearTimeout(timer);
    Atomics.store(flags, SLOT.state, STATE.ready);
    parentPort?.postMessage({ type: 'ready' });
  }
}

function connect(): void {
  const deadline = Date.now() + init.timeoutMs;
  let gotId = false;
  const attempt = () => {
    const s = createConnection({ host: init.host, port: init.port });
    s.setNoDelay(true);
    let connected = false;
    s.on('connect', () => {
      connected = true;
      upstream = s;
      void send(s, { hello: init.rank, world: init.world });
    });
    onMessages(s, (m) => {
      if (typeof m.id === 'string') {
        gotId = true;
        clearTimeout(timer);
        parentPort?.postMessage({ type: 'id', id: m.id });
        Atomics.store(flags, SLOT.state, STATE.ready);
        Atomics.notify(flags, SLOT.state);
      } else if (typeof m.abort === 'number') {
        abort(m.abort, String(m.message ?? 'failed'), gotId ? STATE.aborted : STATE.error);
      } else if (m.left === 0) {
        hubLeft = true; // rank 0 has ended normally and relays until the others have ended
        peerLeft(0);
      } else if (typeof m.left === 'number') {
        peerLeft(m.left);
      }
    });
    s.on('error', () => {});
    s.on('close', () => {
      if (closing) return;
      if (!connected) {
        if (Date.now() < deadline) setTimeout(attempt, 100);
        return;
      }
      if (hubLeft) {
        // Rank 0 ended normally, then stopped relaying before this rank ended (it was killed, or
        // its lingerMs ran out): no failure of this rank, but other ranks' can no longer reach it.
        writeSync(2, `ringattn: rank ${init.rank}: warning: rank 0 stopped relaying before this rank ended; failures of other ranks can no longer reach this one\n`);
        return;
      }
      const message = gotId ? 'rank 0 exited or lost its connection without a word' : `rendezvous: rank 0 at ${where} closed the connection`;
      abort(0, message, gotId ? STATE.aborted : STATE.error);
    });
  };
  const timer = setTimeout(() => {
    abort(0, `rendezvous timed out after ${init.timeoutMs} ms: no id from rank 0 at ${where} (MASTER_ADDR:MASTER_PORT)`, STATE.error);
    upstream?.destroy();
  }, init.timeoutMs);
  attempt();
}

parentPort?.on('message', (m: { type: string; message?: string }) => {
  if (m.type === 'fail') {
    // This rank failed: tell the others, then let the main thread go on (it waits on `sent`).
    const message = m.message ?? 'failed';
    const done = () => {
      Atomics.store(flags, SLOT.sent, 1);
      Atomics.notify(flags, SLOT.sent);
    };
    if (recordFailure(flags, text, init.rank, message, STATE.aborted)) armWatchdog(init.rank, message); // its cleanup may block on the GPU too
    if (init.rank === 0) {
      Promise.all([...sockets.values()].map((s) => send(s, { abort: 0, message }))).then(done, done);
    } else {
      send(upstream, { fail: init.rank, message }).then(done, done);
    }
  } else if (m.type === 'close') {
    closing = true;
    clearInterval(heartbeat);
    if (watchdog) clearTimeout(watchdog);
    const finish = () => {
      for (const s of accepted) s.destroy(); // (rank 0: every peer's socket is one of them)
      upstream?.destroy();
      server?.close();
      parentPort?.postMessage({ type: 'closed' });
      parentPort?.close();
    };
    if (init.rank === 0 && sockets.size > 0) {
      lingerDone = finish;
      for (const s of sockets.values()) void send(s, { left: 0 });
      checkLinger();
      return;
    }
    if (init.rank === 0) finish();
    else send(upstream, { bye: init.rank }).then(finish, finish);
  }
});

if (init.rank === 0) serve();
else connect();
