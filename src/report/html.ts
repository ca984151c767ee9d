/**
 * A RunReport as one self-contained HTML page: inline CSS and inline SVG only, no scripts to
 * run, so it opens offline and reads without JavaScript (tooltips are SVG <title>s). The
 * report's JSON rides along in a <script type="application/json"> for tools to re-read.
 */
import { InputError } from '../core/errors.js';
import { writeFileAtomic } from '../io/atomic.js';
import type { BlockMap, RunReport, TraceEvent } from '../core/trace.js';
import { escapeHtml, formatBytes, formatInt, formatMs, formatNum, lineChart, niceTicks, r2, rankColor } from './svg.js';

export { escapeHtml } from './svg.js';

const SVG_NS = 'http://www.w3.org/2000/svg';

const CSS = `
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;color:#222;margin:0;background:#fafafa}
main{max-width:1140px;margin:0 auto;padding:16px 24px 48px}
h1{font-size:24px;margin:8px 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
.sub{color:#666;margin:0 0 12px}.note{color:#777;font-style:italic}
.tables{display:flex;flex-wrap:wrap;gap:24px;align-items:flex-start}
table{border-collapse:collapse;background:#fff;margin:4px 0}
th,td{border:1px solid #ddd;padding:3px 10px;text-align:left;vertical-align:top}
th{background:#f0f0f0}td.num{font-variant-numeric:tabular-nums}caption{text-align:left;font-weight:600;padding:4px 0}
.scroll{overflow-x:auto;background:#fff;border:1px solid #e4e4e4;padding:6px}
svg{display:block;font:11px system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif}
svg text{fill:#333}svg .label{font-size:12px;font-weight:600}svg text.note{fill:#888;font-style:italic}
.grid line{stroke:#eee}.axis line{stroke:#888}
.lane-bg{fill:#fff}.lane-bg.odd{fill:#f5f7fa}
.ev.compute.fwd{fill:#2f6db5}.ev.compute.bwd{fill:#8bb8e8}
.ev.transfer.fwd{fill:#e8780c}.ev.transfer.bwd{fill:#f7c27f}
.ev.wait.fwd{fill:url(#hatch-fwd)}.ev.wait.bwd{fill:url(#hatch-bwd)}
.ev:hover,.cell:hover{stroke:#000;stroke-width:1}
text.step{fill:#fff;font-size:9px;pointer-events:none}
.phase rect{fill:#eef1f5}.phase text{fill:#555;font-size:10px}
.stripe{fill:url(#bm-partial);pointer-events:none}
.mem-bar:hover{opacity:.8}
.legend{display:flex;flex-wrap:wrap;gap:6px 16px;margin:8px 0;font-size:13px}
.legend span{display:inline-flex;align-items:center;gap:6px}
.sw{display:inline-block;width:14px;height:14px;border:1px solid #0003;box-sizing:border-box}
.sw.thin{height:7px}
.sw.hatch-fwd{background:repeating-linear-gradient(45deg,#888 0 2px,#e6e6e6 2px 5px)}
.sw.hatch-bwd{background:repeating-linear-gradient(45deg,#bbb 0 2px,#f3f3f3 2px 5px)}
.sw.partial{background:repeating-linear-gradient(45deg,#fff9 0 2px,#0000 2px 5px),#999}
`;

