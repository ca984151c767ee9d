// One rank of the GPU model tests (tests/cuda/model.gpu.test.ts), started by launch():
//   node model-rank.js grads <seed>   a training step (lr 0) of a small random GQA model with a
//                                     window layer on the GPU ranks; rank 0 compares the loss
//                                     and every summed gradient with the CPU backend (1 rank)
//                                     and prints "RESULT {json}".
//   node model-rank.js decode <seed> <float32|bfloat16>
//                                     decode (teacher-forced) of a small qwen2 model
//                                     (a full layer, a window layer with sinks) with the KV cache
//                                     on the GPU ranks; rank 0 compares each step's logits with
//                                     recomputing the whole sequence (and, in fp32, with the CPU
//                                     backend) and prints "RESULT {json}".
import { RingModel } from '../../src/llm.js';
import { parseHfConfig } from '../../src/model/config.js';
import { initWeights } from '../../src/model/weights.js';
import { relErr, rng } from '../helpers/check.js';

const mode = process.argv[2] ?? 'grads';
const seed = Number(process.argv[3] ?? 1);
const P = Number(process.env.WORLD_SIZE ?? 1);

if (mode === 'grads') {
  const cfg = parseHfConfig({
    model_type: 'mistral', vocab_size: 97, hidden_size: 64, intermediate_size: 96, num_hidden_layers: 2, num_attention_heads: 4,
    num_key_value_heads: 2, head_dim: 16, rms_norm_eps: 1e-5, rope_theta: 10000, max_position_embeddings: 4096, sliding_window: 40, tie_word_embeddings: false,
  });
  const r = rng(seed);
  const S = 203;
  const ids = Int32Array.from({ length: S }, () => Math.floor(r() * cfg.vocabSize));
  const targets = Int32Array.from({ length: S }, (_, i) => (i % 7 === 3 ? -100 : Math.floor(r() * cfg.vocabSize)));
  const gpu = await RingModel.create(cfg, initWeights(cfg, seed, 0.05), { devices: P, backend: 'cuda', dtype: 'float32', layout: 'zigzag' });
  const g = await gpu.trainStep(ids, targets, { lr: 0, returnGrads: true });
  const logits = await gpu.prefill(ids, 'all');
  await gpu.close();
  if (gpu.rank === 0) {
    const cpu = await RingModel.create(cfg, initWeights(cfg, seed, 0.05), { devices: 1 });
    const c = await cpu.trainStep(ids, targets, { lr: 0, returnGrads: true });
    const cl = await cpu.prefill(ids, 'all');
    await cpu.close();
    const errs: Record<string, number> = { logits: relErr(logits, cl), loss: Math.abs(g.loss - c.loss) / Math.abs(c.loss) };
    for (const [name, want] of Object.entries(c.grads!)) errs[name] = relErr(g.grads![name], want);
    console.log(`RESULT ${JSON.stringify({ P, errs })}`);
  }
}

if (mode === 'decode') {
  const dtype = process.argv[4] === 'bfloat16' ? 'bfloat16' : 'float32';
  // Layer 0 attends fully; layer 1 has a window of 40 (qwen2: layers from max_window_layers on).
  // Head dim 64: bf16 takes the decode kernel's tensor-core path (the fixtures' 16 and 24 the generic one).
  const cfg = parseHfConfig({
    model_type: 'qwen2', vocab_size: 97, hidden_size: 128, intermediate_size: 192, num_hidden_layers: 2, num_attention_heads: 4,
    num_key_value_heads: 2, head_dim: 64, rms_norm_eps: 1e-5, rope_theta: 10000, max_position_embeddings: 4096,
    use_sliding_window: true, sliding_window: 40, max_window_layers: 1, tie_word_embeddings: false,
  });
  const r = rng(seed);
  const S0 = 203, steps = 12, sinks = 4;
  const ids = Int32Array.from({ length: S0 + steps }, () => Math.floor(r() * cfg.vocabSize));
  const V = cfg.vocabSize;
  const gpu = await RingModel.create(cfg, initWeights(cfg, seed, 0.05), { devices: P, backend: 'cuda', dtype, layout: 'zigzag', sinks });
  // No reserve: each rank's device cache has room for one more row, so the decode grows it.
  await gpu.prefill(ids.subarray(0, S0), 'last');
  const got: Float32Array[] = [];
  for (let t = S0; t < S0 + steps; t++) got.push(await gpu.decode(ids[t]));
  const stats = await gpu.stats();
  const full = await gpu.prefill(ids, 'all');
  await gpu.close();
  if (gpu.rank === 0) {
    const rows = (all: Float32Array) => got.map((_, s) => all.subarray((S0 + s) * V, (S0 + s + 1) * V));
    const worst = (want: Float32Array[]) => Math.max(...got.map((g, s) => relErr(g, want[s])));
    const errs: Record<string, number> = { recompute: worst(rows(full)) };
    if (dtype === 'float32') {
      const cpu = await RingModel.create(cfg, initWeights(cfg, seed, 0.05), { devices: 1, sinks });
      errs.cpu = worst(rows(await cpu.prefill(ids, 'all')));
      await cpu.close();
    }
    const out = { P, dtype, errs, deviceDecodes: stats.map((x) => x.deviceDecodes), cached: stats.map((x) => x.cached), hostDecode: stats.map((x) => x.hostDecode), want: steps * cfg.numLayers };
    console.log(`RESULT ${JSON.stringify(out)}`);
  }
}
