// One rank of the GPU model tests (tests/cuda/model.gpu.test.ts), started by launch():
//   node model-rank.js grads <seed>   a training step (lr 0) of a small random GQA model with a
//                                     window layer on the GPU ranks; rank 0 compares the loss
//                                     and every summed gradient with the CPU backend (1 rank)
//                                     and prints "RESULT {json}".
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
