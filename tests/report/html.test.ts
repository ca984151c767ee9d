import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { InputError } from '../../src/core/errors.js';
import type { RunReport, TraceEvent } from '../../src/core/trace.js';
import { escapeHtml, renderReport, writeReport } from '../../src/report/html.js';
import { formatBytes, niceTicks } from '../../src/report/svg.js';

/** P ranks, P steps per phase; causal block map with 2 blocks per rank. */
function synthetic(P = 4, opts: { config?: RunReport['config']; title?: string } = {}): RunReport {
  const events: TraceEvent[] = [];
  let t = 0;
  for (const phase of ['forward', 'backward'] as const) {
    const c = phase === 'forward' ? 2 : 4.5;
    for (let s = 0; s < P; s++) {
      for (let r = 0; r < P; r++) {
        events.push({ rank: r, step: s, kind: 'compute', phase, start: t, end: t + c, pairs: 4096 * (r + 1) });
        if (s < P - 1) {
          const x = 1.5 + r * 0.4;
          events.push({ rank: r, step: s, kind: 'transfer', phase, start: t, end: t + x * (phase === 'backward' ? 2 : 1), bytes: 1 << 20 });
          const xe = t + x * (phase === 'backward' ? 2 : 1);
          if (xe > t + c) events.push({ rank: r, step: s, kind: 'wait', phase, start: t + c, end: xe });
        }
      }
      t += c + 1.5;
    }
  }
  const nb = 2 * P;
  const cells = Array.from({ length: nb }, (_, qb) =>
    Array.from({ length: nb }, (_, kb) =>
      kb > qb ? { cls: 'empty' as const, rank: -1 } : { cls: kb === qb ? ('partial' as const) : ('full' as const), rank: Math.floor(qb / 2) },
    ),
  );
  return {
    title: opts.title ?? 'ring forward+backward, causal',
    config: opts.config ?? { S: 1024, H: 8, D: 64, layout: 'contiguous', causal: true },
    ranks: P,
    steps: P,
    events,
    memoryPerRank: Array.from({ length: P }, (_, r) => (3 + r) * 1024 * 1024 + 512),
    blockMap: { blockSize: 64, cells },
    summary: [
      { label: 'wall time', value: `${t.toFixed(1)} ms` },
      { label: 'overlap', value: '87 %' },
    ],
    plan: [
      { label: 'forward time', predicted: '9.0 ms', measured: '10.2 ms' },
      { label: 'peak memory', predicted: '6.0 MiB', measured: '6.0 MiB' },
    ],
    curves: [
      {
        title: 'training loss',
        xLabel: 'step',
        yLabel: 'loss',
        series: [
          { name: 'ring attention', points: Array.from({ length: 50 }, (_, i) => [i, 4 * Math.exp(-i / 15) + 1] as [number, number]) },
          { name: 'dense reference', points: Array.from({ length: 50 }, (_, i) => [i, 4 * Math.exp(-i / 15) + 1.01] as [number, number]) },
        ],
      },
    ],
  };
}

const VOID = new Set(['area', 'base', 'br', 'col', 'embed', 'hr', 'img', 'input', 'link', 'meta', 'source', 'track', 'wbr']);
const RAW = new Set(['script', 'style']);
const SVG = new Set(['svg', 'g', 'defs', 'pattern', 'rect', 'line', 'path', 'circle', 'polyline', 'text', 'tspan', 'title']);
const SHAPES = new Set(['rect', 'line', 'path', 'circle', 'polyline']);
const PARENTS: Record<string, string[]> = { tr: ['table', 'thead', 'tbody'], td: ['tr'], th: ['tr'], thead: ['table'], tbody: ['table'], caption: ['table'] };

/**
 * A strict little checker for the page we emit: tags parse (double-quoted attributes, no
 * duplicates), every non-void element closes in order, `/>` only inside SVG, SVG elements only
 * inside <svg> and nested as SVG allows, and text holds only known entities. Returns tag counts.
 */
