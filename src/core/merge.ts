/**
 * The log-sum-exp merge of partial attention results, in fp32-or-better arithmetic.
 *
 * Two partials over disjoint key sets, (o1, lse1) and (o2, lse2), with o normalised by its own
 * softmax sum, combine exactly as
 *     lse = log(exp(lse1) + exp(lse2)),   o = o1 * exp(lse1 - lse) + o2 * exp(lse2 - lse)
 * which is the sigmoid form used by ring-flash-attention (its update_out_and_lse):
 *     o = o1 - sigmoid(lse2 - lse1) * (o1 - o2).
 * A side that saw no key has lse = -Infinity and weight 0; both empty stays (0, -Infinity).
 */
export function mergeRow(o: Float32Array, off: number, len: number, lse: number, blockO: Float32Array, boff: number, blockLse: number): number {
  if (blockLse === -Infinity) return lse;
  if (lse === -Infinity) {
    for (let d = 0; d < len; d++) o[off + d] = blockO[boff + d];
    return blockLse;
  }
  const m = Math.max(lse, blockLse);
  const a = Math.exp(lse - m);
  const b = Math.exp(blockLse - m);
  const s = a + b;
  const wa = a / s;
  const wb = b / s;
  for (let d = 0; d < len; d++) o[off + d] = wa * o[off + d] + wb * blockO[boff + d];
  return m + Math.log(s);
}

/**
 * Merge (blockO, blockLse) into the running (o, lse) in place.
 * o, blockO: [rows, dim]; lse, blockLse: [rows].
 */
export function mergePartial(o: Float32Array, lse: Float32Array, blockO: Float32Array, blockLse: Float32Array, dim: number): void {
  const rows = lse.length;
  for (let r = 0; r < rows; r++) lse[r] = mergeRow(o, r * dim, dim, lse[r], blockO, r * dim, blockLse[r]);
}
