import { test } from 'node:test';
import assert from 'node:assert/strict';
import { comparisonTable, measurePeers, peerRows, roundsSummary, type Peers } from '../../bench/gpu-peers.js';

// The GPU benchmark's peer table (bench/gpu-peers.ts), without a GPU: the layout and ratios from
// given rows, and a peer that cannot run (no such interpreter) leaving notes, not an exception.

test('comparisonTable: our rows beside flash and cuDNN of the same (D, causal): forward / cuDNN, backward / flash and / cuDNN, fractions of the measured peak; a missing peer shows "-"', () => {
  const peers: Peers = {
    sdpa: [
      { backend: 'flash', D: 128, S: 8192, causal: false, fwdTflops: 350, bwdTflops: 300 },
      { backend: 'cudnn', D: 128, S: 8192, causal: false, fwdTflops: 640, bwdTflops: 590 },
      { backend: 'cudnn', D: 128, S: 8192, causal: true, error: 'unavailable' },
      { backend: 'cudnn', D: 64, S: 4096, causal: false, fwdTflops: 1 }, // another S: not this table's
    ],
    peak: 800,
    notes: ['torch_matmul.py: exit 1'],
  };
  const t = comparisonTable(8192, 32, 8, [
    { D: 128, causal: false, fwd: 608, bwd: 390 },
    { D: 128, causal: true, fwd: 560, bwd: NaN },
    { D: 64, causal: false, fwd: 480, bwd: 350 },
  ], peers).split('\n');
  const cells = (line: string) => line.trim().split(/\s+/);
  assert.deepEqual(cells(t[0]), ['S', 'H', 'Hk', 'D', 'causal', 'fwd', 'TF/s', 'flash', 'cuDNN', 'fwd/cuDNN', 'fwd/peak', 'bwd', 'TF/s', 'flash', 'cuDNN', 'bwd/flash', 'bwd/cuDNN', 'bwd/peak']);
  assert.deepEqual(cells(t[1]), ['8192', '32', '8', '128', 'false', '608.0', '350', '640', '0.95', '76%', '390.0', '300', '590', '1.30', '0.66', '49%']);
  // causal: cuDNN errored and flash never ran; no backward timed
  assert.deepEqual(cells(t[2]), ['8192', '32', '8', '128', 'true', '560.0', '-', '-', '-', '70%', '-', '-', '-', '-', '-', '-']);
  // D=64: the only D=64 peer row is at another S
  assert.deepEqual(cells(t[3]).slice(5, 10), ['480.0', '-', '-', '-', '60%']);
  assert.match(t[4], /^peak: cuBLAS bf16 8192x8192x8192 matmul 800 TFLOP\/s/);
  assert.equal(t[5], 'peer unavailable: torch_matmul.py: exit 1');
  assert.match(comparisonTable(8192, 32, 8, [{ D: 128, causal: false, fwd: 1, bwd: 1 }], { sdpa: [], notes: [] }), /peak: not measured/);
});

test('measurePeers: an interpreter that cannot run gives a note for each peer script and no rows (the benchmark goes on)', () => {
  const p = measurePeers(1024, 4, 4, [64, 128], 1, 1, '/nonexistent/python3');
  assert.equal(p.sdpa.length, 0);
  assert.equal(p.peak, undefined);
  assert.equal(p.notes.length, 3);
  assert.ok(p.notes[0].startsWith('D=64: torch_sdpa.py: ') && p.notes[1].startsWith('D=128: torch_sdpa.py: '), p.notes.join(' | '));
  assert.ok(p.notes[2].startsWith('torch_matmul.py: '), p.notes[2]);
});

test('peerRows: rows printed before a failure are kept; an unreadable line, a row carrying an error and the failure each become a note', () => {
  const out = [
    'torch 2.11, H100',
    'JSON {"backend": "flash", "S": 8192, "causal": false, "fwdTflops": 350, "bwdTflops": 300}',
    'JSON {"backend": "cudnn", "S": 8192, "causal": true, "error": "no kernel"}',
    'JSON {"M": 8192, "N": 8192, "K": 8192, "dtype": "bf16", "ms": NaN',
    'JSON {"M": 8192, "N": 8192, "K": 8192, "dtype": "bf16", "error": "out of memory"}',
  ].join('\n');
  const r = peerRows('peer.py', out, 'exit 1 (killed)');
  assert.equal(r.rows.length, 3);
  assert.equal(r.rows[0].fwdTflops, 350);
  assert.deepEqual(r.notes, [
    `peer.py: unreadable line '{"M": 8192, "N": 8192, "K": 8192, "dtype": "bf16", "ms": NaN'`,
    'peer.py: cudnn S=8192 causal=true: no kernel',
    'peer.py: 8192x8192x8192: out of memory',
    'peer.py: exit 1 (killed)',
  ]);
  assert.deepEqual(peerRows('peer.py', 'JSON {"info": "torch"}\n'), { rows: [{ info: 'torch' }], notes: [] });
});

test('roundsSummary: per row, forward / cuDNN and backward / flash of each round and their median; a round whose peer is missing is left out of that ratio', () => {
  const peers = (cudnnFwd: number, flashBwd?: number): Peers => ({
    sdpa: [
      { backend: 'cudnn', D: 128, S: 8192, causal: false, fwdTflops: cudnnFwd, bwdTflops: 500 },
      ...(flashBwd === undefined ? [] : [{ backend: 'flash', D: 128, S: 8192, causal: false, fwdTflops: 350, bwdTflops: flashBwd }]),
      { backend: 'cudnn', D: 128, S: 8192, causal: true, error: 'unavailable' },
    ],
    notes: [],
  });
  const ours = (fwd: number, bwd: number) => [{ D: 128, causal: false, fwd, bwd }, { D: 128, causal: true, fwd: 500, bwd: 400 }];
  const t = roundsSummary(8192, [
    { ours: ours(600, 390), peers: peers(640, 300) },
    { ours: ours(620, 400), peers: peers(620) }, // no flash row this round
    { ours: ours(580, 380), peers: peers(600, 290) },
  ]).split('\n');
  assert.equal(t[0], 'rounds: 3; median [each round] of the per-round ratio');
  const cells = (line: string) => line.trim().split(/\s+/);
  // fwd/cuDNN: 600/640 = 0.9375, 620/620 = 1, 580/600 = 0.9667 -> median 0.9667; bwd/flash: 1.30, 1.3103 -> median 1.3103 (the upper of two)
  assert.deepEqual(cells(t[2]), ['128', 'false', '0.97', '[0.94', '1.00', '0.97]', '1.31', '[1.30', '1.31]']);
  // causal: cuDNN errored and flash never ran in any round
  assert.deepEqual(cells(t[3]), ['128', 'true', '-', '-']);
});
