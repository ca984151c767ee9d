/**
 * The peers of `node dist/bench/gpu.js` (npm run bench:gpu), measured in the same run: PyTorch
 * SDPA's flash (FlashAttention-2) and cuDNN backends (bench/peers/torch_sdpa.py) at the same S, H,
 * Hk and D, and a dense bf16 matmul through cuBLAS (bench/peers/torch_matmul.py) as the GPU's
 * measured peak. Each runs in its own process before ours allocates anything, and a missing torch
 * or GPU leaves a note instead of failing the benchmark. comparisonTable lays our rows beside them.
 */
import { spawnSync } from 'node:child_process';
import { median } from './gpu-block.js';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** One of our rows: TFLOP/s forward and backward (NaN when not timed). */
export interface OursRow { D: number; causal: boolean; fwd: number; bwd: number }
/** One SDPA row (torch_sdpa.py's JSON): TFLOP/s by the same FLOP count as ours. */
export interface SdpaRow { backend: string; D: number; S: number; causal: boolean; fwdTflops?: number; bwdTflops?: number; error?: string }
export interface Peers { sdpa: SdpaRow[]; peak?: number; notes: string[] }

const peerScript = (name: string) => join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'bench', 'peers', name);

/**
 * The JSON rows a peer script printed ("JSON {...}" lines; those before a failure are kept), and
 * a note for each thing that went wrong: the script's exit or a line that does not parse. A row
 * that carries an error is kept (the table shows '-') and named in a note too.
 */
export function peerRows(script: string, stdout: string, failure?: string): { rows: Record<string, unknown>[]; notes: string[] } {
  const rows: Record<string, unknown>[] = [], notes: string[] = [];
  for (const line of stdout.split('\n')) {
    if (!line.startsWith('JSON ')) continue;
    try {
      rows.push(JSON.parse(line.slice(5)) as Record<string, unknown>);
    } catch {
      notes.push(`${script}: unreadable line '${line.slice(5, 85)}'`);
    }
  }
  for (const r of rows) {
    if (r.error === undefined) continue;
    const what = r.backend !== undefined ? `${String(r.backend)} S=${String(r.S)} causal=${String(r.causal)}: ` : r.M !== undefined ? `${String(r.M)}x${String(r.N)}x${String(r.K)}: ` : '';
    notes.push(`${script}: ${what}${String(r.error)}`);
  }
  if (failure) notes.push(`${script}: ${failure}`);
  return { rows, notes };
}

export function runPeer(py: string, script: string, args: string[], env: Record<string, string>): { rows: Record<string, unknown>[]; notes: string[] } {
  const res = spawnSync(py, [peerScript(script), ...args], { encoding: 'utf8', timeout: 900_000, maxBuffer: 1 << 24, env: { ...process.env, ...env } });
  const tail = (res.stderr ?? '').trim().split('\n').slice(-2).join(' | ');
  const failure = res.error || res.status !== 0 ? `${res.error?.message ?? `exit ${res.status}`}${tail ? ` (${tail})` : ''}` : undefined;
  return peerRows(script, res.stdout ?? '', failure);
}

/** SDPA at (S, H, Hk) for each D, and the cuBLAS bf16 peak (an 8192³ matmul), in subprocesses. */
export function measurePeers(S: number, H: number, Hk: number, Ds: number[], reps: number, queue: number, py = process.env.PYTHON ?? 'python3'): Peers {
  const peers: Peers = { sdpa: [], notes: [] };
  for (const D of Ds) {
    const r = runPeer(py, 'torch_sdpa.py', [String(reps), String(S)], { SDPA_H: String(H), SDPA_HK: String(Hk), SDPA_D: String(D), SDPA_QUEUE: String(queue) });
    peers.notes.push(...r.notes.map((n) => `D=${D}: ${n}`));
    for (const row of r.rows) peers.sdpa.push({ ...(row as unknown as SdpaRow), D });
  }
  const m = runPeer(py, 'torch_matmul.py', ['--shapes', '8192x8192x8192', '--reps', String(reps), '--dtypes', 'bf16'], {});
  peers.notes.push(...m.notes);
  const peak = m.rows.find((r) => typeof r.tflops === 'number' && Number.isFinite(r.tflops));
  if (peak) peers.peak = peak.tflops as number;
  return peers;
}

/** The SDPA row of a backend at (S, D, causal) that ran without an error, if any. */
function peerRow(peers: Peers, backend: string, S: number, D: number, causal: boolean): SdpaRow | undefined {
  return peers.sdpa.find((r) => r.backend === backend && r.D === D && r.S === S && r.causal === causal && r.error === undefined);
}

