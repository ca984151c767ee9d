import { classifyBlock, type MaskSpec } from '../core/mask.js';
import type { BlockMap, TraceEvent } from '../core/trace.js';

export interface RankTimes {
  compute: number;
  transfer: number;
  wait: number;
  /** Transfer time that ran while the same rank computed. */
  overlapped: number;
  bytes: number;
}

export interface RingSummary {
  perRank: RankTimes[];
  /** Fraction of all transfer time hidden behind compute on the receiving rank. */
  overlap: number;
  /** Busiest rank's compute over the mean (1 = perfectly balanced). */
  imbalance: number;
}

function intersect(a: TraceEvent, b: TraceEvent): number {
  return Math.max(0, Math.min(a.end, b.end) - Math.max(a.start, b.start));
}

/** Per-rank compute, transfer and wait times from a ring trace, and how much transfer hid. */
export function summarize(events: TraceEvent[], ranks: number): RingSummary {
  const perRank: RankTimes[] = Array.from({ length: ranks }, () => ({ compute: 0, transfer: 0, wait: 0, overlapped: 0, bytes: 0 }));
  for (let r = 0; r < ranks; r++) {
    const mine = events.filter((e) => e.rank === r);
    const computes = mine.filter((e) => e.kind === 'compute');
    const t = perRank[r];
    for (const e of mine) {
      const d = e.end - e.start;
      if (e.kind === 'compute') t.compute += d;
      else if (e.kind === 'wait') t.wait += d;
      else {
        t.transfer += d;
        t.bytes += e.bytes ?? 0;
        for (const c of computes) t.overlapped += intersect(e, c);
      }
    }
  }
  const transfer = perRank.reduce((s, t) => s + t.transfer, 0);
  const overlapped = perRank.reduce((s, t) => s + t.overlapped, 0);
  const computes = perRank.map((t) => t.compute);
  const mean = computes.reduce((a, b) => a + b, 0) / Math.max(1, ranks);
  return { perRank, overlap: transfer > 0 ? overlapped / transfer : 1, imbalance: mean > 0 ? Math.max(...computes) / mean : 1 };
}

/**
 * A coarse block map of the S x S mask: cells of `blockSize` tokens, each classified on its
 * global box and coloured by the rank that holds (and computes for) its queries.
 */
export function blockMapOf(seqLen: number, positions: Int32Array[], spec: MaskSpec, maxBlocks = 48): BlockMap {
  const owner = new Int32Array(seqLen);
  positions.forEach((p, r) => p.forEach((t) => (owner[t] = r)));
  // Blocks aligned to zigzag chunks when possible: a multiple of 2P blocks.
  const chunks = 2 * positions.length;
  const n = Math.max(1, Math.min(seqLen, Math.floor(maxBlocks / chunks) * chunks || maxBlocks));
  const blockSize = Math.ceil(seqLen / n);
  const nb = Math.ceil(seqLen / blockSize);
  const segRange = (lo: number, hi: number): [number, number] => {
    let a = Infinity, b = -Infinity;
    for (let t = lo; t <= hi; t++) {
      a = Math.min(a, spec.segments![t]);
      b = Math.max(b, spec.segments![t]);
    }
    return [a, b];
  };
  const cells: BlockMap['cells'] = [];
  for (let qb = 0; qb < nb; qb++) {
    const qLo = qb * blockSize, qHi = Math.min(seqLen, qLo + blockSize) - 1;
    const row: BlockMap['cells'][number] = [];
    for (let kb = 0; kb < nb; kb++) {
      const kLo = kb * blockSize, kHi = Math.min(seqLen, kLo + blockSize) - 1;
      let box = { qLo, qHi, kLo, kHi } as Parameters<typeof classifyBlock>[1];
      if (spec.segments) {
        const [qSegLo, qSegHi] = segRange(qLo, qHi);
        const [kSegLo, kSegHi] = segRange(kLo, kHi);
        box = { ...box, qSegLo, qSegHi, kSegLo, kSegHi };
      }
      const cls = classifyBlock(spec, box);
      row.push({ cls, rank: cls === 'empty' ? -1 : owner[qLo] });
    }
    cells.push(row);
  }
  return { blockSize, cells };
}
