import { CudaContext } from '../src/cuda/context.js';
import { cudaKernel } from '../src/cuda/attention.js';
import { encode } from '../src/cuda/convert.js';
import { fill } from './common.js';
import { blockCalls, parseTiming, STEP_FORWARD, timeCalls, warmUp } from './gpu-block.js';
import { seen } from './gpu-masks.js';

/**
 * Where a Hopper attention kernel's time goes, CTA by CTA. The forward built with -DFWD_TRACE, or
 * the backward with -DBWD_TRACE (added to RINGATTN_NVRTC_DEFINES here), writes per CTA its SM,
 * its work items and the SM clock at its start, at three marks and at its end (hop::Trace in
 * kernels/hopper.cuh). Forward: a CTA is a query tile of one head, its items the key tiles it sees;
 * the marks are Q landed, the first tile's S and softmax done, the last P·V done, and the end is
 * the epilogue stored. Backward: a CTA is a key tile of one KV head, its items the (query head,
 * query tile) pairs it sees; the marks are the first pair's operands landed, that pair done, the
 * last pair done, and the end is dK/dV's reductions issued. From those: each phase's median, a
 * line fitted to a CTA's time against its items (the per-item and the per-CTA cost), the gaps
 * between one CTA's end and the next one's start on an SM, and the idle tail; each as a share of
 * the SMs' time over the kernel's span.
 *   node dist/bench/gpu.js trace [S=8192] [H=32] [D=128] [causal=1|0|edge] [reps=20] [fwd|items|epi|bwd] [pass|step|fresh|finite|spaced]
 * items: the persistent ht as it runs by default (-DFWD_TRACE_ITEMS), one record an item, its clock
 * started at the top of the item: the gaps between records on an SM are the persistent loop's own.
 * epi: the same kernel's epilogues (-DFWD_TRACE_EPI), a record a warpgroup an item: each row's
 * merge and the wait at the consumers' bar.sync (summarizeEpilogue).
 * One S x S block, bf16, Hk = H, positions 0..S-1 on both sides (edge: bench/gpu-masks.ts's window
 * edge, queries at S..2S-1 under a causal window of S/2; TFLOP/s over the visible pairs), timed as
 * bench/gpu.js times it (blockCalls: a whole pass, the default) or, with `step`, as a ring step
 * after the first runs it (the forward merging into the running (o, lse), so that its epilogue
 * reads the old o; the backward without the per-pass zeroing and delta: bench/gpu-masks.ts's
 * default), or with `fresh` as a ring's first step (a step's calls, lse reset to -inf before each
 * forward; `finite` and `spaced`: bench/gpu-block.ts). The traced build stores 64 bytes a CTA and waits once more at the end: its time is
 * printed beside the phases, to compare with the untraced rate (bench/gpu.js). The default D=128
 * forward (ht) runs on a persistent grid, one CTA an SM taking items in turn; the traced build
 * runs it on the full grid, one item a CTA, so that each record is one item's: its per-CTA costs
 * are those the persistent grid hides (kernels/attn_fwd_h.cu).
 */

export interface CtaRecord {
  sm: number;
  /** Work items: key tiles (forward), (head, query tile) pairs (backward). */
  tiles: number;
  /** The CTA's query tile (forward) or key tile (backward), and its head (KV head, backward). */
  qt: number;
  h: number;
  /** SM clock cycles since the CTA's start: 0, then the marks (forward: Q landed, first tile done, last P·V done; the backward's in PHASES), then the end. */
  c: [number, number, number, number, number];
  /** The start on the SM's clock (cycles), from the earliest start on the same SM: clock64 counts per SM. */
  smStart: number;
  /** %globaltimer (ns) at the start and the end, from the earliest CTA's start. */
  g0: number;
  g1: number;
}