/** The page, as a string. Throws InputError (naming the field) on a malformed report. */
export function renderReport(report: RunReport): string {
  validate(report);
  const parts: string[] = [];
  parts.push('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">');
  parts.push('<meta name="viewport" content="width=device-width, initial-scale=1">');
  parts.push(`<title>${escapeHtml(report.title)}</title><style>${CSS}</style></head><body><main>`);
  parts.push(`<h1>${escapeHtml(report.title)}</h1>`);
  parts.push(`<p class="sub">${formatInt(report.ranks)} ranks · ${formatInt(report.steps)} steps · ${formatInt(report.events.length)} trace events</p>`);
  parts.push('<div class="tables">');
  parts.push(keyValueTable('Configuration', 'config', Object.entries(report.config ?? {}).map(([k, v]) => [k, String(v)])));
  parts.push(keyValueTable('Summary', 'summary', (report.summary ?? []).map((r) => [r.label, r.value])));
  parts.push('</div>');
  // A report of curves alone (training) has no timeline or memory to show.
  const curvesOnly = report.events.length === 0 && (report.memoryPerRank ?? []).length === 0 && (report.curves?.length ?? 0) > 0;
  if (!curvesOnly) {
    parts.push(section('timeline', 'Timeline', timeline(report)));
    parts.push(section('memory', 'Memory per rank', memoryChart(report.memoryPerRank ?? [])));
  }
  if (report.blockMap) parts.push(section('blockmap', 'Block map of the mask', blockMap(report.blockMap, report.ranks)));
  if (report.plan && report.plan.length > 0) parts.push(section('plan', 'Planner vs measured', planTable(report.plan)));
  if (report.curves && report.curves.length > 0) {
    parts.push(section('curves', 'Curves', report.curves.map((c, i) => `<h3>${escapeHtml(c.title)}</h3><div class="scroll">${lineChart(c, i)}</div>`).join('')));
  }
  parts.push(`</main><script type="application/json" id="ringattn-data">${embedJson(report)}</script></body></html>\n`);
  return parts.join('\n');
}

/**
 * Write the page to `path` atomically (writeFileAtomic: a temp file in the same directory, then a
 * rename), so that a reader, a crash or an interrupt half way never leaves a partial report.
 * Errors name `arg` (the CLI's flag).
 */
export function writeReport(path: string, report: RunReport, arg = 'path'): void {
  if (typeof path !== 'string' || path.length === 0) throw new InputError(arg, 'expected a non-empty file path');
  writeFileAtomic(path, renderReport(report), arg);
}

/** JSON safe inside a <script> element: no `</script>`, no `<!--`, no line separators. */
function embedJson(report: RunReport): string {
  return JSON.stringify(report).replace(/</g, '\\u003c').replace(/\u2028/g, '\\u2028').replace(/\u2029/g, '\\u2029');
}

function validate(report: RunReport): void {
  if (typeof report !== 'object' || report === null) throw new InputError('report', 'expected a RunReport object');
  if (typeof report.title !== 'string') throw new InputError('report.title', 'expected a string');
  if (!Number.isInteger(report.ranks) || report.ranks < 0) throw new InputError('report.ranks', `expected a non-negative integer, got ${report.ranks}`);
  if (!Array.isArray(report.events)) throw new InputError('report.events', 'expected an array of TraceEvent');
  if (!Array.isArray(report.memoryPerRank)) throw new InputError('report.memoryPerRank', 'expected an array of byte counts');
  if (!Array.isArray(report.summary)) throw new InputError('report.summary', 'expected an array of {label, value}');
  report.events.forEach((e, i) => {
    if (!Number.isInteger(e.rank) || e.rank < 0) throw new InputError(`report.events[${i}].rank`, `expected a non-negative integer, got ${e.rank}`);
    if (!Number.isFinite(e.start) || !Number.isFinite(e.end) || e.end < e.start) {
      throw new InputError(`report.events[${i}]`, `expected finite start <= end, got ${e.start}..${e.end}`);
    }
  });
  const bm = report.blockMap;
  if (bm !== undefined) {
    if (!(bm.blockSize > 0) || !Array.isArray(bm.cells)) throw new InputError('report.blockMap', 'expected {blockSize > 0, cells[qb][kb]}');
    bm.cells.forEach((row, qb) => {
      if (!Array.isArray(row)) throw new InputError(`report.blockMap.cells[${qb}]`, 'expected an array of cells');
    });
  }
}

function section(id: string, title: string, body: string): string {
  return `<section id="${id}"><h2>${escapeHtml(title)}</h2>${body}</section>`;
}

function keyValueTable(caption: string, cls: string, rows: [string, string][]): string {
  if (rows.length === 0) return `<table class="${cls}"><caption>${escapeHtml(caption)}</caption><tr><td class="note">none</td></tr></table>`;
  const body = rows.map(([k, v]) => `<tr><th scope="row">${escapeHtml(k)}</th><td class="num">${escapeHtml(v)}</td></tr>`).join('');
  return `<table class="${cls}"><caption>${escapeHtml(caption)}</caption><tbody>${body}</tbody></table>`;
}

