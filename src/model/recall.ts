/**
 * A synthetic long-range task: key-value recall. The first quarter of a sequence holds `pairs`
 * tokens, each binding a key to a value, among filler; filler follows; it closes with queries,
 * each a key whose target is the value it was bound to at the start. A model sees the answer
 * only by attending across the whole sequence, so full attention can learn it and a short
 * sliding window cannot.
 *
 * Vocabulary: [0, F) filler, then K query-key tokens, then K·V pair tokens (key k bound to value
 * v), then V value tokens (the targets).
 */
import { IGNORE_INDEX } from './layers.js';

export interface RecallSpec {
  keys: number;
  values: number;
  filler: number;
  /** Pairs at the start of each sequence. */
  pairs: number;
  /** Queries at the end (each asks one of the pairs' keys; default: as many as pairs). */
  queries?: number;
}

export const DEFAULT_RECALL: RecallSpec = { keys: 4, values: 4, filler: 8, pairs: 4, queries: 32 };

export function recallVocab(s: RecallSpec): number {
  return s.filler + s.keys + s.keys * s.values + s.values;
}

/** One sequence of length S with its targets (IGNORE_INDEX except at the queries). */
export function recallSequence(s: RecallSpec, S: number, rand: () => number): { ids: Int32Array; targets: Int32Array } {
  const n = Math.min(s.pairs, s.keys);
  const nq = s.queries ?? n;
  if (S < n + nq + 1) throw new RangeError(`sequence length ${S} too short for ${n} pairs and ${nq} queries`);
  const ids = new Int32Array(S);
  const targets = new Int32Array(S).fill(IGNORE_INDEX);
  const keyTok = (k: number) => s.filler + k;
  const pairTok = (k: number, v: number) => s.filler + s.keys + k * s.values + v;
  const valueTok = (v: number) => s.filler + s.keys + s.keys * s.values + v;
  // Distinct keys, each bound to a random value.
  const keys = Array.from({ length: s.keys }, (_, i) => i);
  for (let i = keys.length - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    [keys[i], keys[j]] = [keys[j], keys[i]];
  }
  const bound = keys.slice(0, n).map((k) => ({ k, v: Math.floor(rand() * s.values) }));
  // Filler everywhere, then the pairs at random places in the first quarter: the distance to
  // the queries varies, so only a lookup by content answers them, at any length.
  for (let t = 0; t < S - nq; t++) ids[t] = Math.floor(rand() * s.filler);
  const span = Math.max(n, Math.floor((S - nq) / 4));
  const slots = new Set<number>();
  while (slots.size < n) slots.add(Math.floor(rand() * span));
  [...slots].forEach((t, i) => (ids[t] = pairTok(bound[i].k, bound[i].v)));
  // Queries of random pairs; the target of a query is its value token.
  for (let q = 0; q < nq; q++) {
    const i = Math.floor(rand() * n);
    const t = S - nq + q;
    ids[t] = keyTok(bound[i].k);
    targets[t] = valueTok(bound[i].v);
  }
  return { ids, targets };
}
