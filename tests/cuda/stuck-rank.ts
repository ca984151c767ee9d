// A rank for the failure tests in tests/cuda/launch.test.ts: the real Control (TCP, worker,
// watchdog), CudaGroup and rankMain over a fake driver and a fake NCCL, where the device can get
// stuck as a real one does. No GPU. argv: mode, then RANK/WORLD_SIZE/MASTER_* in the environment.
//   peer-dies: rank 1 dies (SIGKILL) after the rendezvous; the others are in allGatherF64, whose
//              collective never completes, and a free blocks for 60 s (cuMemFree waits for the
//              device, which is stuck behind that collective) until NCCL is aborted.
//   timeout:   every rank's collective never completes; RINGATTN_GPU_TIMEOUT bounds the wait, and
//              cleanup waits once more (a synchronize in a finally).
//   peer-leaves: rank 1 ends normally (says goodbye) without calling the collective the others
//              wait in; they must notice within leftGraceMs (STUCK_LEFT_GRACE_MS), not at the timeout.
//   queued-leaves: as peer-leaves, but the others enqueue a second collective behind the stuck
//              one before they wait: the stuck one is still found (the oldest unfinished on its stream).
//   done-then-stuck: the others' first collective completes after 300 ms, the second (queued
//              behind it) never: the first is dropped from the marks and the second is found.
//   other-leaves: rank 2 ends at once; rank 0 waits 1.2 s on a receive from rank 1 (alive, busy),
//              then 1.2 s on a group sending to rank 2 and receiving from rank 1 (a ring step whose
//              send is done): neither is a failure (the departed rank is not the one waited for).
//   hub-leaves / hub-leaves-peer-dies: rank 0 ends at once; rank 1 waits on a receive from rank 2,
//              which ends normally (or is killed) 500 ms later without sending: rank 0, the hub,
//              still relays the goodbye (the failure) to rank 1, so rank 1 ends within the grace.
// Every stderr line carries the ms since start ("t=<ms> ...") for the test to read.
import { writeSync } from 'node:fs';
import { Control, rankEnv } from '../../src/cuda/control.js';
import { CudaContext } from '../../src/cuda/context.js';
import { CudaGroup, rankMain } from '../../src/cuda/group.js';
import type { DriverApi } from '../../src/cuda/bindings/driver.js';
import type { NcclApi } from '../../src/cuda/bindings/nccl.js';
import { fakeCuda } from '../mock/fakeCuda.js';

const mode = process.argv[2] ?? 'peer-dies';
const env = rankEnv()!;
const t0 = Date.now();
const log = (s: string) => writeSync(2, `t=${Date.now() - t0} ${s}\n`);
const fakeId = () => Uint8Array.from({ length: 128 }, (_, i) => (i * 5 + 1) & 255);
const graceMs = 4000;