function planTable(rows: NonNullable<RunReport['plan']>): string {
  const body = rows
    .map((r) => `<tr><th scope="row">${escapeHtml(r.label)}</th><td class="num">${escapeHtml(r.predicted)}</td><td class="num">${escapeHtml(r.measured)}</td></tr>`)
    .join('');
  return `<table class="plan"><thead><tr><th>quantity</th><th>predicted</th><th>measured</th></tr></thead><tbody>${body}</tbody></table>`;
}

function legend(items: { cls?: string; color?: string; label: string; attr?: string }[]): string {
  const spans = items.map(
    (it) => `<span${it.attr ? ` ${it.attr}` : ''}><i class="sw${it.cls ? ` ${it.cls}` : ''}"${it.color ? ` style="background:${it.color}"` : ''}></i>${escapeHtml(it.label)}</span>`,
  );
  return `<div class="legend">${spans.join('')}</div>`;
}

function eventTitle(e: TraceEvent): string {
  const lines = [`rank ${e.rank} · step ${e.step} · ${e.kind} (${e.phase})`, `${formatMs(e.end - e.start)}  [${formatMs(e.start)} – ${formatMs(e.end)}]`];
  if (e.bytes !== undefined) lines.push(`${formatBytes(e.bytes)} (${formatInt(e.bytes)} bytes)`);
  if (e.pairs !== undefined) lines.push(`${formatInt(e.pairs)} query×key pairs`);
  return escapeHtml(lines.join('\n'));
}

