/**
 * npm run bench:model [-- --quick]: prefill tokens/s of a Llama-shaped model (random weights)
 * against context length and ring size on this machine's CPU, with model FLOPs utilisation
 * against the machine's sgemm rate measured in the same run (NumPy when present, else our GEMM).
 */
import { cpus } from 'node:os';
import { spawnSync } from 'node:child_process';
import { RingModel } from '../src/llm.js';
import { parseHfConfig } from '../src/model/config.js';
import { initWeights, countParams } from '../src/model/weights.js';
import { attentionFlops, visiblePairs } from '../src/core/flops.js';
import { gemm, gemmKernelName } from '../src/cpu/gemm.js';
import { formatTable } from '../src/cli/table.js';

const quick = process.argv.includes('--quick');
const cfg = parseHfConfig({
  model_type: 'llama', vocab_size: 8192, hidden_size: 512, intermediate_size: 1408, num_hidden_layers: 4,
  num_attention_heads: 8, num_key_value_heads: 2, rms_norm_eps: 1e-5, rope_theta: 500000, max_position_embeddings: 1 << 20, tie_word_embeddings: true,
});
const params = countParams(cfg);

/** Our GEMM rate on all cores at a model-like shape: the peak MFU is measured against. */
function gemmRate(): number {
  const [M, N, K] = [2048, 1408, 512];
  const A = new Float32Array(M * K).fill(0.5), B = new Float32Array(N * K).fill(0.25), C = new Float32Array(M * N);
  let best = Infinity;
  for (let i = 0; i < 5; i++) {
    const t0 = performance.now();
    gemm({ transB: true, M, N, K, A, B, C, threads: cpus().length });
    best = Math.min(best, performance.now() - t0);
  }
  return (2 * M * N * K) / (best / 1000);
}

function numpyRate(): number | null {
  const env = { ...process.env };
  delete env.OPENBLAS_CORETYPE;
  delete env.OPENBLAS_L2_SIZE;
  const r = spawnSync('python3', ['-c', 'import numpy as np,time\na=np.ones((2048,512),np.float32);b=np.ones((1408,512),np.float32)\nbest=9\nfor i in range(5):\n t=time.perf_counter();a@b.T;best=min(best,time.perf_counter()-t)\nprint(2*2048*1408*512/best)'], { encoding: 'utf8', env });
  return r.status === 0 ? Number(r.stdout.trim()) : null;
}

const peak = gemmRate();
const np = numpyRate();
const rows: (string | number)[][] = [];
for (const S of quick ? [1024, 4096] : [1024, 4096, 16384]) {
  for (const P of [1, 2, 4]) {
    const m = await RingModel.create(cfg, initWeights(cfg, 1), { devices: P });
    try {
      const ids = Int32Array.from({ length: S }, (_, i) => (i * 7919) % cfg.vocabSize);
      await m.prefill(ids.subarray(0, 256), 'last'); // warm up: kernels built, workers started
      const t0 = performance.now();
      await m.prefill(ids, 'last');
      const sec = (performance.now() - t0) / 1000;
      const flops = 2 * params * S + cfg.numLayers * attentionFlops(visiblePairs(S, { causal: true }), cfg.numHeads, cfg.headDim);
      rows.push([S, P, sec.toFixed(2), (S / sec).toFixed(0), (flops / sec / 1e9).toFixed(1), `${((100 * flops) / sec / (np ?? peak)).toFixed(0)}%`]);
    } finally {
      await m.close();
    }
  }
}
process.stdout.write(`Model prefill on the CPU ring: ${(params / 1e6).toFixed(1)}M parameters (hidden 512, 4 layers, 8 heads / 2 KV heads, vocab 8192), fp32, causal, zigzag\n`);
process.stdout.write(`${cpus().length} x ${cpus()[0]?.model}; peak for MFU: NumPy sgemm ${np ? (np / 1e9).toFixed(0) : 'n/a'} GFLOP/s, our GEMM (${gemmKernelName()}) ${(peak / 1e9).toFixed(0)} GFLOP/s on all cores (model-like 2048x1408x512)\n\n`);
process.stdout.write(formatTable(['S', 'P', 'seconds', 'tokens/s', 'GFLOP/s', 'MFU'], rows) + '\n');
