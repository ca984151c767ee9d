import type { RingDevice, RingTransport, Tracer } from '../core/device.js';
import type { RingSchedule } from '../core/schedule.js';

/**
 * The ring forward (Liu et al. 2023, Algorithm 1), the same for every backend:
 *
 *   for step in 0..P-1:
 *     start transfer: my KV block -> next rank, previous rank's block -> my spare buffer
 *     compute: my Q against the block in hand, merged into (O, LSE) in fp32
 *     wait for the transfer; swap buffers
 *
 * What to compute and what to pass on come from the schedule (Note [transfer reach]).
 * Every rank numbers step s of this phase seq0 + s + 1; returns seq0 + P for the next phase.
 */
export function ringForward<B>(dev: RingDevice<B>, net: RingTransport<B>, sched: RingSchedule, trace: Tracer, seq0 = 0): number {
  const r = dev.rank;
  let [hand, spare] = dev.blocks;
  dev.loadOwn(hand, false);
  if (dev.sinks) {
    const [own, all] = dev.sinks;
    dev.loadSinks(own);
    net.gatherSinks(own, all);
    const t0 = trace.now();
    dev.forward(all, 'partial');
    trace.event({ rank: r, step: 0, kind: 'compute', phase: 'forward', start: t0, end: trace.now() });
  }
  for (let step = 0; step < sched.ranks; step++) {
    const send = sched.send[r][step];
    const recv = sched.recv[r][step];
    const pending = send || recv ? net.shift(seq0 + step + 1, step, hand, spare, send, recv) : null;
    const cls = sched.compute[r][step];
    if (cls !== 'empty') {
      const t0 = trace.now();
      dev.forward(hand, cls);
      trace.event({ rank: r, step, kind: 'compute', phase: 'forward', start: t0, end: trace.now() });
    }
    if (pending) {
      const t0 = trace.now();
      net.wait(pending);
      trace.event({ rank: r, step, kind: 'wait', phase: 'forward', start: t0, end: trace.now() });
    }
    if (recv) [hand, spare] = [spare, hand];
  }
  return seq0 + sched.ranks;
}
