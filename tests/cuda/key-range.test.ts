import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { findNvcc } from '../helpers/nvcc.js';

// The Hopper forward's partial tiles test a key by keyRange(m, qi).has(kj), a query's visible
// positions as an interval and a sink bound, and the Hopper backward's a query by
// queryRange(m, kj).has(qi), where the other kernels call visible() (kernels/common.cuh). Both are __host__ __device__: here nvcc compiles a host program
// that compares them over every mask (causal or not, windows and sinks from 0 up to the int
// range's end) and every pair of positions from a grid of small values and values near 2^31,
// where qi + window would overflow an int. No GPU needed.

const kernels = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', 'src', 'cuda', 'kernels');
const nvcc = findNvcc();
const skip = nvcc ? false : 'nvcc not found: keyRange was not compared with visible (install the CUDA toolkit or set NVCC)';

const PROGRAM = `
#include "${join(kernels, 'common.cuh')}"
#include <cstdio>
int main() {
  const int big = 0x7fffffff;
  const int windows[] = {0, 1, 2, 3, 5, 8, 1 << 30, big - 1, big};
  const int sinks[] = {0, 1, 3, 7, 1 << 30, big};
  int pos[64], n = 0;
  for (int i = 0; i <= 24; i++) pos[n++] = i;
  const int far[] = {1 << 30, (1 << 30) + 1, big - 9, big - 8, big - 2, big - 1, big};
  for (int x : far) pos[n++] = x;
  long long pairs = 0, wrong = 0;
  for (int causal = 0; causal < 2; causal++)
    for (int w : windows)
      for (int s : sinks) {
        Mask m;
        m.causal = causal;
        m.window = w;
        m.sinks = w > 0 ? s : 0;  // as maskOf: sinks only with a window
        m.hasSeg = 0;
        for (int a = 0; a < n; a++) {
          const KeyRange r = keyRange(m, pos[a]);
          const QueryRange qr = queryRange(m, pos[a]);
          for (int b = 0; b < n; b++) {
            pairs++;
            if (r.has(pos[b]) != visible(m, pos[a], pos[b], 0, 0) && wrong++ < 10)
              std::printf("keyRange mismatch causal=%d window=%d sinks=%d qi=%d kj=%d visible=%d\\n", causal, w, m.sinks, pos[a], pos[b], (int)visible(m, pos[a], pos[b], 0, 0));
            if (qr.has(pos[b]) != visible(m, pos[b], pos[a], 0, 0) && wrong++ < 10)
              std::printf("queryRange mismatch causal=%d window=%d sinks=%d kj=%d qi=%d visible=%d\\n", causal, w, m.sinks, pos[a], pos[b], (int)visible(m, pos[b], pos[a], 0, 0));
            if (noQueries().has(pos[b]) && wrong++ < 10) std::printf("noQueries has %d\\n", pos[b]);
          }
        }
      }
  std::printf("pairs %lld wrong %lld\\n", pairs, wrong);
  return wrong ? 1 : 0;
}
`;

test('keyRange(m, qi).has(kj) and queryRange(m, kj).has(qi) equal visible() for every mask and position pair, overflow included (nvcc, no GPU)', { skip, timeout: 120_000 }, () => {
  const dir = mkdtempSync(join(tmpdir(), 'ringattn-keyrange-'));
  try {
    writeFileSync(join(dir, 'key-range.cu'), PROGRAM);
    const build = spawnSync(nvcc!, ['-std=c++17', '-o', join(dir, 'key-range'), join(dir, 'key-range.cu')], { encoding: 'utf8' });
    assert.equal(build.status, 0, `nvcc: ${build.stdout}${build.stderr}`);
    const run = spawnSync(join(dir, 'key-range'), { encoding: 'utf8' });
    const m = /pairs (\d+) wrong (\d+)/.exec(run.stdout);
    assert.ok(m, `no summary line: ${run.stdout}${run.stderr}`);
    assert.ok(Number(m[1]) > 100_000, `only ${m[1]} pairs compared`);
    assert.equal(Number(m[2]), 0, run.stdout);
    assert.equal(run.status, 0);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
