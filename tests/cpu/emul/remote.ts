import { spawn, spawnSync } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, readSync, rmSync, writeSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';

/**
 * Test-only: a stand-in for a koffi library whose functions run in another process (the native
 * kernels built for another architecture, run by qemu-user: driver.c has the protocol). `func`
 * takes the same C declarations the kernel modules give koffi and returns a synchronous function:
 * each call sends its arguments through a FIFO, waits for the answer, copies back what the kernel
 * wrote into the caller's typed arrays, and fails when the kernel changed an argument declared
 * const. Only the declaration forms the kernels use are understood (scalars, `T*`, `T**`).
 */

type Kind = 'i' | 'f' | 'b' | 'a';
interface Param {
  kind: Kind;
  isConst: boolean;
  text: string;
}
type Fn = (...args: unknown[]) => number;

const NO_LIST = 0xffffffff;

function parse(decl: string): { name: string; params: Param[] } {
  const m = /(\w+)\s*\(([^)]*)\)\s*$/.exec(decl.trim());
  if (!m) throw new Error(`remote library: cannot parse the declaration '${decl}'`);
  const list = m[2].trim() === '' || m[2].trim() === 'void' ? [] : m[2].split(',').map((s) => s.trim());
  const params = list.map((text): Param => {
    const kind: Kind = text.includes('**') ? 'a' : text.includes('*') ? 'b' : /\b(float|double)\b/.test(text) ? 'f' : 'i';
    return { kind, isConst: /^const\b/.test(text), text };
  });
  return { name: m[1], params };
}

type View = ArrayBufferView | null | undefined;

const bytesOf = (x: ArrayBufferView) => new Uint8Array(x.buffer, x.byteOffset, x.byteLength);

/** A growable little-endian request. */
class Writer {
  private buf = Buffer.alloc(1 << 16);
  private n = 0;
  private room(k: number): void {
    if (this.n + k <= this.buf.length) return;
    const b = Buffer.alloc(Math.max(this.buf.length * 2, this.n + k));
    this.buf.copy(b, 0, 0, this.n);
    this.buf = b;
  }
  u8(x: number): void { this.room(1); this.buf.writeUInt8(x, this.n); this.n += 1; }
  u32(x: number): void { this.room(4); this.buf.writeUInt32LE(x, this.n); this.n += 4; }
  i64(x: bigint): void { this.room(8); this.buf.writeBigInt64LE(x, this.n); this.n += 8; }
  f64(x: number): void { this.room(8); this.buf.writeDoubleLE(x, this.n); this.n += 8; }
  bytes(b: Uint8Array): void { this.room(b.length); this.buf.set(b, this.n); this.n += b.length; }
  done(): Buffer { return this.buf.subarray(0, this.n); }
}

export class RemoteLibrary {
  private req = -1;
  private resp = -1;
  private dir = '';

  /** `command`: the runner and its arguments, ending with the driver (e.g. ['qemu-aarch64', 'driver']). */
  constructor(private readonly command: string[]) {}

  private start(): void {
    if (this.req >= 0) return;
    // The opens below wait for the driver to open its ends; a driver that cannot run would leave
    // them waiting for ever (this thread blocked, no 'error' event delivered): try it first.
    const probe = spawnSync(this.command[0], [...this.command.slice(1), '--isa'], { encoding: 'utf8', timeout: 60_000 });
    if (probe.status !== 0) throw new Error(`remote library: ${this.command.join(' ')} --isa failed: ${probe.error?.message ?? `status ${probe.status}`} ${probe.stderr ?? ''}`);
    this.dir = mkdtempSync(join(os.tmpdir(), 'ringattn-emul-'));
    process.once('exit', () => this.close());
    const req = join(this.dir, 'req'), resp = join(this.dir, 'resp');
    const mk = spawnSync('mkfifo', [req, resp], { encoding: 'utf8' });
    if (mk.status !== 0) throw new Error(`remote library: mkfifo failed: ${mk.stderr || mk.error?.message}`);
    const child = spawn(this.command[0], [...this.command.slice(1), req, resp], { stdio: ['ignore', 'inherit', 'inherit'] });
    child.unref(); // it ends at EOF on its requests, when this process closes them (or exits)
    // Each open waits for the driver to open the other end, in the same order as it does.
    this.req = openSync(req, 'w');
    this.resp = openSync(resp, 'r');
  }

  close(): void {
    if (this.req >= 0) closeSync(this.req);
    if (this.resp >= 0) closeSync(this.resp);
    this.req = this.resp = -1;
    if (this.dir) rmSync(this.dir, { recursive: true, force: true });
    this.dir = '';
  }

  private read(n: number): Buffer {
    const b = Buffer.alloc(n);
    for (let got = 0; got < n; ) {
      const k = readSync(this.resp, b, got, n - got, null);
      if (k === 0) throw new Error(`remote library: the driver (${this.command.join(' ')}) ended in the middle of a call`);
      got += k;
    }
    return b;
  }

  private write(b: Buffer): void {
    for (let off = 0; off < b.length; ) off += writeSync(this.req, b, off, b.length - off);
  }

  func(decl: string): Fn {
    const { name, params } = parse(decl);
    return (...args: unknown[]): number => {
      if (args.length !== params.length) throw new Error(`${name}: ${args.length} arguments for ${params.length} parameters`);
      this.start();
      const w = new Writer();
      const nameBytes = Buffer.from(name);
      w.u32(nameBytes.length);
      w.bytes(nameBytes);
      w.u32(params.length);
      // every buffer sent, in order, with whether the kernel may write it
      const sent: { view: ArrayBufferView | null; isConst: boolean; what: string }[] = [];
      const buffer = (x: View, isConst: boolean, what: string) => {
        if (x === null || x === undefined) {
          w.i64(-1n);
          sent.push({ view: null, isConst, what });
          return;
        }
        if (!ArrayBuffer.isView(x)) throw new Error(`${name}: ${what} is not a typed array`);
        w.i64(BigInt(x.byteLength));
        w.bytes(bytesOf(x));
        sent.push({ view: x, isConst, what });
      };
      params.forEach((p, i) => {
        const x = args[i];
        w.u8(p.kind.charCodeAt(0));
        const what = `argument ${i} (${p.text})`;
        if (p.kind === 'i') w.i64(typeof x === 'bigint' ? x : BigInt(x as number));
        else if (p.kind === 'f') w.f64(x as number);
        else if (p.kind === 'b') buffer(x as View, p.isConst, what);
        else if (x === null || x === undefined) w.u32(NO_LIST);
        else {
          const list = x as View[];
          w.u32(list.length);
          list.forEach((e, j) => buffer(e, p.isConst, `${what}[${j}]`));
        }
      });
      this.write(w.done());
      const rc = Number(this.read(8).readBigInt64LE(0));
      const changed: string[] = [];
      // the whole answer is read before any error, so that the next call starts in step
      for (const s of sent) {
        const n = Number(this.read(8).readBigInt64LE(0));
        if (n < 0) continue;
        const got = this.read(n);
        const mine = bytesOf(s.view!);
        if (!s.isConst) mine.set(got);
        else if (Buffer.compare(got, Buffer.from(mine.buffer, mine.byteOffset, mine.byteLength)) !== 0) changed.push(s.what);
      }
      if (changed.length > 0) throw new Error(`${name} wrote to ${changed.join(', ')}, declared const`);
      return rc;
    };
  }
}