/**
 * The records of up to `ctas` CTAs (8 u64 each; slots no CTA wrote are all zero, left out). Clocks
 * come back relative to the CTA's start and global times relative to the earliest start, taken as
 * BigInt before they become Numbers (raw %globaltimer and clock64 values may pass 2^53).
 */
export function parseTrace(raw: BigUint64Array, ctas: number): { records: CtaRecord[] } {
  const rows: BigUint64Array[] = [];
  for (let i = 0; i < ctas; i++) {
    const r = raw.subarray(8 * i, 8 * i + 8);
    if (r[6] !== 0n) rows.push(r);
  }
  const base = rows.reduce((m, r) => (r[6] < m ? r[6] : m), rows.length ? rows[0][6] : 0n);
  const smBase = new Map<bigint, bigint>();  // each SM's earliest start on its own clock
  for (const r of rows) {
    const sm = r[0] & 0xffffn, b = smBase.get(sm);
    if (b === undefined || r[1] < b) smBase.set(sm, r[1]);
  }
  const records = rows.map((r): CtaRecord => {
    const info = r[0];
    const c = [1, 2, 3, 4, 5].map((j) => Number(r[j] - r[1])) as CtaRecord['c'];
    return {
      sm: Number(info & 0xffffn), tiles: Number((info >> 16n) & 0xffffn), qt: Number((info >> 32n) & 0xffffn), h: Number(info >> 48n),
      c, smStart: Number(r[1] - smBase.get(info & 0xffffn)!), g0: Number(r[6] - base), g1: Number(r[7] - base),
    };
  });
  return { records };
}

export interface Phase {
  name: string;
  /** Median, 10th and 90th percentile in microseconds (null: no sample). */
  med: number | null;
  p10: number | null;
  p90: number | null;
  /** Total over the kernel, as a share of (SMs used x the kernel's span). */
  share: number;
}

export interface TraceSummary {
  ctas: number;
  working: number;
  sms: number;
  /** SM cycles per ns over the working CTAs. */
  ghz: number;
  spanUs: number;
  phases: Phase[];
  /** CTA time (us) = perCta + perTile x items, least squares over the working CTAs; null when every CTA has as many items (nothing to fit). */
  fit: { perCta: number; perTile: number; r2: number } | null;
}

const pct = (x: number[], q: number): number | null => {
  if (x.length === 0) return null;
  const s = [...x].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(q * s.length))];
};

/** What the marks mean in each kernel (rows of the summary). */
export const PHASES = {
  fwd: ['start to Q landed', 'first tile (S, softmax)', 'other tiles, per tile', 'epilogue (o, lse stored)', 'CTAs that see nothing'],
  // The persistent ht, one record an item (-DFWD_TRACE_ITEMS): an item's clock starts once its Q
  // has landed, so the "gap between CTAs" is the wait for the next item's Q after an epilogue.
  items: ["the item's rows and ranges set", 'first tile (S, softmax)', 'other tiles, per tile', 'epilogue (o, lse stored)', 'items that see nothing'],
  bwd: ['start to first Q/dO landed', 'first (head, query tile)', 'other pairs, per pair', 'epilogue (dK, dV adds issued)', 'CTAs that see nothing'],
} as const;

/** The SM clock over some records (GHz): their clock64 cycles over their %globaltimer ns, summed (1 without time). */
function smGhz(records: CtaRecord[]): number {
  let cycles = 0, ns = 0;
  for (const r of records) {
    cycles += r.c[4] - r.c[0];
    ns += r.g1 - r.g0;
  }
  return ns > 0 ? cycles / ns : 1;
}

/** The earliest start and the latest end (%globaltimer ns) of some records. */
function timeSpan(records: CtaRecord[]): [number, number] {
  return [Math.min(...records.map((r) => r.g0)), Math.max(...records.map((r) => r.g1))];
}