/** One lane per rank: compute and waits in the main row, transfers in a thin row beneath. */
function timeline(report: RunReport): string {
  const events = report.events;
  let maxRank = -1;
  let t0 = 0;
  let t1 = -Infinity;
  for (const e of events) {
    if (e.rank > maxRank) maxRank = e.rank;
    if (e.start < t0) t0 = e.start;
    if (e.end > t1) t1 = e.end;
  }
  const lanes = Math.max(report.ranks, maxRank + 1);
  if (lanes === 0) return '<p class="note">No ranks and no events recorded.</p>';
  if (!(t1 > t0)) t1 = t0 + 1;
  const ticks = niceTicks(t0, t1, 10);
  const m = { left: 64, right: 16, top: 22, bottom: 40 };
  const PW = 1020;
  const LANE = 34;
  const W = m.left + PW + m.right;
  const H = m.top + lanes * LANE + m.bottom;
  const sx = (t: number) => m.left + ((t - ticks.lo) / (ticks.hi - ticks.lo)) * PW;
  const byRank: TraceEvent[][] = Array.from({ length: lanes }, () => []);
  for (const e of events) byRank[e.rank]!.push(e);
  const order = { wait: 0, compute: 1, transfer: 2 } as const;

  const out: string[] = [];
  out.push(`<svg class="chart timeline" xmlns="${SVG_NS}" viewBox="0 0 ${W} ${H}" width="${W}" height="${H}" role="img" aria-label="ring timeline">`);
  out.push('<defs>');
  for (const [id, ink, bg] of [['hatch-fwd', '#888', '#e6e6e6'], ['hatch-bwd', '#bbb', '#f3f3f3']] as const) {
    out.push(`<pattern id="${id}" width="5" height="5" patternUnits="userSpaceOnUse" patternTransform="rotate(45)"><rect width="5" height="5" fill="${bg}"/><rect width="2" height="5" fill="${ink}"/></pattern>`);
  }
  out.push('</defs><g class="grid">');
  for (const t of ticks.ticks) out.push(`<line x1="${r2(sx(t))}" x2="${r2(sx(t))}" y1="${m.top}" y2="${m.top + lanes * LANE}"/>`);
  out.push('</g>');
  // Phase strip: where forward and backward run, so the eye finds the boundary.
  out.push('<g class="phase">');
  for (const phase of ['forward', 'backward'] as const) {
    let a = Infinity;
    let b = -Infinity;
    for (const e of events) {
      if (e.phase !== phase) continue;
      a = Math.min(a, e.start);
      b = Math.max(b, e.end);
    }
    if (a > b) continue;
    out.push(`<rect x="${r2(sx(a))}" y="4" width="${r2(Math.max(1, sx(b) - sx(a)))}" height="14"><title>${phase}: ${escapeHtml(formatMs(a))} – ${escapeHtml(formatMs(b))}</title></rect>`);
    out.push(`<text x="${r2(sx(a) + 4)}" y="14">${phase}</text>`);
  }
  out.push('</g>');
  for (let r = 0; r < lanes; r++) {
    const y0 = m.top + r * LANE;
    out.push(`<g class="lane" data-rank="${r}">`);
    out.push(`<rect class="lane-bg${r % 2 ? ' odd' : ''}" x="${m.left}" y="${y0}" width="${PW}" height="${LANE}"/>`);
    out.push(`<text x="${m.left - 8}" y="${y0 + 11}" dy="0.32em" text-anchor="end">rank ${r}</text>`);
    const evs = byRank[r]!.slice().sort((a, b) => order[a.kind] - order[b.kind]);
    for (const e of evs) {
      const x = sx(e.start);
      const w = Math.max(0.75, sx(e.end) - x);
      const [y, h] = e.kind === 'transfer' ? [y0 + 22, 8] : [y0 + 3, 17];
      const ph = e.phase === 'backward' ? 'bwd' : 'fwd';
      out.push(`<rect class="ev ${e.kind} ${ph}" x="${r2(x)}" y="${y}" width="${r2(w)}" height="${h}"><title>${eventTitle(e)}</title></rect>`);
      if (e.kind === 'compute' && w >= 16) out.push(`<text class="step" x="${r2(x + w / 2)}" y="${y0 + 12}" dy="0.32em" text-anchor="middle">${e.step}</text>`);
    }
    out.push('</g>');
  }
  const yAxis = m.top + lanes * LANE;
  out.push(`<g class="axis"><line x1="${m.left}" x2="${m.left + PW}" y1="${yAxis}" y2="${yAxis}"/>`);
  for (const t of ticks.ticks) {
    const x = r2(sx(t));
    out.push(`<line x1="${x}" x2="${x}" y1="${yAxis}" y2="${yAxis + 5}"/><text x="${x}" y="${yAxis + 17}" text-anchor="middle">${escapeHtml(formatNum(t, ticks.step))}</text>`);
  }
  out.push(`<text class="label" x="${m.left + PW / 2}" y="${H - 4}" text-anchor="middle">time (ms)</text></g>`);
  if (events.length === 0) out.push(`<text class="note" x="${m.left + PW / 2}" y="${m.top + (lanes * LANE) / 2}" dy="0.32em" text-anchor="middle">no trace events recorded</text>`);
  out.push('</svg>');
  const key = legend([
    { color: '#2f6db5', label: 'compute (forward)' },
    { color: '#8bb8e8', label: 'compute (backward)' },
    { cls: 'thin', color: '#e8780c', label: 'transfer (forward)' },
    { cls: 'thin', color: '#f7c27f', label: 'transfer (backward)' },
    { cls: 'hatch-fwd', label: 'wait (forward)' },
    { cls: 'hatch-bwd', label: 'wait (backward)' },
  ]);
  return `<div class="scroll">${out.join('')}</div>${key}<p class="note">Transfers run in the thin row under each rank's compute row; a transfer that overlaps compute is hidden behind it. Numbers in compute bars are ring steps; hover a bar for details.</p>`;
}

