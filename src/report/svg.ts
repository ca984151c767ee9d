/**
 * Small string helpers for the HTML report: escaping, number and byte formatting, axis ticks,
 * a categorical palette, and the line chart. Everything returns strings: the report is built
 * by concatenation so that thousands of timeline events stay cheap.
 */

const ESCAPES: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };

/** Escape text for HTML/SVG element content and double- or single-quoted attribute values. */
export function escapeHtml(value: unknown): string {
  return String(value).replace(/[&<>"']/g, (c) => ESCAPES[c]!);
}

/**
 * Categorical palette for ranks (Tableau 10, distinguishable and print-safe). Beyond 10 ranks
 * the colours cycle; the legend and tooltips still name the rank.
 */
export const PALETTE = ['#4e79a7', '#f28e2b', '#e15759', '#76b7b2', '#59a14f', '#edc948', '#b07aa1', '#ff9da7', '#9c755f', '#bab0ac'];

export function rankColor(rank: number): string {
  const n = PALETTE.length;
  return PALETTE[((rank % n) + n) % n]!;
}

/** Bytes in binary units: 512 B, 1.5 KiB, 12.0 MiB, 3.25 GiB. */
export function formatBytes(bytes: number): string {
  if (!Number.isFinite(bytes)) return String(bytes);
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let v = Math.abs(bytes);
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  const sign = bytes < 0 ? '-' : '';
  if (u === 0) return `${sign}${v} B`;
  return `${sign}${v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2)} ${units[u]}`;
}

/** Integer with thousands separators, independent of the locale (reports must be reproducible). */
export function formatInt(n: number): string {
  if (!Number.isFinite(n)) return String(n);
  const s = Math.round(Math.abs(n)).toString().replace(/\B(?=(\d{3})+(?!\d))/g, ',');
  return n < 0 ? `-${s}` : s;
}

/** A compact number for axis labels: trims trailing zeros, switches to exponent form at extremes. */
export function formatNum(v: number, step?: number): string {
  if (!Number.isFinite(v)) return String(v);
  if (v === 0) return '0';
  const a = Math.abs(v);
  if (a >= 1e6 || a < 1e-4) return v.toExponential(2).replace(/\.?0+e/, 'e');
  const decimals = step !== undefined && step > 0 ? Math.max(0, Math.min(6, -Math.floor(Math.log10(step) + 1e-9))) : a >= 100 ? 1 : 3;
  const s = v.toFixed(decimals);
  return s.includes('.') ? s.replace(/\.?0+$/, '') : s;
}

/** Milliseconds for tooltips. */
export function formatMs(ms: number): string {
  if (!Number.isFinite(ms)) return String(ms);
  const a = Math.abs(ms);
  if (a !== 0 && a < 1) return `${(ms * 1000).toFixed(a < 0.01 ? 2 : 1)} µs`;
  return `${ms.toFixed(a >= 100 ? 1 : 3)} ms`;
}

/** "Nice" tick values (1, 2, 5 x 10^k steps) covering [lo, hi]; at most about `count` + 1 ticks. */
export function niceTicks(lo: number, hi: number, count = 6): { ticks: number[]; step: number; lo: number; hi: number } {
  if (!Number.isFinite(lo) || !Number.isFinite(hi)) return { ticks: [0, 1], step: 1, lo: 0, hi: 1 };
  if (hi < lo) [lo, hi] = [hi, lo];
  if (hi === lo) {
    const pad = lo === 0 ? 1 : Math.abs(lo) * 0.1;
    lo -= pad;
    hi += pad;
  }
  const raw = (hi - lo) / Math.max(1, count);
  const mag = 10 ** Math.floor(Math.log10(raw));
  const f = raw / mag;
  const step = (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * mag;
  const first = Math.floor(lo / step + 1e-9) * step;
  const last = Math.ceil(hi / step - 1e-9) * step;
  const ticks: number[] = [];
  for (let i = 0, v = first; v <= last + step * 1e-6 && i < 1000; i++, v = first + i * step) ticks.push(Math.abs(v) < step * 1e-9 ? 0 : v);
  return { ticks, step, lo: first, hi: last };
}

/** Round a coordinate to 2 decimals: smaller SVG, no visible difference. */
export function r2(v: number): string {
  return String(Math.round(v * 100) / 100);
}

export interface Curve {
  title: string;
  xLabel: string;
  yLabel: string;
  series: { name: string; points: [number, number][] }[];
}

/** One SVG line chart: axes with ticks and grid, one path per series, a legend per series. */
export function lineChart(curve: Curve, index: number): string {
  const W = 720;
  const H = 340;
  const m = { left: 70, right: 170, top: 20, bottom: 50 };
  const pw = W - m.left - m.right;
  const ph = H - m.top - m.bottom;
  const series = Array.isArray(curve.series) ? curve.series : [];
  let xMin = Infinity, xMax = -Infinity, yMin = Infinity, yMax = -Infinity;
  for (const s of series) {
    for (const p of s.points ?? []) {
      const [x, y] = p;
      if (!Number.isFinite(x) || !Number.isFinite(y)) continue;
      xMin = Math.min(xMin, x);
      xMax = Math.max(xMax, x);
      yMin = Math.min(yMin, y);
      yMax = Math.max(yMax, y);
    }
  }
  const empty = xMin > xMax;
  const xt = niceTicks(empty ? 0 : xMin, empty ? 1 : xMax, 7);
  const yt = niceTicks(empty ? 0 : yMin, empty ? 1 : yMax, 6);
  const sx = (x: number) => m.left + ((x - xt.lo) / (xt.hi - xt.lo)) * pw;
  const sy = (y: number) => m.top + ph - ((y - yt.lo) / (yt.hi - yt.lo)) * ph;
  const out: string[] = [];
  out.push(`<svg class="chart curve" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 ${W} ${H}" width="${W}" height="${H}" role="img" aria-labelledby="curve-title-${index}">`);
  out.push(`<title id="curve-title-${index}">${escapeHtml(curve.title)}</title>`);
  out.push('<g class="grid">');
  for (const t of xt.ticks) out.push(`<line x1="${r2(sx(t))}" x2="${r2(sx(t))}" y1="${m.top}" y2="${m.top + ph}"/>`);
  for (const t of yt.ticks) out.push(`<line x1="${m.left}" x2="${m.left + pw}" y1="${r2(sy(t))}" y2="${r2(sy(t))}"/>`);
  out.push('</g><g class="axis">');
  out.push(`<line x1="${m.left}" x2="${m.left + pw}" y1="${m.top + ph}" y2="${m.top + ph}"/>`);
  out.push(`<line x1="${m.left}" x2="${m.left}" y1="${m.top}" y2="${m.top + ph}"/>`);
  for (const t of xt.ticks) {
    const x = r2(sx(t));
    out.push(`<line x1="${x}" x2="${x}" y1="${m.top + ph}" y2="${m.top + ph + 5}"/>`);
    out.push(`<text x="${x}" y="${m.top + ph + 18}" text-anchor="middle">${escapeHtml(formatNum(t, xt.step))}</text>`);
  }
  for (const t of yt.ticks) {
    const y = r2(sy(t));
    out.push(`<line x1="${m.left - 5}" x2="${m.left}" y1="${y}" y2="${y}"/>`);
    out.push(`<text x="${m.left - 8}" y="${y}" dy="0.32em" text-anchor="end">${escapeHtml(formatNum(t, yt.step))}</text>`);
  }
  out.push(`<text class="label" x="${m.left + pw / 2}" y="${H - 10}" text-anchor="middle">${escapeHtml(curve.xLabel)}</text>`);
  out.push(`<text class="label" transform="translate(16 ${m.top + ph / 2}) rotate(-90)" text-anchor="middle">${escapeHtml(curve.yLabel)}</text>`);
  out.push('</g>');
  if (empty) out.push(`<text class="note" x="${m.left + pw / 2}" y="${m.top + ph / 2}" text-anchor="middle">no data</text>`);
  series.forEach((s, i) => {
    // Non-finite points (a diverged loss) break the line instead of being drawn at the edge.
    let d = '';
    let pen = false;
    for (const [x, y] of s.points ?? []) {
      if (!Number.isFinite(x) || !Number.isFinite(y)) {
        pen = false;
        continue;
      }
      d += `${pen ? 'L' : 'M'}${r2(sx(x))} ${r2(sy(y))}`;
      pen = true;
    }
    const c = rankColor(i);
    if (d) out.push(`<path class="series" d="${d}" fill="none" stroke="${c}" stroke-width="2"><title>${escapeHtml(s.name)}</title></path>`);
    const onlyPoint = (s.points ?? []).filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y));
    if (onlyPoint.length === 1) out.push(`<circle cx="${r2(sx(onlyPoint[0]![0]))}" cy="${r2(sy(onlyPoint[0]![1]))}" r="3" fill="${c}"/>`);
    const ly = m.top + 8 + i * 20;
    out.push(`<g class="legend-series"><line x1="${m.left + pw + 16}" x2="${m.left + pw + 40}" y1="${ly}" y2="${ly}" stroke="${c}" stroke-width="3"/>`);
    out.push(`<text x="${m.left + pw + 46}" y="${ly}" dy="0.32em">${escapeHtml(s.name)}</text></g>`);
  });
  out.push('</svg>');
  return out.join('');
}