export function summarizeTrace(records: CtaRecord[], labels: readonly string[] = PHASES.fwd): TraceSummary {
  const working = records.filter((r) => r.tiles > 0);
  if (records.length === 0) throw new Error('trace: no CTA wrote a record (was the kernel built with -DFWD_TRACE / -DBWD_TRACE?)');
  const ghz = smGhz(working.length ? working : records);
  const us = (c: number) => c / ghz / 1e3;
  const [t0, t1] = timeSpan(records);
  const spanUs = (t1 - t0) / 1e3;
  const bySm = new Map<number, CtaRecord[]>();
  for (const r of records) bySm.set(r.sm, [...(bySm.get(r.sm) ?? []), r]);
  const sms = bySm.size;
  const gaps: number[] = [], lead: number[] = [], tail: number[] = [];
  for (const list of bySm.values()) {
    list.sort((a, b) => a.g0 - b.g0);
    lead.push((list[0].g0 - t0) / 1e3);
    tail.push((t1 - list[list.length - 1].g1) / 1e3);
    // On the SM's own clock: %globaltimer may tick only every microsecond or so.
    for (let i = 1; i < list.length; i++) gaps.push(us(Math.max(0, list[i].smStart - (list[i - 1].smStart + list[i - 1].c[4]))));
  }
  const total = sms * spanUs;
  const sum = (x: number[]) => x.reduce((a, b) => a + b, 0);
  const phase = (name: string, x: number[], whole = x): Phase => ({ name, med: pct(x, 0.5), p10: pct(x, 0.1), p90: pct(x, 0.9), share: total > 0 ? sum(whole) / total : 0 });
  const d = (i: number, j: number) => working.map((r) => us(r.c[j] - r.c[i]));
  const rest = working.filter((r) => r.tiles > 1);
  const empties = records.filter((r) => r.tiles === 0).map((r) => (r.g1 - r.g0) / 1e3);
  const phases = [
    phase(labels[0], d(0, 1)),
    phase(labels[1], d(1, 2)),
    phase(labels[2], rest.map((r) => us(r.c[3] - r.c[2]) / (r.tiles - 1)), d(2, 3)),
    phase(labels[3], d(3, 4)),
    phase(labels[4], empties),
    phase('gap between CTAs on an SM', gaps),
    phase('idle before the first CTA', lead),
    phase('idle after the last CTA', tail),
  ];
  // Least squares of a working CTA's time on its tile count.
  const xs = working.map((r) => r.tiles), ys = working.map((r) => us(r.c[4] - r.c[0]));
  const n = xs.length, mx = sum(xs) / Math.max(n, 1), my = sum(ys) / Math.max(n, 1);
  let sxy = 0, sxx = 0, syy = 0;
  for (let i = 0; i < n; i++) {
    sxy += (xs[i] - mx) * (ys[i] - my);
    sxx += (xs[i] - mx) ** 2;
    syy += (ys[i] - my) ** 2;
  }
  let fit: TraceSummary['fit'] = null;
  if (sxx > 0) {
    const perTile = sxy / sxx;
    fit = { perCta: my - perTile * mx, perTile, r2: syy > 0 ? (sxy * sxy) / (sxx * syy) : 1 };
  }
  return { ctas: records.length, working: working.length, sms, ghz, spanUs, phases, fit };
}

/**
 * The epilogue records of -DFWD_TRACE_EPI (`epi`): two an item, one a warpgroup (its number in the
 * record's count field), clocks from the warpgroup's last P·V: row 0 merged, row 1 merged, the
 * consumers' bar.sync passed. Phases per warpgroup in microseconds at the records' mean clock.
 */
