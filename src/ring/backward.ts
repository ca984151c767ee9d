import type { RingDevice, RingTransport, Tracer } from '../core/device.js';
import { blockAt, type RingSchedule } from '../core/schedule.js';

/**
 * The ring backward: the same walk as the forward, with dK/dV accumulators travelling with their
 * KV block while dQ stays home. Block b's dK/dV are complete once it has visited every rank that
 * needs it (its lastStep); the rank holding it then sends them home. With full attention that is
 * rank b-1 and the last hop of the ring; under a window it is the edge of the window's reach.
 * Every step uses the final LSE and delta = rowsum(dO * O), so the per-block kernel is unchanged.
 */
export function ringBackward<B>(dev: RingDevice<B>, net: RingTransport<B>, sched: RingSchedule, trace: Tracer, seq0: number): number {
  const r = dev.rank;
  const P = sched.ranks;
  let [hand, spare] = dev.blocks;
  dev.beginBackward();
  dev.loadOwn(hand, true);
  let seq = seq0;
  for (let step = 0; step < P; step++) {
    const send = sched.send[r][step];
    const recv = sched.recv[r][step];
    const block = blockAt(r, step, P);
    const pending = send || recv ? net.shift(++seq, step, hand, spare, send, recv) : null;
    const cls = sched.compute[r][step];
    if (cls !== 'empty') {
      const t0 = trace.now();
      dev.backward(hand, cls);
      trace.event({ rank: r, step, kind: 'compute', phase: 'backward', start: t0, end: trace.now() });
    }
    if (pending) {
      const t0 = trace.now();
      net.wait(pending);
      trace.event({ rank: r, step, kind: 'wait', phase: 'backward', start: t0, end: trace.now() });
    }
    // The block in hand (before the swap) is done travelling: its dK/dV go home.
    if (step === Math.max(0, sched.lastStep[block])) net.sendHome(hand, block);
    if (recv) [hand, spare] = [spare, hand];
  }
  net.awaitHome();
  return seq;
}
