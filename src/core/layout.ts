import { InputError } from './errors.js';

/**
 * Layouts place the tokens of a sequence on the ranks of a ring.
 *
 * Note [zigzag]: with causal masking the token at position t attends to t+1 keys, so a
 * contiguous split gives rank P-1 about 2P-1 times the work of rank 0. Zigzag cuts the
 * sequence into 2P chunks and gives rank r chunks r and 2P-1-r, pairing a cheap early chunk
 * with an expensive late one:
 *
 *     chunks   0   1   2   3   4   5   6   7        (P = 4)
 *     rank     0   1   2   3   3   2   1   0
 *
 * Striped puts token t on rank t mod P: every rank holds every part of the sequence.
 */
export type Layout = 'contiguous' | 'zigzag' | 'striped';
export const LAYOUTS: readonly Layout[] = ['contiguous', 'zigzag', 'striped'];

export function parseLayout(s: string, arg = 'layout'): Layout {
  if ((LAYOUTS as readonly string[]).includes(s)) return s as Layout;
  throw new InputError(arg, `expected one of ${LAYOUTS.join(', ')}, got '${s}'`);
}

/** Split n into k parts as evenly as possible, the larger parts first. */
function evenSplit(n: number, k: number): number[] {
  const base = Math.floor(n / k);
  const extra = n % k;
  return Array.from({ length: k }, (_, i) => base + (i < extra ? 1 : 0));
}

/** Global positions (ascending) held by each rank. Any S >= 0 and P >= 1; ranks may be empty. */
export function shardPositions(seqLen: number, ranks: number, layout: Layout): Int32Array[] {
  if (!Number.isInteger(seqLen) || seqLen < 0) throw new InputError('seqLen', `expected a non-negative integer, got ${seqLen}`);
  if (!Number.isInteger(ranks) || ranks < 1) throw new InputError('devices', `expected a positive integer, got ${ranks}`);
  const out: number[][] = Array.from({ length: ranks }, () => []);
  if (layout === 'striped') {
    for (let t = 0; t < seqLen; t++) out[t % ranks].push(t);
  } else if (layout === 'contiguous') {
    let t = 0;
    evenSplit(seqLen, ranks).forEach((n, r) => {
      for (let i = 0; i < n; i++) out[r].push(t++);
    });
  } else if (layout === 'zigzag') {
    const sizes = evenSplit(seqLen, 2 * ranks);
    let t = 0;
    sizes.forEach((n, c) => {
      const r = c < ranks ? c : 2 * ranks - 1 - c;
      for (let i = 0; i < n; i++) out[r].push(t++);
    });
  } else {
    throw new InputError('layout', `unknown layout '${layout as string}'`);
  }
  return out.map((a) => Int32Array.from(a));
}

/** Gather the rows of `data` (rows of `rowSize` values, indexed by global position) for `pos`. */
export function gatherRows<T extends Float32Array | Int32Array>(data: T, rowSize: number, pos: Int32Array): T {
  const Ctor = data.constructor as { new (n: number): T };
  const out = new Ctor(pos.length * rowSize);
  for (let i = 0; i < pos.length; i++) {
    out.set(data.subarray(pos[i] * rowSize, (pos[i] + 1) * rowSize), i * rowSize);
  }
  return out;
}

/** Scatter shard rows back to their global positions in `into`. */
export function scatterRows<T extends Float32Array | Int32Array>(into: T, rowSize: number, pos: Int32Array, shard: T): T {
  for (let i = 0; i < pos.length; i++) {
    into.set(shard.subarray(i * rowSize, (i + 1) * rowSize), pos[i] * rowSize);
  }
  return into;
}

/** Shard a `[S, ...]` row-major array (rowSize values per position) over the ranks. */
export function shard<T extends Float32Array | Int32Array>(data: T, rowSize: number, positions: Int32Array[]): T[] {
  return positions.map((p) => gatherRows(data, rowSize, p));
}

/** Inverse of `shard`. */
export function unshard<T extends Float32Array | Int32Array>(shards: T[], rowSize: number, positions: Int32Array[], seqLen: number): T {
  if (shards.length !== positions.length) throw new InputError('shards', `expected ${positions.length} shards, got ${shards.length}`);
  const Ctor = shards[0]?.constructor as { new (n: number): T } | undefined;
  const out = new (Ctor ?? (Float32Array as unknown as { new (n: number): T }))(seqLen * rowSize);
  shards.forEach((s, r) => scatterRows(out, rowSize, positions[r], s));
  return out;
}
