/**
 * Model prefill on GPUs (issue 6): a Llama-3.2-1B-shaped decoder (hidden 2048, 16 layers, 32
 * heads / 8 KV heads of 64, SwiGLU 8192; vocab 32000 to keep host memory small; random
 * weights) prefilling long prompts over a ring of GPUs, bf16 on the tensor cores, every
 * activation on the GPU (src/cuda/rank.ts prefillModel). Prints tokens/s, TFLOP/s and model
 * FLOPs utilisation against the bf16 dense peak of the GPU (989 TFLOP/s for H100/H200 SXM).
 *
 *   node dist/bin/ringattn.js launch --nproc 2 -- node dist/bench/gpu-model.js [S ...]
 *   node dist/bench/gpu-model.js [S ...]                  (one GPU)
 *
 * FLOPs counted: 2 x (parameters outside the embedding) per token, plus causal attention
 * 4 x visible pairs x H x D per layer; the one row of logits is left out.
 */
import { requireGpu } from './gpu-guard.js';
import { RingModel } from '../src/llm.js';
import { parseHfConfig } from '../src/model/config.js';
import type { ModelWeights } from '../src/model/weights.js';
import { countParams, expectedTensors } from '../src/model/weights.js';
import { attentionFlops, visiblePairs } from '../src/core/flops.js';
import { formatTable } from '../src/cli/table.js';
import { fill } from './common.js';

requireGpu();

const PEAK = 989e12;
const sizes = process.argv.slice(2).map(Number).filter((n) => n > 0);
const lengths = sizes.length ? sizes : [32768, 131072];
const P = Number(process.env.WORLD_SIZE ?? 1);
const rank = Number(process.env.RANK ?? 0);

const cfg = parseHfConfig({
  model_type: 'llama', vocab_size: 32000, hidden_size: 2048, intermediate_size: 8192, num_hidden_layers: 16,
  num_attention_heads: 32, num_key_value_heads: 8, head_dim: 64, rms_norm_eps: 1e-5, rope_theta: 500000, max_position_embeddings: 1 << 20, tie_word_embeddings: true,
});

/** Random weights, quickly: uniform with std 0.02 (bench/common.ts's LCG); norms 1. */
function weights(): ModelWeights {
  let seed = 12345;
  const a = 0.02 * Math.sqrt(3);
  const rand = (n: number) => {
    const x = fill(n, seed++);
    for (let i = 0; i < n; i++) x[i] *= a;
    return x;
  };
  const shapes = expectedTensors(cfg);
  const numel = (name: string) => shapes.get(name)!.reduce((p, q) => p * q, 1);
  const layers = Array.from({ length: cfg.numLayers }, (_, l) => {
    const t = (n: string) => `model.layers.${l}.${n}`;
    return {
      inputNorm: new Float32Array(cfg.hiddenSize).fill(1), postNorm: new Float32Array(cfg.hiddenSize).fill(1),
      q: rand(numel(t('self_attn.q_proj.weight'))), k: rand(numel(t('self_attn.k_proj.weight'))), v: rand(numel(t('self_attn.v_proj.weight'))),
      o: rand(numel(t('self_attn.o_proj.weight'))), gate: rand(numel(t('mlp.gate_proj.weight'))), up: rand(numel(t('mlp.up_proj.weight'))), down: rand(numel(t('mlp.down_proj.weight'))),
    };
  });
  const embed = rand(cfg.vocabSize * cfg.hiddenSize);
  return { embed, finalNorm: new Float32Array(cfg.hiddenSize).fill(1), layers, lmHead: embed };
}

const params = countParams(cfg);
const inner = params - cfg.vocabSize * cfg.hiddenSize;
const t0 = performance.now();
const m = await RingModel.create(cfg, weights(), { devices: P, backend: 'cuda', dtype: 'bfloat16', layout: 'zigzag' });
const setupS = (performance.now() - t0) / 1000;
const rows: (string | number)[][] = [];
try {
  for (const S of lengths) {
    const ids = Int32Array.from({ length: S }, (_, i) => (i * 7919) % cfg.vocabSize);
    const first = performance.now();
    await m.prefill(ids, 'last'); // the first run at this length builds the rings
    const coldS = (performance.now() - first) / 1000;
    const t = performance.now();
    const logits = await m.prefill(ids, 'last');
    const sec = (performance.now() - t) / 1000;
    if (!logits.every(Number.isFinite)) throw new Error(`non-finite logits at S=${S}`);
    const flops = 2 * inner * S + cfg.numLayers * attentionFlops(visiblePairs(S, { causal: true }), cfg.numHeads, cfg.headDim);
    const stats = await m.stats();
    const mem = Math.max(...stats.map((x) => x.cacheBytes + x.ringBytes)) / 2 ** 30;
    rows.push([S, P, coldS.toFixed(2), sec.toFixed(2), (S / sec).toFixed(0), (flops / sec / 1e12).toFixed(1), (flops / sec / P / 1e12).toFixed(1), `${((100 * flops) / sec / (P * PEAK)).toFixed(1)}%`, mem.toFixed(1)]);
  }
} finally {
  await m.close();
}
if (rank === 0) {
  process.stdout.write(`Model prefill on ${P} GPU(s), ${m.kernel}: ${(params / 1e9).toFixed(2)}B parameters (${(inner / 1e9).toFixed(2)}B outside the embedding; hidden 2048, 16 layers, 32/8 heads of 64, SwiGLU 8192), bf16, causal, zigzag; setup ${setupS.toFixed(1)} s\n`);
  process.stdout.write(formatTable(['S', 'GPUs', 'first s', 'seconds', 'tokens/s', 'TFLOP/s', 'TFLOP/s per GPU', 'MFU (989/GPU)', 'GPU GiB held'], rows) + '\n');
}