function memoryChart(mem: number[]): string {
  if (mem.length === 0) return '<p class="note">No memory figures recorded.</p>';
  const finite = mem.filter((b) => Number.isFinite(b) && b >= 0);
  const max = finite.length ? Math.max(...finite) : 0;
  // Ticks in the unit of the largest value, so the axis reads "0, 64, 128 MiB" not raw bytes.
  const unitPow = max > 0 ? Math.min(5, Math.floor(Math.log(max) / Math.log(1024))) : 0;
  const unit = 1024 ** Math.max(0, unitPow);
  const unitName = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'][Math.max(0, unitPow)]!;
  const ticks = niceTicks(0, max > 0 ? max / unit : 1, 6);
  const m = { left: 64, right: 110, top: 8, bottom: 40 };
  const PW = 640;
  const ROW = 22;
  const W = m.left + PW + m.right;
  const H = m.top + mem.length * ROW + m.bottom;
  const sx = (v: number) => m.left + (v / ticks.hi) * PW;
  const out: string[] = [];
  out.push(`<svg class="chart memory" xmlns="${SVG_NS}" viewBox="0 0 ${W} ${H}" width="${W}" height="${H}" role="img" aria-label="peak memory per rank"><g class="grid">`);
  for (const t of ticks.ticks) out.push(`<line x1="${r2(sx(t))}" x2="${r2(sx(t))}" y1="${m.top}" y2="${m.top + mem.length * ROW}"/>`);
  out.push('</g>');
  mem.forEach((b, r) => {
    const y = m.top + r * ROW;
    const ok = Number.isFinite(b) && b >= 0;
    const w = ok ? Math.max(ok && b > 0 ? 1 : 0, sx(b / unit) - m.left) : 0;
    out.push(`<text x="${m.left - 8}" y="${y + ROW / 2}" dy="0.32em" text-anchor="end">rank ${r}</text>`);
    out.push(`<rect class="mem-bar" x="${m.left}" y="${y + 3}" width="${r2(w)}" height="${ROW - 6}" fill="${rankColor(r)}"><title>rank ${r}: ${escapeHtml(formatBytes(b))} (${escapeHtml(formatInt(b))} bytes)</title></rect>`);
    out.push(`<text x="${r2(m.left + w + 6)}" y="${y + ROW / 2}" dy="0.32em">${escapeHtml(ok ? formatBytes(b) : 'n/a')}</text>`);
  });
  const yAxis = m.top + mem.length * ROW;
  out.push(`<g class="axis"><line x1="${m.left}" x2="${m.left + PW}" y1="${yAxis}" y2="${yAxis}"/>`);
  for (const t of ticks.ticks) {
    const x = r2(sx(t));
    out.push(`<line x1="${x}" x2="${x}" y1="${yAxis}" y2="${yAxis + 5}"/><text x="${x}" y="${yAxis + 17}" text-anchor="middle">${escapeHtml(formatNum(t, ticks.step))}</text>`);
  }
  out.push(`<text class="label" x="${m.left + PW / 2}" y="${H - 4}" text-anchor="middle">peak bytes held (${unitName})</text></g></svg>`);
  return `<div class="scroll">${out.join('')}</div>`;
}