function checkWellFormed(html: string): Map<string, number> {
  const stack: string[] = [];
  const counts = new Map<string, number>();
  const where = (i: number) => `at ${i}: ${JSON.stringify(html.slice(i, i + 60))} (open: ${stack.join('>')})`;
  const checkText = (s: string, i: number) => {
    for (const m of s.matchAll(/&[^;\s]*;?/g)) assert.match(m[0], /^&(amp|lt|gt|quot|#39|#\d+);$/, `bad entity ${where(i)}`);
    assert.ok(!s.includes('>'), `stray '>' ${where(i)}`);
  };
  let i = 0;
  while (i < html.length) {
    const lt = html.indexOf('<', i);
    checkText(html.slice(i, lt < 0 ? html.length : lt), i);
    if (lt < 0) break;
    i = lt;
    if (html.startsWith('<!--', i)) {
      i = html.indexOf('-->', i) + 3;
      assert.ok(i > 2, 'unclosed comment');
      continue;
    }
    if (/^<!doctype html>/i.test(html.slice(i, i + 15))) {
      assert.equal(stack.length, 0, 'doctype inside an element');
      i += 15;
      continue;
    }
    const close = /^<\/([a-zA-Z][\w-]*)>/.exec(html.slice(i, i + 64));
    if (close) {
      assert.equal(stack.pop(), close[1], `misnested </${close[1]}> ${where(i)}`);
      i += close[0].length;
      continue;
    }
    const open = /^<([a-zA-Z][\w-]*)((?:\s+[a-zA-Z_:][\w:.-]*(?:="[^"<]*")?)*)\s*(\/?)>/.exec(html.slice(i, i + 20000));
    assert.ok(open, `unparsable tag ${where(i)}`);
    const [whole, tag, attrs, selfClose] = open;
    const names = [...attrs!.matchAll(/\s([a-zA-Z_:][\w:.-]*)(?:="([^"]*)")?/g)];
    assert.equal(new Set(names.map((a) => a[1])).size, names.length, `duplicate attribute ${where(i)}`);
    for (const a of names) if (a[2] !== undefined) checkText(a[2], i);
    const parent = stack[stack.length - 1];
    const inSvg = stack.includes('svg');
    if (inSvg) {
      assert.ok(SVG.has(tag!) && tag !== 'svg', `<${tag}> inside <svg> ${where(i)}`);
      if (SHAPES.has(parent!)) assert.equal(tag, 'title', `<${tag}> inside <${parent}> ${where(i)}`);
      if (parent === 'text') assert.ok(tag === 'tspan' || tag === 'title', `<${tag}> inside <text> ${where(i)}`);
      assert.notEqual(parent, 'title', `<${tag}> inside <title> ${where(i)}`);
      if (tag === 'defs') assert.equal(parent, 'svg', `<defs> not a child of <svg> ${where(i)}`);
      if (tag === 'pattern') assert.equal(parent, 'defs', `<pattern> outside <defs> ${where(i)}`);
    } else {
      assert.ok(tag === 'svg' || tag === 'title' || !SVG.has(tag!), `SVG <${tag}> outside <svg> ${where(i)}`);
      if (tag === 'title') assert.equal(parent, 'head', `<title> outside <head> ${where(i)}`);
      assert.ok(!selfClose, `self-closing HTML <${tag}/> ${where(i)}`);
      if (PARENTS[tag!]) assert.ok(PARENTS[tag!]!.includes(parent!), `<${tag}> inside <${parent}> ${where(i)}`);
    }
    counts.set(tag!, (counts.get(tag!) ?? 0) + 1);
    i += whole.length;
    if (RAW.has(tag!)) {
      const end = html.indexOf(`</${tag}>`, i);
      assert.ok(end >= 0, `unclosed <${tag}>`);
      i = end + tag!.length + 3;
    } else if (!selfClose && !VOID.has(tag!)) stack.push(tag!);
  }
  assert.deepEqual(stack, [], 'elements left open');
  return counts;
}

function embedded(html: string): unknown {
  const m = /<script type="application\/json" id="ringattn-data">([\s\S]*?)<\/script>/.exec(html);
  assert.ok(m, 'no embedded JSON');
  return JSON.parse(m[1]!);
}

function laneChunk(html: string, rank: number): string {
  const start = html.indexOf(`<g class="lane" data-rank="${rank}">`);
  assert.ok(start >= 0, `no lane for rank ${rank}`);
  return html.slice(start, html.indexOf('</g>', start));
}

const count = (s: string, re: RegExp) => [...s.matchAll(re)].length;

test('renders a well-formed page whose embedded JSON round-trips', () => {
  const report = synthetic();
  const html = renderReport(report);
  const tags = checkWellFormed(html);
  assert.equal(tags.get('html'), 1);
  assert.equal(tags.get('script'), 1, 'no executable scripts, only the JSON data block');
  assert.ok((tags.get('svg') ?? 0) >= 4, 'timeline, memory, block map and a curve');
  assert.deepEqual(embedded(html), report);
});

test('one lane per rank and one rect per event, each with a tooltip', () => {
  const report = synthetic();
  const html = renderReport(report);
  assert.equal(count(html, /<g class="lane" data-rank="\d+">/g), report.ranks);
  assert.equal(count(html, /<rect class="ev (compute|transfer|wait) (fwd|bwd)"[^>]*><title>/g), report.events.length);
  for (let r = 0; r < report.ranks; r++) {
    const lane = laneChunk(html, r);
    const mine = report.events.filter((e) => e.rank === r);
    assert.equal(count(lane, /<rect class="ev /g), mine.length, `rank ${r}`);
    assert.ok(lane.includes(`>rank ${r}</text>`));
    assert.equal(count(lane, /class="ev compute bwd"/g), mine.filter((e) => e.kind === 'compute' && e.phase === 'backward').length);
    assert.equal(count(lane, /class="ev wait /g), mine.filter((e) => e.kind === 'wait').length);
  }
  assert.match(html, /rank 2 · step 1 · transfer \(forward\)/);
  assert.match(html, /1\.00 MiB \(1,048,576 bytes\)/);
  for (const label of ['compute (forward)', 'compute (backward)', 'transfer (forward)', 'transfer (backward)', 'wait (forward)', 'wait (backward)']) {
    assert.ok(html.includes(label), `timeline legend lacks ${label}`);
  }
});

test('block map: a legend entry per rank, merged runs, stripes on partial cells, token axes', () => {
  const report = synthetic();
  const html = renderReport(report);
  for (let r = 0; r < report.ranks; r++) assert.match(html, new RegExp(`class="legend-rank" data-rank="${r}"><i[^>]*></i>rank ${r}</span>`));
  const partial = count(html, /class="cell partial"/g);
  assert.equal(partial, 8, 'one partial cell per diagonal block');
  assert.equal(count(html, /class="stripe"/g), partial);
  // Row qb of a causal map: full run(s) then the diagonal, merged per owner rank.
  assert.ok(count(html, /class="cell full"/g) < 28, 'full cells of a row merge into runs');
  assert.match(html, /query block 5 \(tokens 320–383\), key blocks 0–4 \(tokens 0–319\)\nfull, rank 2/);
  assert.ok(html.includes('>384</text>') && html.includes('>512</text>') && html.includes('key tokens'));
});

test('memory in human units, plan table, curves with a legend per series', () => {
  const html = renderReport(synthetic());
  assert.ok(html.includes('>3.00 MiB</text>') && html.includes('>6.00 MiB</text>'));
  assert.ok(html.includes('peak bytes held (MiB)'));
  assert.match(html, /<th>predicted<\/th><th>measured<\/th>/);
  assert.match(html, /<th scope="row">forward time<\/th><td class="num">9\.0 ms<\/td><td class="num">10\.2 ms<\/td>/);
  assert.equal(count(html, /<path class="series"/g), 2);
  assert.ok(html.includes('>ring attention</text>') && html.includes('>dense reference</text>'));
  assert.equal(formatBytes(1536), '1.50 KiB');
  assert.equal(formatBytes(3 * 2 ** 30), '3.00 GiB');
  assert.deepEqual(niceTicks(0, 9.3, 5).ticks, [0, 2, 4, 6, 8, 10]);
});

test('offline: no external references apart from the SVG namespace', () => {
  const html = renderReport(synthetic());
  const stripped = html.replaceAll('xmlns="http://www.w3.org/2000/svg"', '');
  assert.doesNotMatch(stripped, /https?:|\/\/[a-z]/i);
  assert.doesNotMatch(html, /\ssrc=|\shref=|@import|@font-face|url\((?!#)/i);
});

test('text is escaped; the embedded JSON cannot close its script element', () => {
  const evil = '<script>alert("x")</script>';
  const report = synthetic(4, { title: `</script><b>${evil}`, config: { note: evil, "a&b'": true } });
  const html = renderReport(report);
  checkWellFormed(html);
  assert.ok(!html.includes('<script>alert'));
  assert.ok(!html.includes('<b>'));
  assert.equal(count(html, /<script/g), 1);
  assert.ok(html.includes('&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;'));
  assert.ok(html.includes('<th scope="row">a&amp;b&#39;</th>'));
  assert.deepEqual(embedded(html), report);
  assert.equal(escapeHtml(`<a href="x">'&'</a>`), '&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;');
});

test('a report of curves alone shows no empty timeline or memory section', () => {
  const html = renderReport({ title: 't', config: {}, ranks: 2, steps: 0, events: [], memoryPerRank: [], summary: [], curves: [{ title: 'loss', xLabel: 'step', yLabel: 'loss', series: [{ name: 'a', points: [[1, 2], [2, 1]] }] }] });
  assert.ok(!html.includes('id="timeline"'));
  assert.ok(!html.includes('id="memory"'));
  assert.ok(html.includes('id="curves"'));
});

test('an empty events list (and no optional sections) still renders', () => {
  const report: RunReport = { title: 'empty', config: {}, ranks: 2, steps: 0, events: [], memoryPerRank: [], summary: [] };
  const html = renderReport(report);
  checkWellFormed(html);
  assert.equal(count(html, /<g class="lane"/g), 2);
  assert.equal(count(html, /class="ev /g), 0);
  assert.ok(html.includes('no trace events recorded'));
  assert.ok(!html.includes('id="blockmap"') && !html.includes('id="plan"') && !html.includes('id="curves"'));
  assert.deepEqual(embedded(html), report);
  checkWellFormed(renderReport({ ...report, ranks: 0 }));
});

test('scales to 8 ranks x 16 steps x 2 phases and thousands of events', () => {
  const report = synthetic(8);
  const extra: TraceEvent[] = [];
  for (let i = 0; i < 5000; i++) extra.push({ rank: i % 8, step: i % 16, kind: 'compute', phase: i % 2 ? 'backward' : 'forward', start: i * 0.01, end: i * 0.01 + 0.005 });
  const big = { ...report, steps: 16, events: [...report.events, ...extra] };
  const html = renderReport(big);
  checkWellFormed(html);
  assert.equal(count(html, /<rect class="ev /g), big.events.length);
  assert.equal(count(html, /<g class="lane"/g), 8);
  assert.ok(html.length < 4_000_000, `page is ${html.length} chars`);
});

test('rejects malformed reports with an InputError naming the field', () => {
  const bad = synthetic();
  bad.events = [...bad.events, { rank: 1, step: 0, kind: 'compute', phase: 'forward', start: 5, end: 2 }];
  assert.throws(() => renderReport(bad), (e: unknown) => e instanceof InputError && e.message.startsWith(`report.events[${bad.events.length - 1}]`));
  assert.throws(() => renderReport({ ...synthetic(), ranks: -1 }), (e: unknown) => e instanceof InputError && e.arg === 'report.ranks');
});

test('writeReport writes the page atomically, leaving no temp file', () => {
  const dir = mkdtempSync(join(tmpdir(), 'ringattn-report-'));
  try {
    const report = synthetic();
    const path = join(dir, 'report.html');
    writeReport(path, report);
    writeReport(path, report);
    assert.equal(readFileSync(path, 'utf8'), renderReport(report));
    assert.deepEqual(readdirSync(dir), ['report.html']);
    assert.throws(() => writeReport(join(dir, 'missing', 'r.html'), report));
    assert.deepEqual(readdirSync(dir), ['report.html']);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
