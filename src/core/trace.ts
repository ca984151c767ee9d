import type { BlockClass } from './mask.js';

/** What a ring run records, for summaries and the HTML report. Times in ms since the run began. */
export interface TraceEvent {
  rank: number;
  step: number;
  /** compute: block attention on the KV block in hand; transfer: a KV (or dK/dV) block in flight; wait: the rank idle, waiting for a transfer. */
  kind: 'compute' | 'transfer' | 'wait';
  /** 'forward' or 'backward'. */
  phase: 'forward' | 'backward';
  start: number;
  end: number;
  /** Bytes moved (transfer events). */
  bytes?: number;
  /** Query x key pairs computed (compute events), after skipping. */
  pairs?: number;
}

/** A coarse map of the global S x S attention matrix, in blocks of `blockSize` tokens. */
export interface BlockMap {
  blockSize: number;
  /** cells[qb][kb]: what the mask makes of the block, and which rank computed it (-1: skipped). */
  cells: { cls: BlockClass; rank: number }[][];
}

export interface RunReport {
  title: string;
  /** Inputs of the run: S, H, D, layout, mask ... */
  config: Record<string, string | number | boolean>;
  ranks: number;
  steps: number;
  events: TraceEvent[];
  /** Peak bytes held per rank (shards, ring buffers, accumulators). */
  memoryPerRank: number[];
  blockMap?: BlockMap;
  /** Rows of the summary table. */
  summary: { label: string; value: string }[];
  /** The planner's prediction beside the measurement. */
  plan?: { label: string; predicted: string; measured: string }[];
  /** Optional line charts (e.g. training loss). x and y numbers. */
  curves?: { title: string; xLabel: string; yLabel: string; series: { name: string; points: [number, number][] }[] }[];
}
