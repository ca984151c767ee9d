// A rank for the launch/rendezvous tests (tests/cuda/launch.test.ts): no GPU, a fake NCCL id.
// argv: mode (ok | fail | spin), failing rank. Mirrors what src/cuda/group.ts rankMain does.
import { Control, rankEnv } from '../../src/cuda/control.js';
import { EXIT_SECONDARY } from '../../src/cuda/launch.js';

const mode = process.argv[2] ?? 'ok';
const failRank = Number(process.argv[3] ?? 1);
const env = rankEnv()!;
const fakeId = () => Uint8Array.from({ length: 128 }, (_, i) => (i * 7 + 3) & 255);

async function main(): Promise<void> {
  let c: Control;
  try {
    c = await Control.start(env, { makeId: fakeId, timeoutMs: Number(process.env.RDV_TIMEOUT ?? 10000), graceMs: Number(process.env.RDV_GRACE ?? 3000) });
  } catch (e) {
    process.stderr.write(`ringattn: ${(e as Error).message}\n`);
    process.exit(1);
  }
  console.log(`id ${Buffer.from(c.id).toString('hex').slice(0, 16)} rank ${env.rank} of ${env.world} local ${env.localRank} master ${env.masterAddr}:${env.masterPort}`);
  if (mode === 'ok') {
    await c.close();
    process.exit(0);
  }
  if (env.rank === failRank) {
    await new Promise((r) => setTimeout(r, 200));
    c.fail('boom from the test');
    process.stderr.write(`ringattn: rank ${env.rank}: boom from the test\n`);
    process.exit(1);
  }
  const t0 = Date.now();
  if (mode === 'spin') {
    // A main thread stuck in a long native call: only the watchdog can end it.
    while (Date.now() - t0 < 30000) { /* busy */ }
    process.exit(0);
  }
  // Like a GPU wait: poll the control channel.
  while (Date.now() - t0 < 30000) {
    try {
      c.throwIfFailed();
    } catch (e) {
      process.stderr.write(`ringattn: ${(e as Error).message}\n`);
      process.exit(EXIT_SECONDARY);
    }
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 5);
  }
  process.exit(0);
}

void main();