/** The S x S mask in blocks: colour = computing rank, stripes = partial block, blank = skipped. */
function blockMap(bm: BlockMap, ranks: number): string {
  const nq = bm.cells.length;
  const nk = bm.cells.reduce((a, row) => Math.max(a, row.length), 0);
  if (nq === 0 || nk === 0) return '<p class="note">Empty block map.</p>';
  const cell = Math.min(32, 600 / Math.max(nq, nk));
  const m = { left: 80, top: 52, right: 12, bottom: 12 };
  const GW = nk * cell;
  const GH = nq * cell;
  const W = m.left + GW + m.right;
  const H = m.top + GH + m.bottom;
  const bs = bm.blockSize;
  let maxRank = ranks - 1;
  let uncomputed = false;
  const out: string[] = [];
  out.push(`<svg class="chart blockmap" xmlns="${SVG_NS}" viewBox="0 0 ${r2(W)} ${r2(H)}" width="${r2(W)}" height="${r2(H)}" role="img" aria-label="mask block map">`);
  const sp = Math.max(3, Math.min(6, cell / 3));
  out.push(`<defs><pattern id="bm-partial" width="${r2(sp)}" height="${r2(sp)}" patternUnits="userSpaceOnUse" patternTransform="rotate(45)"><rect width="${r2(sp / 2.5)}" height="${r2(sp)}" fill="#fff" fill-opacity="0.7"/></pattern></defs>`);
  out.push(`<rect class="bm-bg" x="${m.left}" y="${m.top}" width="${r2(GW)}" height="${r2(GH)}" fill="#f4f4f4" stroke="#ccc"/>`);
  // Consecutive cells of one row with the same class and rank become one rect: a 600 x 600
  // block map stays a few thousand elements without losing anything.
  for (let qb = 0; qb < nq; qb++) {
    const row = bm.cells[qb]!;
    let kb = 0;
    while (kb < row.length) {
      const c = row[kb]!;
      let end = kb + 1;
      while (end < row.length && row[end]!.cls === c.cls && row[end]!.rank === c.rank) end++;
      if (c.cls !== 'empty') {
        if (c.rank > maxRank) maxRank = c.rank;
        if (c.rank < 0) uncomputed = true;
        const x = r2(m.left + kb * cell);
        const y = r2(m.top + qb * cell);
        const w = r2((end - kb) * cell);
        const h = r2(cell);
        const fill = c.rank >= 0 ? rankColor(c.rank) : '#9a9a9a';
        const keys = end - kb === 1 ? `key block ${kb}` : `key blocks ${kb}–${end - 1}`;
        const tip = `query block ${qb} (tokens ${qb * bs}–${(qb + 1) * bs - 1}), ${keys} (tokens ${kb * bs}–${end * bs - 1})\n${c.cls}, ${c.rank >= 0 ? `rank ${c.rank}` : 'not computed'}`;
        out.push(`<rect class="cell ${c.cls}" data-rank="${c.rank}" x="${x}" y="${y}" width="${w}" height="${h}" fill="${fill}"><title>${escapeHtml(tip)}</title></rect>`);
        if (c.cls === 'partial') out.push(`<rect class="stripe" x="${x}" y="${y}" width="${w}" height="${h}"/>`);
      }
      kb = end;
    }
  }
  if (cell >= 6) {
    let d = '';
    for (let i = 1; i < nk; i++) d += `M${r2(m.left + i * cell)} ${m.top}v${r2(GH)}`;
    for (let i = 1; i < nq; i++) d += `M${m.left} ${r2(m.top + i * cell)}h${r2(GW)}`;
    if (d) out.push(`<path d="${d}" stroke="#fff" stroke-width="0.6" fill="none" pointer-events="none"/>`);
  }
  // Token labels every `every` blocks, with `every` a 1-2-5 step that keeps labels ~48px apart.
  const every = niceTicks(0, Math.ceil(48 / cell), 1).step;
  out.push('<g class="axis">');
  for (let kb = 0; kb <= nk; kb += every) {
    const x = r2(m.left + kb * cell);
    out.push(`<line x1="${x}" x2="${x}" y1="${m.top - 4}" y2="${m.top}"/><text x="${x}" y="${m.top - 8}" text-anchor="middle">${formatInt(kb * bs)}</text>`);
  }
  for (let qb = 0; qb <= nq; qb += every) {
    const y = r2(m.top + qb * cell);
    out.push(`<line x1="${m.left - 4}" x2="${m.left}" y1="${y}" y2="${y}"/><text x="${m.left - 7}" y="${y}" dy="0.32em" text-anchor="end">${formatInt(qb * bs)}</text>`);
  }
  out.push(`<text class="label" x="${r2(m.left + GW / 2)}" y="16" text-anchor="middle">key tokens →</text>`);
  out.push(`<text class="label" transform="translate(18 ${r2(m.top + GH / 2)}) rotate(-90)" text-anchor="middle">query tokens →</text></g></svg>`);
  const items: { cls?: string; color?: string; label: string; attr?: string }[] = [];
  for (let r = 0; r <= maxRank; r++) items.push({ color: rankColor(r), label: `rank ${r}`, attr: `class="legend-rank" data-rank="${r}"` });
  items.push({ color: '#f4f4f4', label: 'skipped (mask empty)' }, { cls: 'partial', label: 'partial (mask edge inside block)' });
  if (uncomputed) items.push({ color: '#9a9a9a', label: 'visible but not computed' });
  return `<div class="scroll">${out.join('')}</div>${legend(items)}<p class="note">${formatInt(nq)} × ${formatInt(nk)} blocks of ${formatInt(bs)} tokens; rows are query blocks, columns key blocks.</p>`;
}
