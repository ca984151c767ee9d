import type { RingDevice, RingTransport, Tracer } from '../core/device.js';
import { blockAt, type RingSchedule } from '../core/schedule.js';

/**
 * The ring backward: the same walk as the forward. K/V travel ahead exactly as in the forward
 * (prefetched while the rank computes); dQ stays home; each rank adds its share of dK/dV for
 * the block in hand to the accumulated dK/dV that the previous rank posted after its own step,
 * and posts the sum on. Those accumulators travel while the next rank computes, as in
 * ring-flash-attention's backward.
 *
 * Block b's dK/dV are complete once it has visited every rank that needs it (its lastStep);
 * the rank holding it then sends them home. With full attention that is rank b-1 and the last
 * hop of the ring; under a window it is the edge of the window's reach. Every step uses the
 * final LSE and delta = rowsum(dO * O), so the per-block kernel is the same at every step.
 */
export function ringBackward<B>(dev: RingDevice<B>, net: RingTransport<B>, sched: RingSchedule, trace: Tracer, seq0: number): number {
  const r = dev.rank;
  const P = sched.ranks;
  let [hand, spare] = dev.blocks;
  dev.beginBackward();
  dev.loadOwn(hand, true);
  if (dev.sinks) {
    const all = dev.sinks[1];
    dev.zeroGrads(all);
    const t0 = trace.now();
    dev.backward(all, 'partial');
    trace.event({ rank: r, step: 0, kind: 'compute', phase: 'backward', start: t0, end: trace.now() });
  }
  for (let step = 0; step < P; step++) {
    const send = sched.send[r][step];
    const recv = sched.recv[r][step];
    const block = blockAt(r, step, P);
    const stepSeq = seq0 + step + 1;
    const pending = send || recv ? net.shift(stepSeq, step, hand, spare, send, recv) : null;
    // The accumulated dK/dV of the block in hand come from the rank that held it last step.
    const grads = step > 0 && sched.recv[r][step - 1] ? net.startGrads(stepSeq, step) : null;
    net.reuseGrads(hand);
    dev.zeroGrads(hand);
    const cls = sched.compute[r][step];
    if (cls !== 'empty') {
      const t0 = trace.now();
      dev.backward(hand, cls);
      trace.event({ rank: r, step, kind: 'compute', phase: 'backward', start: t0, end: trace.now() });
    }
    const t0 = trace.now();
    if (grads) net.finishGrads(grads, hand);
    if (step === Math.max(0, sched.lastStep[block])) net.sendHome(hand, block);
    else if (send) net.postGrads(stepSeq, step, hand);
    if (pending) net.wait(pending);
    if (grads || pending) trace.event({ rank: r, step, kind: 'wait', phase: 'backward', start: t0, end: trace.now() });
    if (recv) [hand, spare] = [spare, hand];
  }
  net.awaitHome();
  if (dev.sinks) net.reduceSinkGrads(dev.sinks[1]);
  return seq0 + P;
}