/** x to d decimals, or '-' where it is missing or not finite (a pass not timed). */
export const fmt = (x: number | undefined, d = 1) => (x === undefined || !Number.isFinite(x) ? '-' : x.toFixed(d));
const ratio = (a: number, b: number | undefined) => (b === undefined || !Number.isFinite(a) || !(b > 0) ? '-' : (a / b).toFixed(2));

/**
 * Our rows beside the peers of the same (D, causal): forward against cuDNN (issue 5's forward
 * target), backward against flash (its backward target) and cuDNN, each as a ratio, and both as
 * a fraction of the measured bf16 matmul peak. A peer that did not run shows '-'.
 */
export function comparisonTable(S: number, H: number, Hk: number, ours: OursRow[], peers: Peers): string {
  const find = (backend: string, D: number, causal: boolean) => peerRow(peers, backend, S, D, causal);
  const pct = (x: number) => (peers.peak && Number.isFinite(x) ? `${((100 * x) / peers.peak).toFixed(0)}%` : '-');
  const head = ['S', 'H', 'Hk', 'D', 'causal', 'fwd TF/s', 'flash', 'cuDNN', 'fwd/cuDNN', 'fwd/peak', 'bwd TF/s', 'flash', 'cuDNN', 'bwd/flash', 'bwd/cuDNN', 'bwd/peak'];
  const lines = ours.map((o) => {
    const fl = find('flash', o.D, o.causal), cu = find('cudnn', o.D, o.causal);
    return [String(S), String(H), String(Hk), String(o.D), String(o.causal), fmt(o.fwd), fmt(fl?.fwdTflops, 0), fmt(cu?.fwdTflops, 0), ratio(o.fwd, cu?.fwdTflops), pct(o.fwd),
      fmt(o.bwd), fmt(fl?.bwdTflops, 0), fmt(cu?.bwdTflops, 0), ratio(o.bwd, fl?.bwdTflops), ratio(o.bwd, cu?.bwdTflops), pct(o.bwd)];
  });
  const width = head.map((h, i) => Math.max(h.length, ...lines.map((l) => l[i].length)));
  const row = (cells: string[]) => cells.map((c, i) => c.padStart(width[i])).join('  ');
  const peak = peers.peak ? `peak: cuBLAS bf16 8192x8192x8192 matmul ${peers.peak.toFixed(0)} TFLOP/s (same run)` : 'peak: not measured';
  return [row(head), ...lines.map(row), peak, ...peers.notes.map((n) => `peer unavailable: ${n}`)].join('\n');
}

/**
 * The ratios of several rounds of one benchmark (`gpu.js --rounds=R`: our rows and the peers
 * measured again in each round, in alternating order), row by row: forward / cuDNN and backward /
 * flash as the median over the rounds (gpu-block.ts's `median`, the upper of two middles) and each
 * round's, so that a table shows how far one run's ratio can be trusted (session 27: 0.86 and
 * 0.94 from two identical runs). A round whose peer did not run is left out of that row's ratios.
 */
export function roundsSummary(S: number, rounds: { ours: OursRow[]; peers: Peers }[]): string {
  const cell = (x: number[]) => (x.length === 0 ? '-' : `${median(x).toFixed(2)} [${x.map((v) => v.toFixed(2)).join(' ')}]`);
  const lines = [`rounds: ${rounds.length}; median [each round] of the per-round ratio`, 'D  causal  fwd/cuDNN  bwd/flash'];
  for (const o of rounds[0]?.ours ?? []) {
    const fwd: number[] = [], bwd: number[] = [];
    for (const r of rounds) {
      const ours = r.ours.find((x) => x.D === o.D && x.causal === o.causal);
      if (!ours) continue;
      const cu = peerRow(r.peers, 'cudnn', S, o.D, o.causal)?.fwdTflops, fl = peerRow(r.peers, 'flash', S, o.D, o.causal)?.bwdTflops;
      if (cu !== undefined && cu > 0 && Number.isFinite(ours.fwd)) fwd.push(ours.fwd / cu);
      if (fl !== undefined && fl > 0 && Number.isFinite(ours.bwd)) bwd.push(ours.bwd / fl);
    }
    lines.push(`${o.D}  ${o.causal}  ${cell(fwd)}  ${cell(bwd)}`);
  }
  return lines.join('\n');
}