if (mode === 'peer-dies' && env.rank === 1) {
  await Control.start(env, { makeId: fakeId, graceMs });
  setTimeout(() => process.kill(process.pid, 'SIGKILL'), 300);
  setInterval(() => {}, 1000);
} else {
  let ncclAborted = false;
  const drv = fakeCuda() as unknown as Record<string, unknown>;
  drv.cuCtxGetStreamPriorityRange = (a: number[], b: number[]) => ((a[0] = 0), (b[0] = -5), 0);
  drv.cuStreamCreateWithPriority = (out: unknown[]) => ((out[0] = { stream: 'comm' }), 0);
  // the comm stream (the collective) never completes until NCCL is aborted
  // A collective on the comm stream completes at releaseAt (never, unless set) or when NCCL is aborted.
  let enqueued = false;
  let releaseAt = Infinity;
  const stuck = () => enqueued && !ncclAborted && Date.now() < releaseAt;
  drv.cuStreamQuery = (s: { stream?: string } | null) => (s?.stream === 'comm' && stuck() ? 600 : 0);
  // An event on the comm stream completes when the collective queued ahead of it does.
  drv.cuEventCreate = (out: unknown[]) => ((out[0] = { event: true, until: 0 }), 0);
  drv.cuEventRecord = (ev: { until: number }, s: { stream?: string } | null) => ((ev.until = s?.stream === 'comm' && enqueued ? releaseAt : 0), 0);
  drv.cuEventQuery = (ev: { until: number }) => (!ncclAborted && Date.now() < ev.until ? 600 : 0);
  const free = drv.cuMemFree_v2 as (p: number) => number;
  drv.cuMemFree_v2 = (p: number) => {
    if (!ncclAborted) {
      log('cuMemFree_v2 blocks behind the stuck collective');
      const end = Date.now() + 60_000;
      while (Date.now() < end) { /* the device never gets there */ }
    }
    return free(p);
  };
  const nccl = {
    ncclAllGather: () => ((enqueued = true), 0),
    ncclCommGetAsyncError: (_c: unknown, e: number[]) => ((e[0] = 0), 0),
    ncclCommAbort: () => { log('ncclCommAbort'); ncclAborted = true; return 0; },
    ncclCommDestroy: () => 0,
    ncclGetErrorString: (c: number) => `nccl error ${c}`,
  } as unknown as NcclApi;
  const timeoutMs = Number(process.env.STUCK_TIMEOUT_MS ?? 600_000);
  (CudaGroup as unknown as { init: () => Promise<CudaGroup> }).init = async () => {
    const control = await Control.start(env, { makeId: fakeId, graceMs });
    const ctx = CudaContext.open(0, drv as unknown as DriverApi);
    const G = CudaGroup as unknown as new (...a: unknown[]) => CudaGroup;
    const g = new G(env, control, ctx, nccl, { comm: true }, timeoutMs);
    g.leftGraceMs = Number(process.env.STUCK_LEFT_GRACE_MS ?? 5000);
    return g;
  };
  await rankMain(async (g) => {
    if (mode.startsWith('hub-leaves') && env.rank !== 1) {
      if (env.rank === 2) {
        await new Promise((r) => setTimeout(r, 500));
        if (mode === 'hub-leaves-peer-dies') process.kill(process.pid, 'SIGKILL');
      }
      log('leaving without the collective');
      return;
    }
    if (mode.startsWith('hub-leaves')) {
      log('in allGatherF64');
      g.ncclOn('ncclRecv(from rank 2)', g.comm, () => ((enqueued = true), 0), [2]);
      g.syncStream(g.comm);
      return;
    }
    if (((mode === 'peer-leaves' || mode === 'queued-leaves' || mode === 'done-then-stuck') && env.rank === 1) || (mode === 'other-leaves' && env.rank === 2)) {
      log('leaving without the collective');
      return;
    }
    if (mode === 'other-leaves') {
      if (env.rank === 1) {
        await new Promise((r) => setTimeout(r, 3000));
        log('rank 1 done');
        return;
      }
      log('in allGatherF64'); // (the test's clock starts here)
      g.ncclOn('ncclRecv(from rank 1)', g.comm, () => ((enqueued = true), (releaseAt = Date.now() + 1200), 0), [1]);
      g.syncStream(g.comm);
      g.collective('ring step (send to 2, receive from 1)', g.comm, () => { releaseAt = Date.now() + 1200; }, [2, 1]);
      g.syncStream(g.comm);
      log('received');
      return;
    }
    log('in allGatherF64');
    if (mode === 'done-then-stuck') {
      g.ncclOn('ncclAllGather(first)', g.comm, () => ((enqueued = true), (releaseAt = Date.now() + 300), 0));
      g.ncclOn('ncclAllReduce(second)', g.comm, () => ((releaseAt = Infinity), 0));
      g.syncStream(g.comm);
      return;
    }
    if (mode === 'queued-leaves') {
      g.ncclOn('ncclAllGather(first)', g.comm, () => ((enqueued = true), 0));
      g.ncclOn('ncclAllReduce(second)', g.comm, () => 0);
      g.syncStream(g.comm);
      return;
    }
    try {
      g.allGatherF64([env.rank]);
    } finally {
      if (mode === 'timeout') g.syncAll(); // cleanup that waits on the device again
    }
  });
}
