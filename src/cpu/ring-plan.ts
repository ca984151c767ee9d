import type { MaskSpec } from '../core/mask.js';
import { ringSchedule, sinkRows, type RingSchedule } from '../core/schedule.js';
import type { BlockLayout } from './block.js';
import type { AttnParams, RankShard } from './device.js';

/** Everything every rank must agree on before a ring runs: computed once, sent to all. */
export interface RingPlan {
  schedule: RingSchedule;
  /** Rows each rank's travelling block carries (its shard less its sink rows). */
  counts: number[];
  /** Sink rows each rank owns (a prefix of its shard). */
  sinkRows: number[];
  layout: BlockLayout;
  sinkLayout: BlockLayout | null;
  segments: boolean;
}

/** Global segment ids gathered from the ranks' own ids (for the schedule's boxes). */
function globalSegments(pos: Int32Array[], seg: (Int32Array | undefined)[]): Int32Array | undefined {
  if (!seg.some(Boolean)) return undefined;
  let max = -1;
  for (const p of pos) for (const t of p) max = Math.max(max, t);
  const out = new Int32Array(max + 1);
  pos.forEach((p, r) => p.forEach((t, i) => (out[t] = seg[r]![i])));
  return out;
}

export function ringPlan(shards: Pick<RankShard, 'pos' | 'seg'>[], params: AttnParams, mask: MaskSpec, backward: boolean): RingPlan {
  const pos = shards.map((s) => s.pos);
  const segments = globalSegments(pos, shards.map((s) => s.seg));
  const sinkCounts = sinkRows(pos, params.window > 0 ? params.sinks : 0, 'pos');
  const sinkTotal = sinkCounts.reduce((a, b) => a + b, 0);
  const schedule = ringSchedule(
    pos.map((p, r) => p.subarray(sinkCounts[r])),
    { ...mask, segments },
    pos,
  );
  const counts = pos.map((p, r) => p.length - sinkCounts[r]);
  const row = params.Hk * params.D;
  return {
    schedule,
    counts,
    sinkRows: sinkCounts,
    layout: { cap: Math.max(1, ...counts), row, grads: backward },
    sinkLayout: sinkTotal > 0 ? { cap: sinkTotal, row, grads: backward } : null,
    segments: !!segments,
  };
}