export function summarizeEpilogue(records: CtaRecord[]): { ghz: number; spanUs: number; phases: Phase[] } {
  if (records.length === 0) throw new Error('trace: no warpgroup wrote an epilogue record (was the kernel built with -DFWD_TRACE_EPI?)');
  const ghz = smGhz(records);
  const phases: Phase[] = [];
  for (const wg of [0, 1]) {
    const mine = records.filter((r) => r.tiles === wg);
    for (const [name, i, j] of [['row 0 merged (lse, o read, o stored)', 0, 1], ['row 1 merged', 1, 2], ["the other consumers' bar.sync", 2, 3], ['the whole epilogue', 0, 3]] as const) {
      const x = mine.map((r) => (r.c[j] - r.c[i]) / ghz / 1e3);
      phases.push({ name: `warpgroup ${wg}: ${name}`, med: pct(x, 0.5), p10: pct(x, 0.1), p90: pct(x, 0.9), share: 0 });
    }
  }
  const [t0, t1] = timeSpan(records);  // the first epilogue's start to the last's end
  return { ghz, spanUs: (t1 - t0) / 1e3, phases };
}

export function traceBench(S: number, H: number, D: number, mask: 'causal' | 'none' | 'edge', reps: number, which: 'fwd' | 'bwd' | 'items' | 'epi', timing = 'pass'): void {
  if (!Number.isInteger(S) || S < 128) throw new Error(`S: expected an integer of at least 128, got ${S}`);
  if (!Number.isInteger(H) || H < 1) throw new Error(`H: expected a positive integer, got ${H}`);
  if (D !== 64 && D !== 128) throw new Error(`D: expected 64 or 128, got ${D}`);
  if (!Number.isInteger(reps) || reps < 1) throw new Error(`reps: expected a positive integer, got ${reps}`);
  if (which !== 'fwd' && which !== 'bwd' && which !== 'items' && which !== 'epi') throw new Error(`kernel: expected fwd, items (the persistent forward, a record an item), epi (its epilogues, a record a warpgroup) or bwd, got ${which}`);
  const fwd = which !== 'bwd', mode = parseTiming('trace', timing), step = mode !== 'pass';
  if (mask === 'edge' && S % 2 !== 0) throw new Error(`S: the window edge takes an even S, got ${S}`);
  const causal = mask !== 'none', window = mask === 'edge' ? S / 2 : 0;
  const define = { fwd: '-DFWD_TRACE', items: '-DFWD_TRACE -DFWD_TRACE_ITEMS', epi: '-DFWD_TRACE -DFWD_TRACE_ITEMS -DFWD_TRACE_EPI', bwd: '-DBWD_TRACE' }[which];
  process.env.RINGATTN_NVRTC_DEFINES = [process.env.RINGATTN_NVRTC_DEFINES, define].filter(Boolean).join(' ');
  const ctx = CudaContext.open(0);
  const kern = cudaKernel(ctx);
  const name = kern.name({ dtype: 'bfloat16', D });
  const hopper = fwd ? /wgmma-fwd-h[a-z]?\+/ : /wgmma-bwd/;
  if (!hopper.test(name)) throw new Error(`trace: the kernels here are ${name}; the trace is written by the Hopper ${fwd ? 'forwards' : 'backward'} (sm_90a) only`);
  if ((which === 'items' || which === 'epi') && !/wgmma-fwd-ht\b/.test(name)) throw new Error(`trace: ${which} traces the persistent forward (ht, D=128), but the kernels here are ${name}`);
  const n = S * H * D;
  // Room for any schedule's grid: at least 64 query rows a forward CTA; the backward's are 128-key
  // tiles of one KV head (with Hk = H its query-head group is 1: no split).
  const ctas = Math.ceil(S / 64) * H;
  const kPos = Int32Array.from({ length: S }, (_, i) => i), qPos = Int32Array.from({ length: S }, (_, i) => (mask === 'edge' ? S : 0) + i);
  const inputs = [encode(fill(n, 1), 'bfloat16'), encode(fill(n, 2), 'bfloat16'), encode(fill(n, 3), 'bfloat16'), encode(fill(n, 4), 'bfloat16'), kPos, qPos];
  const bufs = inputs.map((x) => {
    const b = ctx.alloc(x.byteLength);
    ctx.upload(b, x);
    return b;
  });
  const [q, k, v, dO, kp, qp] = bufs;
  try {
    const trace = ctx.alloc(ctas * 64);
    bufs.push(trace);
    const a = { q: q.ptr, k: k.ptr, v: v.ptr, qPos: qp.ptr, kPos: kp.ptr, Sq: S, Sk: S, H, Hk: H, D, dtype: 'bfloat16' as const, causal, window, sinks: 0, scale: 1 / Math.sqrt(D) };
    // The calls bench/gpu.js times (or a ring step's), the trace buffer passed to both (only the traced kernel writes).
    const calls = blockCalls(ctx, kern, a, dO.ptr, trace.ptr, mode);
    bufs.push(...calls.bufs);
    if (which === 'bwd' && !step) calls.fwd();  // o and lse for the backward's delta (a step's calls have them)
    const call = fwd ? calls.fwd : calls.bwd;
    warmUp(ctx, call);
    const ms = timeCalls(ctx, call, reps);
    ctx.fill32(trace, 0, ctas * 16);
    call();
    const raw = ctx.download(new BigUint64Array(ctas * 8), trace);
    ctx.sync();
    const records = parseTrace(raw, ctas).records;
    const s = which === 'epi' ? { ...summarizeEpilogue(records), ctas: records.length, working: records.length, sms: 0, fit: null } : summarizeTrace(records, PHASES[which]);
    let pairs = S * S / (causal ? 2 : 1);
    if (mask === 'edge') {
      pairs = 0;
      for (const x of qPos) pairs += seen(kPos, x, window);
    }
    const flops = (fwd ? 4 : 10) * pairs * H * D;
    const what = mode !== 'pass' ? `${fwd ? 'forward' : 'backward'} as a ring step (${fwd ? STEP_FORWARD[mode] : 'adding into the gradients'})` : fwd ? 'forward (lse reset and finishForward included)' : 'backward (dq/dk/dv zeroing and delta included)';
    console.log(`device: ${ctx.name} (${ctx.arch}, ${ctx.smCount} SMs); ${name}, ${define}; S=${S} H=${H} D=${D} ${mask === 'edge' ? `window edge (causal window ${window}, keys a block behind)` : causal ? 'causal' : 'non-causal'}, one S x S block`);
    console.log(`${what}, traced build: ${ms.toFixed(3)} ms, ${(flops / ms / 1e9).toFixed(1)} TFLOP/s (median of ${reps}); kernel span ${(s.spanUs / 1e3).toFixed(3)} ms; SM clock ${s.ghz.toFixed(2)} GHz`);
    console.log(which === 'epi' ? `epilogue records: ${s.ctas} (two an item, one a warpgroup)` : `CTAs: ${s.ctas} recorded (${s.working} with work), on ${s.sms} SMs`);
    const f = (x: number | null) => (x === null ? '-' : x.toFixed(2)).padStart(8);
    console.log('phase                          median us   p10 us   p90 us   share of SM time');
    for (const p of s.phases) console.log(`${p.name.padEnd(which === 'epi' ? 52 : 30)} ${f(p.med)} ${f(p.p10)} ${f(p.p90)}   ${which === 'epi' ? '    -' : (100 * p.share).toFixed(1).padStart(5)}%`);
    if (which !== 'epi') console.log(s.fit ? `fit over the CTAs with work: time = ${s.fit.perCta.toFixed(2)} us + ${s.fit.perTile.toFixed(3)} us x items (r² ${s.fit.r2.toFixed(3)})` : 'fit: n/a (every CTA has as many items; see the phases)');
    console.log(`JSON ${JSON.stringify({ which, timing, S, H, D, causal, mask, kernel: name, ms, tflops: flops / ms / 1e9, ...s })}`);
  } finally {
    ctx.sync();
    for (const b of bufs) ctx.free(b);
    kern.dispose();
    ctx.dispose();
  }
}
